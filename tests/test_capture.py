"""Output of jobs goes to each job's logs, never to the process's stdout."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest

import nbqup
from nbqup import JobQueue
from nbqup.capture import LogBuffer, RoutingStream

WAIT = 20
BARRIER = threading.Barrier(4, timeout=WAIT)


def chatty(n: int) -> int:
    BARRIER.wait()  # all four run at once, interleaving their output
    for i in range(50):
        print(f"job{n} line{i}")
        print(f"job{n} err{i}", file=sys.stderr)
    logging.getLogger("nbqup.test").warning("job%d warns", n)
    return n


def failing() -> None:
    print("about to fail")
    raise KeyError("missing")


def test_concurrent_jobs_output_lands_in_their_own_logs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with JobQueue(tmp_path / "s", workers=4) as jq:
        print("outside before")
        jobs = [jq.submit(chatty, n) for n in range(4)]
        assert [j.result(timeout=WAIT) for j in jobs] == [0, 1, 2, 3]
        print("outside after")
        for n, job in enumerate(jobs):
            lines = job.logs.splitlines()
            assert [x for x in lines if "line" in x] == [f"job{n} line{i}" for i in range(50)]
            assert [x for x in lines if "err" in x] == [f"job{n} err{i}" for i in range(50)]
            assert f"WARNING:nbqup.test: job{n} warns" in lines
            assert not any(f"job{m}" in job.logs for m in range(4) if m != n)
    out, err = capfd.readouterr()
    assert "job" not in out and "job" not in err
    assert "outside before" in out and "outside after" in out


def test_logs_survive_reopen_and_include_the_traceback(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.options(retries=1).submit(failing)
        job.wait(WAIT)
        job_id = job.id
    with JobQueue(tmp_path / "s", workers=0) as jq:
        logs = jq.get(job_id).logs
    assert logs.count("about to fail") == 2
    assert "--- attempt 2 ---" in logs
    assert "KeyError: 'missing'" in logs


def test_streams_are_restored_after_close(tmp_path: Path) -> None:
    before = sys.stdout, sys.stderr, list(logging.getLogger().handlers)
    with JobQueue(tmp_path / "a", workers=1), JobQueue(tmp_path / "b", workers=1):
        assert isinstance(sys.stdout, RoutingStream)
    assert (sys.stdout, sys.stderr, list(logging.getLogger().handlers)) == before


def test_warnings_outside_jobs_still_reach_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a plain kernel: logging falls back to lastResort
    try:
        with JobQueue(tmp_path / "s", workers=1):
            logging.getLogger("nbqup.elsewhere").warning("visible outside jobs")
    finally:
        root.handlers[:] = saved
    assert "visible outside jobs" in capsys.readouterr().err


def test_log_buffer_keeps_the_tail() -> None:
    buf = LogBuffer(limit=100)
    for i in range(1000):
        buf.write(f"{i:04d}\n")
    text = buf.text()
    assert text.endswith("0999\n")
    assert "dropped" in text.splitlines()[0]
    assert len(text.split("\n", 1)[1]) == 100


def test_current_job_is_none_outside() -> None:
    assert nbqup.current_job() is None


def displays_html() -> int:
    from IPython.display import HTML, display

    print("text")
    display(HTML("<b>bold</b>"))
    return 1


def test_display_inside_a_job_becomes_its_rich_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display

    InteractiveShell.instance()  # a shell, as in a kernel
    with JobQueue(tmp_path / "s", workers=1) as jq:
        job = jq.submit(displays_html)
        assert job.result(timeout=WAIT) == 1
        display("outside")  # not in a job: still displayed
        job_id = job.id
    with JobQueue(tmp_path / "s", workers=0) as jq:  # kept in the store
        (bundle,) = jq.get(job_id).outputs
    assert bundle["data"]["text/html"] == "<b>bold</b>"
    out = capsys.readouterr().out
    assert "outside" in out and "bold" not in out and "text" not in out


PRINTED = threading.Event()


def prints_then_waits() -> str:
    print("run starts")
    PRINTED.set()
    for _ in range(2000):
        nbqup.progress(0.5)  # raises once close(wait=False) asks the job to stop
        threading.Event().wait(0.005)
    return "done"


def test_output_of_a_run_interrupted_by_close_is_kept(tmp_path: Path) -> None:
    jq = JobQueue(tmp_path / "s", workers=1)
    job_id = jq.submit(prints_then_waits).id
    assert PRINTED.wait(WAIT)
    jq.close(wait=False)
    PRINTED.clear()
    again = JobQueue(tmp_path / "s", workers=1)
    try:
        assert PRINTED.wait(WAIT)
        logs = again.get(job_id).logs  # live: the earlier run's output, then this one's
    finally:
        again.close(wait=False)
    assert logs.count("run starts") == 2, logs
    assert "--- attempt 1 (resumed) ---" in logs
