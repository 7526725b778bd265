"""``jq.executor()`` held to what CPython's own tests ask of every executor.

CPython's ``Lib/test/test_concurrent_futures`` (``executor.py``, ``test_wait.py``,
``test_as_completed.py``, ``test_shutdown.py``, ``test_future.py``) runs one set of
behaviours against each of its executors.  Each behaviour that does not depend on how
a pool is built is checked here again for ``jq.executor()``, written anew, with the
CPython test it comes from in the test's docstring.  Blocking jobs wait on events
(``jobfns.EVENTS``), never on sleeps: CPython's ``time.sleep(6)`` jobs become jobs held
until the test lets them go.

Left out, and why:

- ``max_workers`` checks (``test_max_workers_negative``), thread names and counts
  (``test_thread_names_*``, ``test_threads_terminate``), ``initializer``/``initargs``
  (``test_init.py``), ``mp_context``, ``max_tasks_per_child``, broken pools and
  ``test_deadlock.py``: they are about a pool this executor does not have -- its jobs
  run in the queue's worker slots, sized by ``JobQueue(workers=...)``.
- ``test_interpreter_shutdown`` and ``test_hang_gh83386`` expect the interpreter's exit
  to wait for submitted work and print its output.  nbqup deliberately does not wait (a
  kernel restart must not hang): the work is durable and runs when the store is opened
  again -- checked in ``test_futures.py`` (a SIGKILL, then a re-run).
  ``test_submit_after_interpreter_shutdown`` becomes: submitting to a closed queue
  raises RuntimeError.
- ``test_free_reference_yielded_future`` and ``test_multiple_set_result`` and the other
  tests of bare ``Future`` objects check ``as_completed`` and ``Future`` themselves: a
  :class:`~nbqup.futures.JobFuture` is a ``Future`` and inherits that code unchanged.
- ``test_pending_calls_race`` lowers the switch interval to shake out a race in the
  thread pool's work queue; the same 100 futures released at once are checked here at
  the normal interval.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import logging
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobfns import EVENTS, add, block

from nbqup import JobQueue
from nbqup.futures import QueueExecutor

WAIT = 30

# Futures in each state, made by hand as CPython's tests do.


def _finished(value: Any = 42) -> cf.Future[Any]:
    fut: cf.Future[Any] = cf.Future()
    fut.set_result(value)
    return fut


def _failed() -> cf.Future[Any]:
    fut: cf.Future[Any] = cf.Future()
    fut.set_exception(OSError("made by hand"))
    return fut


def _cancelled(notified: bool) -> cf.Future[Any]:
    fut: cf.Future[Any] = cf.Future()
    fut.cancel()
    if notified:
        fut.set_running_or_notify_cancel()
    return fut


def _running() -> cf.Future[Any]:
    fut: cf.Future[Any] = cf.Future()
    fut.set_running_or_notify_cancel()
    return fut


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def raise_after(name: str) -> None:
    EVENTS[name].wait(WAIT)
    raise ValueError("raised on purpose")


def value_or_block(x: Any) -> Any:
    """``x`` itself; a str names an event to wait for."""
    return block(x) if isinstance(x, str) else x


class Thing:
    def method(self) -> None:
        return None


def make_thing(_: int) -> Thing:
    return Thing()


@pytest.fixture
def ex(tmp_path: Path) -> Iterator[QueueExecutor]:
    """An executor over a queue on disk with two workers (few, like CPython's pools)."""
    with JobQueue(tmp_path / "store", workers=2) as jq:
        executor = jq.executor()
        yield executor
        executor.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def gate(name: str) -> Iterator[str]:
    """An event name jobs wait on; set when the test ends, whatever happened."""
    yield name
    EVENTS[name].set()


# ------------------------------------------------------------- ExecutorTest (executor.py)


def test_submit(ex: QueueExecutor) -> None:
    """test_submit: the call's value comes back."""
    assert ex.submit(pow, 2, 8).result(timeout=WAIT) == 256


def test_submit_keyword(ex: QueueExecutor) -> None:
    """test_submit_keyword: keywords reach the function, also ``fn`` and ``self``; no
    function at all is a TypeError."""
    assert ex.submit(add, 2, b=8).result(timeout=WAIT) == 10
    assert ex.submit(capture, 1, self=2, fn=3).result(timeout=WAIT) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ex.submit(arg=1)  # type: ignore[call-arg]


def test_map(ex: QueueExecutor) -> None:
    """test_map: as the builtin ``map``, ``chunksize`` or not."""
    expected = list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(10), range(10), timeout=WAIT)) == expected
    assert list(ex.map(pow, range(10), range(10), chunksize=3, timeout=WAIT)) == expected


def test_map_exception(ex: QueueExecutor) -> None:
    """test_map_exception: results in order up to the call that raised, which raises
    its own exception type."""
    results = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], timeout=WAIT)
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(ex: QueueExecutor, gate: str) -> None:
    """test_map_timeout: the results that came in time, then TimeoutError (the timeout
    counts from the call to map)."""
    got = []
    with pytest.raises(cf.TimeoutError):
        for value in ex.map(value_or_block, [1, 2, gate], timeout=1.0):
            got.append(value)
    assert got == [1, 2]


def test_shutdown_race_issue12456(ex: QueueExecutor) -> None:
    """test_shutdown_race_issue12456: shutdown right after a map of more calls than
    workers returns (and the calls still end)."""
    results = ex.map(str, [2] * 3)
    ex.shutdown()
    assert list(results) == ["2"] * 3


def test_no_stale_references(ex: QueueExecutor) -> None:
    """test_no_stale_references: the executor keeps no reference to what was submitted
    (the job has its own copy, in the store)."""
    thing = Thing()
    collected = threading.Event()
    ref = weakref.ref(thing, lambda _: collected.set())
    ex.submit(thing.method).result(timeout=WAIT)
    del thing
    gc.collect()
    assert collected.wait(WAIT) and ref() is None


def test_free_reference(ex: QueueExecutor) -> None:
    """test_free_reference: map's iterator does not keep the results it yielded."""
    for obj in ex.map(make_thing, range(10), timeout=WAIT):
        ref = weakref.ref(obj)
        del obj
        if ref() is not None:  # freed at once in CPython; else by the collector
            gc.collect()
        assert ref() is None


# ------------------------------------------------------------------ WaitTests (test_wait.py)


def test_20369(ex: QueueExecutor) -> None:
    """test_20369: a future given twice is done once."""
    fut = ex.submit(add, 1, 2)
    done, not_done = cf.wait([fut, fut], timeout=WAIT, return_when=cf.ALL_COMPLETED)
    assert done == {fut} and not_done == set()


def test_first_completed(ex: QueueExecutor, gate: str) -> None:
    """test_first_completed: the one that ended; a cancelled (not notified) future is
    not done."""
    cancelled = _cancelled(notified=False)
    quick = ex.submit(add, 21, 21)
    held = ex.submit(block, gate)
    done, not_done = cf.wait([cancelled, quick, held], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    assert done == {quick} and not_done == {cancelled, held}


def test_first_completed_some_already_completed(ex: QueueExecutor, gate: str) -> None:
    """test_first_completed_some_already_completed: returns at once with those."""
    notified, finished = _cancelled(notified=True), _finished()
    held = ex.submit(block, gate)
    done, not_done = cf.wait(
        [notified, finished, held], timeout=WAIT, return_when=cf.FIRST_COMPLETED
    )
    assert done == {notified, finished} and not_done == {held}


def test_first_exception(ex: QueueExecutor, gate: str, name: str) -> None:
    """test_first_exception: returns when one raised, with those done before it."""
    first = ex.submit(add, 2, 21)
    raising = ex.submit(raise_after, f"{name}-raise")
    held = ex.submit(block, gate)
    first.add_done_callback(lambda _: EVENTS[f"{name}-raise"].set())
    done, not_done = cf.wait([first, raising, held], timeout=WAIT, return_when=cf.FIRST_EXCEPTION)
    assert done == {first, raising} and not_done == {held}
    assert isinstance(raising.exception(), ValueError)


def test_first_exception_some_already_complete(ex: QueueExecutor, gate: str) -> None:
    """test_first_exception_some_already_complete: the already-done ones count; a
    cancelled future not yet notified does not."""
    finished, cancelled, notified = _finished(), _cancelled(False), _cancelled(True)
    raising = ex.submit(divmod, 21, 0)
    held = ex.submit(block, gate)
    done, not_done = cf.wait(
        [finished, cancelled, notified, raising, held],
        timeout=WAIT,
        return_when=cf.FIRST_EXCEPTION,
    )
    assert done == {finished, notified, raising} and not_done == {cancelled, held}


def test_first_exception_one_already_failed(ex: QueueExecutor, gate: str) -> None:
    """test_first_exception_one_already_failed: returns at once."""
    failed = _failed()
    held = ex.submit(block, gate)
    done, not_done = cf.wait([failed, held], timeout=WAIT, return_when=cf.FIRST_EXCEPTION)
    assert done == {failed} and not_done == {held}


def test_all_completed(ex: QueueExecutor) -> None:
    """test_all_completed: every one, whatever its end."""
    made = [_finished(), _cancelled(True), _failed()]
    mine = [ex.submit(divmod, 2, 0), ex.submit(add, 2, 21)]
    done, not_done = cf.wait([*made, *mine], timeout=WAIT, return_when=cf.ALL_COMPLETED)
    assert done == {*made, *mine} and not_done == set()


def test_timeout(ex: QueueExecutor, gate: str) -> None:
    """test_timeout: what was done when the timeout expired."""
    made = [_cancelled(True), _failed(), _finished()]
    held = ex.submit(block, gate)
    done, not_done = cf.wait([*made, held], timeout=0.05, return_when=cf.ALL_COMPLETED)
    assert done == set(made) and not_done == {held}


def test_pending_calls_race(ex: QueueExecutor, gate: str) -> None:
    """test_pending_calls_race: 100 futures let go at once all end."""
    futs = {ex.submit(block, gate) for _ in range(100)}
    EVENTS[gate].set()
    done, not_done = cf.wait(futs, timeout=WAIT, return_when=cf.ALL_COMPLETED)
    assert done == futs and not not_done


# ------------------------------------------------------- AsCompletedTests (test_as_completed.py)


def test_as_completed_no_timeout(ex: QueueExecutor) -> None:
    """test_no_timeout: every future comes out, those done already included."""
    made = [_cancelled(True), _failed(), _finished()]
    mine = [ex.submit(add, 2, 21), ex.submit(add, 7, 6)]
    assert set(cf.as_completed([*made, *mine], timeout=WAIT)) == {*made, *mine}


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_future_times_out(ex: QueueExecutor, gate: str, timeout: float) -> None:
    """test_future_times_out: the done ones come out, then TimeoutError; the held one
    did not come out."""
    made = {_cancelled(True), _failed(), _finished()}
    held = ex.submit(block, gate)
    seen = set()
    with pytest.raises(cf.TimeoutError):
        for fut in cf.as_completed(made | {held}, timeout):
            seen.add(fut)
    assert seen == made


def test_duplicate_futures(ex: QueueExecutor) -> None:
    """test_duplicate_futures: a future given three times comes out once."""
    fut = ex.submit(add, 1, 1)
    assert list(cf.as_completed(itertools.repeat(fut, 3), timeout=WAIT)) == [fut]


def test_correct_timeout_exception_msg(ex: QueueExecutor, gate: str) -> None:
    """test_correct_timeout_exception_msg: how many were unfinished, ours counted."""
    futs = [_cancelled(True), ex.submit(block, gate), _running(), _finished()]
    with pytest.raises(cf.TimeoutError, match=r"^2 \(of 4\) futures unfinished$"):
        list(cf.as_completed(futs, timeout=0))


# -------------------------------------------------------- ExecutorShutdownTest (test_shutdown.py)


def test_run_after_shutdown(ex: QueueExecutor) -> None:
    """test_run_after_shutdown: RuntimeError, as CPython words it; the queue stays open."""
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(pow, 2, 5)


def test_submit_to_a_closed_queue(tmp_path: Path) -> None:
    """test_submit_after_interpreter_shutdown, adapted: once the queue is closed (as it
    is at interpreter exit), a submit raises RuntimeError."""
    jq = JobQueue(tmp_path / "store", workers=1)
    executor = jq.executor()
    jq.close()
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit(pow, 2, 5)


def test_hang_issue12364(ex: QueueExecutor) -> None:
    """test_hang_issue12364: shutdown with many calls queued waits for all of them."""
    futs = [ex.submit(add, i, 1) for i in range(50)]
    ex.shutdown()
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(1, 51))


def test_cancel_futures(ex: QueueExecutor, gate: str) -> None:
    """test_cancel_futures: shutdown(cancel_futures=True) cancels what had not started;
    the others end normally."""
    futs = [ex.submit(block, gate) for _ in range(50)]
    assert EVENTS[f"{gate}:started"].wait(WAIT)  # held: the rest wait for a worker
    ex.shutdown(wait=False, cancel_futures=True)
    EVENTS[gate].set()
    ex.shutdown()  # and wait
    cancelled = [f for f in futs if f.cancelled()]
    others = [f for f in futs if not f.cancelled()]
    assert len(cancelled) > 20 and others
    assert all(f.done() and f.exception() is None for f in others)
    assert all(f.job.status == "cancelled" for f in cancelled)


def test_hang_gh94440(ex: QueueExecutor) -> None:
    """test_hang_gh94440: a future cancelled right after submit does not hang shutdown."""
    ex.submit(int).result(timeout=WAIT)
    ex.submit(int).cancel()
    ex.shutdown(wait=True)


def test_context_manager_shutdown(tmp_path: Path) -> None:
    """test_context_manager_shutdown: ``with`` shuts it down; its thread ends; the
    queue stays open."""
    with JobQueue(tmp_path / "store", workers=2) as jq:
        with jq.executor() as executor:
            assert list(executor.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        assert not [t for t in threading.enumerate() if t.name == "nbqup-futures"]
        with pytest.raises(RuntimeError):
            executor.submit(abs, 1)
        assert jq.submit(abs, -3).result(timeout=WAIT) == 3


def test_del_shutdown(tmp_path: Path) -> None:
    """test_del_shutdown: results are all there after the executor is dropped."""
    with JobQueue(tmp_path / "store", workers=2) as jq:
        executor = jq.executor()
        results = executor.map(abs, range(-5, 5), timeout=WAIT)
        del executor
        gc.collect()
        assert list(results) == [abs(v) for v in range(-5, 5)]


def test_shutdown_no_wait(ex: QueueExecutor) -> None:
    """test_shutdown_no_wait: shutdown(wait=False) returns; the results still come."""
    results = ex.map(abs, range(-5, 5), timeout=WAIT)
    ex.shutdown(wait=False)
    assert list(results) == [abs(v) for v in range(-5, 5)]


def test_cancel_futures_wait_false(ex: QueueExecutor, gate: str) -> None:
    """test_cancel_futures_wait_false: returns at once; the ones cancelled are cancelled."""
    futs = [ex.submit(block, gate) for _ in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    EVENTS[gate].set()
    done, _ = cf.wait(futs, timeout=WAIT)
    assert done == set(futs)
    assert all(f.cancelled() or f.result() is True for f in futs)


# --------------------------------------------------------------- FutureTests (test_future.py)


def _recorder() -> tuple[list[Any], threading.Event]:
    return [], threading.Event()


def test_done_callback_with_result(ex: QueueExecutor) -> None:
    """test_done_callback_with_result."""
    seen, called = _recorder()
    fut = ex.submit(add, 1, 4)
    fut.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
    assert called.wait(WAIT) and seen == [5]


def test_done_callback_with_exception(ex: QueueExecutor) -> None:
    """test_done_callback_with_exception."""
    seen, called = _recorder()
    fut = ex.submit(divmod, 1, 0)
    fut.add_done_callback(lambda f: (seen.append(type(f.exception())), called.set()))
    assert called.wait(WAIT) and seen == [ZeroDivisionError]


def test_done_callback_with_cancel(ex: QueueExecutor, gate: str) -> None:
    """test_done_callback_with_cancel: called by cancel() itself."""
    seen: list[bool] = []
    for _ in range(2):
        ex.submit(block, gate)
    fut = ex.submit(add, 1, 1)
    fut.add_done_callback(lambda f: seen.append(f.cancelled()))
    assert fut.cancel()
    assert seen == [True]


def test_done_callback_raises(ex: QueueExecutor, caplog: pytest.LogCaptureFixture) -> None:
    """test_done_callback_raises: logged, and the other callbacks still run."""
    seen, called = _recorder()

    def bad(_: cf.Future[Any]) -> None:
        raise ValueError("a callback that fails")

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        fut = ex.submit(add, 2, 2)
        fut.add_done_callback(bad)
        fut.add_done_callback(lambda f: (seen.append(f.result()), called.set()))
        assert called.wait(WAIT)
    assert seen == [4]
    assert "a callback that fails" in caplog.text


def test_done_callback_already_done(ex: QueueExecutor) -> None:
    """test_done_callback_already_successful/_failed/_cancelled: run at once."""
    seen: list[Any] = []
    fut = ex.submit(add, 3, 3)
    fut.result(timeout=WAIT)
    fut.add_done_callback(lambda f: seen.append(f.result()))
    failed = ex.submit(divmod, 1, 0)
    cf.wait([failed], timeout=WAIT)
    failed.add_done_callback(lambda f: seen.append(type(f.exception())))
    assert seen == [6, ZeroDivisionError]


def test_states_result_and_exception(ex: QueueExecutor, gate: str) -> None:
    """test_running, test_done, test_cancel, test_result_with_timeout,
    test_exception_with_timeout, test_result_with_success: a future's states."""
    held = ex.submit(block, gate)
    assert EVENTS[f"{gate}:started"].wait(WAIT)
    assert held.running() and not held.done() and not held.cancel()
    with pytest.raises(cf.TimeoutError):
        held.result(timeout=0)
    with pytest.raises(cf.TimeoutError):
        held.exception(timeout=0)
    EVENTS[gate].set()
    assert held.result(timeout=WAIT) is True and held.exception() is None
    assert held.done() and not held.running() and not held.cancel()
    assert "finished" in repr(held)
