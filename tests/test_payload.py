"""nbqup.payload: functions into bytes and back, and what a process keeps of them."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import cloudpickle
import pytest

from nbqup import JobQueue, payload

WAIT = 60


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> Path:
    """A module ``name`` in ``tmp_path`` whose ``answer()`` returns ``body``."""
    path = tmp_path / f"{name}.py"
    path.write_text(f"def answer():\n    return {body!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_job_runs_the_new_body_of_a_reloaded_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: str
) -> None:
    name = f"nbqup_reloaded_{executor}"
    path = _module(tmp_path, monkeypatch, name, "old")
    mod = importlib.import_module(name)
    with JobQueue(tmp_path / "store", workers=1, executor=executor) as jq:
        assert jq.submit(mod.answer).result(timeout=WAIT) == "old"
        # The same pickle (by reference: the name), a new body.  Another size, so that
        # Python does not take its cached bytecode of the old file for the new one.
        path.write_text("def answer():\n    return 'the new body'\n")
        importlib.reload(mod)
        assert jq.submit(mod.answer).result(timeout=WAIT) == "the new body"
        assert jq.submit(functools.partial(mod.answer)).result(timeout=WAIT) == "the new body"


def test_a_function_pickled_by_value_is_unpickled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def local(x: int) -> int:
        return x + 1

    blob = cloudpickle.dumps(local, protocol=5)
    reads = []
    monkeypatch.setattr(payload, "_loaded_fns", type(payload._loaded_fns)())
    first = payload.load_fn("h1", lambda: reads.append(1) or blob)
    assert payload.load_fn("h1", lambda: reads.append(1) or blob) is first
    assert first(1) == 2 and reads == [1]


def test_a_pickle_by_reference_is_read_once_and_looked_up_at_each_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = importlib.import_module(_module(tmp_path, monkeypatch, "nbqup_byname", "a").stem)
    blob = cloudpickle.dumps(mod.answer, protocol=5)
    reads = []
    monkeypatch.setattr(payload, "_loaded_fns", type(payload._loaded_fns)())
    assert payload.load_fn("h2", lambda: reads.append(1) or blob)() == "a"
    monkeypatch.setattr(mod, "answer", lambda: "b")  # what the name is now
    assert payload.load_fn("h2", lambda: reads.append(1) or blob)() == "b"
    assert reads == [1]
