"""How a queue and a job show themselves, without the facade naming a view module.

``jq.widget()``, ``display(jq)``, ``job.widget()``, ``display(job)`` and ``job.show()``
call the :class:`Display` registered here; :mod:`nbqup.widgets` registers its functions
when it is imported, which ``import nbqup`` does.  Layers point one way (DESIGN.md): the
queue and the job handles sit below the views, so they call up through this hook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import NbqupError

__all__ = ["Display", "NoDisplay", "display", "register"]


class NoDisplay(NbqupError, RuntimeError):
    """No view module registered how to show queues and jobs."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"cannot show {what}: no view module is registered "
            "(import nbqup.widgets, which registers one)"
        )


@dataclass(frozen=True)
class Display:
    """What the facade calls to show itself; each takes the queue or the job."""

    queue_widget: Callable[[Any], Any]
    display_queue: Callable[[Any], None]
    job_widget: Callable[[Any], Any]
    display_job: Callable[[Any], None]
    show_outputs: Callable[[Any], None]


_lock = threading.Lock()
_display: Display | None = None


def register(display: Display | None) -> Display | None:
    """Make ``display`` what queues and jobs call to show themselves (None: nothing);
    returns the one it replaces, so a test can put it back."""
    global _display
    if display is not None and not isinstance(display, Display):
        raise TypeError(f"expected a nbqup.display_hooks.Display, got {display!r}")
    with _lock:
        previous, _display = _display, display
    return previous


def display(what: str) -> Display:
    """The registered :class:`Display`; :class:`NoDisplay` naming ``what`` (e.g. "job
    j1") if none is."""
    with _lock:
        current = _display
    if current is None:
        raise NoDisplay(what)
    return current
