"""Output capture: what a job prints or logs goes to the job, not to the running cell.

While a queue runs jobs, ``sys.stdout`` and ``sys.stderr`` are wrapped by a
:class:`RoutingStream`: a write made by code running inside a job (the job's context is set
in its worker thread) is appended to that job's :class:`LogBuffer`; any other write goes to
the original stream untouched.  A handler on the root logger does the same for ``logging``
records, and inside IPython the shell's display publisher does the same for
``display(...)`` calls: their MIME bundles become the job's rich outputs (:class:`RichOutputs`),
shown later by ``job.show()``.  Without this, ipykernel 7 would print a background
thread's output into whichever cell happens to be running.  Threads that a job starts
itself are not followed.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["LogBuffer", "RichOutputs", "RoutingStream", "install", "routing", "uninstall"]

#: Characters of output kept per job; beyond it the oldest output is dropped.
LOG_LIMIT = 256 * 1024
#: Bytes of rich output (MIME bundles) kept per job; beyond it the oldest are dropped.
RICH_LIMIT = 8 * 1024 * 1024


class RichOutputs:
    """A job's ``display(...)`` outputs as MIME bundles, the newest ones within a size cap."""

    def __init__(
        self, bundles: list[dict[str, Any]] | None = None, limit: int = RICH_LIMIT
    ) -> None:
        self._bundles: list[tuple[int, dict[str, Any]]] = []
        self._limit = limit
        self._lock = threading.Lock()
        self.dropped = 0
        self.dirty = False
        for bundle in bundles or ():
            self.add(bundle.get("data", {}), bundle.get("metadata", {}))
        self.dirty = False

    def add(self, data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        bundle = {"data": dict(data), "metadata": dict(metadata or {})}
        size = sum(len(v) if isinstance(v, str | bytes) else 64 for v in data.values())
        with self._lock:
            self._bundles.append((size, bundle))
            self.dirty = True
            while len(self._bundles) > 1 and sum(s for s, _ in self._bundles) > self._limit:
                self._bundles.pop(0)
                self.dropped += 1

    def bundles(self) -> list[dict[str, Any]]:
        with self._lock:
            self.dirty = False
            return [b for _, b in self._bundles]


class LogBuffer:
    """A job's captured output, capped to its last ``limit`` characters."""

    def __init__(self, prefix: str = "", limit: int = LOG_LIMIT) -> None:
        self._parts: list[str] = [prefix] if prefix else []
        self._size = len(prefix)
        self._dropped = 0
        self._limit = limit
        self._lock = threading.Lock()
        self.dirty = False

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            self.dirty = True
            if self._size > 2 * self._limit:
                self._trim()
        return len(text)

    def _trim(self) -> None:
        joined = "".join(self._parts)
        cut = len(joined) - self._limit
        self._dropped += cut
        self._parts = [joined[cut:]]
        self._size = self._limit

    def text(self) -> str:
        """The captured output, with a note of how much was dropped from the start."""
        with self._lock:
            if self._size > self._limit:
                self._trim()
            body = "".join(self._parts)
            self.dirty = False
        if self._dropped:
            return f"[... {self._dropped} earlier characters dropped ...]\n{body}"
        return body


class RoutingStream(io.TextIOBase):
    """A text stream sending writes to the current job's log, or else to ``original``."""

    def __init__(self, original: TextIO, target: Callable[[], LogBuffer | None]) -> None:
        self.original = original
        self._target = target

    def write(self, text: str) -> int:
        buffer = self._target()
        if buffer is None:
            return self.original.write(text)
        return buffer.write(text)

    def flush(self) -> None:
        if self._target() is None:
            self.original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._target() is None and self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:  # anything else a caller expects of the stream
        return getattr(self.original, name)


class _JobLogHandler(logging.Handler):
    """Sends log records emitted inside a job to the job's log.

    Outside a job it stays out of the way: if the root logger has no other handler it
    does what logging would have done without it (``logging.lastResort``).
    """

    def __init__(self, target: Callable[[], LogBuffer | None]) -> None:
        super().__init__()
        self._target = target
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        buffer = self._target()
        if buffer is not None:
            buffer.write(self.format(record) + "\n")
            return
        root = logging.getLogger()
        others = [h for h in root.handlers if h is not self]
        last = logging.lastResort
        if not others and last is not None and record.levelno >= last.level:
            last.handle(record)


class _NotInJob(logging.Filter):
    def __init__(self, target: Callable[[], LogBuffer | None]) -> None:
        super().__init__()
        self._target = target

    def filter(self, record: logging.LogRecord) -> bool:
        return self._target() is None


_lock = threading.Lock()
_users = 0
_installed: dict[str, Any] = {}


def _wrap_display(rich_target: Callable[[], RichOutputs | None]) -> None:
    """Route IPython's ``display(...)`` inside jobs to the job's rich outputs."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return
    try:
        from IPython.core.interactiveshell import InteractiveShell

        if not InteractiveShell.initialized():
            return
        publisher = InteractiveShell.instance().display_pub
    except Exception:  # no shell, or an unusual one: leave display alone
        return
    original = publisher.publish

    def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None, **kw: Any) -> None:
        outputs = rich_target()
        if outputs is None:
            original(data, metadata=metadata, **kw)
        else:
            outputs.add(data, metadata)

    publisher.publish = publish
    _installed["display"] = (publisher, original)


def install(
    target: Callable[[], LogBuffer | None],
    rich_target: Callable[[], RichOutputs | None] | None = None,
) -> None:
    """Start routing output (refcounted: one installation serves every open queue)."""
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, RoutingStream):
                _installed[name] = stream
                setattr(sys, name, RoutingStream(stream, target))
        root = logging.getLogger()
        handler = _JobLogHandler(target)
        jobs_filter = _NotInJob(target)
        for other in root.handlers:
            other.addFilter(jobs_filter)
        root.addHandler(handler)
        _installed["handler"] = handler
        _installed["filter"] = jobs_filter
        if rich_target is not None:
            _wrap_display(rich_target)


def routing() -> bool:
    """Whether output is being routed to jobs in this process already."""
    return isinstance(sys.stdout, RoutingStream)


def uninstall() -> None:
    """Undo :func:`install` once the last queue using it is closed."""
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users:
            return
        for name in ("stdout", "stderr"):
            original = _installed.pop(name, None)
            current = getattr(sys, name)
            if original is not None and isinstance(current, RoutingStream):
                setattr(sys, name, original)
        root = logging.getLogger()
        handler = _installed.pop("handler", None)
        jobs_filter = _installed.pop("filter", None)
        if handler is not None:
            root.removeHandler(handler)
        for other in root.handlers:
            if jobs_filter is not None:
                other.removeFilter(jobs_filter)
        display = _installed.pop("display", None)
        if display is not None:
            publisher, original = display
            publisher.publish = original
