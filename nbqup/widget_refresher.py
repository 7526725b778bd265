"""The one thread that writes to nbqup's widgets, for every live view.

Widgets are not safe to write from several threads, and Jupyter silently drops iopub
messages past 1,000/s: so every widget write happens here, :data:`HZ` times a second for
all views together, one message per widget (``hold_sync``), within a budget of
:data:`MAX_MESSAGES` a second, status changes first and then the stalest values.  A view
is anything with ``refresh(want)``, ``closed`` and ``done``; the views themselves are in
:mod:`nbqup.widget_views`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["BURST", "HZ", "MAX_MESSAGES", "Refresher", "Want", "refresher"]

log = logging.getLogger("nbqup")

#: Refresher ticks per second, for all views together.
HZ = 5.0
#: Widget update messages per second, for all views together (a token bucket)...
MAX_MESSAGES = 14.0
#: ... which saves up at most this many while nothing changes.
BURST = 4.0

Want = Callable[..., None]  # want(widget, priority, **values): what a widget should show
#: How long a change of each priority may wait before it beats a fresher change of
#: priority 0 (status, counts, buttons): no priority starves.
_LAG = {0: 0.0, 1: 0.4}


class Refresher:
    """The one thread that writes to nbqup's widgets, for every view.

    Each :meth:`tick` asks every live view (``view.refresh(want)``) which values its
    widgets should show and writes those that differ from what they show, one message per
    widget (``hold_sync``), within a budget of ``max_messages`` a second (a token bucket
    holding up to ``burst``): status changes first, then whatever has waited longest.
    The thread ticks ``hz`` times a second and ends when no view is left; :meth:`add`
    starts it again.  With ``thread=False`` nothing runs by itself: call :meth:`tick`.
    """

    def __init__(
        self,
        hz: float = HZ,
        max_messages: float = MAX_MESSAGES,
        burst: float = BURST,
        *,
        thread: bool = True,
    ) -> None:
        self.interval = 1.0 / hz
        self.max_messages = max_messages
        self.burst = burst
        self._use_thread = thread
        self._views: list[weakref.ref[Any]] = []
        self._lock = threading.Lock()
        #: Held while widgets are written or closed (closing happens off the thread).
        self.write_lock = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._tokens = burst
        self._last: float | None = None
        self._since: dict[int, float] = {}  # widget -> when its pending change appeared
        #: Widget update messages written so far.
        self.messages = 0

    def add(self, view: Any) -> None:
        """Keep ``view`` up to date (held weakly); make sure the thread runs."""
        with self._lock:
            self._views.append(weakref.ref(view))
            if self._use_thread and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbqup-widgets", daemon=True)
                self._thread.start()
        self._wake.set()

    def wake(self) -> None:
        """Tick now rather than at the next interval (a button was clicked)."""
        self._wake.set()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def views(self) -> list[Any]:
        """The views still alive."""
        with self._lock:
            alive = [(ref, ref()) for ref in self._views]
            self._views = [ref for ref, v in alive if v is not None and not v.closed]
            return [v for _, v in alive if v is not None and not v.closed]

    def _run(self) -> None:
        while True:
            with self._lock:
                if not any((v := ref()) is not None and not v.closed for ref in self._views):
                    self._views, self._thread = [], None
                    return
            began = time.monotonic()
            try:
                self.tick(began)
            except Exception:  # a bug in one view must not stop the others' updates
                log.exception("nbqup: widget refresh failed")
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - began)))
            self._wake.clear()

    def tick(self, now: float | None = None) -> int:
        """Refresh every view once; returns how many widget messages it wrote."""
        now = time.monotonic() if now is None else now
        with self.write_lock:
            pending = []
            for key, (widget, view, values, prio) in self._collect().items():
                diff = {k: v for k, v in values.items() if not _same(getattr(widget, k), v)}
                if diff:
                    since = self._since.get(key, now)
                    due = since + min(_LAG.get(prio[k], 1.0) for k in diff)
                    pending.append((due, since, key, widget, view, diff))
            self._since = {p[2]: p[1] for p in pending}
            if self._last is not None:
                self._tokens = min(
                    self.burst, self._tokens + (now - self._last) * self.max_messages
                )
            self._last = now
            sent, behind = 0, set()
            for _, _, key, widget, view, diff in sorted(pending, key=lambda p: p[:2]):
                if self._tokens < 1.0:
                    behind.add(id(view))
                    continue
                with widget.hold_sync():
                    for name, value in diff.items():
                        setattr(widget, name, value)
                self._tokens -= 1.0
                sent += 1
                del self._since[key]
            self.messages += sent
        with self._lock:  # a view that has shown its last state is done with
            self._views = [
                ref
                for ref in self._views
                if (v := ref()) is not None
                and not v.closed
                and not (v.done and id(v) not in behind)
            ]
        return sent

    def flush(self) -> int:
        """One tick with no message budget, so every view shows its current state now
        (a queue about to close calls it: its views stop updating after that)."""
        with self.write_lock:
            budget = self.burst, self._tokens
            self.burst = self._tokens = float("inf")
            try:
                return self.tick()
            finally:
                self.burst, self._tokens = budget

    def _collect(self) -> dict[int, tuple[Any, Any, dict[str, Any], dict[str, int]]]:
        wanted: dict[int, tuple[Any, Any, dict[str, Any], dict[str, int]]] = {}
        for view in self.views():

            def want(widget: Any, priority: int, view: Any = view, **values: Any) -> None:
                entry = wanted.setdefault(id(widget), (widget, view, {}, {}))
                entry[2].update(values)
                entry[3].update(dict.fromkeys(values, priority))

            try:
                view.refresh(want)
            except Exception as exc:  # e.g. the store went away under it
                log.debug("nbqup: a view stopped: %r", exc)
                view.done = True
        return wanted


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


_REFRESHER = Refresher()


def refresher() -> Refresher:
    """The refresher every view uses unless given another."""
    return _REFRESHER
