"""Turning calls into bytes and back: functions by value, arguments, results.

Functions are pickled with cloudpickle, so a function defined in a notebook (``__main__``),
a lambda or a closure is stored by value and runs after a kernel restart before its cell
is run again.  A function's pickle is stored once, under the hash of its bytes, and is
cached per function object: pickling a notebook function by value costs far more than
the rest of a submit.  The cache is keyed on the objects the function reads from its
globals, so rebinding a global (``lr = 0.2``) is seen; mutating one in place (appending to
a global list) after the first submit is not -- pass such values as arguments.

A pickle is only safe to load under the Python and cloudpickle versions that wrote it, so
both are recorded with every job (:data:`PYTHON`, :data:`PICKLER`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import pickle
import reprlib
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle

from . import argdata
from .errors import SerializationError

__all__ = [
    "PICKLER",
    "PYTHON",
    "compatible",
    "dumps_args",
    "dumps_fn",
    "dumps_result",
    "fingerprint",
    "kwargs_summary",
    "load_fn",
    "loads",
    "loads_args",
    "short_repr",
]

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
PICKLER = f"cloudpickle {cloudpickle.__version__}"

_fn_cache: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], str, bytes]] = (
    weakref.WeakKeyDictionary()
)
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 5


def fingerprint(fn: Any) -> tuple[int, ...] | None:
    """Identity of what a plain function's pickle depends on (its code, defaults, the
    objects its globals and closure hold); None: do not cache (not a plain function)."""
    code = getattr(fn, "__code__", None)
    glob = getattr(fn, "__globals__", None)
    if code is None or glob is None:
        return None
    ids = [id(code), id(fn.__defaults__), id(fn.__kwdefaults__)]
    ids.extend(id(glob.get(name)) for name in code.co_names)
    for cell in fn.__closure__ or ():
        try:
            ids.append(id(cell.cell_contents))
        except ValueError:  # an empty cell
            ids.append(0)
    return tuple(ids)


def dumps_fn(fn: Callable[..., Any]) -> tuple[str, bytes]:
    """``(content hash, pickle)`` of a callable; raises :class:`SerializationError`."""
    fp = fingerprint(fn)
    if fp is not None:
        try:
            cached = _fn_cache.get(fn)
        except TypeError:  # not weak-referenceable
            cached = None
        if cached is not None and cached[0] == fp:
            return cached[1], cached[2]
    name = getattr(fn, "__qualname__", type(fn).__name__)
    try:
        blob = cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise SerializationError(f"function {name}", exc) from exc
    digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
    if fp is not None:
        with contextlib.suppress(TypeError):
            _fn_cache[fn] = (fp, digest, blob)
    return digest, blob


def dumps_args(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    name_fault: bool = True,
    data: dict[str, bytes] | None = None,
) -> bytes | None:
    """Pickle of ``(args, kwargs)``, ``None`` when there are none.

    ``data``: big objects among them are stored apart (:mod:`nbqup.argdata`): their
    pickles are added to ``data`` by hash and the payload references them.
    On failure the :class:`SerializationError` names the first argument at fault (found
    by pickling them one by one; ``name_fault=False``: not looked for, when the caller
    only needs to know that they did not pickle).
    """
    if not args and not kwargs:
        return None
    try:
        if data is not None:
            blob, found = argdata.dumps(args, kwargs)
            data.update(found)
            return blob
        return cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        if not name_fault:
            raise SerializationError("the arguments", exc) from exc
        for i, value in enumerate(args):
            _check_one(f"argument {i} ({type(value).__name__})", value)
        for key, value in kwargs.items():
            _check_one(f"argument {key!r} ({type(value).__name__})", value)
        raise SerializationError("the arguments", exc) from exc


def _check_one(what: str, value: Any) -> None:
    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(what, exc) from exc


def dumps_result(value: Any) -> bytes:
    """Pickle of a job's return value; raises :class:`SerializationError`."""
    if type(value) in _SCALARS:  # the same bytes, without setting up cloudpickle's pickler
        return pickle.dumps(value, protocol=5)
    try:
        return cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(f"the result ({type(value).__name__})", exc) from exc


def loads(blob: bytes) -> Any:
    """Unpickle a payload (runs code, like any ``pickle.loads``)."""
    return pickle.loads(blob)


def loads_args(
    blob: bytes | None, fetch: Callable[[str], bytes | None] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` from :func:`dumps_args`' pickle (``None``: no arguments);
    ``fetch(hash)`` reads the big objects it references (:func:`nbqup.argdata.loads`)."""
    return argdata.loads(blob, fetch)


#: Functions unpickled by :func:`load_fn` and kept, the most recently used.
FN_CACHE_SIZE = 256
#: By content hash: a function pickled by value, unpickled; or the pickle of one pickled by
#: reference (``module.name``), kept as bytes and unpickled at each use (see load_fn).
_loaded_fns: OrderedDict[str, Callable[..., Any] | bytes] = OrderedDict()
_loaded_fns_lock = threading.Lock()
#: What every pickle holding a function by value names: cloudpickle's rebuilders.
_BY_VALUE = b"cloudpickle.cloudpickle"
#: Pickles by reference up to this size are loaded at each use (see load_fn).
BY_NAME_BYTES = 4096


def load_fn(fn_hash: str, blob: bytes | Callable[[], bytes]) -> Callable[..., Any]:
    """Unpickle a stored function, reusing the last few hundred by their content hash:
    a notebook function run a thousand times is unpickled once per process.

    A function pickled by reference (one importable by name, from a module) has the same
    pickle after ``importlib.reload`` or ``%autoreload`` of its module, so only its pickle
    is kept, and loaded at each use (a lookup by name, about a microsecond): a job runs
    what the name is now, the new body of a reloaded module.  So is a small pickle holding
    such names (``functools.partial(module.fn, 3)``); a larger one (a bound method of a big
    object) is kept unpickled, as a function pickled by value is.  ``blob`` may be a
    function reading the pickle, called only when it is not kept.
    """
    with _loaded_fns_lock:
        kept = _loaded_fns.get(fn_hash)
        if kept is not None:
            _loaded_fns.move_to_end(fn_hash)
    if kept is None:
        kept = bytes(blob() if callable(blob) else blob)
        if len(kept) > BY_NAME_BYTES or _BY_VALUE in kept:
            kept = loads(kept)
        with _loaded_fns_lock:
            _loaded_fns[fn_hash] = kept
            if len(_loaded_fns) > FN_CACHE_SIZE:
                _loaded_fns.popitem(last=False)
    if not isinstance(kept, bytes):
        return kept
    fn = loads(kept)
    if FOLLOW_FILES and _reload_if_changed(fn):
        fn = loads(kept)
    return fn


#: Set in a worker process (``executor="process"``): a function loaded by name whose
#: module's file changed since this process imported it runs from the file as it is now
#: (its module is reloaded first), as in a newly started worker.  Never set in a kernel:
#: there the user decides when a module is reloaded.
FOLLOW_FILES = False
_files_seen: dict[str, tuple[int, int]] = {}


def _reload_if_changed(fn: Any) -> bool:
    """Reload the module ``fn`` comes from if its file changed since first seen here."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if module is None or not path:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    now = (st.st_mtime_ns, st.st_size)
    seen = _files_seen.setdefault(module.__name__, now)
    if seen == now:
        return False
    importlib.invalidate_caches()
    importlib.reload(module)
    _files_seen[module.__name__] = now
    return True


def compatible(python: str, pickler: str) -> str | None:
    """Why a payload pickled under ``python``/``pickler`` is unsafe here, or None if safe."""
    if python and python != PYTHON:
        return f"pickled under Python {python}, this is Python {PYTHON}"
    if pickler and pickler.split(".")[:2] != PICKLER.split(".")[:2]:
        return f"pickled with {pickler}, this is {PICKLER}"
    return None


def short_repr(value: Any) -> str:
    """A one-line repr of at most about 80 characters.

    >>> short_repr(list(range(100)))
    '[0, 1, 2, 3, 4, ...]'
    """
    if type(value) in _SCALARS:
        text = repr(value)
        if len(text) <= _repr.maxother:  # what reprlib gives too, for less
            return text
    try:
        return _repr.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


_PLAIN = (int, float, str, bool, type(None))
_SCALARS = frozenset({int, float, bool, type(None)})


def kwargs_summary(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for display: plain values kept, others as a short repr."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, _PLAIN) and not (isinstance(value, str) and len(value) > 80):
            out[key] = value
        else:
            out[key] = short_repr(value)
    return out
