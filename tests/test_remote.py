"""nbqup.remote: the one message protocol between a job run elsewhere and its queue."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import nbqup
from nbqup import JobQueue, remote
from nbqup.context import JobContext

# Worker processes cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT = 60


def returns_a_lock() -> Any:
    return threading.Lock()


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    """Two real connected ends: the job's and the queue's."""
    job_end, queue_end = Pipe()
    yield job_end, queue_end
    job_end.close()
    queue_end.close()


def waiting(jq: JobQueue) -> nbqup.Job:
    """A job live in ``jq`` that does not run during the test (due in an hour)."""
    return jq.after("1h").submit(sum, [1, 2])


def context(runtime: Any) -> JobContext:
    return JobContext(remote.RemoteJob("job-7", "train", 1), runtime)


@pytest.mark.parametrize("executor", ["thread", "process", "dask"])
def test_an_unpicklable_result_fails_the_job_alike_under_every_executor(
    tmp_path: Path, executor: str
) -> None:
    # The result is pickled where the job ran: under every executor the job fails with
    # the same one-line reason (a Dask task used to report a traceback instead).
    spec: Any = executor
    if executor == "dask":
        distributed = pytest.importorskip("distributed")
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        )
        spec = distributed.Client(cluster)
    try:
        with JobQueue(tmp_path / "s", workers=1, executor=spec) as jq:
            job = jq.submit(returns_a_lock)
            with pytest.raises(nbqup.JobFailed, match=r"cannot serialize the result \(lock\)"):
                job.result(timeout=WAIT)
            assert job.record.error is not None
            assert job.record.error.startswith("cannot serialize the result (lock): TypeError")
            assert job.record.message == job.record.error.strip()
    finally:
        if executor == "dask":
            spec.close()
            cluster.close()


def test_a_message_of_unknown_kind_is_a_protocol_error_naming_the_job(
    pipe: tuple[Connection, Connection],
) -> None:
    receiver = remote.Receiver(context(remote.Sender(pipe[0])), reply=pipe[1].send)
    with pytest.raises(remote.ProtocolError, match=r"job job-7: .*unknown kind 'shout'") as err:
        receiver.apply(("shout", "hello"))
    assert isinstance(err.value, nbqup.NbqupError) and err.value.job_id == "job-7"


def test_a_checkpoint_answered_with_anything_but_ack_is_a_protocol_error(
    pipe: tuple[Connection, Connection],
) -> None:
    job_end, queue_end = pipe
    sender = remote.Sender(job_end)
    queue_end.send((remote.STATE, False, None))  # the answer to another request
    with pytest.raises(remote.ProtocolError, match=r"checkpoint answered with .*'state'"):
        sender.save_checkpoint("job-7", {"epoch": 3})
    assert queue_end.recv()[0] == remote.CHECKPOINT  # it was sent, then refused


def test_checkpoints_and_steps_round_trip_through_a_receiver(
    pipe: tuple[Connection, Connection], tmp_path: Path
) -> None:
    # The job's end and the queue's end over a real pipe, the queue's end applying the
    # messages to a live job of a real queue.
    job_end, queue_end = pipe
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = waiting(jq)
        ctx = JobContext(job, jq._runtime)  # the runtime a running job reports to
        receiver = remote.Receiver(ctx, reply=queue_end.send)
        sender = remote.Sender(job_end)
        answered = threading.Event()

        def serve() -> None:
            while not answered.is_set():
                if queue_end.poll(0.05):
                    receiver.apply(queue_end.recv())

        server = threading.Thread(target=serve)
        server.start()
        try:
            assert sender.load_checkpoint(job.id) == (False, None)
            sender.save_checkpoint(job.id, {"epoch": 3})
            assert sender.load_checkpoint(job.id) == (True, {"epoch": 3})
            assert sender.load_steps(job.id) == {}
            key = f"{job.id}/0:fetch"
            sender.save_step(job.id, key, b"record", b"result")  # durable when it returns
            assert sender.load_steps(job.id) == {key: b"record"}
            assert sender.load_step_result(job.id, key) == b"result"
            assert sender.load_step_result(job.id, key + "-other") is None
        finally:
            answered.set()
            server.join(WAIT)
        assert receiver.received == 8
        assert jq.store.get_blob("steps", key) == b"record"
        assert jq.store.get_blob("stepres", key) == b"result"


def test_progress_is_thinned_but_the_last_report_and_completion_are_kept(
    pipe: tuple[Connection, Connection],
) -> None:
    job_end, queue_end = pipe
    sender = remote.Sender(job_end, progress_every=3600.0)
    sender.report_progress("job-7", 0.1, "first")  # sent: nothing was sent before
    sender.report_progress("job-7", 0.5, "thinned")  # within the hour: held back
    sender.report_progress("job-7", 1.0, "complete")  # completion always goes
    sender.report_progress("job-7", 0.2, "again")  # held back, but remembered
    sent = []
    while queue_end.poll(0):
        sent.append(queue_end.recv())
    assert sent == [(remote.PROGRESS, 0.1, "first"), (remote.PROGRESS, 1.0, "complete")]
    assert sender.last_progress == (0.2, "again")


def test_a_stop_once_asked_stops_every_later_report(
    pipe: tuple[Connection, Connection],
) -> None:
    # A Dask task looks at its stop event now and then: once it was set, the job's next
    # progress or checkpoint raises, and so does every one after it.
    answers = iter([False, True])
    sender = remote.Sender(pipe[0], should_stop=lambda: next(answers, False))
    sender.report_progress("job-7", 0.5, None)
    for report in (
        lambda: sender.report_progress("job-7", 0.6, None),
        lambda: sender.report_progress("job-7", 0.7, None),
        lambda: sender.save_checkpoint("job-7", {"epoch": 1}),
    ):
        with pytest.raises(nbqup.JobCancelled, match="job-7"):
            report()
    assert pipe[1].recv() == (remote.PROGRESS, 0.5, None)
    assert not pipe[1].poll(0)  # nothing was sent once it was asked to stop


def test_what_a_job_held_back_is_applied_in_order_ending_with_done(
    pipe: tuple[Connection, Connection], tmp_path: Path
) -> None:
    # A Dask task holds its output and last report back and returns them with its end.
    sender = remote.Sender(pipe[0], progress_every=3600.0)
    sender.report_progress("job-7", 0.25, "a quarter")
    logs = nbqup.capture.LogBuffer()
    logs.write("printed\n")
    outputs = nbqup.capture.RichOutputs()
    outputs.add({"text/plain": "shown"})
    done = remote.Done(True, b"\x80\x05K\x03.", "3")
    held = remote.held(sender, logs, outputs, done)
    assert [m[0] for m in held] == [remote.PROGRESS, remote.LOG, remote.RICH, remote.DONE]
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = waiting(jq)
        ctx = JobContext(job, jq._runtime)  # the runtime a running job reports to
        receiver = remote.Receiver(ctx, reply=pipe[1].send)
        assert receiver.apply_all(held) == done
        assert (job.progress, job.record.message) == (0.25, "a quarter")
    assert ctx.logs.text() == "printed\n"
    assert ctx.outputs.bundles() == [{"data": {"text/plain": "shown"}, "metadata": {}}]
