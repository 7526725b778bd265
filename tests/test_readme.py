"""The README's Python examples run as written, in order, as cells of one notebook."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import nbqup

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(BLOCKS) >= 4
    monkeypatch.chdir(tmp_path)  # stores like ".nbqup" land in a temporary folder
    namespace: dict[str, object] = {"__name__": "__main__"}
    try:
        for index, block in enumerate(BLOCKS):
            exec(compile(block, f"README python block {index}", "exec"), namespace)
    finally:
        for jq in list(nbqup.queue._open_queues):  # the first example leaves its queue open
            jq.close(wait=False)
    assert (tmp_path / ".nbqup").is_dir() and (tmp_path / ".nbqup-sweep").is_dir()
