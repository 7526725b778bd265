"""The systems measured, behind one small interface.

Every system runs the same no-op (:func:`benchmarks.jobs.noop`) with 4 worker threads in
this process, on a store in a fresh directory:

``nbqup``              nbqup's default (``durability="process"``: survives a SIGKILL)
``nbqup-fsync``        nbqup with ``durability="fsync"`` (survives power loss)
``nbqup-process``      nbqup with ``executor="process"``: 4 worker slots, each running its
                       jobs in a child Python process (informational, no target)
``nbqup-dask``         nbqup with a ``distributed.Client`` on a ``LocalCluster(n_workers=2,
                       threads_per_worker=2, processes=False)`` as its executor: nbqup keeps
                       the ledger, Dask runs the calls (informational, no target; left
                       out when ``distributed`` is not installed: the ``dask`` extra)
``floor``              a bare loop on nbqup's own store (``nbqup.store.Store``, same LMDB
                       leaf and codec): put a record, read it, write a completion, read
                       the result -- one thread, no queue; the best nbqup could do
``huey-sqlite/ms``     Huey ``SqliteHuey`` (fsyncs every commit), its consumer's workers
                       and ``result.get()`` both polling every millisecond
``huey-sqlite/shipped`` the same with Huey's shipped polling: idle workers sleep 0.1 s
                       growing to 10 s, ``get(blocking=True)`` sleeps 50 ms growing by
                       1.15x
``huey-file/ms``, ``huey-file/shipped``  Huey ``FileHuey`` (no fsync), same two polling modes
``persistqueue``       persist-queue ``SQLiteAckQueue`` (SQLite WAL, fsyncs) drained by 4
                       threads; it has no result store, so a job is done when it is acked
                       (an in-memory notification stands in for the result)

Huey's consumer installs signal handlers and so must start on the main thread; here its
worker threads are started through :class:`QuietConsumer`, which skips that step, and no
main-thread loop is needed (health checks are not needed for threads).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from benchmarks import jobs

WORKERS = 4
#: Nothing a benchmark waits for may take longer than this (seconds): a hang is a failure.
TIMEOUT = 300.0


class System(ABC):
    """One queue under test.  ``start`` is not timed; the rest is."""

    name = "system"
    #: Whether results are stored durably (persist-queue has no result store).
    durable_results = True
    note = ""
    #: Throughput sizes above this are skipped for this system (slow ones), if set.
    max_jobs: int | None = None
    #: Round trips per repeat are capped at this for this system, if set.
    max_roundtrips: int | None = None
    #: Informational rows: measured and shown, but no DESIGN.md target applies.
    informational = False

    @abstractmethod
    def start(self, workdir: Path) -> None:
        """Open the store in ``workdir`` (fresh and empty) and start the workers."""

    @abstractmethod
    def submit(self) -> Any:
        """Submit one no-op job durably; return a handle."""

    @abstractmethod
    def result(self, handle: Any) -> Any:
        """Block until the job is done and return its result."""

    def wait_all(self, handles: list[Any]) -> None:
        """Block until every job is done, reading each result."""
        for h in handles:
            self.result(h)

    @abstractmethod
    def stop(self) -> None:
        """Stop the workers and close the store (not timed)."""


# ------------------------------------------------------------------------------ nbqup


class Nbqup(System):
    def __init__(self, durability: str = "process") -> None:
        self.durability = durability
        self.name = "nbqup" if durability == "process" else f"nbqup-{durability}"
        self.jq: Any = None

    def start(self, workdir: Path) -> None:
        import nbqup

        self.jq = nbqup.JobQueue(workdir / "nbqup", workers=WORKERS, durability=self.durability)

    def submit(self) -> Any:
        return self.jq.submit(jobs.noop)

    def result(self, handle: Any) -> Any:
        return handle.result(timeout=TIMEOUT)

    def stop(self) -> None:
        self.jq.close()
        self.jq = None


class NbqupExecutor(System):
    """nbqup with another executor: ``"process"`` or a Dask ``LocalCluster`` client.

    Informational rows (issue 8): no target in DESIGN.md.  ``start`` (not timed) opens the
    queue and runs one job per slot at once, so every child process (or the cluster) is up
    before anything is timed, and checks that the job function ran where it should.
    """

    informational = True

    def __init__(self, executor: str) -> None:
        self.executor = executor
        self.name = f"nbqup-{executor}"
        self.note = {
            "process": "info: executor='process', 4 child processes",
            "dask": "info: Dask LocalCluster, 2 workers x 2 threads, processes=False",
        }[executor]
        if executor == "dask":  # ~125 jobs/s: 20,000 would take minutes per repeat
            self.max_jobs = 2000
        self.jq: Any = None
        self.client: Any = None
        self.cluster: Any = None

    def start(self, workdir: Path) -> None:
        import os

        import nbqup

        executor: Any = self.executor
        if self.executor == "dask":
            from distributed import Client, LocalCluster

            logging.getLogger("distributed").setLevel(logging.ERROR)
            self.cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=2,
                processes=False,
                dashboard_address=None,
            )
            self.client = executor = Client(self.cluster)
        self.jq = nbqup.JobQueue(workdir / "nbqup", workers=WORKERS, executor=executor)
        warm = [self.jq.submit(jobs.pause, 0.3) for _ in range(WORKERS)]
        for job in warm:
            job.result(timeout=TIMEOUT)
        pid, where, _ = self.jq.submit(jobs.where).result(timeout=TIMEOUT)
        if self.executor == "process" and pid == os.getpid():
            raise RuntimeError("executor='process' ran a job in this process")
        if Path(where).resolve() != Path(jobs.__file__).resolve():
            raise RuntimeError(f"the job function was imported from {where}")

    def submit(self) -> Any:
        return self.jq.submit(jobs.noop)

    def result(self, handle: Any) -> Any:
        return handle.result(timeout=TIMEOUT)

    def stop(self) -> None:
        try:
            if self.jq is not None:
                self.jq.close()
        finally:
            if self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
            self.jq = self.client = self.cluster = None


class Floor(System):
    """A bare loop on nbqup's store: what one job costs the store, with no queue at all."""

    name = "floor"
    note = "1 thread, no queue"

    def __init__(self) -> None:
        self.store: Any = None
        self._seq = itertools.count()

    def start(self, workdir: Path) -> None:
        from nbqup import payload
        from nbqup.store import Store

        self.store = Store(workdir / "floor")
        self.fn_hash, blob = payload.dumps_fn(jobs.noop)
        self.store.commit(blobs=[("fn", self.fn_hash, blob)])

    def submit(self) -> Any:
        from nbqup import payload
        from nbqup.records import JobRecord

        now = time.time()
        rec = JobRecord(
            id=f"{int(now * 1000):011x}{next(self._seq):06x}",
            name="noop",
            created=now,
            fn=self.fn_hash,
            fn_name="noop",
            python=payload.PYTHON,
            pickler=payload.PICKLER,
        )
        self.store.commit([rec])
        return rec.id

    def _run(self, job_id: str) -> None:
        from nbqup import payload
        from nbqup.records import Status

        rec = self.store.load(job_id)
        fn = payload.loads(self.store.get_blob("fn", rec.fn))
        rec.status, rec.attempts, rec.started = Status.RUNNING, 1, time.time()
        value = fn()
        rec.status, rec.finished, rec.has_result = Status.SUCCEEDED, time.time(), True
        rec.result_repr = payload.short_repr(value)
        self.store.commit([rec], [("result", job_id, payload.dumps_result(value))])

    def result(self, handle: Any) -> Any:
        from nbqup import payload

        self._run(handle)
        return payload.loads(self.store.get_blob("result", handle))

    def stop(self) -> None:
        self.store.close()
        self.store = None


# ------------------------------------------------------------------------------- huey


def _huey_consumer_class() -> type:
    from huey.consumer import Consumer

    class QuietConsumer(Consumer):  # type: ignore[misc]
        """Huey's consumer without the signal handlers (which need the main thread)."""

        def _set_signal_handlers(self) -> None:
            pass

    return QuietConsumer


#: Consumer and result-polling settings: Huey as shipped, and polled every millisecond.
HUEY_POLLING = {
    "shipped": (
        {"initial_delay": 0.1, "backoff": 1.15, "max_delay": 10.0},
        {"backoff": 1.15, "max_delay": 1.0},
    ),
    "ms": (
        {"initial_delay": 0.001, "backoff": 1.0, "max_delay": 0.001},
        {"backoff": 1.0, "max_delay": 0.001},
    ),
}


class Huey(System):
    def __init__(self, storage: str, polling: str) -> None:
        self.storage, self.polling = storage, polling
        self.name = f"huey-{storage}/{polling}"
        self.note = "fsync" if storage == "sqlite" else "no fsync"
        self.huey: Any = None
        self.consumer: Any = None

    def start(self, workdir: Path) -> None:
        from huey import FileHuey, SqliteHuey

        logging.getLogger("huey").setLevel(logging.WARNING)
        folder = workdir / f"huey-{self.storage}"
        folder.mkdir()
        if self.storage == "sqlite":
            self.huey = SqliteHuey("bench", filename=str(folder / "huey.db"), store_none=True)
        else:
            # One process, thread workers: a thread lock instead of Huey's per-call flock.
            self.huey = FileHuey("bench", path=str(folder), use_thread_lock=True, store_none=True)
        self.task = self.huey.task()(jobs.noop)
        consumer_kw, self._get_kw = HUEY_POLLING[self.polling]
        self.consumer = _huey_consumer_class()(
            self.huey,
            workers=WORKERS,
            worker_type="thread",
            periodic=False,
            check_worker_health=False,
            **consumer_kw,
        )
        self.consumer.start()

    def submit(self) -> Any:
        return self.task()

    def result(self, handle: Any) -> Any:
        return handle.get(blocking=True, timeout=TIMEOUT, **self._get_kw)

    def stop(self) -> None:
        self.consumer.stop(graceful=True)
        self.huey.storage.close()
        self.huey = self.consumer = None


# ------------------------------------------------------------------------ persistqueue


class PersistQueue(System):
    name = "persistqueue"
    durable_results = False
    note = "fsync; ack only, no result store"

    def start(self, workdir: Path) -> None:
        from persistqueue import SQLiteAckQueue

        self.q = SQLiteAckQueue(str(workdir / "pq"), multithreading=True, auto_commit=True)
        self._cond = threading.Condition()
        self._done: set[int] = set()
        self._seq = itertools.count()
        self._stop = False
        self._threads = [
            threading.Thread(target=self._work, name=f"pq-worker-{i}", daemon=True)
            for i in range(WORKERS)
        ]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        from persistqueue.exceptions import Empty

        while not self._stop:
            try:
                item = self.q.get(raw=True, timeout=0.05)
            except Empty:
                continue
            jobs.noop()
            self.q.ack(id=item["pqid"])
            with self._cond:
                self._done.add(item["data"])
                self._cond.notify_all()

    def submit(self) -> Any:
        n = next(self._seq)
        self.q.put(n)
        return n

    def result(self, handle: Any) -> Any:
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while handle not in self._done:
                if not self._cond.wait(deadline - time.monotonic()):
                    raise TimeoutError(f"persistqueue job {handle} not acked")
        return None

    def stop(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join()
        self.q.close()


def all_systems() -> list[System]:
    return [
        Nbqup("process"),
        Nbqup("fsync"),
        NbqupExecutor("process"),
        *([NbqupExecutor("dask")] if importlib.util.find_spec("distributed") else []),
        Floor(),
        Huey("sqlite", "ms"),
        Huey("sqlite", "shipped"),
        Huey("file", "ms"),
        Huey("file", "shipped"),
        PersistQueue(),
    ]
