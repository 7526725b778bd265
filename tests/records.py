"""Job records for the store's tests (the ``store`` fixture is in conftest.py)."""

from __future__ import annotations

from typing import Any

from nbqup.records import JobRecord, Status


def rec(job_id: str, status: Status = Status.QUEUED, **fields: Any) -> JobRecord:
    """A record with fixed name and creation time, so that two built alike compare equal."""
    return JobRecord(
        id=job_id, name=f"job {job_id}", created=1_800_000_000.0, status=status, **fields
    )
