"""The command line, run as the real console script in a subprocess.

The stores are prepared here with builtins as job functions (``pow``, ``divmod``, ``sum``),
so nothing has to be importable from this test module in the CLI's process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from nbqup import JobQueue
from nbqup.recovery import Recovery
from nbqup.store import Store

WAIT = 20
_SCRIPT = Path(sys.executable).with_name("nbqup")
NBQUP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nbqup"]
OWNER_NONE = "none (no process is running these jobs)"


def cli(*args: object, module: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``nbqup ARGS`` (or ``python -m nbqup ARGS``) with local time = UTC."""
    cmd = [sys.executable, "-m", "nbqup"] if module else NBQUP
    env = dict(os.environ, TZ="UTC", COLUMNS="100")
    env.pop("NBQUP_DEBUG", None)
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, timeout=60, env=env
    )


def fails(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert a clean failure: exit ``code``, nothing on stdout, one ``nbqup:`` line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbqup: "), proc.stderr
    return lines[0]


def ok(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == ""
    return proc.stdout.splitlines()


@dataclass
class Prepared:
    path: Path
    pow: str  # succeeded: 1024
    divmod: str  # failed: ZeroDivisionError
    later: str  # scheduled in an hour, tagged
    sum: str  # queued (submitted while nothing runs)

    @property
    def ids(self) -> list[str]:
        return [self.pow, self.divmod, self.later, self.sum]


@pytest.fixture
def store(tmp_path: Path) -> Prepared:
    path = tmp_path / "store"
    with JobQueue(path, workers=1) as jq:
        good = jq.submit(pow, 2, 10)
        bad = jq.submit(divmod, 1, 0)
        assert good.wait(WAIT) and bad.wait(WAIT)
        later = jq.options(name="later", tags=["nightly", "x"]).after("1h").submit(sum, [1, 2])
    with JobQueue(path, workers=0) as jq:
        queued = jq.submit(sum, [1, 2, 3])
    return Prepared(path, good.id, bad.id, later.id, queued.id)


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------------------- status


def test_status_counts_jobs(store: Prepared) -> None:
    assert ok(cli("status", store.path)) == [
        f"store      {store.path}",
        f"owner      {OWNER_NONE}",
        "scheduled  1",
        "queued     1",
        "succeeded  1",
        "failed     1",
        "total      4",
    ]


def test_status_names_the_live_owner_only(store: Prepared) -> None:
    with JobQueue(store.path, workers=1) as jq:
        lines = ok(cli("status", store.path))
        assert lines[1] == f"owner      pid {os.getpid()}"
        jq.every("1h").submit(pow, 3, 3)
    # the pid is still written beside the lock, but nobody holds the lock any more
    assert (store.path / "owner.json").exists()
    lines = ok(cli("status", store.path))
    assert lines[1] == f"owner      {OWNER_NONE}"
    assert lines[-1] == "schedules  1 active"


def test_status_reports_corrupt_records(store: Prepared) -> None:
    s = Store(store.path)
    s.backend.write([("meta", store.sum, b"\x01\x00garbage")])
    s.close()
    lines = ok(cli("status", store.path))
    assert lines[-2:] == ["total      3", "corrupt    1 unreadable"]
    proc = cli("jobs", store.path)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 4  # header + 3
    assert proc.stderr == "nbqup: 1 unreadable job record(s) not shown (see 'nbqup status')\n"
    line = fails(cli("cancel", store.path, store.sum), 1)
    assert line.startswith(f"nbqup: corrupt record {store.sum!r} in store {store.path}:")


# --------------------------------------------------------------------------------- jobs


def test_jobs_table(store: Prepared) -> None:
    with JobQueue(store.path, workers=0) as jq:
        recs = [jq.get(i).record for i in store.ids]
    later_due = recs[2].scheduled_for
    assert later_due is not None
    header = ("ID", "STATUS", "ATTEMPTS", "CREATED", "NAME", "INFO")
    rows = [
        (store.pow, "succeeded", "1", utc(recs[0].created), "pow", "1024"),
        (
            store.divmod,
            "failed",
            "1",
            utc(recs[1].created),
            "divmod",
            "ZeroDivisionError: integer division or modulo by zero",
        ),
        (store.later, "scheduled", "0", utc(recs[2].created), "later", f"due {utc(later_due)}"),
        (store.sum, "queued", "0", utc(recs[3].created), "sum", ""),
    ]
    assert ok(cli("jobs", store.path)) == table([header, *rows])
    assert ok(cli("jobs", store.path, "--limit", "2")) == table([header, *rows[2:]])
    assert ok(cli("jobs", store.path, "--status", "failed")) == table([header, rows[1]])
    assert ok(cli("jobs", store.path, "--status", "running")) == table([header])


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart, ATTEMPTS right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return [
        "  ".join(
            c.rjust(w) if i == 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def test_jobs_json(store: Prepared) -> None:
    data = json.loads(cli("jobs", store.path, "--json").stdout)
    with JobQueue(store.path, workers=0) as jq:
        jobs = [jq.get(i) for i in store.ids]
        times = [(j.created, j.scheduled_for, j.started, j.finished) for j in jobs]
    assert [d["id"] for d in data] == store.ids
    keys = {
        "id",
        "name",
        "status",
        "attempts",
        "created",
        "scheduled_for",
        "started",
        "finished",
        "progress",
        "message",
        "error",
        "traceback",
        "result",
        "tags",
    }
    assert all(set(d) == keys for d in data)
    good, bad, later, queued = data
    for d, when in zip(data, times, strict=True):
        fields = ("created", "scheduled_for", "started", "finished")
        assert tuple(d[f] for f in fields) == tuple(t and t.isoformat() for t in when)
        assert datetime.fromisoformat(d["created"]) == when[0]
    assert good["name"] == "pow" and good["status"] == "succeeded" and good["attempts"] == 1
    assert good["result"] == "1024" and good["error"] is None and good["traceback"] is None
    assert bad["status"] == "failed" and bad["result"] is None
    assert bad["error"] == "ZeroDivisionError: integer division or modulo by zero"
    assert bad["traceback"].startswith("Traceback (most recent call last):")
    assert later["status"] == "scheduled" and later["tags"] == ["nightly", "x"]
    assert later["scheduled_for"] is not None
    assert later["started"] is None and later["finished"] is None
    assert queued == {
        **queued,
        "name": "sum",
        "status": "queued",
        "attempts": 0,
        "result": None,
        "tags": [],
    }
    only = json.loads(
        cli("jobs", store.path, "--json", "--status", "failed", "--limit", "5").stdout
    )
    assert only == [bad]
    assert json.loads(cli("jobs", store.path, "--json", "--status", "running").stdout) == []


# ------------------------------------------------------------------------ cancel, retry


def statuses(store: Prepared) -> dict[str, tuple[str, int]]:
    """(status, attempts) of each job, as ``nbqup jobs --json`` shows them."""
    data = json.loads("\n".join(ok(cli("jobs", store.path, "--json"))))
    return {d["id"]: (d["status"], d["attempts"]) for d in data}


def test_cancel_and_retry_apply_at_once_on_a_store_no_process_runs(store: Prepared) -> None:
    """No process runs the store: the command owns it for a moment and applies its own
    request, so ``jobs`` right after shows the change; doing it twice says so."""
    prefix = store.sum[:15]
    assert ok(cli("cancel", store.path, prefix)) == [f"cancelled job {store.sum} (sum)"]
    assert statuses(store)[store.sum] == ("cancelled", 0)
    line = fails(cli("cancel", store.path, store.sum), 1)
    assert line == f"nbqup: job {store.sum} (sum) already cancelled; nothing to cancel"
    assert ok(cli("retry", store.path, store.divmod)) == [
        f"retried job {store.divmod} (divmod): now queued; no process is running the "
        "store, the next one to run it runs the job"
    ]
    assert statuses(store)[store.divmod] == ("queued", 1)
    line = fails(cli("retry", store.path, store.divmod), 1)
    assert line == (
        f"nbqup: job {store.divmod} is queued; only failed or cancelled jobs can be retried"
    )
    line = fails(cli("cancel", store.path, store.pow), 1)
    assert line == f"nbqup: job {store.pow} (pow) already succeeded; nothing to cancel"
    line = fails(cli("retry", store.path, store.later), 1)
    assert line == (
        f"nbqup: job {store.later} is scheduled; only failed or cancelled jobs can be retried"
    )
    assert ok(cli("status", store.path))[1:] == [
        f"owner      {OWNER_NONE}",  # the command let the store go
        "scheduled  1",
        "queued     1",
        "succeeded  1",
        "cancelled  1",
        "total      4",
    ]
    with JobQueue(store.path, workers=0) as jq:
        assert dict(jq.store.requests.text) == {}  # each request was taken once, applied
    with JobQueue(store.path, workers=1) as jq:  # the next owner runs the retried job once
        assert jq.get(store.sum).status == "cancelled"
        retried = jq.get(store.divmod)
        assert retried.wait(WAIT)
        assert retried.status == "failed" and retried.attempts == 2


_OPENER = """
import sys
from nbqup import JobQueue, ownership
path, job_id, if_locked = sys.argv[1:]
looked = ownership.brief_holder
def brief_holder(p):
    found = looked(p)
    if found:
        print("waiting", flush=True)
        ownership.brief_holder = looked
    return found
ownership.brief_holder = brief_holder
with JobQueue(path, workers=1, poll_interval=0.05, if_locked=if_locked) as jq:
    job = jq.get(job_id)
    job.wait(60)
    print("owner" if jq.is_owner else "client", job.status, job.attempts, flush=True)
"""


@pytest.mark.parametrize("if_locked", ["client", "raise"])
def test_a_process_opening_the_store_during_the_brief_hold_waits_for_it(
    store: Prepared, monkeypatch: pytest.MonkeyPatch, if_locked: str
) -> None:
    """A real second process opens the store to run it while a retry holds it: it
    waits for the hold to end (rather than becoming a client or, with
    ``if_locked="raise"`` as ``nbqup worker`` opens, refusing the store), then runs the
    retried job exactly once -- the request was neither lost nor applied twice."""
    holding, go = threading.Event(), threading.Event()
    recover = Recovery.recover

    def held_until_go(self: Recovery) -> None:
        holding.set()
        assert go.wait(WAIT)
        recover(self)

    monkeypatch.setattr(Recovery, "recover", held_until_go)
    applied: list[bool] = []
    with JobQueue(store.path, workers=0) as client:
        client.get(store.divmod).retry()  # the request, as ``nbqup retry`` leaves it
        applying = threading.Thread(target=lambda: applied.append(client.apply_requests()))
        applying.start()
        assert holding.wait(WAIT)  # the owner lock is held, marked brief
        opener = subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(store.path), store.divmod, if_locked],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert opener.stdout is not None
            assert opener.stdout.readline() == "waiting\n"  # it found the lock held
            go.set()
            applying.join(WAIT)
            assert applied == [True]
            out, _ = opener.communicate(timeout=WAIT * 2)
        finally:
            go.set()
            if opener.poll() is None:
                opener.kill()
    assert opener.returncode == 0
    assert out.splitlines() == ["owner failed 2"]  # it ran the job, once more
    with JobQueue(store.path, workers=0) as jq:
        assert jq.get(store.divmod).attempts == 2
        assert not jq.store.requests.waiting(store.divmod)


def test_cancel_and_retry_applied_by_a_live_owner(store: Prepared) -> None:
    with JobQueue(store.path, workers=1, poll_interval=0.05) as jq:
        assert ok(cli("cancel", store.path, store.later)) == [
            f"cancelled job {store.later} (later)"
        ]
        assert jq.get(store.later).status == "cancelled"
        (line,) = ok(cli("retry", store.path, store.later))
        assert re.fullmatch(
            rf"retried job {store.later} \(later\): now (queued|running|succeeded)", line
        )
        assert jq.get(store.later).result(timeout=WAIT) == 3
        (line,) = ok(cli("retry", store.path, store.divmod[:15]))
        assert re.fullmatch(rf"retried job {store.divmod} \(divmod\): now \w+", line)
        assert jq.get(store.divmod).wait(WAIT)
        assert jq.get(store.divmod).attempts == 2


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", ["status", "jobs", "cancel", "retry", "salvage"])
def test_missing_store_is_not_created(tmp_path: Path, command: str) -> None:
    extra = ["abc"] if command in ("cancel", "retry") else []
    missing = tmp_path / "nope"
    line = fails(cli(command, missing, *extra), 2)
    assert line == f"nbqup: no store at {missing}: no such directory"
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    line = fails(cli(command, empty, *extra), 2)
    assert line == f"nbqup: no store at {empty}: the directory holds no nbqup store"
    assert list(empty.iterdir()) == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = fails(cli(command, afile, *extra), 2)
    assert line == f"nbqup: no store at {afile}: it is not a directory"


def test_unknown_and_ambiguous_ids(store: Prepared) -> None:
    for command in ("cancel", "retry"):
        line = fails(cli(command, store.path, "zzz"), 1)
        assert line == f"nbqup: no job 'zzz' in store {store.path}"
        line = fails(cli(command, store.path, store.pow[0]), 1)
        assert line.startswith(f"nbqup: job id prefix {store.pow[0]!r} matches several jobs (")
        assert line.endswith("); give more of the id")


def test_unreadable_store(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    (garbage / "lmdb").mkdir(parents=True)
    (garbage / "lmdb" / "data.mdb").write_bytes(b"not lmdb at all" * 1000)
    for args in (["status"], ["jobs"], ["cancel", "x"], ["worker"]):
        line = fails(cli(args[0], garbage, *args[1:]), 1)
        assert line.startswith(f"nbqup: store {garbage} is damaged: lmdb/data.mdb: not an LMDB")
        assert line.endswith(
            f"run 'nbqup salvage {garbage}' to copy what still reads into a fresh store"
        )
    newer = tmp_path / "newer"
    JobQueue(newer, workers=0).close()
    s = Store(newer)
    s.backend.write([("info", "format", b"99")])
    s.close()
    line = fails(cli("status", newer), 1)
    assert line.startswith(f"nbqup: store {newer} has format 99, newer than this nbqup")


def test_worker_refuses_a_store_another_process_runs(store: Prepared) -> None:
    with JobQueue(store.path, workers=1):
        line = fails(cli("worker", store.path, "-w", "1"), 1)
    assert line == (
        f"nbqup: store {store.path} is already run by process {os.getpid()}; stop that "
        "process first (notebooks can submit to it as clients meanwhile)"
    )
    afile = store.path.parent / "afile"
    afile.write_text("")
    line = fails(cli("worker", afile), 2)
    assert line == f"nbqup: cannot run a store at {afile}: it is not a directory"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nbqup: a command is needed (see 'nbqup --help')"),
        (["frobnicate"], "nbqup: argument COMMAND: invalid choice: 'frobnicate'"),
        (["jobs"], "nbqup: the following arguments are required: PATH (see 'nbqup jobs --help')"),
        (["cancel", "p"], "nbqup: the following arguments are required: ID"),
        (["jobs", "p", "--status", "done"], "nbqup: argument --status: invalid choice: 'done'"),
        (["jobs", "p", "--limit", "0"], "nbqup: argument --limit: must be at least 1, got 0"),
        (["worker", "p", "-w", "0"], "nbqup: argument -w/--workers: must be at least 1, got 0"),
        (["worker", "p", "-w", "x"], "nbqup: argument -w/--workers: not a whole number: 'x'"),
        (["worker", "p", "--durability", "disk"], "nbqup: argument --durability: invalid"),
        (["worker", "p", "--poll", "0"], "nbqup: argument --poll: must be > 0, got 0"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    line = fails(cli(*[str(tmp_path / a) if a == "p" else a for a in args]), 2)
    assert line.startswith(message)
    assert not (tmp_path / "p").exists()


def test_bad_executor_for_worker(tmp_path: Path) -> None:
    line = fails(cli("worker", tmp_path / "s", "--executor", "gpu"), 2)
    assert line.startswith("nbqup: executor must be 'thread', 'process' or a dask Client")


# --------------------------------------------------------------------------------- help


def test_help_lists_every_command() -> None:
    lines = ok(cli("--help"))
    text = "\n".join(lines)
    assert lines[0].startswith("usage: nbqup [-h] COMMAND")
    for command, summary in [
        ("status", "counts of jobs by status, and which process runs them"),
        ("jobs", "list the jobs of a store"),
        ("cancel", "cancel a job"),
        ("retry", "run a failed or cancelled job again"),
        ("worker", "run a store's jobs in this process until SIGTERM or Ctrl-C"),
        ("salvage", "copy what still reads of a damaged store into a fresh one"),
        ("demo", "submit jobs, kill the process, reopen and resume"),
    ]:
        assert re.search(rf"^\s+{command}\s+{re.escape(summary)}$", text, re.M), command
    assert "Exit status: 0 on success, 1 on an error, 2 on bad usage" in text


@pytest.mark.parametrize(
    ("command", "usage", "phrase"),
    [
        ("status", "usage: nbqup status [-h] PATH", "pid of the process running its workers"),
        (
            "jobs",
            "usage: nbqup jobs [-h] [--status {scheduled,queued,running,succeeded,failed,"
            "cancelled,skipped}] [--json] [--limit N] PATH",
            "oldest first",
        ),
        ("cancel", "usage: nbqup cancel [-h] PATH ID", "a running one is asked to stop"),
        ("retry", "usage: nbqup retry [-h] [--fresh] PATH ID", "fresh budget of retries"),
        (
            "worker",
            "usage: nbqup worker [-h] [-w N] [--durability {process,fsync}] "
            "[--executor EXECUTOR] [--poll SECONDS] [--gpus IDS] PATH",
            "does not count as an attempt",
        ),
        ("salvage", "usage: nbqup salvage [-h] [--to NEW] PATH", "reading the damaged file"),
        ("demo", "usage: nbqup demo [-h] [--path PATH]", "SIGKILLed while they run"),
    ],
)
def test_help_of_each_command(command: str, usage: str, phrase: str) -> None:
    text = " ".join(" ".join(ok(cli(command, "--help"))).split())
    assert text.startswith(usage)
    assert phrase in text


def test_python_dash_m_runs_the_same_cli(store: Prepared) -> None:
    assert ok(cli("status", store.path, module=True)) == ok(cli("status", store.path))
