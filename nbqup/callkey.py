"""The key of a call for the result cache: a pickle written only to be hashed, never
loaded, that comes out the same in every process.

The payload a job runs is cloudpickle's, and two of its choices make equal calls pickle
differently from one kernel session to the next: a class defined in the notebook
(``__main__``) is pickled by value under an id cloudpickle draws afresh in each process,
and the elements of a set of strings come in an order that depends on the process's hash
seed.  A function's code records the file it was compiled from, which for a notebook cell
holds the kernel's pid.  :func:`call_key` pickles the call as cloudpickle does except for
these:

- a function or class pickled by value (the notebook's, a lambda, a closure) is written
  as a token: its module and qualified name and a hash of its content -- for a function
  its code (without file name and line numbers), defaults, closure and the globals it
  reads; for a class its bases and its attributes;
- a set or frozenset among those (a global ``LABELS = {"cat", "dog"}``, a constant of
  the code), or given as an argument itself, is written sorted.

Nothing is unpickled, so computing a key neither doubles the memory of a big argument nor
runs a notebook class's code in the submitting kernel; the bytes go straight into the
hash.  A set nested deeper in the arguments (inside a list) is pickled as it is.

>>> call_key(len, (1,), {}) == call_key(len, (1,), {}) != call_key(len, (2,), {})
True
>>> call_key(len, ({"b", "a", "c"},), {}) == call_key(len, ({"c", "a", "b"},), {})
True
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import types
import weakref
from typing import Any, NamedTuple

import cloudpickle
from cloudpickle import cloudpickle as _cp

from . import payload

__all__ = ["SetOf", "Token", "call_key"]

_DEPTH = 20

#: Digests of functions, kept while what they read stays the same objects (as the
#: payload's function pickles are, :func:`nbqup.payload.fingerprint`).
_fn_digests: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], str]] = (
    weakref.WeakKeyDictionary()
)


class Token(NamedTuple):
    """What a function or class pickled by value is written as in a key."""

    kind: str
    module: str
    qualname: str
    digest: str


class SetOf(NamedTuple):
    """A set or frozenset in a key: its elements in a canonical order."""

    kind: str
    items: tuple[Any, ...]


def call_key(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The hex key of calling ``fn`` with ``args`` and ``kwargs``.

    ``fn`` counts by content (:class:`Token`), and also by its source when it can be read:
    a function imported from a module is written by reference, its module and name,
    which stay the same when its body is fixed; its source does not.  Raises what
    pickling the arguments raises.
    """
    h = hashlib.blake2b(digest_size=20)
    digests: dict[int, str] = {}
    _dump(h, fn, digests)
    with contextlib.suppress(OSError, TypeError):
        h.update(inspect.getsource(fn).encode())
    h.update(b"\0")
    if args or kwargs:  # a set argument sorted; the rest is not walked, only pickled
        _dump(h, (tuple(map(_set_of, args)), {k: _set_of(v) for k, v in kwargs.items()}))
    return h.hexdigest()


class _Sink:
    """A file whose writes go into a hash (no copy of the pickle is held)."""

    __slots__ = ("write",)

    def __init__(self, h: Any) -> None:
        self.write = h.update


def _dump(h: Any, obj: Any, digests: dict[int, str] | None = None) -> None:
    _KeyPickler(_Sink(h), {} if digests is None else digests).dump(obj)


class _KeyPickler(cloudpickle.Pickler):
    """cloudpickle, but a function or class it would pickle by value is a :class:`Token`.

    ``digests`` (by object id) is shared by the picklers of one key: each content is
    hashed once, and a function or class met again while its own content is hashed (a
    method naming its class) is written without a digest.
    """

    def __init__(self, file: _Sink, digests: dict[int, str]) -> None:
        super().__init__(file, protocol=5)
        self._digests = digests

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.FunctionType:
            if _cp._should_pickle_by_reference(obj):
                return NotImplemented
            return Token, ("function", obj.__module__, obj.__qualname__, self._function(obj))
        try:
            is_class = issubclass(kind, type)
        except TypeError:
            is_class = False
        if is_class and obj not in _cp._BUILTIN_TYPE_NAMES and not _by_reference(obj):
            digest = self._digest(obj, _class_parts)
            return Token, ("class", obj.__module__, obj.__qualname__, digest)
        return super().reducer_override(obj)

    def _function(self, fn: types.FunctionType) -> str:
        """A function's digest, kept for the next keys unless it was hashed while
        another's was (a mutual recursion: its digest depends on where it started)."""
        if id(fn) in self._digests:
            return self._digests[id(fn)]
        fp = payload.fingerprint(fn)
        held = _fn_digests.get(fn)
        if held is not None and held[0] == fp:
            return held[1]
        outer = "" in self._digests.values()
        digest = self._digest(fn, _function_parts)
        if fp is not None and not outer:
            _fn_digests[fn] = (fp, digest)
        return digest

    def _digest(self, obj: Any, parts: Any) -> str:
        known = self._digests.get(id(obj))
        if known is not None:
            return known  # "" while its own content is being hashed
        self._digests[id(obj)] = ""
        h = hashlib.blake2b(digest_size=16)
        _dump(h, parts(obj), self._digests)
        self._digests[id(obj)] = digest = h.hexdigest()
        return digest


def _by_reference(cls: type) -> bool:
    try:
        return bool(_cp._should_pickle_by_reference(cls))
    except Exception:  # an odd class: by value, as cloudpickle would
        return False


def _function_parts(fn: types.FunctionType) -> tuple[Any, ...]:
    """What a function pickled by value does: its code, defaults, closure, the globals
    its code reads (by name), its attributes."""
    glob = fn.__globals__
    names = sorted(n for n in _cp._extract_code_globals(fn.__code__) if n in glob)
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(_canon(cell.cell_contents))
        except ValueError:
            cells.append(_EMPTY_CELL)
    return (
        _code_parts(fn.__code__),
        _canon(fn.__defaults__),
        _canon(fn.__kwdefaults__),
        tuple(cells),
        tuple((name, _canon(glob[name])) for name in names),
        tuple(sorted((k, _canon(v)) for k, v in fn.__dict__.items())),
    )


def _code_parts(code: types.CodeType) -> tuple[Any, ...]:
    """A code object without where it was compiled (file name, line numbers): a cell's
    file name holds the kernel's pid."""
    consts = tuple(
        _code_parts(c) if isinstance(c, types.CodeType) else _canon(c) for c in code.co_consts
    )
    return (
        code.co_name,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_code,
        consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        getattr(code, "co_exceptiontable", b""),
    )


def _class_parts(cls: type) -> tuple[Any, ...]:
    """What a class pickled by value is: its metaclass, name, bases and attributes."""
    attrs, _ = _cp._class_getstate(cls)
    return (
        type(cls),
        cls.__name__,
        cls.__bases__,
        tuple(sorted((k, _canon(v)) for k, v in attrs.items())),
    )


_EMPTY_CELL = Token("cell", "", "", "empty")


def _set_of(value: Any) -> Any:
    kind = type(value)
    if kind is set or kind is frozenset:
        return SetOf(kind.__name__, _sorted(_canon(v) for v in value))
    return value


def _canon(value: Any, depth: int = 0) -> Any:
    """``value`` with a set or frozenset in it -- itself, or in its lists, tuples and dict
    values, down to 20 levels -- as a :class:`SetOf` (its elements sorted)."""
    kind = type(value)
    if kind is set or kind is frozenset:
        return SetOf(kind.__name__, _sorted(_canon(v, depth + 1) for v in value))
    if depth > _DEPTH:
        return value
    if kind is tuple or kind is list:
        items = [_canon(v, depth + 1) for v in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return kind(items)
    if kind is dict:
        pairs = {k: _canon(v, depth + 1) for k, v in value.items()}
        return value if all(pairs[k] is v for k, v in value.items()) else pairs
    return value


def _sorted(items: Any) -> tuple[Any, ...]:
    """Set elements in an order that does not depend on the hash seed: sorted, or (mixed
    types) sorted within each type, types by name."""
    items = list(items)
    try:
        return tuple(sorted(items))
    except TypeError:
        pass
    by_type: dict[str, list[Any]] = {}
    for item in items:
        by_type.setdefault(f"{type(item).__module__}.{type(item).__qualname__}", []).append(item)
    out: list[Any] = []
    for name in sorted(by_type):
        group = by_type[name]
        with contextlib.suppress(TypeError):  # unorderable: as the set gives them
            group.sort()
        out.extend(group)
    return tuple(out)
