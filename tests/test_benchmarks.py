"""The benchmark runner, the chaos, damage and fault runs work, on a tiny size.

Nothing here is timed: the figures come from ``python -m benchmarks`` (see
``benchmarks/RESULTS.md``).  These only check that the scripts run end to end, write
their JSON, that nbqup loses nothing when its process is SIGKILLed, and that a damaged
page kills no process and loses no job silently.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("huey")
pytest.importorskip("persistqueue")
HAS_DASK = importlib.util.find_spec("distributed") is not None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(120)
def test_runner_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run(
        [
            "benchmarks",
            "--quick",
            "--repeats",
            "1",
            "--sizes",
            "40",
            "--roundtrips",
            "5",
            "--submits",
            "20",
            "--history",
            "300",
            "--unfinished",
            "10",
            "--tmpdir",
            str(tmp_path),
            "--json",
            str(out),
        ],
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    measured = {(m["workload"], m["system"]): m for m in doc["measures"]}
    for workload in ("throughput 40", "roundtrip", "submit call"):
        for system in ("nbqup", "nbqup-fsync", "floor", "huey-sqlite/ms", "huey-file/ms"):
            assert measured[workload, system]["values"], (workload, system)
    for workload in ("throughput 40", "roundtrip"):
        for system in ("nbqup-process", "nbqup-dask") if HAS_DASK else ("nbqup-process",):
            assert measured[workload, system]["values"], (workload, system)
            assert measured[workload, system]["note"].startswith("info:"), (workload, system)
    assert ("submit call", "nbqup-process") not in measured  # throughput and round trip only
    assert measured["reopen 300+10", "nbqup"]["values"]
    assert any(r["name"].startswith("roundtrip: nbqup /") for r in doc["ratios"])
    assert "| figure | value | target | verdict |" in proc.stdout
    assert not list(tmp_path.glob(".bench-*")), "the runner left its stores behind"


@pytest.mark.timeout(120)
def test_chaos_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = _run(
        [
            "benchmarks.chaos",
            "--kills",
            "3",
            "--jobs",
            "30",
            "--seed",
            "3",
            "--max-delay",
            "0.5",
            "--faults",
            "none",  # the fault scenarios have a test of their own
            "--tmpdir",
            str(tmp_path),
            "--json",
            str(out),
        ],
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = {r["system"]: r for r in json.loads(out.read_text())["reports"]}
    nb = reports["nbqup"]
    assert nb["kills_delivered"] + nb["finished_before_kill"] == 3
    assert (nb["lost"], nb["wrong"], nb["corrupt"], nb["duplicates"]) == (0, 0, 0, 0), nb
    assert nb["acknowledged"] == 30
    assert "huey" in reports  # Huey's losses are reported, not asserted


@pytest.mark.timeout(120)
def test_damaged_pages_never_kill_and_lose_nothing_silently(tmp_path: Path) -> None:
    out = tmp_path / "damage.json"
    chaos = "--jobs 20 --kills 1"
    args = ["benchmarks.damage", "--copies", "3", "--chaos", chaos, "--tmpdir", str(tmp_path)]
    proc = _run([*args, "--json", str(out)], timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["opens"] == {"refused": 3}
    assert doc["totals"]["acknowledged"] == 60 and doc["totals"]["silent"] == 0
    assert all(row["ran"] == "ran" for row in doc["rows"])


@pytest.mark.timeout(180)
def test_a_full_disk_and_deleted_lock_files_kill_nothing_and_run_nothing_twice(
    tmp_path: Path,
) -> None:
    """The fault run's full disk (a real tmpfs: root only) and its lock files deleted
    under two live processes, on a small size: no death, no hang, nothing lost or run
    twice.  The damage scenario is the test above."""
    out = tmp_path / "faults.json"
    scenarios = "disk,locks" if os.geteuid() == 0 else "locks"
    args = ["benchmarks.faults", "--scenarios", scenarios, "--jobs", "40", "--lock-rounds", "1"]
    proc = _run([*args, "--disk-jobs", "350", "--tmpdir", str(tmp_path), "--json", str(out)], 170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = {r["scenario"]: r for r in json.loads(out.read_text())["reports"]}
    for report in reports.values():
        counts = [report[k] for k in ("deaths", "hangs", "lost", "run_twice", "silent_losses")]
        assert counts == [0, 0, 0, 0, 0] and report["rounds"] >= 1, report
    if "disk" in reports:  # the disk really filled: the child heard DiskFull and went on
        assert any("disk full" in p for p in reports["disk"]["problems"]), reports["disk"]


def _figures(tmp_path: Path, module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module *args --json FILE`` (tiny sizes) and return its figures."""
    out = tmp_path / f"{module}.json"
    proc = _run([module, *args, "--json", str(out)], timeout=110)
    assert proc.returncode == 0, proc.stderr
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


@pytest.mark.timeout(120)
def test_steps_benchmark_runs(tmp_path: Path) -> None:
    figures = _figures(tmp_path, "benchmarks.steps", "--calls", "20")
    assert figures["calls"] == 20
    assert set(figures) >= {"plain", "step", "checkpoint", "replay"}
    assert figures["plain"]["x_plain"] == 1.0


@pytest.mark.timeout(120)
def test_jobargs_benchmark_runs(tmp_path: Path) -> None:
    figures = _figures(tmp_path, "benchmarks.jobargs", "--rounds", "2", "--mb", "1")
    assert set(figures) >= {"pass_ms", "pickle_ms", "pass_x_pickle"}
    assert figures["pass_ms"] > 0 and figures["pickle_ms"] > 0


@pytest.mark.timeout(120)
def test_executor_benchmark_runs(tmp_path: Path) -> None:
    """jq.executor() against ThreadPoolExecutor and the queue's own submit/result."""
    figures = _figures(tmp_path, "benchmarks.executor", "--calls", "50", "--rounds", "1")
    assert figures["calls"] == 50
    assert set(figures["x_threadpool"]) == {"threadpool", "executor", "queue"}
    assert figures["x_threadpool"]["threadpool"] == 1.0 and figures["executor_x_queue"] > 0


def test_gridsearch_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "gridsearch.json"
    args = ["benchmarks.gridsearch", "--rounds", "1", "--candidates", "2", "--json", str(out)]
    proc = _run(args, timeout=110)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["fits"] == 10  # the same scores on every backend is asserted inside
    assert min(figures[f"{b}_s"] for b in ("loky", "threading", "nbqup", "nbqup_cached")) > 0


def test_limits_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    args = ["--jobs", "20", "--rate", "200", "--unlimited", "50", "--parked", "5", "--rounds", "1"]
    proc = _run(["benchmarks.limits", *args, "--json", str(out)], timeout=110)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["rate"]["jobs"] == 20 and figures["rate"]["achieved_per_s"] > 0
    assert figures["beside"]["parked"] == 5 and len(figures["beside"]["ratios"]) == 1


@pytest.mark.skipif(not HAS_DASK, reason="the dask extra is not installed")
@pytest.mark.timeout(120)
def test_dask_benchmark_runs(tmp_path: Path) -> None:
    """nbqup's Dask executor against client.map on one LocalCluster (issue 18)."""
    figures = _figures(tmp_path, "benchmarks.dask", "--jobs", "40", "--rounds", "1")
    assert set(figures["40"]["median_jobs_per_s"]) == {"client.map", "nbqup"}
    assert figures["40"]["ratio"] > 0


@pytest.mark.skipif(not HAS_DASK, reason="the dask extra is not installed")
@pytest.mark.timeout(120)
def test_dask_shared_argument_benchmark_runs(tmp_path: Path) -> None:
    """The shared-argument case (issue 18): one DataFrame to every job, against scatter."""
    figures = _figures(
        tmp_path, "benchmarks.dask", "--jobs", "0", "--shared-mb", "0.2", "--shared-jobs", "6",
        "--rounds", "1",
    )  # fmt: skip
    assert set(figures["shared"]["median_seconds"]) == {"scatter", "nbqup"}
    assert figures["shared"]["jobs"] == 6 and figures["shared"]["ratio"] > 0
