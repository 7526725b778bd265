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
- a set or frozenset, wherever it is (a global ``LABELS = {"cat", "dog"}``, a constant
  of the code, an argument, a dataclass field, a list item, a dict value), is written
  sorted: the pickler's ``persistent_id`` sees every object, sets included (its
  ``reducer_override`` never sees a set), so this costs no walk of its own;
- a function imported from a module (pickled by reference, its module and name) is also
  written with its source and a hash of its module's source file, so fixing a helper it
  calls in the same module changes the key too (:func:`module_digest`).

Nothing is unpickled, so computing a key neither doubles the memory of a big argument nor
runs a notebook class's code in the submitting kernel; the bytes go straight into the
hash.  :func:`args_key` is the same key of arguments alone (a group item's).

>>> call_key(len, (1,), {}) == call_key(len, (1,), {}) != call_key(len, (2,), {})
True
>>> call_key(len, ({"b", "a", "c"},), {}) == call_key(len, ({"c", "a", "b"},), {})
True
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import sys
import types
import weakref
from typing import Any, NamedTuple

import cloudpickle
from cloudpickle import cloudpickle as _cp

from . import payload

__all__ = ["SetOf", "Token", "args_key", "call_key", "module_digest"]

_DEPTH = 20

#: Digests of functions and classes, kept while what they hold stays the same objects
#: (as the payload's function pickles are, :func:`nbqup.payload.fingerprint`): a sweep
#: over instances of a notebook class hashes the class once, not once per item.
_fn_digests: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()

#: Module source hashes by file: ``path -> ((mtime_ns, size), digest)``.
_module_digests: dict[str, tuple[tuple[int, int], bytes]] = {}


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
    which stay the same when its body is fixed; its source does not, nor does its
    module's file (:func:`module_digest`), which holds the helpers it calls.  Raises
    what pickling the arguments raises.
    """
    h = hashlib.blake2b(digest_size=20)
    digests: dict[int, str] = {}
    _dump(h, fn, digests)
    with contextlib.suppress(OSError, TypeError):
        h.update(inspect.getsource(fn).encode())
    if type(fn) is types.FunctionType and _by_reference(fn):
        h.update(module_digest(fn))
    h.update(b"\0")
    if args or kwargs:
        _dump(h, (args, kwargs))
    return h.hexdigest()


def args_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The key of a call's arguments alone, the same in every process (a group item's:
    :func:`nbqup.groups.item_key`).  Raises what pickling them raises (a ``Job``).

    >>> args_key(({"b", "a"},), {}) == args_key(({"a", "b"},), {}) != args_key((), {})
    True
    """
    h = hashlib.blake2b(digest_size=20)
    _dump(h, (args, kwargs))
    return h.digest()


def module_digest(fn: Any) -> bytes:
    """A hash of the source file of ``fn``'s module (empty if it has none: a builtin, a
    compiled extension), kept per file while its mtime and size stay the same -- one
    ``stat`` per key, the file read once per change."""
    path = getattr(sys.modules.get(getattr(fn, "__module__", None) or ""), "__file__", None)
    if not path or not path.endswith(".py"):
        return b""
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        held = _module_digests.get(path)
        if held is not None and held[0] == stamp:
            return held[1]
        with open(path, "rb") as f:
            digest = hashlib.blake2b(f.read(), digest_size=16).digest()
    except OSError:
        return b""
    _module_digests[path] = (stamp, digest)
    return digest


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

    def persistent_id(self, obj: Any) -> Any:
        """A set or frozenset, wherever it is, as a :class:`SetOf` (its elements sorted):
        the C pickler writes sets before it would ask :meth:`reducer_override`."""
        kind = type(obj)
        if kind is set or kind is frozenset:
            return SetOf(kind.__name__, _sorted(_canon(v) for v in obj))
        return None

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
            digest = self._kept(obj, _class_fingerprint(obj), _class_parts)
            return Token, ("class", obj.__module__, obj.__qualname__, digest)
        return super().reducer_override(obj)

    def _function(self, fn: types.FunctionType) -> str:
        return self._kept(fn, payload.fingerprint(fn), _function_parts)

    def _kept(self, obj: Any, fp: Any, parts: Any) -> str:
        """A function's or class's digest, kept for the next keys while ``fp`` holds,
        unless it was hashed while another's was (a mutual recursion: its digest depends
        on where it started)."""
        if id(obj) in self._digests:
            return self._digests[id(obj)]
        held = _fn_digests.get(obj)
        if held is not None and held[0] == fp:
            return held[1]
        outer = "" in self._digests.values()
        digest = self._digest(obj, parts)
        if fp is not None and not outer:
            with contextlib.suppress(TypeError):  # not weak-referenceable
                _fn_digests[obj] = (fp, digest)
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


def _by_reference(obj: Any) -> bool:
    try:
        return bool(_cp._should_pickle_by_reference(obj))
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


def _class_fingerprint(cls: type) -> tuple[Any, ...]:
    """Identity of what a class's digest depends on: its bases and the objects its
    attributes hold (a method by :func:`nbqup.payload.fingerprint`)."""
    return (
        tuple(map(id, cls.__bases__)),
        tuple(
            (k, id(v), payload.fingerprint(v) if type(v) is types.FunctionType else None)
            for k, v in vars(cls).items()
        ),
    )


def _class_parts(cls: type) -> tuple[Any, ...]:
    """What a class pickled by value is: its metaclass, name, bases and attributes --
    but not the ``__doc__`` a dataclass writes itself: it shows its defaults' reprs, a
    set's in the order of the process's hash seed (the defaults count, as fields)."""
    attrs, _ = _cp._class_getstate(cls)
    doc = attrs.get("__doc__")
    if "__dataclass_fields__" in attrs and str(doc).startswith(cls.__name__ + "("):
        attrs = {k: v for k, v in attrs.items() if k != "__doc__"}
    return (
        type(cls),
        cls.__name__,
        cls.__bases__,
        tuple(sorted((k, _canon(v)) for k, v in attrs.items())),
    )


_EMPTY_CELL = Token("cell", "", "", "empty")


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
