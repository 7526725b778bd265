"""One message protocol for jobs run elsewhere: a worker process, a Dask task.

A job run outside the queue's process cannot call the queue's runtime: what it reports
travels as messages, tuples whose first item is their kind, and the queue's process
applies them to the job's context.  From the job ("up"):

================================  ============================================================
``(LOG, text)``                   printed or logged output
``(RICH, data, metadata)``        one ``display(...)`` bundle
``(PROGRESS, fraction, msg)``     a progress report
``(CHECKPOINT, blob)``            a pickled checkpoint; answered ``(ACK,)`` once durable
``(RESTORE,)``                    answered ``(STATE, found, blob)``: the last checkpoint
``(STEP, key, record, result)``   a durable step; answered ``(ACK,)`` once durable
``(STEPS,)``                      answered ``(STORED, {key: record})``: the job's stored steps
``(STEP_RESULT, key)``            answered ``(STORED, result)``: a replayed step's result
``(DONE, ok, blob, repr, tb)``    how the run ended (:class:`Done`); the last message
================================  ============================================================

Inside the job, :class:`Sender` is the context's runtime, sending over a :class:`Link`
(the child's pipe, a Dask task's scheduler queues), and :func:`run` runs a :class:`Task`
and says how it ended.  In the queue's process a :class:`Receiver` applies each message
through the narrow :class:`~nbqup.context.JobRuntime` and answers the requests.  How the
messages travel, and when output is sent, is the executor's business.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

from . import payload
from .capture import LogBuffer, RichOutputs
from .context import JobContext, JobRuntime, call_in
from .errors import JobCancelled, NbqupError

__all__ = [
    "ACK",
    "CHECKPOINT",
    "DONE",
    "LOG",
    "PROGRESS",
    "RESTORE",
    "RICH",
    "STATE",
    "STEP",
    "STEPS",
    "STEP_RESULT",
    "STORED",
    "Done",
    "Link",
    "ProtocolError",
    "Receiver",
    "RemoteJob",
    "Sender",
    "SentOutputs",
    "Task",
    "held",
    "run",
]

#: Message kinds, up (from the job) ...
LOG, RICH, PROGRESS, CHECKPOINT, RESTORE, STEP, STEPS, STEP_RESULT, DONE = (
    "log", "rich", "progress", "checkpoint", "restore", "step", "steps", "step result",
    "done",
)  # fmt: skip
#: ... and down (the queue's process answering a request).
ACK, STATE, STORED = "ack", "state", "stored"

Message = tuple[Any, ...]


class ProtocolError(NbqupError, RuntimeError):
    """A job run elsewhere and the queue's process did not understand each other: a
    message of an unknown kind, or a reply that does not answer the request."""

    def __init__(self, job_id: str, what: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id}: {what}")


class Task(NamedTuple):
    """What runs a job elsewhere: its identity and its pickles, as the store keeps them."""

    job_id: str
    name: str
    attempts: int
    fn_hash: str
    fn_blob: bytes
    args_blob: bytes | None
    #: The GPU slots the job holds (``current_job().gpus`` where it runs).
    gpus: tuple[int, ...] = ()
    #: ``(hash, pickle)`` of each big argument the arguments reference
    #: (:func:`nbqup.argdata.refs`), unpickled once per process.
    data: tuple[tuple[str, bytes], ...] = ()

    def invoke(self) -> Any:
        """Unpickle the function (cached by its hash) and the arguments, and call it."""
        fn = payload.load_fn(self.fn_hash, self.fn_blob)
        args, kwargs = payload.loads_args(self.args_blob, dict(self.data).get)
        return fn(*args, **kwargs)


class Done(NamedTuple):
    """How a run elsewhere ended: the result pickled where it ran, or the traceback."""

    ok: bool
    result_blob: bytes | None = None
    result_repr: str | None = None
    traceback: str | None = None


class RemoteJob:
    """What ``nbqup.current_job()`` returns inside a job run elsewhere: its identity."""

    __slots__ = ("attempts", "gpus", "id", "name")

    def __init__(self, job_id: str, name: str, attempts: int, gpus: tuple[int, ...] = ()) -> None:
        self.id, self.name, self.attempts = job_id, name, attempts
        self.gpus = list(gpus)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name!r} running attempts={self.attempts}>"


def run(
    task: Task,
    runtime: JobRuntime,
    logs: LogBuffer | None = None,
    outputs: RichOutputs | None = None,
) -> Done:
    """Run ``task`` as the current job, with ``runtime`` (a :class:`Sender`) and where its
    output goes; never raises for the job's errors.  The result is pickled here: one that
    cannot be fails the job, as under the thread executor."""
    job = RemoteJob(task.job_id, task.name, task.attempts, task.gpus)
    ctx = JobContext(job, runtime, logs=logs)
    if outputs is not None:
        ctx.outputs = outputs
    try:
        value = call_in(ctx, task.invoke)
    except BaseException:  # the job's error, whatever it is, is its outcome
        return Done(False, traceback=traceback.format_exc())
    try:
        return Done(True, payload.dumps_result(value), payload.short_repr(value))
    except Exception as exc:  # an unpicklable result fails the job, not the process
        return Done(False, traceback=f"{exc}\n")


class Link(Protocol):
    """A job's two-way channel to the queue's process: messages up, replies down."""

    def send(self, message: Message) -> None: ...
    def recv(self) -> Message: ...


class Sender:
    """The runtime of a job run elsewhere: its reports go up ``link`` as messages.

    Progress is sent at most every ``progress_every`` seconds (the newest report and
    a report of 1.0 always; :attr:`last_progress` keeps the last one, sent or not).
    ``should_stop`` tells whether the job was asked to stop (a Dask task cannot be
    killed); once it has said so, the job's next progress or checkpoint raises
    :class:`~nbqup.JobCancelled`.
    """

    def __init__(
        self,
        link: Link,
        *,
        progress_every: float = 0.0,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.link = link
        self.progress_every = progress_every
        self.should_stop = should_stop
        self._stopped = False
        self._sent = -math.inf
        #: ``(fraction, message)`` of the last progress report, sent or not.
        self.last_progress: tuple[float | None, str | None] | None = None

    def now(self) -> float:
        return time.time()

    def _check(self, job_id: str) -> None:
        if not self._stopped and self.should_stop is not None:
            self._stopped = self.should_stop()
        if self._stopped:
            raise JobCancelled(job_id, "cancelled")

    def report_progress(self, job_id: str, fraction: float | None, message: str | None) -> None:
        self._check(job_id)
        self.last_progress = (fraction, message)
        if self.progress_every:
            now = time.monotonic()
            if now - self._sent < self.progress_every and fraction != 1.0:
                return
            self._sent = now
        self.link.send((PROGRESS, fraction, message))

    def save_checkpoint(self, job_id: str, state: Any) -> None:
        self.save_checkpoint_blob(job_id, payload.dumps_result(state))

    def save_checkpoint_blob(self, job_id: str, blob: bytes) -> None:
        """Returns once the queue's process has made the checkpoint durable."""
        self._check(job_id)
        self.link.send((CHECKPOINT, blob))
        self._reply(job_id, ACK, "checkpoint")

    def load_checkpoint(self, job_id: str) -> tuple[bool, Any]:
        self.link.send((RESTORE,))
        _, found, blob = self._reply(job_id, STATE, "restore")
        return (True, payload.loads(blob)) if found else (False, None)

    def save_step(self, job_id: str, key: str, record: bytes, result: bytes) -> None:
        """Returns once the queue's process has made the step's record durable."""
        self._check(job_id)
        self.link.send((STEP, key, record, result))
        self._reply(job_id, ACK, "step")

    def load_steps(self, job_id: str) -> dict[str, bytes]:
        self.link.send((STEPS,))
        return dict(self._reply(job_id, STORED, "steps")[1])

    def load_step_result(self, job_id: str, key: str) -> bytes | None:
        self.link.send((STEP_RESULT, key))
        return self._reply(job_id, STORED, "step result")[1]

    def _reply(self, job_id: str, kind: str, request: str) -> Message:
        reply = self.link.recv()
        if not reply or reply[0] != kind:
            raise ProtocolError(job_id, f"{request} answered with {reply!r}, not {kind!r}")
        return reply


class SentOutputs:
    """A job's ``display(...)`` outputs, each sent up ``link`` as it comes."""

    dirty = False

    def __init__(self, link: Link) -> None:
        self.link = link

    def add(self, data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        self.link.send((RICH, data, metadata or {}))


def held(sender: Sender, logs: LogBuffer, outputs: RichOutputs, done: Done) -> list[Message]:
    """The messages a job held back while it ran, to go with its end: its last progress
    report, its output and how it ended (a Dask task returns them with its result)."""
    messages: list[Message] = []
    if sender.last_progress is not None:
        messages.append((PROGRESS, *sender.last_progress))
    text = logs.text()
    if text:
        messages.append((LOG, text))
    messages.extend((RICH, bundle["data"], bundle["metadata"]) for bundle in outputs.bundles())
    messages.append((DONE, *done))
    return messages


class Receiver:
    """The queue's end: applies one remote job's messages to its context and runtime,
    and answers its requests with ``reply``."""

    def __init__(self, ctx: JobContext, reply: Callable[[Message], None]) -> None:
        self.ctx = ctx
        self.reply = reply
        #: Messages applied: what relaying the job's work cost.
        self.received = 0

    def apply(self, message: Message) -> Done | None:
        """Apply ``message``; the job's :class:`Done` if it was the last one."""
        self.received += 1
        kind = message[0]
        if kind == DONE:
            return Done(*message[1:])
        ctx = self.ctx
        if kind == LOG:
            ctx.logs.write(message[1])
        elif kind == RICH:
            ctx.outputs.add(message[1], message[2])
        elif kind == PROGRESS:
            ctx.runtime.report_progress(ctx.job.id, message[1], message[2])
        elif kind == CHECKPOINT:
            ctx.runtime.save_checkpoint_blob(ctx.job.id, message[1])
            self.reply((ACK,))
        elif kind == RESTORE:
            found, state = ctx.runtime.load_checkpoint(ctx.job.id)
            self.reply((STATE, found, payload.dumps_result(state) if found else None))
        elif kind == STEP:
            ctx.runtime.save_step(ctx.job.id, message[1], message[2], message[3])
            self.reply((ACK,))
        elif kind == STEPS:
            self.reply((STORED, ctx.runtime.load_steps(ctx.job.id)))
        elif kind == STEP_RESULT:
            self.reply((STORED, ctx.runtime.load_step_result(ctx.job.id, message[1])))
        else:
            raise ProtocolError(ctx.job.id, f"a message of unknown kind {kind!r}")
        return None

    def apply_all(self, messages: Iterable[Message]) -> Done | None:
        """Apply ``messages`` in order; the job's :class:`Done` if one of them was it."""
        done = None
        for message in messages:
            done = self.apply(message) or done
        return done
