"""``nbqup worker``: run a store's jobs in a detached process until a signal stops it.

It owns the store (``if_locked="raise"``) so notebooks opening the same path become
clients.  Not being inside a kernel, it handles SIGTERM, SIGINT and SIGHUP and stops with
``close(wait=False)``: what it was running resumes under the next process that runs the
store, without counting that run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from .cli_store import EXIT_USAGE, CliError, one_line

__all__ = ["run_worker"]


class _Signals:
    """Turn SIGTERM, SIGINT and SIGHUP into a stop request the main thread waits for.

    The handlers only record the signal: the wait wakes up through a wakeup file descriptor
    (no Event.set in a handler, which can deadlock).  SIGINT and SIGHUP stay ignored when
    the worker was started with them ignored (``nohup``, a shell's background job), as
    Python itself leaves them; SIGTERM always stops the worker.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._old: dict[int, Any] = {}
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write)
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is None or (name != "SIGTERM" and signal.getsignal(sig) == signal.SIG_IGN):
                continue
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def wait(self) -> int:
        """Block until a signal arrived; return its number."""
        while not self.received:
            select.select([self._read], [], [], 1.0)  # the timeout is only a safety net
            with contextlib.suppress(BlockingIOError):
                os.read(self._read, 512)
        return self.received[0]

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)


def run_worker(args: argparse.Namespace) -> int:
    from .errors import StoreCorrupt, StoreLocked
    from .queue import JobQueue

    path = Path(args.path).expanduser()
    if path.exists() and not path.is_dir():
        raise CliError(f"cannot run a store at {args.path}: it is not a directory", EXIT_USAGE)
    created = not (path / "lmdb" / "data.mdb").is_file()
    signals = _Signals()
    try:
        try:
            jq = JobQueue(
                path,
                workers=args.workers,
                executor=args.executor,
                durability=args.durability,
                poll_interval=args.poll,
                if_locked="raise",
                gpus=_gpus(getattr(args, "gpus", None)),
            )
        except StoreLocked as exc:
            holder = f"process {exc.pid}" if exc.pid else "another process"
            raise CliError(
                f"store {exc.path} is already run by {holder}; stop that process first "
                "(notebooks can submit to it as clients meanwhile)"
            ) from None
        except StoreCorrupt:  # a ValueError too, but not a usage error
            raise
        except ValueError as exc:  # a bad --executor or --gpus
            raise CliError(one_line(exc), EXIT_USAGE) from None
        if created:
            print(f"nbqup worker: created a new store at {jq.path}", flush=True)
        n = args.workers
        print(
            f"nbqup worker: running {jq.path} with {n} worker{'' if n == 1 else 's'} "
            f"(pid {os.getpid()})",
            flush=True,
        )
        signum = signals.wait()
        running = sum(rec.status == "running" for rec in jq.snapshot(limit=10**9))
        print(
            f"nbqup worker: {signal.Signals(signum).name} received, stopping; "
            f"{running} running job{'' if running == 1 else 's'} will resume under the next "
            "process that runs the store",
            flush=True,
        )
        jq.close(wait=False)
        print("nbqup worker: stopped", flush=True)
        return 0
    finally:
        signals.restore()


def _gpus(text: str | None) -> int | list[int] | None:
    """``--gpus``: ``2`` (a count) or ``0,1`` (device ids); JobQueue checks the values."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(part.lstrip("-").isdigit() for part in parts):
        raise CliError(f"--gpus takes a count or device ids like 0,1, got {text!r}", EXIT_USAGE)
    if len(parts) == 1 and "," not in text:
        return int(parts[0])
    return [int(part) for part in parts]
