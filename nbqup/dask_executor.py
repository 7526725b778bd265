"""Run jobs on a Dask cluster: ``JobQueue(path, executor=Client(...) or "tcp://...")``.

nbqup keeps the durable ledger, the scheduling and the retries; Dask only runs the calls.
Each run is one Dask task fed the pickled function and arguments (the store never leaves
this process).  A task that runs past the first check (0.1 s), or reports progress, talks
to this process through two ``distributed.Queue`` objects named after the run: progress and
checkpoints come here (a checkpoint is acknowledged once it is durable here), and an
``Event`` tells the task to stop (cancel, timeout) at its next ``progress`` or
``checkpoint`` call -- Dask cannot kill a running task.  A short task makes none of them
(each costs scheduler round trips): its outcome comes back with its result.  Printed output and
``display(...)`` come back with the outcome.

If the cluster goes away, runs in flight count as crashed (run again without using a
retry) and the worker slots wait for the client to reconnect; jobs that were running when
this process died are resumed by the next open, as always.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import traceback
from typing import Any

from . import capture, payload
from .capture import LogBuffer, RichOutputs
from .context import JobContext, _current, current_log, current_outputs
from .errors import last_line
from .executors import Call, Executor, Outcome, load_fn

__all__ = ["DaskExecutor"]

#: Seconds between progress messages sent from a task (the newest one wins).
PROGRESS_EVERY = 0.25


class ClusterLost(RuntimeError):
    """The Dask cluster went away while a job ran on it."""


class DaskExecutor(Executor):
    """Run each job as a task on a ``dask.distributed`` cluster."""

    name = "dask"
    check_every = 0.1

    def __init__(self, spec: Any) -> None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the Dask executor needs distributed: pip install 'nbqup[dask]'"
            ) from exc
        self._own = not isinstance(spec, Client)
        self.client = Client(spec) if self._own else spec

    def run(self, call: Call, ctx: JobContext) -> Outcome:
        try:
            self._wait_for_cluster(ctx)
            fn_hash, fn_blob = call.fn_hash, call.fn_blob
            if fn_blob is None:
                fn_hash, fn_blob = payload.dumps_fn(call.fn)
            tag = f"nbqup-{call.job_id}-{ctx.job.attempts}-{secrets.token_hex(3)}"
            job = ctx.job
            future = self.client.submit(
                _run_task, call.job_id, job.name, job.attempts, fn_hash, fn_blob,
                call.args_blob, tag, key=tag, pure=False,
            )  # fmt: skip
        except Exception as exc:
            return Outcome(ok=False, error=exc, traceback=traceback.format_exc())
        try:
            return self._follow(future, tag, ctx)
        except Exception as exc:  # the cluster or the connection failed, not the job
            error = ClusterLost(f"the Dask cluster failed while running job {call.job_id}: {exc!r}")
            return Outcome(ok=False, error=error, traceback=f"{error}\n", crashed=True)

    def _follow(self, future: Any, tag: str, ctx: JobContext) -> Outcome:
        """Wait for the task; talk to it only if it runs on past the first wait.

        The channel (two scheduler queues) and the stop event cost scheduler round trips
        each, so a short task never makes them: its outcome comes back with the result.
        """
        from distributed import Event, Queue, wait

        runtime, job_id = ctx.runtime, ctx.job.id
        stopping: Outcome | None = None
        channel: tuple[Any, Any] | None = None
        while True:
            if stopping is None:
                try:
                    ctx.check()
                except BaseException as exc:  # cancelled or timed out: ask the task to stop
                    Event(tag + "-stop", client=self.client).set()
                    stopping = Outcome(
                        ok=False, error=exc, traceback=f"{type(exc).__name__}: {exc}\n"
                    )
            if channel is not None:
                self._drain(channel, runtime, job_id)
            if future.done():
                break
            # wait client-side: a timed-out Queue.get logs errors on the scheduler
            with contextlib.suppress(TimeoutError):
                wait([future], timeout=self.check_every)
            if channel is None and not future.done():  # it runs on: listen to it
                channel = (
                    Queue(tag + "-up", client=self.client),
                    Queue(tag + "-down", client=self.client),
                )
        if future.status == "cancelled":
            raise ClusterLost(f"the task of job {job_id} was cancelled by the cluster")
        ok, blob, text, tb, logs, bundles, last_progress = future.result()
        if channel is not None:
            self._drain(channel, runtime, job_id)
            for queue in channel:  # the scheduler forgets a queue once all sides close it
                with contextlib.suppress(Exception):
                    queue.close()
        if last_progress is not None:  # the last report, whether or not it came through
            runtime.report_progress(job_id, *last_progress)
        if logs:
            ctx.logs.write(logs)
        for bundle in bundles:
            ctx.outputs.add(bundle["data"], bundle["metadata"])
        if stopping is not None:
            return stopping
        if ok:
            return Outcome(ok=True, result_blob=blob, result_repr=text)
        return Outcome(ok=False, error=RuntimeError(last_line(tb, "job failed")), traceback=tb)

    def _drain(self, channel: tuple[Any, Any], runtime: Any, job_id: str) -> None:
        inbox, outbox = channel
        for _ in range(inbox.qsize()):
            self._handle(inbox.get(), outbox, runtime, job_id)

    @staticmethod
    def _handle(message: Any, outbox: Any, runtime: Any, job_id: str) -> None:
        kind = message[0]
        if kind == "progress":
            runtime.report_progress(job_id, message[1], message[2])
        elif kind == "checkpoint":
            runtime.save_checkpoint_blob(job_id, message[1])
            outbox.put(("ack",))
        elif kind == "restore":
            found, state = runtime.load_checkpoint(job_id)
            outbox.put(("state", found, payload.dumps_result(state) if found else None))

    def _wait_for_cluster(self, ctx: JobContext) -> None:
        while self.client.status != "running":
            ctx.check()
            time.sleep(0.5)

    def close(self, wait: bool = True) -> None:
        if self._own:
            self.client.close()


class _TaskRuntime:
    """The runtime a job context talks to inside a Dask task.

    Its channel to the queue's process (two scheduler queues) and the stop event are made
    on first use: a task that reports nothing costs no scheduler round trip for them.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._channel: tuple[Any, Any] | None = None
        self._stop: Any = None
        self._last_progress = 0.0
        self._last_stop_check = time.monotonic()
        self.ctx: JobContext | None = None
        #: ``(fraction, message)`` of the last progress report, sent or not
        self.last_progress: tuple[float | None, str | None] | None = None

    def _open(self) -> tuple[Any, Any]:
        if self._channel is None:
            from distributed import Queue

            self._channel = (Queue(self.tag + "-up"), Queue(self.tag + "-down"))
        return self._channel

    def close(self) -> None:
        for queue in self._channel or ():
            with contextlib.suppress(Exception):
                queue.close()

    @property
    def up(self) -> Any:
        return self._open()[0]

    @property
    def down(self) -> Any:
        return self._open()[1]

    def now(self) -> float:
        return time.time()

    def _check_stop(self) -> None:
        now = time.monotonic()
        if self.ctx is not None and now - self._last_stop_check > PROGRESS_EVERY:
            self._last_stop_check = now
            if self._stop is None:
                from distributed import Event

                self._stop = Event(self.tag + "-stop")
            if self._stop.is_set():
                self.ctx.stop_reason = "cancelled"

    def report_progress(self, job_id: str, fraction: float | None, message: str | None) -> None:
        self._check_stop()
        self.last_progress = (fraction, message)
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY or fraction == 1.0:
            self._last_progress = now
            self.up.put(("progress", fraction, message))

    def save_checkpoint(self, job_id: str, state: Any) -> None:
        self.save_checkpoint_blob(job_id, payload.dumps_result(state))

    def save_checkpoint_blob(self, job_id: str, blob: bytes) -> None:
        self._check_stop()
        self.up.put(("checkpoint", blob))
        self.down.get()  # durable in the ledger when this arrives

    def load_checkpoint(self, job_id: str) -> tuple[bool, Any]:
        self.up.put(("restore",))
        _, found, blob = self.down.get()
        return (True, payload.loads(blob)) if found else (False, None)


_captured = False


class _TaskJob:
    """What ``nbqup.current_job()`` returns inside a Dask task."""

    def __init__(self, job_id: str, name: str, attempts: int) -> None:
        self.id, self.name, self.attempts = job_id, name, attempts


def _run_task(job_id: str, name: str, attempts: int, fn_hash: str, fn_blob: bytes,
              args_blob: bytes | None, tag: str) -> tuple[Any, ...]:  # fmt: skip
    """The Dask task: run the call; return (ok, result, repr, traceback, logs, outputs,
    its last progress report or None)."""
    global _captured
    if not _captured and not capture.routing():
        # A worker process of its own: route its jobs' print/display for good.  (In the
        # queue's own process the queue has installed the routing already.)
        capture.install(current_log, current_outputs)
        _captured = True
    runtime = _TaskRuntime(tag)
    ctx = JobContext(_TaskJob(job_id, name, attempts), runtime, logs=LogBuffer())  # type: ignore[arg-type]
    ctx.outputs = RichOutputs()
    runtime.ctx = ctx
    token = _current.set(ctx)
    try:
        fn = load_fn(fn_hash, fn_blob)
        args, kwargs = ((), {}) if args_blob is None else payload.loads(args_blob)
        value = fn(*args, **kwargs)
        out: tuple[Any, ...] = (True, payload.dumps_result(value), payload.short_repr(value), None)
    except BaseException:
        out = (False, None, None, traceback.format_exc())
    finally:
        _current.reset(token)
        runtime.close()
    return (*out, ctx.logs.text(), ctx.outputs.bundles(), runtime.last_progress)
