"""``python -m nbqup demo``: it resumes every job, and says where it left its store."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

import nbqup
from nbqup import demo


def test_the_demo_resumes_every_job_and_says_where_its_store_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its "temporary folder"
    assert demo.main() == 0
    out = capsys.readouterr().out
    (folder,) = tmp_path.glob("nbqup-demo-*")
    store = folder / "store"
    assert out.splitlines()[-2:] == [
        f"the store is left in {store} (a temporary folder: rm -r {folder} removes it)",
        f"its jobs: python -m nbqup jobs {store}",
    ]
    assert "no job was lost." in out
    with nbqup.JobQueue(store, workers=0) as jq:  # left there, as it says
        assert sorted(j.status for j in jq.jobs()) == ["succeeded"] * 4
