"""The requests table: a client's requests are stored as text, waiting until taken, and
each is taken once (in memory and on LMDB, through the ``store`` fixture)."""

from __future__ import annotations

from nbqup.requests import Requests
from nbqup.store import Store


def test_requests_wait_until_taken_and_are_taken_in_key_order(store: Store) -> None:
    asked = store.requests
    asked.job("j2", "retry")
    asked.job("j1", "cancel")
    asked.schedule("s1", "paused")
    assert asked.waiting("j1") and asked.waiting("j2") and not asked.waiting("s1")
    taken = asked.take()
    assert next(taken) == ("schedule", "s1", "paused")
    assert store.get_blob("requests", "@s1") is None  # deleted as it is handed out
    assert store.get_blob("requests", "j1") == b"cancel"  # the rest still waits
    assert list(taken) == [("job", "j1", "cancel"), ("job", "j2", "retry")]
    assert not asked.waiting("j1") and list(asked.take()) == []


def test_a_later_request_for_the_same_job_replaces_the_earlier(store: Store) -> None:
    store.requests.job("j1", "cancel")
    store.requests.job("j1", "retry")
    assert list(store.requests.take()) == [("job", "j1", "retry")]


def test_requests_are_stored_as_utf8_bytes_as_before(store: Store) -> None:
    store.put_blob("requests", "j1", b"cancel")  # as an older client wrote it
    store.put_blob("requests", "@s1", b"\xffpaused")  # damaged: read, never an error
    store.requests.job("j2", "retry")
    assert store.get_blob("requests", "j2") == b"retry"
    assert list(store.requests.take()) == [
        ("schedule", "s1", "\ufffdpaused"),
        ("job", "j1", "cancel"),
        ("job", "j2", "retry"),
    ]


def test_a_request_taken_by_another_taker_is_not_handed_out_again(store: Store) -> None:
    store.requests.job("j1", "cancel")
    store.requests.job("j2", "cancel")
    mine, theirs = store.requests.take(), Requests(store.tables["requests"]).take()
    assert next(mine) == ("job", "j1", "cancel")
    assert list(theirs) == [("job", "j2", "cancel")]  # j1 was taken already
    assert list(mine) == []  # j2 was taken by the other
