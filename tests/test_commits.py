"""Group commit (nbqup.commits): writers queue, one commits the batch for all."""

from __future__ import annotations

import threading
import time
from typing import Any

from records import rec

from nbqup.commits import GroupCommit
from nbqup.records import Status
from nbqup.store import Store


def test_group_commit_returns_only_once_each_writers_batch_is_in_the_store(
    store: Store,
) -> None:
    """Many threads queue and flush at once: every flush returns with its record already
    readable, and nothing hangs."""
    writer = GroupCommit(store)
    commits = []
    commit = store.commit

    def counting(*args: Any) -> None:
        commits.append(1)
        commit(*args)

    store.commit = counting  # type: ignore[method-assign]
    missing: list[str] = []
    start = threading.Barrier(8)

    def write(t: int) -> None:
        start.wait(timeout=20)
        for i in range(150):
            job_id = f"t{t}-{i:03d}"
            writer.flush(writer.add([rec(job_id, Status.SUCCEEDED)]))
            if store.load(job_id) is None:
                missing.append(job_id)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert missing == []
    assert len(store.backend.keys("meta")) == 8 * 150
    assert store.finished_counts()["succeeded"] == 8 * 150
    made = len(commits)
    writer.flush()  # nothing queued: returns at once, and commits nothing
    writer.flush(writer.add())
    assert len(commits) == made


def test_every_writer_of_a_failed_batch_gets_its_error(store: Store) -> None:
    writer = GroupCommit(store)
    entered, release = threading.Event(), threading.Event()
    commit = store.commit

    def slow_then_failing(records: Any, *args: Any) -> None:
        if any(r.id == "first" for r in records):
            entered.set()
            release.wait(20)
            return commit(records, *args)
        raise OSError("disk full")

    store.commit = slow_then_failing  # type: ignore[method-assign]
    first = threading.Thread(target=lambda: writer.flush(writer.add([rec("first")])))
    first.start()
    assert entered.wait(20)  # the first batch is being committed: the next ones queue
    errors: list[BaseException] = []

    def second(job_id: str) -> None:
        try:
            writer.flush(writer.add([rec(job_id)]))
        except OSError as exc:
            errors.append(exc)

    others = [threading.Thread(target=second, args=(f"x{i}",)) for i in range(3)]
    for th in others:
        th.start()

    def queued() -> int:  # writers waiting for batch 1, behind the slow batch 0
        cond = writer._waiting.get(1)
        return len(cond._waiters) if cond is not None else 0  # type: ignore[attr-defined]

    deadline = time.monotonic() + 20
    while queued() < 3 and time.monotonic() < deadline:
        threading.Event().wait(0.001)
    assert queued() == 3
    release.set()
    for th in (first, *others):
        th.join(timeout=20)
    assert [str(e) for e in errors] == ["disk full"] * 3  # each of the batch's writers
    assert store.load("first") is not None and store.load("x0") is None
