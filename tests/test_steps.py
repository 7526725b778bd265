"""Durable steps (nbqup.steps): stored when they return, replayed by a resumed run.

Steps count their calls by side effects: each appends a line to a log file (works across
the worker processes of the process and Dask executors), so a test can tell which steps
really ran in which run.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import jobfns
import pytest
from children import kill, log_lines, start, wait_for_log
from jobfns import EVENTS, block

import nbqup
from nbqup import JobQueue, SerializationError, payload
from nbqup.keys import MAX_KEY_BYTES
from nbqup.steps import step_key

# Worker processes cannot import this test module: its functions go by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT = 60
_tokens = itertools.count()


def note(log: str, what: str, value: Any = None) -> Any:
    """A step's side effect: one line in ``log``; returns ``value``."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (what + "\n").encode())
    os.close(fd)
    return value


def lines(log: str) -> list[str]:
    return Path(log).read_text().splitlines() if Path(log).exists() else []


def fail_once(marker: str) -> None:
    """Raise the first time (the job is then retried), not after."""
    if not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError("the first run fails after its steps")


def three_steps(log: str, marker: str) -> int:
    a = nbqup.step(note, log, "one", 1)
    b = nbqup.step(note, log, "two", 2)
    fail_once(marker)
    c = nbqup.step(note, log, "three", 3)
    return a + b + c


@pytest.fixture
def log(tmp_path: Path) -> str:
    return str(tmp_path / "steps.log")


@pytest.fixture
def marker(tmp_path: Path) -> str:
    return str(tmp_path / "marker")


def test_outside_a_job_a_step_is_a_plain_call(log: str) -> None:
    @nbqup.step
    def decorated(x: int) -> int:
        return note(log, "decorated", x + 1)

    named = nbqup.step(name="renamed")(decorated)
    assert decorated(1) == 2 and decorated.__name__ == "decorated"
    assert nbqup.step(note, log, "called", 5) == 5
    assert named(2) == 3
    assert nbqup.step(note, log, "named", 7, name="other") == 7
    assert lines(log) == ["decorated", "called", "decorated", "named"]


def test_bad_uses_say_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="needs a function"):
        nbqup.step()
    with pytest.raises(TypeError, match="needs a function, got int"):
        nbqup.step(3, 4)


def test_a_resumed_run_replays_completed_steps_without_calling_them(
    jq: JobQueue, log: str, marker: str
) -> None:
    job = jq.options(retries=1).submit(three_steps, log, marker)
    assert job.result(timeout=WAIT) == 6
    assert job.attempts == 2
    assert lines(log) == ["one", "two", "three"]  # the retry did not call one and two


def test_changed_arguments_run_the_step_again(jq: JobQueue, log: str, marker: str) -> None:
    def varying(log: str, marker: str) -> Any:
        x = nbqup.step(note, log, f"ran-{Path(marker).exists()}", Path(marker).exists())
        fail_once(marker)
        return x

    job = jq.options(retries=1).submit(varying, log, marker)
    assert job.result(timeout=WAIT) is True
    assert lines(log) == ["ran-False", "ran-True"]
    assert len(job.steps) == 1  # the second run's record replaced the first


def test_arguments_a_partial_binds_are_compared_too(jq: JobQueue, log: str, marker: str) -> None:
    def bound(log: str, marker: str) -> Any:
        seen = Path(marker).exists()
        x = nbqup.step(functools.partial(note, log, f"ran-{seen}", seen))()
        fail_once(marker)
        return x

    job = jq.options(retries=1).submit(bound, log, marker)
    assert job.result(timeout=WAIT) is True  # not the first run's False, replayed
    assert lines(log) == ["ran-False", "ran-True"]


def test_two_calls_of_a_step_are_told_apart_by_their_order(
    jq: JobQueue, log: str, marker: str
) -> None:
    @nbqup.step
    def token(log: str) -> int:
        return note(log, "token", next(_tokens))  # equal arguments, different results

    def twice(log: str, marker: str) -> tuple[int, int]:
        first, second = token(log), token(log)
        fail_once(marker)
        return first, second

    job = jq.options(retries=1).submit(twice, log, marker)
    first, second = job.result(timeout=WAIT)
    assert first != second  # each replayed from its own record, in order
    assert lines(log) == ["token", "token"]
    assert [s["name"] for s in job.steps] == [token.__qualname__] * 2


def test_a_failing_step_stores_nothing_and_raises(jq: JobQueue, log: str) -> None:
    def broken(log: str) -> None:
        note(log, "broken")
        raise ValueError("step went wrong")

    def catches(log: str) -> str:
        try:
            nbqup.step(broken, log)
        except ValueError as exc:
            return f"caught {exc}"
        return "not raised"

    job = jq.submit(catches, log)
    assert job.result(timeout=WAIT) == "caught step went wrong"
    assert job.steps == []
    failing = jq.submit(nbqup.step(name="outer")(broken), log)
    assert failing.wait(WAIT) and failing.status == "failed"
    assert "step went wrong" in str(failing.exception())


def test_job_steps_lists_completed_steps_in_call_order(jq: JobQueue, log: str) -> None:
    def steps(log: str) -> None:
        nbqup.step(note, log, "b")
        nbqup.step(note, log, "a", name="z-last-by-name")
        nbqup.step(note, log, "c")
        nbqup.step(functools.partial(note, log), "d")

    job = jq.submit(steps, log)
    assert job.wait(WAIT)
    rows = job.steps
    assert [r["name"] for r in rows] == ["note", "z-last-by-name", "note", "note"]
    assert {r["status"] for r in rows} == {"succeeded"}
    assert all(set(r) == {"name", "status", "started", "finished"} for r in rows)
    assert all(job.started <= r["started"] <= r["finished"] <= job.finished for r in rows)
    assert jq.submit(note, log, "no steps").steps == []


def always_fails(log: str) -> None:
    note(log, f"restored {nbqup.restore()}")
    nbqup.step(note, log, "step")
    nbqup.checkpoint({"k": 1})
    raise RuntimeError("fails every time")


def test_retry_keeps_steps_and_checkpoint_unless_fresh(jq: JobQueue, log: str) -> None:
    job = jq.submit(always_fails, log)
    assert job.wait(WAIT) and job.status == "failed"
    assert len(job.steps) == 1 and job.checkpoint == {"k": 1}
    assert job.retry().wait(WAIT)
    assert lines(log) == ["restored None", "step", "restored {'k': 1}"]
    assert job.retry(fresh=True).wait(WAIT) and job.status == "failed"
    assert lines(log)[3:] == ["restored None", "step"]  # started over
    assert len(job.steps) == 1


def test_retry_fresh_drops_steps_and_checkpoint_in_the_requeue(
    jq: JobQueue, log: str, name: str
) -> None:
    job = jq.submit(always_fails, log)
    assert job.wait(WAIT)
    blocks = [jq.submit(block, f"{name}:{i}") for i in range(2)]  # both workers busy
    try:
        for i in range(2):
            assert EVENTS[f"{name}:{i}:started"].wait(WAIT)
        job.retry(fresh=True)  # queued behind them: nothing of it ran yet
        assert job.status == "queued"
        assert job.steps == [] and job.checkpoint is None
    finally:
        for i in range(2):
            EVENTS[f"{name}:{i}"].set()
    assert all(b.wait(WAIT) for b in blocks) and job.wait(WAIT)


def test_nbqup_retry_fresh_on_the_command_line(tmp_path: Path, log: str) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job_id = jq.submit(always_fails, log).id
        assert jq.get(job_id).wait(WAIT)
    command = [sys.executable, "-m", "nbqup", "retry", "--fresh", str(tmp_path / "s"), job_id]
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, check=True)
    assert done.stdout.startswith(f"retried job {job_id} (always_fails): now queued;")
    with JobQueue(tmp_path / "s", workers=1) as jq:  # the next owner runs it
        assert jq.get(job_id).wait(WAIT) and jq.get(job_id).attempts == 2
    assert lines(log) == ["restored None", "step"] * 2


def test_steps_show_in_the_progress_message(jq: JobQueue) -> None:
    def peek() -> str | None:
        job = nbqup.current_job()
        assert job is not None
        return job.message

    def messages() -> tuple[Any, ...]:
        first = nbqup.step(peek)()
        second = nbqup.step(peek)()
        nbqup.progress(0.5, message="mine")
        return first, second, nbqup.step(peek)()

    job = jq.submit(messages)
    assert job.result(timeout=WAIT) == ("step peek (1)", "step peek (2)", "mine")


def test_an_unpicklable_step_result_names_the_step(jq: JobQueue) -> None:
    def make_lock() -> Any:
        return threading.Lock()

    def job_fn() -> str:
        try:
            nbqup.step(make_lock)()
        except SerializationError as exc:
            return str(exc)
        return "stored"

    message = jq.submit(job_fn).result(timeout=WAIT)
    assert "step 'test_an_unpicklable_step_result_names_the_step.<locals>.make_lock'" in message


def test_unpicklable_step_arguments_name_the_step(jq: JobQueue) -> None:
    def job_fn() -> str:
        try:
            nbqup.step(id, threading.Lock(), name="locked")
        except SerializationError as exc:
            return str(exc)
        return "ran"

    assert "of step 'locked'" in jq.submit(job_fn).result(timeout=WAIT)


def test_long_step_names_fit_a_store_key() -> None:
    job_id = "0" * 19
    keys = {step_key(job_id, "x" * 600, n) for n in range(3)}
    assert len(keys) == 3
    assert all(k.startswith(job_id + "/") and len(k.encode()) <= MAX_KEY_BYTES for k in keys)


@pytest.fixture(params=["process", "dask"])
def elsewhere(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An executor that runs jobs outside the queue's thread: worker processes, then a
    tiny real Dask cluster."""
    if request.param == "process":
        yield "process"
        return
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_steps_replay_under_the_process_and_dask_executors(
    tmp_path: Path, log: str, marker: str, elsewhere: Any
) -> None:
    with JobQueue(tmp_path / "s", workers=1, executor=elsewhere) as jq:
        job = jq.options(retries=1).submit(three_steps, log, marker)
        assert job.result(timeout=WAIT) == 6
        assert job.attempts == 2 and len(job.steps) == 3
    assert lines(log) == ["one", "two", "three"]  # the second run, elsewhere, replayed two


def test_sigkill_after_step_two_runs_only_step_three_on_resume(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = start(
        tmp_path,
        f"""
        GATE = {str(gate)!r}

        @nbqup.step
        def counted(what):
            log(what)
            return what

        def job():
            done = [counted("one"), counted("two")]
            log("after-two")
            while not os.path.exists(GATE):   # the first run is killed here
                time.sleep(0.01)
            return done + [counted("three")]

        jq = nbqup.JobQueue(STORE, workers=1)
        print(jq.submit(job).id, flush=True)
        time.sleep(120)
        """,
    )
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    wait_for_log(tmp_path, lambda lines: "after-two" in lines)
    kill(proc)
    gate.write_text("go")
    with JobQueue(tmp_path / "store", workers=1) as jq:
        job = jq.get(job_id)
        assert job.result(timeout=WAIT) == ["one", "two", "three"]
        assert job.attempts == 2
        assert [s["name"] for s in job.steps] == ["counted"] * 3
    assert log_lines(tmp_path) == ["one", "two", "after-two", "after-two", "three"]


def test_a_salvaged_store_keeps_the_steps(tmp_path: Path, log: str) -> None:
    from nbqup.salvage import salvage

    with JobQueue(tmp_path / "s", workers=1) as jq:
        job_id = jq.submit(always_fails, log).id
        assert jq.get(job_id).wait(WAIT)
    report = salvage(tmp_path / "s", tmp_path / "copy")
    assert not report.lost and report.lost_ids == []
    with JobQueue(tmp_path / "copy", workers=1) as jq:
        assert [s["name"] for s in jq.get(job_id).steps] == ["note"]
        assert jq.get(job_id).retry().wait(WAIT)
    assert lines(log) == ["restored None", "step", "restored {'k': 1}"]  # replayed


def test_a_large_step_result_is_stored_compressed_like_results(jq: JobQueue, marker: str) -> None:
    def big(marker: str) -> int:
        data = nbqup.step(bytes, 5_000_000)
        fail_once(marker)
        return len(data)

    job = jq.options(retries=1).submit(big, marker)
    assert job.result(timeout=WAIT) == 5_000_000
    (key,) = [k for k, _ in jq.store.tables["stepres"].snapshot() if k.startswith(job.id)]
    assert len(jq.store.tables["stepres"][key]) < 100_000  # framed and compressed


def test_a_stored_result_that_no_longer_loads_runs_the_step_again(
    jq: JobQueue, log: str, marker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "steps_gone_mod.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(log: str) -> Any:
        note(log, "made")
        mod = sys.modules.get("steps_gone_mod")
        return "plain" if mod is None else mod.Thing()

    def job_fn(log: str, marker: str) -> Any:
        value = nbqup.step(make, log)
        if not Path(marker).exists():  # the module goes away before the retry
            Path(marker).write_text("x")
            sys.modules.pop("steps_gone_mod")
            sys.path.remove(str(tmp_path))
            raise RuntimeError("first run")
        return value

    __import__("steps_gone_mod")
    job = jq.options(retries=1).submit(job_fn, log, marker)
    assert job.result(timeout=WAIT) == "plain"
    assert lines(log) == ["made", "made"]


def test_a_damaged_step_record_runs_the_steps_again(jq: JobQueue, log: str, marker: str) -> None:
    def damaged(log: str, marker: str) -> int:
        value = nbqup.step(note, log, "ran", 1)
        if not Path(marker).exists():  # damage the record before the retry reads it
            Path(marker).write_text("x")
            job = nbqup.current_job()
            assert job is not None
            backend = jobfns.CALLS[marker][0]  # the test's store (a module goes by reference)
            backend.write([("steps", step_key(job.id, "note", 0), b"garbage")])
            raise RuntimeError("first run")
        return value

    jobfns.CALLS[marker].append(jq.store.backend)
    job = jq.options(retries=1).submit(damaged, log, marker)
    assert job.result(timeout=WAIT) == 1
    assert lines(log) == ["ran", "ran"]
    assert len(job.steps) == 1  # the second run stored it anew


def _decoded(jq: JobQueue) -> list[int]:
    """A list that gets the size of every value the store decodes from now on."""
    sizes: list[int] = []
    for table in jq.store.blobs.values():

        def load(raw: bytes, decode: Any = table.load) -> bytes:
            body: bytes = decode(raw)
            sizes.append(len(body))
            return body

        table.load = load
    return sizes


def many_big_steps(marker: str, n: int) -> int:
    if Path(marker).exists():  # the retry: the first step only
        n = 1
    sizes = [len(nbqup.step(bytes, 100_000, name=f"big{i}")) for i in range(n)]
    fail_once(marker)
    return sum(sizes)


def test_step_results_are_read_only_when_replayed(tmp_path: Path, marker: str) -> None:
    # 200 stored steps of 100 KB: their names and times, a resumed run and a fresh retry
    # read none of the 20 MB but the one result replayed.
    with JobQueue(tmp_path / "s", workers=1) as jq:
        first = jq.submit(many_big_steps, marker, 200)
        assert first.wait(WAIT) and first.status == "failed"
        Path(marker).unlink()
        second = jq.submit(many_big_steps, marker, 200)
        assert second.wait(WAIT) and second.status == "failed"
        decoded = _decoded(jq)
        assert [s["name"] for s in first.steps] == [f"big{i}" for i in range(200)]
        assert sum(decoded) < 100_000  # the records, not the results
        decoded.clear()
        assert first.retry().result(timeout=WAIT) == 100_000  # its first step only
        assert 100_000 <= sum(decoded) < 200_000  # that step's result replayed
        decoded.clear()
        second.retry(fresh=True)
        assert sum(decoded) < 100_000
        assert second.result(timeout=WAIT) == 100_000  # big0 run (not replayed), stored
        stored = [k for k, _ in jq.store.tables["stepres"].snapshot() if k.startswith(second.id)]
        assert stored == [step_key(second.id, "big0", 0)]  # the 199 others were dropped


def fails_then_steps(log: str, marker: str) -> int:
    fail_once(marker)
    return nbqup.step(note, log, "ran", 7)


def test_a_step_stored_by_an_earlier_nbqup_is_replayed(jq: JobQueue, log: str, marker: str) -> None:
    # Format 1 of a step's record held its result; such records still replay and show.
    job = jq.submit(fails_then_steps, log, marker)
    assert job.wait(WAIT) and job.status == "failed" and job.steps == []
    arguments = hashlib.blake2b(payload.dumps_args((log, "ran", 7), {}) or b"", digest_size=16)
    record = (1, 0, "note", 0, arguments.digest(), 1.0, 2.0, payload.dumps_result(7))
    jq.store.put_blob("steps", step_key(job.id, "note", 0), pickle.dumps(record))
    assert [s["name"] for s in job.steps] == ["note"]
    assert job.retry().result(timeout=WAIT) == 7
    assert lines(log) == []  # replayed, not run
