"""Hooks a closing queue calls, so that views hear of it without the queue naming them.

Layers point one way (DESIGN.md): the queue must not import or look up the widgets,
which sit above it.  A view module registers a hook when it is imported
(``closing.register(before_close)``); ``JobQueue.close()`` calls :func:`run` with itself
once its jobs have settled and while its store is still open, so a hook still reads the
final state of every job.  A hook that raises is logged and skipped: it never stops
``close()`` nor the hooks after it.

>>> seen = []
>>> hook = register(seen.append)
>>> run("a queue")
>>> unregister(hook)
>>> run("another")
>>> seen
['a queue']
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Hook", "hooks", "register", "run", "unregister"]

log = logging.getLogger("nbqup")

#: A closing hook: called with the queue that is closing.
Hook = Callable[[Any], None]

_lock = threading.Lock()
_hooks: list[Hook] = []


def register(hook: Hook) -> Hook:
    """Call ``hook(queue)`` whenever a queue closes, after the hooks registered before it.
    Registering the same hook twice keeps one entry.  Returns ``hook`` (a decorator)."""
    if not callable(hook):
        raise TypeError(f"a closing hook must be callable, got {hook!r}")
    with _lock:
        if hook not in _hooks:
            _hooks.append(hook)
    return hook


def unregister(hook: Hook) -> None:
    """Stop calling ``hook``; nothing happens if it was not registered."""
    with _lock:
        if hook in _hooks:
            _hooks.remove(hook)


def hooks() -> list[Hook]:
    """The registered hooks, in the order they are called."""
    with _lock:
        return list(_hooks)


def run(queue: Any) -> None:
    """Call every hook with ``queue``; a hook that raises is logged and the rest still run."""
    for hook in hooks():
        try:
            hook(queue)
        except Exception:
            log.exception("nbqup: closing hook %r failed; the queue closes anyway", hook)
