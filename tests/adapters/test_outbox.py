"""The outbox: an SQLite file that keeps messages for the centre across restarts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from diemcau.adapters.outbox import Outbox, Pending


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    box = Outbox(path, max_messages=10)
    yield box
    box.close()


def contents(box: Outbox) -> list[tuple[str, bytes, bool]]:
    return [(p.topic, p.payload, p.retain) for p in box.pending()]


def test_an_empty_outbox(outbox: Outbox) -> None:
    assert len(outbox) == 0
    assert outbox.pending() == []
    assert outbox.dropped == 0


def test_messages_come_out_in_the_order_they_went_in(outbox: Outbox) -> None:
    rows = [outbox.add("diemcau/v1/dev/b1/event", f'{{"seq":{n}}}'.encode()) for n in range(5)]
    outbox.add("diemcau/v1/dev/b1/alert/mic_silent", b"", retain=True)
    assert rows == sorted(rows) and len(set(rows)) == 5
    assert contents(outbox) == [
        *[("diemcau/v1/dev/b1/event", f'{{"seq":{n}}}'.encode(), False) for n in range(5)],
        ("diemcau/v1/dev/b1/alert/mic_silent", b"", True),
    ]
    assert [p.row for p in outbox.pending()][:5] == rows
    assert len(outbox) == 6


def test_payloads_are_kept_byte_for_byte(outbox: Outbox) -> None:
    payload = bytes(range(256)) + "Điểm cầu".encode()
    outbox.add("t", payload)
    [pending] = outbox.pending()
    assert pending == Pending(pending.row, "t", payload, False)
    assert isinstance(pending.payload, bytes)


def test_remove_takes_out_one_message(outbox: Outbox) -> None:
    a = outbox.add("t", b"a")
    b = outbox.add("t", b"b")
    c = outbox.add("t", b"c")
    outbox.remove(b)
    assert [p.payload for p in outbox.pending()] == [b"a", b"c"]
    outbox.remove(b)  # twice, as after a duplicate acknowledgement: no harm
    outbox.remove(a)
    outbox.remove(c)
    assert len(outbox) == 0


def test_messages_survive_reopening_the_file(path: Path) -> None:
    first = Outbox(path, max_messages=10)
    first.add("t", b"one")
    sent = first.add("t", b"two")
    first.add("t", b"three", retain=True)
    first.remove(sent)
    first.close()

    again = Outbox(path, max_messages=10)
    try:
        assert contents(again) == [("t", b"one", False), ("t", b"three", True)]
        # New messages go after the old ones, and rows are never reused.
        row = again.add("t", b"four")
        assert row > max(p.row for p in again.pending()[:-1])
        assert row != sent
        assert [p.payload for p in again.pending()] == [b"one", b"three", b"four"]
    finally:
        again.close()


def test_a_full_outbox_drops_the_oldest_and_counts(outbox: Outbox,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    for n in range(10):
        outbox.add("t", str(n).encode())
    assert outbox.dropped == 0
    with caplog.at_level(logging.WARNING, logger="diemcau.outbox"):
        for n in range(10, 13):
            outbox.add("t", str(n).encode())
    assert len(outbox) == 10
    assert outbox.dropped == 3
    assert [p.payload for p in outbox.pending()] == [str(n).encode() for n in range(3, 13)]
    assert "dropped" in caplog.text


def test_a_smaller_limit_after_reopening_trims_on_the_next_message(path: Path) -> None:
    big = Outbox(path, max_messages=20)
    for n in range(15):
        big.add("t", str(n).encode())
    big.close()
    small = Outbox(path, max_messages=10)
    try:
        assert len(small) == 15  # nothing is thrown away just by opening
        small.add("t", b"15")
        assert len(small) == 10
        assert small.dropped == 6
        assert [p.payload for p in small.pending()] == [str(n).encode() for n in range(6, 16)]
    finally:
        small.close()


def test_an_acknowledged_message_is_kept_until_pruned_and_reopened_in_order(
        outbox: Outbox) -> None:
    rows = [outbox.add("t", f"m{n}".encode()) for n in range(3)]
    outbox.acknowledged(rows[0], at=100.0)
    outbox.acknowledged(rows[1], at=102.5)
    assert [p.payload for p in outbox.pending()] == [b"m2"]  # no longer waiting for the broker
    assert len(outbox) == 1

    assert outbox.prune(acked_before=101.0) == 1  # m0's grace is over; m1's is not
    assert outbox.reopen() == 1
    assert [p.payload for p in outbox.pending()] == [b"m1", b"m2"]
    assert outbox.prune(acked_before=1e12) == 0  # pending rows are never pruned


def test_kept_acknowledged_messages_survive_a_restart(path: Path) -> None:
    first = Outbox(path, max_messages=10)
    first.acknowledged(first.add("t", b"kept"), at=5.0)
    first.close()
    again = Outbox(path, max_messages=10)
    try:
        assert again.pending() == []
        assert again.reopen() == 1
        assert [p.payload for p in again.pending()] == [b"kept"]
    finally:
        again.close()


def test_a_full_outbox_drops_waiting_messages_not_the_kept_ones_first(outbox: Outbox) -> None:
    kept = outbox.add("t", b"acked")
    outbox.acknowledged(kept, at=1.0)
    for n in range(11):
        outbox.add("t", f"w{n}".encode())
    assert outbox.dropped == 1
    assert [p.payload for p in outbox.pending()][0] == b"w1"
    assert outbox.reopen() == 1  # the acknowledged one did not count against the bound


def test_a_ledger_from_before_the_grace_gets_the_column(path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(path)
    old.execute("CREATE TABLE outbox (row INTEGER PRIMARY KEY AUTOINCREMENT,"
                " topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL)")
    old.execute("INSERT INTO outbox (topic, payload, retain) VALUES ('t', x'6f6c64', 0)")
    old.commit()
    old.close()
    box = Outbox(path, max_messages=10)
    try:
        assert [p.payload for p in box.pending()] == [b"old"]
    finally:
        box.close()
