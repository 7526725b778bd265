"""The process side of ``executor="process"``: ``python -m nbqup._child READ_FD WRITE_FD``.

A child runs one job at a time for its parent's worker slot.  It receives the job's
:class:`~nbqup.remote.Task` (the pickled function and arguments, never the parent's open
store), runs it with a :class:`~nbqup.remote.Sender` as its runtime so that progress,
checkpoints and output travel back over the pipe as :mod:`nbqup.remote` messages, and
reports how it ended.  It is started with ``subprocess`` rather than ``multiprocessing``
so that the parent's ``__main__`` (a notebook or a script) is never imported again in the
child.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from . import capture, payload, remote
from .context import current_log, current_outputs


class Outbox:
    """The child's end of the pipe to its parent (a :class:`~nbqup.remote.Link`): every
    message in order, output batched.

    Sending one pipe message per ``print`` made a job printing 500,000 lines 13x slower
    than under the thread executor.  What a job prints is gathered here and sent as one
    message once :data:`FLUSH_BYTES` have gathered, :data:`FLUSH_EVERY` seconds after the
    first unsent write (a helper thread), before any other message (so output and
    progress, checkpoints and the outcome keep their order) and when the job ends.  What
    is lost if the child is killed (SIGKILL, ``os._exit``, a segfault) is at most the
    output of the last :data:`FLUSH_EVERY` seconds.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._parts: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._pending = threading.Condition(self._lock)
        threading.Thread(target=self._flusher, name="nbqup-child-flush", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send ``message`` after the output written before it."""
        with self._lock:
            self._flush()
            self.conn.send(message)

    def recv(self) -> tuple[Any, ...]:
        """The parent's reply to a request."""
        return self.conn.recv()

    def write(self, text: str) -> int:
        """What the job printed or logged: kept until a flush (see the class)."""
        with self._lock:
            if not self._parts:
                self._pending.notify()
            self._parts.append(text)
            self._size += len(text)
            if self._size >= FLUSH_BYTES:
                self._flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        # caller holds the lock
        if self._parts:
            text = "".join(self._parts)
            self._parts, self._size = [], 0
            self.conn.send((remote.LOG, text))

    def _flusher(self) -> None:
        while True:
            with self._lock:
                while not self._parts:
                    self._pending.wait()
            time.sleep(FLUSH_EVERY)  # let more output gather: one message, not many
            try:
                self.flush()
            except (OSError, EOFError):  # the parent went away: nothing to send to
                return


#: Output gathered in the child beyond this many characters is sent at once.
FLUSH_BYTES = 64 * 1024
#: Output is sent at most this many seconds after it was written.
FLUSH_EVERY = 0.1


def serve(conn: Connection) -> None:
    """Run jobs sent by the parent until it closes the pipe."""
    capture.install(current_log, current_outputs)
    payload.FOLLOW_FILES = True  # a module changed on disk: run it as a new worker would
    outbox = Outbox(conn)
    runtime = remote.Sender(outbox)
    outputs = remote.SentOutputs(outbox)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        done = remote.run(task, runtime, outbox, outputs)  # type: ignore[arg-type]
        sys.stdout.flush()
        sys.stderr.flush()
        outbox.send((remote.DONE, *done))  # after the job's last output


def _die_with_parent(parent: int) -> None:
    """Never outlive the parent: a job must not run on here while the next owner of the
    store runs it again.  Linux kills us when the parent dies (PR_SET_PDEATHSIG); a
    watcher thread covers other systems and a parent that died before that was set."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=watch, name="nbqup-child-watch", daemon=True).start()


def main(argv: list[str]) -> None:
    read_fd, write_fd = int(argv[1]), int(argv[2])
    _die_with_parent(int(argv[3]))
    # One duplex-like pair of one-way connections over two inherited pipe fds.
    reader = Connection(read_fd, writable=False)
    writer = Connection(write_fd, readable=False)
    try:
        serve(_Duplex(reader, writer))  # type: ignore[arg-type]
    except (BrokenPipeError, EOFError, ConnectionResetError):
        os._exit(0)  # the parent went away: nothing left to report to


class _Duplex:
    """``send`` on one pipe, ``recv`` on the other."""

    def __init__(self, reader: Connection, writer: Connection) -> None:
        self.reader, self.writer = reader, writer

    def send(self, obj: Any) -> None:
        self.writer.send(obj)

    def recv(self) -> Any:
        return self.reader.recv()


if __name__ == "__main__":  # pragma: no cover - run as a child process
    main(sys.argv)
