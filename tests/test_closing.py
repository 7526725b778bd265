"""The closing hooks (nbqup.closing): how ``JobQueue.close()`` tells views it is closing
without naming them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbqup
from nbqup import closing

WAIT = 20


def add(a: int, b: int) -> int:
    return a + b


@pytest.fixture
def registered() -> Iterator[list[closing.Hook]]:
    """Hooks a test registers, unregistered after it."""
    added: list[closing.Hook] = []
    yield added
    for hook in added:
        closing.unregister(hook)


def test_a_closing_hook_sees_the_final_state_before_the_store_closes(
    store_path: Path, registered: list[closing.Hook]
) -> None:
    seen: list[tuple[Any, str, int]] = []

    def hook(queue: Any) -> None:  # reads the store: it must still be open
        job = queue.get(job_id)
        seen.append((queue, job.status, job.result(timeout=0)))

    registered.append(closing.register(hook))
    jq = nbqup.JobQueue(store_path, workers=1)
    job_id = jq.submit(add, 2, 3).id
    assert jq.get(job_id).wait(WAIT)
    jq.close()
    assert seen == [(jq, "succeeded", 5)]
    with pytest.raises(RuntimeError, match="is closed"):  # the hooks ran before the end
        jq.submit(add, 1, 1)


def test_a_failing_hook_does_not_stop_close(
    store_path: Path, registered: list[closing.Hook], caplog: pytest.LogCaptureFixture
) -> None:
    after: list[Any] = []

    def broken(queue: Any) -> None:
        raise RuntimeError("a view broke")

    registered += [closing.register(broken), closing.register(after.append)]
    jq = nbqup.JobQueue(store_path, workers=1)
    job = jq.submit(add, 1, 2)
    assert job.wait(WAIT)
    with caplog.at_level(logging.ERROR, logger="nbqup"):
        jq.close()
    assert after == [jq]  # the hook after the broken one still ran
    assert "a view broke" in caplog.text  # the failure is told, not swallowed
    with nbqup.JobQueue(store_path, workers=1) as again:  # closed: the store is free
        assert again.get(job.id).result() == 3


def test_register_keeps_one_entry_per_hook_and_refuses_what_cannot_be_called(
    registered: list[closing.Hook],
) -> None:
    def hook(queue: Any) -> None:
        pass

    registered.append(closing.register(hook))
    closing.register(hook)
    assert closing.hooks().count(hook) == 1
    with pytest.raises(TypeError, match="must be callable, got 42"):
        closing.register(42)  # type: ignore[arg-type]


def test_the_widgets_register_their_hook_when_imported() -> None:
    from nbqup import widgets

    assert widgets.before_close in closing.hooks()
