"""Where a job's code runs, behind one small interface.

The queue owns a fixed number of worker slots (one thread each).  A slot takes a ready
job from the queue and hands it to the executor's :meth:`Executor.run`, which returns the
outcome; so whatever the executor, no more jobs run than there are slots and nothing
busy-waits.  :class:`ThreadExecutor` runs the call inline in the slot's thread,
:class:`ProcessExecutor` in a worker process of the slot's own; the interface they share
is in :mod:`nbqup.calls`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

from .calls import Call, Executor, Outcome, must_stop
from .context import JobContext, call_in
from .remote import Receiver

__all__ = ["Call", "Executor", "Outcome", "ProcessExecutor", "ThreadExecutor", "make_executor"]


class ThreadExecutor(Executor):
    """Run each job in its worker slot's thread (the default).

    Cancelling and timeouts are cooperative: a job stops at its next ``progress``,
    ``track`` or ``checkpoint`` call.
    """

    name = "thread"

    def run(self, call: Call, ctx: JobContext) -> Outcome:
        try:
            return Outcome(ok=True, value=call_in(ctx, call.invoke))
        except BaseException as exc:  # the job's error, whatever it is, is its outcome
            return Outcome.raised(exc)


class WorkerDied(RuntimeError):
    """The process running a job died before reporting how the job ended."""


class _Child:
    """One worker process (``python -m nbqup._child``) and the pipes to it."""

    def __init__(self, gpus: tuple[int, ...] = ()) -> None:
        from multiprocessing.connection import Connection

        #: The GPU slots this process may see (its ``CUDA_VISIBLE_DEVICES``), fixed at
        #: its start: CUDA reads the variable once.
        self.gpus = gpus
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._lock = threading.Lock()
        self._killed = False
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nbqup._child",
                str(to_child_r),
                str(from_child_w),
                str(os.getpid()),
            ],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            env=_child_env(gpus),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the process and close the pipes, once, whoever asks first."""
        with self._lock:
            if self._killed:
                return
            self._killed = True
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for conn in (self.send_conn, self.recv_conn):
            with contextlib.suppress(OSError):
                conn.close()


def _child_env(gpus: tuple[int, ...] = ()) -> dict[str, str]:
    """The child finds this nbqup (and the parent's sys.path) first, and sees only its
    job's GPU slots (if the job holds any)."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    paths = [p for p in sys.path if p] + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop("NBQUP_CHILD_FORWARD", None)
    return env


class ProcessExecutor(Executor):
    """Run each job in a separate worker process, one per worker slot.

    Cancelling or timing out a running job kills its process (a new one is started for
    the next job); a job that kills its own process (``os._exit``, a segfault) fails --
    and is retried if it has retries left -- while the queue goes on.  Progress,
    checkpoints, printed output and ``display(...)`` travel back to this process.
    Processes are started with ``subprocess`` (never ``fork``: the store must not cross
    a fork), so the first job of each slot pays for starting Python.  A job holding GPU
    slots (``options(gpus=n)``) runs in a process started with ``CUDA_VISIBLE_DEVICES``
    set to them (CUDA reads it once per process: a slot whose next job holds other
    slots, or none, starts a new process).
    """

    name = "process"
    #: How often a slot checks for a cancel or a timeout while its job runs (seconds).
    check_every = 0.05

    def __init__(self) -> None:
        self._local = threading.local()
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self._closed = False
        #: Messages received from child processes in all (output, progress, outcomes...):
        #: what relaying the jobs' work cost, for benchmarks and tests.
        self.messages_received = 0

    def _child(self, gpus: tuple[int, ...]) -> _Child:
        child: _Child | None = getattr(self._local, "child", None)
        if child is not None and child.gpus != gpus:  # a job on other GPU slots
            self._drop(child)
            child = None
        if child is None or not child.alive():
            child = _Child(gpus)
            self._local.child = child
            with self._lock:
                self._children.add(child)
        return child

    def _drop(self, child: _Child) -> None:
        child.kill()
        self._local.child = None
        with self._lock:
            self._children.discard(child)

    def run(self, call: Call, ctx: JobContext) -> Outcome:
        try:
            task = call.task(ctx.job, ctx.gpus)
            child = self._child(ctx.gpus)
            child.send_conn.send(task)
        except Exception as exc:
            return Outcome.raised(exc)
        receiver = Receiver(ctx, reply=child.send_conn.send)
        try:
            return self._relay(child, ctx, receiver)
        finally:
            with self._lock:
                self.messages_received += receiver.received

    def _relay(self, child: _Child, ctx: JobContext, receiver: Receiver) -> Outcome:
        """Relay the child's messages until it reports, dies, or must be stopped."""
        while True:
            stop = must_stop(ctx)
            if stop is not None:
                self._drop(child)
                return stop
            try:
                if not child.recv_conn.poll(self.check_every):
                    if not child.alive() and not child.recv_conn.poll(0):
                        raise EOFError
                    continue
                message = child.recv_conn.recv()
            except (EOFError, OSError):
                code = child.proc.wait()
                self._drop(child)
                why = f"the worker process running job {ctx.job.id} died (exit code {code})"
                return Outcome.stopped(WorkerDied(why), crashed=True)
            done = receiver.apply(message)
            if done is not None:
                return Outcome.of(done)

    def close(self, wait: bool = True) -> None:
        with self._lock:
            children, self._children = list(self._children), set()
        for child in children:
            with contextlib.suppress(Exception):  # kill every child, whatever one does
                child.kill()


def make_executor(spec: object) -> Executor:
    """An executor from ``JobQueue(executor=...)``: ``"thread"``, ``"process"``, a
    ``dask.distributed.Client``, or an :class:`Executor`."""
    if isinstance(spec, Executor):
        return spec
    if spec == "thread":
        return ThreadExecutor()
    if spec == "process":
        return ProcessExecutor()
    if type(spec).__module__.startswith("distributed") or (
        isinstance(spec, str) and spec.startswith(("tcp://", "tls://", "inproc://", "ucx://"))
    ):
        from .dask_executor import DaskExecutor

        return DaskExecutor(spec)
    raise ValueError(f"executor must be 'thread', 'process' or a dask Client, got {spec!r}")
