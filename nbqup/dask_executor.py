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

The queue's own jobs are submitted many at a time by :mod:`nbqup.dask_dispatch`, which
uses :meth:`DaskExecutor.submit_many` and :meth:`DaskExecutor.follow`; :meth:`~DaskExecutor.run`
runs one call and waits for it.  If the cluster goes away, a run followed here counts as
crashed (run again without using a retry); jobs that were running when this process died
are resumed by the next open, as always.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import secrets
import threading
import time
from typing import Any

from . import capture, remote
from .calls import Call, Executor, Outcome, must_stop
from .capture import LogBuffer, RichOutputs
from .context import JobContext, current_log, current_outputs

__all__ = ["DaskExecutor"]

#: Seconds between progress messages sent from a task (the newest one wins), and between
#: its looks at its stop event.
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
        #: hash -> [Dask future of the big argument's pickle, tasks not yet done needing it]
        self._shipped: dict[str, list[Any]] = {}
        self._shipped_lock = threading.Lock()

    def run(self, call: Call, ctx: JobContext) -> Outcome:
        """Run one call and wait for it (a nested wait; the queue's own jobs go through
        :mod:`nbqup.dask_dispatch`, many at a time)."""
        try:
            self._wait_for_cluster(ctx)
            task = call.task(ctx.job)
            tag = task_tag(task)
            (future,) = self.submit_many([task], [tag], [ctx.gpu_request])
        except Exception as exc:
            return Outcome.raised(exc)
        try:
            return self.follow(future, tag, ctx)
        except Exception as exc:  # the cluster or the connection failed, not the job
            return lost(call.job_id, exc)

    def submit_many(
        self, tasks: list[remote.Task], tags: list[str], gpus: list[int] | None = None
    ) -> list[Any]:
        """Submit tasks to the cluster in one message; their futures, keyed by tag.  A
        task asking for GPUs (``gpus[i]``, from ``options(gpus=n)``) goes on its own,
        with ``resources={"GPU": n}``: Dask places it on a worker started with them."""
        wanted = gpus or [0] * len(tasks)
        data = self._ship(tasks)
        tasks = [task._replace(data=()) if task.data else task for task in tasks]
        plain = [i for i, n in enumerate(wanted) if not n]
        futures: list[Any] = [None] * len(tasks)
        if plain:
            mapped = self.client.map(
                _run_task, [tasks[i] for i in plain], [tags[i] for i in plain],
                [data[i] for i in plain], key=[tags[i] for i in plain], pure=False,
            )  # fmt: skip
            for i, future in zip(plain, mapped, strict=True):
                futures[i] = future
        for i, n in enumerate(wanted):
            if n:
                futures[i] = self.client.submit(
                    _run_task, tasks[i], tags[i], data[i], key=tags[i], pure=False,
                    resources={"GPU": n},
                )  # fmt: skip
        for future, needs in zip(futures, data, strict=True):
            if needs:
                future.add_done_callback(functools.partial(self._unneeded, tuple(needs)))
        return futures

    def task(self, call: Call, job: Any) -> remote.Task:
        """``call.task(job)``, but each big argument is read from the store only to be
        scattered to the cluster, once: the task's pickle of it is left empty, and the task
        is counted as needing it from now on (it stays there until the task is done)."""
        source = call.data_source

        def read(digest: str) -> bytes | None:
            if self._shipped_future(digest, b"") is None:
                blob = None if source is None else source(digest)
                if blob is None:
                    return None
                self._shipped_future(digest, blob)
            return b""

        call.data_source = read
        try:
            return call.task(job)
        finally:
            call.data_source = source

    def _ship(self, tasks: list[remote.Task]) -> list[dict[str, Any]]:
        """Each task's big arguments as ``{hash: future}``: each pickle is scattered to
        the cluster once, while tasks need it, not sent with every task.  A worker then
        fetches it once (Dask keeps it) however many of its tasks use it.  (An empty
        pickle: :meth:`task` scattered it and counted the task already.)"""
        with self._shipped_lock:
            self._drop_unneeded({h for task in tasks for h, _ in task.data})
        out: list[dict[str, Any]] = []
        for task in tasks:
            needs: dict[str, Any] = {}
            for digest, blob in task.data:
                future = self._shipped_future(digest, blob, count=bool(blob))
                if future is None:  # counted by task(), yet released: cannot be
                    raise LookupError(f"argument data {digest} left the cluster")
                needs[digest] = future
            out.append(needs)
        return out

    def _shipped_future(self, digest: str, blob: bytes, count: bool = True) -> Any:
        """The future of a big argument's pickle on the cluster, counting one more task
        needing it (unless not ``count``); scattered now if it is not there and ``blob``
        is not empty (else None).  Never scatters with the lock held: the client's loop
        takes it too (:meth:`_unneeded`)."""
        with self._shipped_lock:
            entry = self._shipped.get(digest)
            if entry is not None:
                entry[1] += count
                return entry[0]
        if not blob:
            return None
        future = self.client.scatter(blob, hash=False, broadcast=False)
        with self._shipped_lock:
            entry = self._shipped.setdefault(digest, [future, 0])
            entry[1] += 1
            return entry[0]

    def _unneeded(self, digests: tuple[str, ...], _future: Any) -> None:
        """A task is done: it no longer holds its big arguments on the cluster."""
        with self._shipped_lock:
            for digest in digests:
                entry = self._shipped.get(digest)
                if entry is not None:
                    entry[1] -= 1

    def _drop_unneeded(self, keep: set[str]) -> None:
        """Release the pickles no task needs any more (but those about to be used again:
        a sweep submitted batch after batch ships its data once)."""
        for digest, (_, users) in list(self._shipped.items()):
            if users <= 0 and digest not in keep:
                del self._shipped[digest]

    def follow(self, future: Any, tag: str, ctx: JobContext) -> Outcome:
        """Wait for the task; talk to it only if it runs on past the first wait.

        The channel (two scheduler queues) and the stop event cost scheduler round trips
        each, so a short task never makes them: what it held back comes with its result.
        """
        from distributed import Queue, wait

        stopping: Outcome | None = None
        channel: list[Any] = []  # the task's queues up and down, once it runs on
        receiver = remote.Receiver(ctx, reply=lambda message: channel[1].put(message))
        while True:
            if stopping is None:
                stopping = must_stop(ctx)
                if stopping is not None:  # cancelled or timed out: ask the task to stop
                    ask_to_stop(self.client, tag)
            if channel:
                _drain(channel[0], receiver)
            if future.done():
                break
            # wait client-side: a timed-out Queue.get logs errors on the scheduler
            with contextlib.suppress(TimeoutError):
                wait([future], timeout=self.check_every)
            if not channel and not future.done():  # it runs on: listen to it
                channel = [Queue(tag + suffix, client=self.client) for suffix in _QUEUES]
        if future.status == "cancelled":
            raise ClusterLost(f"the task of job {ctx.job.id} was cancelled by the cluster")
        held = future.result()
        if channel:
            _drain(channel[0], receiver)
            _close(channel)
        done = receiver.apply_all(held)
        if stopping is not None:
            return stopping
        if done is None:
            raise remote.ProtocolError(ctx.job.id, "its Dask task ended without saying how")
        return Outcome.of(done)

    def _wait_for_cluster(self, ctx: JobContext) -> None:
        while self.client.status != "running":
            ctx.check()
            time.sleep(0.5)

    def close(self, wait: bool = True) -> None:
        with self._shipped_lock:
            self._shipped.clear()  # the cluster forgets them once nothing holds them
        if self._own:
            self.client.close()


#: Keys of this process's submissions differ from those of another process (a queue
#: reopened elsewhere) by this, and from each other by a counter.
_PROCESS = secrets.token_hex(3)
_submissions = itertools.count()


def task_tag(task: remote.Task) -> str:
    """A unique Dask key for one submission of a task (also names its channel)."""
    return f"nbqup-{task.job_id}-{task.attempts}-{_PROCESS}{next(_submissions)}"


def lost(job_id: str, exc: BaseException) -> Outcome:
    """The outcome of a run whose cluster or connection failed (not the job): a crash."""
    error = ClusterLost(f"the Dask cluster failed while running job {job_id}: {exc!r}")
    return Outcome.stopped(error, crashed=True)


def ask_to_stop(client: Any, tag: str) -> None:
    """Set a task's stop event: it stops at its next ``progress`` or ``checkpoint``."""
    from distributed import Event

    Event(tag + "-stop", client=client).set()


#: Name suffixes of a task's scheduler queues: messages up, replies down.
_QUEUES = ("-up", "-down")


def _drain(queue: Any, receiver: remote.Receiver) -> None:
    for _ in range(queue.qsize()):
        receiver.apply(queue.get())


def _close(queues: list[Any]) -> None:
    for queue in queues:  # the scheduler forgets a queue once all sides close it
        with contextlib.suppress(Exception):
            queue.close()


class _TaskLink:
    """A Dask task's :class:`~nbqup.remote.Link` to the queue's process, and its stop event.

    The two scheduler queues and the event are made on first use: a task that reports
    nothing costs no scheduler round trip for them.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._queues: list[Any] = []
        self._stop: Any = None
        self._last_look = time.monotonic()

    def _open(self) -> list[Any]:
        if not self._queues:
            from distributed import Queue

            self._queues = [Queue(self.tag + suffix) for suffix in _QUEUES]
        return self._queues

    def send(self, message: tuple[Any, ...]) -> None:
        self._open()[0].put(message)

    def recv(self) -> tuple[Any, ...]:
        return self._open()[1].get()

    def stop_asked(self) -> bool:
        """Whether the queue's process set the stop event (looked at every
        :data:`PROGRESS_EVERY` seconds at most)."""
        now = time.monotonic()
        if now - self._last_look <= PROGRESS_EVERY:
            return False
        self._last_look = now
        if self._stop is None:
            from distributed import Event

            self._stop = Event(self.tag + "-stop")
        return bool(self._stop.is_set())

    def close(self) -> None:
        _close(self._queues)


_captured = False


def _run_task(
    task: remote.Task, tag: str, data: dict[str, bytes] | None = None
) -> list[tuple[Any, ...]]:
    """The Dask task: run the job; return the messages it held back (its last progress
    report, its output) and how it ended (:func:`nbqup.remote.held`).  ``data`` is the
    task's big arguments' pickles by hash, scattered once (Dask resolves the futures)."""
    global _captured
    if data:
        task = task._replace(data=tuple(data.items()))
    if not _captured and not capture.routing():
        # A worker process of its own: route its jobs' print/display for good.  (In the
        # queue's own process the queue has installed the routing already.)
        capture.install(current_log, current_outputs)
        _captured = True
    link = _TaskLink(tag)
    sender = remote.Sender(link, progress_every=PROGRESS_EVERY, should_stop=link.stop_asked)
    logs, outputs = LogBuffer(), RichOutputs()
    try:
        done = remote.run(task, sender, logs, outputs)
    finally:
        link.close()
    return remote.held(sender, logs, outputs, done)
