"""What makes two dispatched calls "the same call": a key from what determines the result.

The joblib backend (:mod:`nbqup.joblib`) answers a call from the result cache
(:mod:`nbqup.cache`) when an equal call already succeeded in the store.  Comparing the
calls' pickles does not work: scikit-learn passes each fit a per-call context (a fresh
uuid and a timestamp in a ``CallbackContext``, the search object itself as ``caller``, a
copy of the warnings filters), and pickles of equal objects can differ in their bytes.
:func:`call_key` hashes, with ``joblib.hashing.hash`` (numpy arrays by their contents),
a normal form of each call built from what can change its result:

- a function by its module, qualified name, source (when it can be read) and code
  (bytecode, constants, the names it uses), its defaults and the values its closure
  holds -- not by where it lives in memory, so the same cell run again after a restart
  gives the same key;
- scikit-learn's wrapper of a dispatched function by that function and the
  scikit-learn configuration it runs under (not the copy of the warnings filters);
- an estimator (anything with ``get_params``) by its class, its parameters (nested
  estimators likewise) and its fitted attributes (public names ending in ``_``);
- dicts by their items whatever their order, sets by their members, lists and tuples
  item by item; anything else as ``joblib.hashing.hash`` sees it;
- left out: the keyword arguments scikit-learn's own functions take only for progress
  messages and callbacks (:data:`IGNORED_SKLEARN_KWARGS`).

A random state given as a ``RandomState`` object is hashed by its current state, which
moves as it is used: fix random states as integers for a re-run to be the same call.

>>> call_key([(pow, (2, 10), {})]) == call_key([(pow, (2, 10), {})])
True
>>> call_key([(pow, (2, 10), {})]) == call_key([(pow, (2, 11), {})])
False
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from collections.abc import Iterable
from typing import Any

__all__ = ["IGNORED_SKLEARN_KWARGS", "call_key", "normal_form"]

#: Keyword arguments of scikit-learn's functions that cannot change what they return:
#: the callback context (a fresh uuid and timestamp per call), the estimator reporting to
#: the callbacks, and the positions used in progress messages (which also hold the total
#: number of candidates, so a grid extended by a point would miss every call).
IGNORED_SKLEARN_KWARGS = frozenset(
    {"callback_ctx", "caller", "split_progress", "candidate_progress"}
)

#: Nesting deeper than this is hashed as it is (a cycle cannot recurse for ever).
_MAX_DEPTH = 25


#: Arrays of at least this many bytes are hashed on their own (and, with a memo, once).
BIG_ARRAY = 4096

#: ``id(array) -> (array, digest)``: the arrays already hashed during one ``Parallel``
#: call (the array is held, so its id is not reused while the memo lives).
Memo = dict[int, tuple[Any, str]]


def call_key(
    items: Iterable[tuple[Any, tuple[Any, ...], dict[str, Any]]], memo: Memo | None = None
) -> str:
    """The key of a batch of calls ``(func, args, kwargs)`` (a joblib ``BatchedCalls``'s
    ``items``): equal for calls that compute the same results, in any process.

    ``memo``: big arrays already hashed, by identity, filled here -- a search passes the
    same ``X`` and ``y`` to every fit, and hashing them is most of the key's cost.  Only
    for as long as the arrays cannot change (one ``Parallel`` call); the key is the same
    with or without it."""
    import joblib.hashing

    digest = joblib.hashing.hash([_call(f, a, k, memo) for f, a, k in items])
    return "joblib:" + str(digest)


def _call(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], memo: Memo | None
) -> tuple[Any, ...]:
    inner = getattr(func, "function", func)  # scikit-learn's _FuncWrapper wraps it
    ignored = IGNORED_SKLEARN_KWARGS if _module(inner).startswith("sklearn.") else ()
    kept = {k: v for k, v in kwargs.items() if k not in ignored}
    return (normal_form(func, 0, memo), normal_form(args, 0, memo), normal_form(kept, 0, memo))


def _module(obj: Any) -> str:
    return str(getattr(obj, "__module__", "") or "")


def normal_form(obj: Any, depth: int = 0, memo: Memo | None = None) -> Any:
    """``obj`` turned into plain, order-free data that ``joblib.hashing.hash`` gives the
    same digest for whenever it computes the same thing (see the module docstring).

    >>> normal_form({"b": 1, "a": [2, {3}]}) == normal_form({"a": [2, {3}], "b": 1})
    True
    """
    if depth > _MAX_DEPTH or obj is None or isinstance(obj, (str, bytes, int, float, complex)):
        return obj
    d = depth + 1
    if type(obj).__name__ == "ndarray" and getattr(obj, "nbytes", 0) >= BIG_ARRAY:
        return _array(obj, memo)
    if isinstance(obj, dict):
        pairs = [(normal_form(k, d, memo), normal_form(v, d, memo)) for k, v in obj.items()]
        return ("dict", sorted(pairs, key=lambda kv: repr(kv[0])))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [normal_form(x, d, memo) for x in obj])
    if isinstance(obj, (set, frozenset)):
        return ("set", sorted((normal_form(x, d, memo) for x in obj), key=repr))
    if isinstance(obj, type):
        return ("class", _module(obj), obj.__qualname__)
    if isinstance(obj, types.FunctionType):
        return _function(obj, d, memo)
    if isinstance(obj, types.MethodType):
        return ("method", normal_form(obj.__self__, d, memo), normal_form(obj.__func__, d))
    if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        owner = getattr(obj, "__self__", None)
        bound = None if owner is None or isinstance(owner, types.ModuleType) else owner
        return ("builtin", _module(obj), obj.__qualname__, normal_form(bound, d, memo))
    if isinstance(obj, functools.partial):
        bound_args = normal_form((obj.args, obj.keywords), d, memo)
        return ("partial", normal_form(obj.func, d, memo), bound_args)
    if callable(getattr(obj, "with_config_and_warning_filters", None)):
        # scikit-learn's _FuncWrapper: the function and the configuration it runs under
        config = getattr(obj, "config", {})
        return ("sklearn-call", normal_form(obj.function, d, memo), normal_form(config, d))
    if callable(getattr(obj, "get_params", None)):
        return _estimator(obj, d, memo)
    return obj


def _array(arr: Any, memo: Memo | None) -> tuple[str, str]:
    """A big numpy array by its digest (its dtype, shape and bytes: joblib's hash)."""
    import joblib.hashing

    seen = None if memo is None else memo.get(id(arr))
    if seen is not None and seen[0] is arr:
        return ("ndarray", seen[1])
    digest = str(joblib.hashing.hash(arr))
    if memo is not None:
        memo[id(arr)] = (arr, digest)
    return ("ndarray", digest)


def _function(fn: types.FunctionType, depth: int, memo: Memo | None = None) -> tuple[Any, ...]:
    """A function by content: where it is defined, its source and code, its defaults
    and its closure's values (not the globals it reads)."""
    body = _body(fn.__code__)
    cells = [c.cell_contents for c in fn.__closure__ or () if _filled(c)]
    extras = (fn.__defaults__, fn.__kwdefaults__, cells)
    return ("function", _module(fn), fn.__qualname__, body, normal_form(extras, depth, memo))


@functools.lru_cache(maxsize=1024)
def _body(code: types.CodeType) -> tuple[str | None, str]:
    """A function's source (None if it cannot be read) and :func:`_code`; kept, since a
    search dispatches the same function hundreds of times and reading the source
    (tokenizing the file) takes ms."""
    try:
        source: str | None = inspect.getsource(code)
    except (OSError, TypeError):
        source = None
    return source, _code(code)


def _code(code: types.CodeType) -> str:
    """A digest of what a code object computes: its bytecode, constants (nested code
    likewise), the names and local names it uses and its argument counts.  The source
    alone does not tell apart two lambdas on one line (``getsource`` gives the line), nor
    is there any for code from ``exec``; line numbers are left out, so a function moved
    in its file keeps its key."""
    consts = [_code(c) if isinstance(c, types.CodeType) else c for c in code.co_consts]
    counts = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount)
    parts = (code.co_code, normal_form(consts), code.co_names, code.co_varnames, counts)
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


def _estimator(est: Any, depth: int, memo: Memo | None = None) -> tuple[Any, ...]:
    """An estimator by its class, parameters and fitted attributes -- not by whatever
    else its ``__dict__`` holds between calls."""
    try:
        params = est.get_params(deep=False)
    except Exception:  # a get_params that needs arguments, or fails: as joblib sees it
        return ("object", est)
    state = getattr(est, "__dict__", {})
    fitted = {k: v for k, v in state.items() if k.endswith("_") and not k.startswith("_")}
    kind = type(est)
    return (
        "estimator",
        _module(kind),
        kind.__qualname__,
        normal_form(params, depth, memo),
        normal_form(fitted, depth, memo),
    )
