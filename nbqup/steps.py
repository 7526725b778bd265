"""Durable steps: a call inside a job whose result is stored when it returns, so that a
resumed run (a crash, a kernel restart, ``retry()``) gets it back without calling again.

A step is known by its name (the function's qualified name, or ``name=``) and by how many
steps of that name the run called before it: the first ``fetch`` of a run is ``fetch``
number 0, the next one number 1, whatever other steps ran between them.  Its record holds
a hash of its pickled arguments (equal arguments pickle to equal bytes: that is what
"equal" means here) and when it started and finished; its pickled result is stored beside
it, under the same key in a table of its own.  A resumed run that calls step ``fetch``
number 1 with arguments of the same hash gets the stored result; with other arguments the
step runs again and its record is replaced.  A step that raises stores nothing.  Outside a
job a step is a plain call.

The job's step records are read once per run, at its first step (a job run in a worker
process or a Dask task asks the queue's process over :mod:`nbqup.remote`), and a result
only as its step is replayed: a run resumed after 200 steps of 100 KB does not read 20 MB
up front, nor does ``job.steps``.  A step's record and result are written in one write
through the group commit, durable before the step returns, as a checkpoint.

>>> @step
... def double(x):
...     return 2 * x
>>> double(21)          # outside a job: a plain call
42
>>> step(double, 2), step(len, "abc", name="length")
(4, 3)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import pickle
from collections.abc import Callable
from typing import Any, TypeVar, overload

from . import payload
from .context import JobContext, current_context
from .errors import SerializationError
from .keys import MAX_KEY_BYTES, stored_key

__all__ = ["StepRun", "step", "step_key", "step_rows", "stored_result"]

T = TypeVar("T")
#: Of a step's stored record.  1: the result inside the record (read still, for steps an
#: earlier nbqup stored); 2: the result stored apart (see the module's docstring).
_FORMAT = 2
#: Room left in an LMDB key for a step's ``ordinal:name`` after the job id and a "/".
_NAME_BYTES = MAX_KEY_BYTES - 64


def step_key(job_id: str, name: str, ordinal: int) -> str:
    """The store key of step ``name`` number ``ordinal`` of a job: the job id first, so
    that a job's steps are read (and dropped) together.

    >>> step_key("0000000003e8abcd1234", "fetch", 1)
    '0000000003e8abcd1234/1:fetch'
    """
    return f"{job_id}/{stored_key(f'{ordinal}:{name}', _NAME_BYTES)}"


class StepRun:
    """The durable steps of one run of a job: what earlier runs stored, and how many
    steps of each name this run has called."""

    __slots__ = ("calls", "seq", "stored")

    def __init__(self, stored: dict[str, bytes]) -> None:
        self.stored = stored
        self.calls: dict[str, int] = {}
        self.seq = 0


def _fingerprint(
    name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """The hash of a step's arguments, those a ``functools.partial`` binds included (the
    values a closure captures are not compared: pass them as arguments)."""
    while isinstance(fn, functools.partial):
        args, kwargs, fn = (*fn.args, *args), {**fn.keywords, **kwargs}, fn.func
    try:
        blob = payload.dumps_args(args, kwargs)
    except SerializationError as exc:
        raise SerializationError(f"{exc.what} of step {name!r}", exc.cause) from exc
    return b"" if blob is None else hashlib.blake2b(blob, digest_size=16).digest()


def _run(ctx: JobContext, name: str, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
    """Step ``name`` inside the job of ``ctx``: replayed from its record, or called and
    recorded."""
    ctx.check()
    job_id, runtime = ctx.job.id, ctx.runtime
    run = ctx.steps
    if run is None:
        run = ctx.steps = StepRun(runtime.load_steps(job_id))
    ordinal = run.calls.get(name, 0)
    run.calls[name] = ordinal + 1
    seq, run.seq = run.seq, run.seq + 1
    key = step_key(job_id, name, ordinal)
    fingerprint = _fingerprint(name, fn, args, kwargs)
    body = run.stored.pop(key, None)  # each is looked at once a run
    if body is not None:
        record = pickle.loads(body)
        if record[4] == fingerprint:
            stored = record[7] if record[0] == 1 else runtime.load_step_result(job_id, key)
            if stored is not None:  # None: its result is missing, the step runs again
                with contextlib.suppress(Exception):  # a class it needs is gone: so does it
                    return payload.loads(stored)
    if not ctx.own_message:  # the job's message names the step it last started
        label = name.rsplit("<locals>.", 1)[-1]
        runtime.report_progress(job_id, None, f"step {label} ({ordinal + 1})")
    started = runtime.now()
    value = fn(*args, **kwargs)
    try:
        blob = payload.dumps_result(value)
    except SerializationError as exc:
        raise SerializationError(f"the result of step {name!r}", exc.cause) from exc
    record = (_FORMAT, seq, name, ordinal, fingerprint, started, runtime.now())
    runtime.save_step(job_id, key, pickle.dumps(record, protocol=5), blob)
    return value


def _call(name: str | None, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
    ctx = current_context()
    if ctx is None:
        return fn(*args, **kwargs)
    return _run(ctx, name or _name_of(fn), fn, args, kwargs)


def _name_of(fn: Any) -> str:
    """A step's default name: its function's qualified name (that of the function a
    ``functools.partial`` wraps; a callable object's class), the same in every run."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


@overload
def step(fn: Callable[..., T], /) -> Callable[..., T]: ...
@overload
def step(*, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]: ...
@overload
def step(fn: Callable[..., T], /, *args: Any, name: str | None = None, **kwargs: Any) -> T: ...
def step(fn: Any = None, /, *args: Any, name: str | None = None, **kwargs: Any) -> Any:
    """A durable step: ``@step`` (or ``@step(name="fetch")``) on a function, or
    ``step(fn, *args, **kwargs)`` to call ``fn`` as one.

    ``step(fn)`` with no arguments is the decorator; call a function that takes none as a
    step with ``step(fn)()``.  ``name=`` is the step's own keyword: pass a ``name``
    argument of ``fn`` through ``functools.partial``.  Inside a job the result is stored
    when the step returns and a resumed run gets it back without calling ``fn`` while its
    arguments are equal (see the module's docstring).  The result and the arguments must
    pickle (:class:`~nbqup.SerializationError` naming the step otherwise).  Outside a
    job, a plain call.
    """
    if fn is None:
        if name is None:
            raise TypeError("step() needs a function, or name= to make a decorator")
        return lambda f: step(f, name=name)
    if not callable(fn):
        raise TypeError(f"step() needs a function, got {type(fn).__name__}")
    if not args and not kwargs:

        @functools.wraps(fn)
        def durable(*a: Any, **kw: Any) -> Any:
            return _call(name, fn, a, kw)

        return durable
    return _call(name, fn, args, kwargs)


def stored_result(store: Any, key: str) -> tuple[bool, Any]:
    """``(True, result)`` of the step stored under ``key`` in ``store`` (a record of either
    format: the result inside it, or in the ``stepres`` table); ``(False, None)`` if there
    is none.  Whatever unpickling raises, raised."""
    body = store.get_blob("steps", key)
    if body is None:
        return False, None
    record = pickle.loads(body)
    blob = record[7] if record[0] == 1 else store.get_blob("stepres", key)
    if blob is None:
        return False, None
    return True, payload.loads(blob)


def step_rows(bodies: list[tuple[str, bytes]], as_time: Callable[[float], Any]) -> list[dict]:
    """What ``job.steps`` shows of a job's stored step records (not their results), in
    call order: each step's ``name``, ``status`` (``"succeeded"``: a step is stored once
    it returned), ``started`` and ``finished`` (through ``as_time``)."""
    records = sorted((pickle.loads(body) for _, body in bodies), key=lambda r: (r[1], r[5]))
    return [
        {"name": r[2], "status": "succeeded", "started": as_time(r[5]), "finished": as_time(r[6])}
        for r in records
    ]
