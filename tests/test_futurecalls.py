"""What runs inside a job of ``jq.executor()`` (nbqup.futurecalls): the exception a
call raised reaches its future with its own type -- as it is in this process, unpickled
from the store from a worker process, ``JobFailed`` when it cannot be -- and a function
submitted again is pickled once."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from jobfns import EVENTS, add, boom

from nbqup import JobFailed, JobQueue, payload
from nbqup.futurecalls import RAISED, FutureCall

WAIT = 30


class Unusual(Exception):
    """An exception type of the tests' own: re-raised as itself, not as JobFailed."""


class Unpicklable(Exception):
    def __init__(self, lock: Any) -> None:
        super().__init__("holds a lock")
        self.lock = lock

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this one")


def raise_unusual(x: int) -> None:
    raise Unusual(x)


def raise_unusual_when(name: str) -> None:
    """Raises once the test sets ``EVENTS[name]`` (its future is in by then)."""
    EVENTS[name].wait(WAIT)
    raise Unusual(name)


def raise_unpicklable() -> None:
    raise Unpicklable(threading.Lock())


def test_an_exception_keeps_its_type_in_process(jq: JobQueue, name: str) -> None:
    ex = jq.executor()
    fut = ex.submit(raise_unusual_when, name)
    EVENTS[name].set()
    error = fut.exception(timeout=WAIT)
    assert isinstance(error, Unusual) and error.__cause__ is None  # the one raised
    with pytest.raises(Unusual, match=re.escape(name)):
        fut.result()
    assert fut.job.status == "failed" and f"Unusual: {name}" in (fut.job.error or "")
    assert fut.job.steps == []  # nothing stored: the future here got the exception itself


def test_an_exception_from_a_worker_process_is_unpickled_with_its_traceback(
    tmp_path: Path,
) -> None:
    with JobQueue(tmp_path / "store", workers=1, executor="process") as jq:
        ex = jq.executor()
        fut = ex.submit(raise_unusual, 3)
        error = fut.exception(timeout=WAIT)
        assert type(error) is Unusual and error.args == (3,)
        assert isinstance(error.__cause__, JobFailed)  # the remote traceback
        assert "raise_unusual" in error.__cause__.remote_traceback
        assert [s["name"] for s in fut.job.steps] == [RAISED]


def test_an_exception_that_cannot_be_pickled_is_job_failed(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "store", workers=1, executor="process") as jq:
        fut = jq.executor().submit(raise_unpicklable)
        with pytest.raises(JobFailed, match="holds a lock"):
            fut.result(timeout=WAIT)


def test_a_retried_job_ends_with_its_last_exception(jq: JobQueue) -> None:
    fut = jq.executor(retries=1).submit(boom)
    with pytest.raises(ValueError, match="bad input 42"):
        fut.result(timeout=WAIT)
    assert fut.job.attempts == 2


def test_future_call_runs_plainly_outside_a_job_and_keeps_the_name() -> None:
    call = FutureCall(add)
    assert call(2, b=3) == 5 and call.__qualname__ == "add"


def test_a_function_submitted_again_is_pickled_once(
    jq: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    pickled: list[object] = []
    real = payload.cloudpickle.dumps

    def counting(obj: object, *args: Any, **kwargs: Any) -> bytes:
        if isinstance(obj, FutureCall):
            pickled.append(obj.fn)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(payload.cloudpickle, "dumps", counting)
    ex = jq.executor()
    futs = [ex.submit(add, i, 1) for i in range(3)]
    assert [f.result(timeout=WAIT) for f in futs] == [1, 2, 3]
    assert pickled == [add]  # as jq.submit: once per function
    assert len({f.job.record.fn for f in futs}) == 1  # and stored once
