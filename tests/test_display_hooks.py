"""How queues and jobs show themselves through nbqup.display_hooks, without the facade
naming a view module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbqup
from nbqup import display_hooks

WAIT = 20


def add(a: int, b: int) -> int:
    return a + b


@pytest.fixture
def restore_display() -> Iterator[None]:
    """Put back the display registered before the test."""
    previous = display_hooks.register(None)
    display_hooks.register(previous)
    yield
    display_hooks.register(previous)


def test_queues_and_jobs_show_themselves_through_the_registered_display(
    store_path: Path, restore_display: None
) -> None:
    calls: list[tuple[str, Any]] = []

    def record(name: str, returns: Any = None) -> Any:
        return lambda target: calls.append((name, target)) or returns

    display_hooks.register(
        display_hooks.Display(
            queue_widget=record("queue_widget", "a dashboard"),
            display_queue=record("display_queue"),
            job_widget=record("job_widget", "a bar"),
            display_job=record("display_job"),
            show_outputs=record("show_outputs"),
        )
    )
    with nbqup.JobQueue(store_path, workers=1) as jq:
        job = jq.submit(add, 1, 2)
        assert job.wait(WAIT)
        assert jq.widget() == "a dashboard"
        jq._ipython_display_()
        assert job.widget() == "a bar"
        job._ipython_display_()
        job.show()
    assert calls == [
        ("queue_widget", jq),
        ("display_queue", jq),
        ("job_widget", job),
        ("display_job", job),
        ("show_outputs", job),
    ]


def test_without_a_display_showing_a_job_names_it(store_path: Path, restore_display: None) -> None:
    display_hooks.register(None)
    with nbqup.JobQueue(store_path, workers=1) as jq:
        job = jq.submit(add, 1, 2)
        with pytest.raises(display_hooks.NoDisplay, match=f"cannot show job {job.id}: no view"):
            job.widget()
        with pytest.raises(nbqup.NbqupError, match=r"import nbqup\.widgets"):
            jq.widget()
    assert issubclass(display_hooks.NoDisplay, RuntimeError)


def test_import_nbqup_registers_the_widgets_and_refuses_other_values(
    restore_display: None,
) -> None:
    from nbqup import widgets

    shown = display_hooks.display("a queue")
    assert shown.queue_widget is widgets.queue_widget
    assert shown.show_outputs is widgets.show_outputs
    with pytest.raises(TypeError, match=r"expected a nbqup\.display_hooks\.Display, got 'x'"):
        display_hooks.register("x")  # type: ignore[arg-type]
