"""What the parts of an owner's runtime share, handed to each of them as one value.

Every part :class:`~nbqup.JobQueue` wires (the runtime, worker slots, scheduler,
recovery, submissions, schedules, job access) works on the same in-memory state, the
same store and group commit, and reads the same clock; :class:`Shared` carries them, so
a part's constructor names only what is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .clock import Clock
    from .commits import GroupCommit
    from .finished import FinishedJobs
    from .state import JobState
    from .store import Store
    from .trouble import WriteTrouble

__all__ = ["Shared"]


@dataclass(frozen=True, slots=True)
class Shared:
    """The state, store, group commit, clock and finished jobs of one queue."""

    #: Unfinished jobs in memory, and the one lock guarding them.
    state: JobState
    store: Store
    #: Every write of the runtime goes through it (see :mod:`nbqup.commits`).
    writer: GroupCommit
    clock: Clock
    #: Seconds between periodic checks (``JobQueue(poll_interval=...)``).
    poll: float
    #: Jobs finished in this process, kept for reads.
    finished: FinishedJobs
    #: The runtime's writes failing for a while (a full disk), said once.
    write_trouble: WriteTrouble
