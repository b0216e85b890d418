"""The outbox: replies, events and alert changes that must reach the centre.

Kept on disk (SQLite, a table of the box's ledger: :mod:`diemcau.adapters.ledger`)
until the broker acknowledges them, so neither a broken link nor a restart of
the box loses them; sent in the order they were made. An acknowledged message
stays a little longer (``acked_at`` set, :meth:`Outbox.acknowledged`): the
broker saves on a timer, so a crash of the broker may lose it, and the box
sends it again when the link comes back (:meth:`Outbox.reopen`). The owner
prunes it once the broker's save window has surely passed (:meth:`Outbox.prune`).
Bounded: when more than ``max_messages`` wait for the broker, the oldest is
dropped and counted.
Owned by the supervisor's thread.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("diemcau.outbox")


@dataclass(frozen=True, slots=True)
class Pending:
    row: int
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    def __init__(self, db: str | Path | sqlite3.Connection, max_messages: int) -> None:
        """``db``: the ledger's connection, or a file of its own."""
        if isinstance(db, sqlite3.Connection):
            self._db = db
        else:
            self._db = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (row INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL,"
            " acked_at REAL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "acked_at" not in columns:  # a ledger of a release before the grace
            self._db.execute("ALTER TABLE outbox ADD COLUMN acked_at REAL")
        self._max = max_messages
        self.dropped = 0

    def add(self, topic: str, payload: bytes, retain: bool = False) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (topic, payload, retain) VALUES (?, ?, ?)",
            (topic, payload, int(retain)),
        )
        over = len(self) - self._max
        if over > 0:
            self._db.execute(
                "DELETE FROM outbox WHERE row IN (SELECT row FROM outbox"
                " WHERE acked_at IS NULL ORDER BY row LIMIT ?)",
                (over,),
            )
            self.dropped += over
            log.warning("outbox full (%d messages): dropped the %d oldest", self._max, over)
        return int(cur.lastrowid or 0)

    def pending(self) -> list[Pending]:
        """What the broker has not acknowledged, in order."""
        rows = self._db.execute("SELECT row, topic, payload, retain FROM outbox"
                                " WHERE acked_at IS NULL ORDER BY row")
        return [Pending(r, t, bytes(p), bool(k)) for r, t, p, k in rows]

    def remove(self, row: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE row = ?", (row,))

    def acknowledged(self, row: int, at: float) -> None:
        """The broker acknowledged ``row`` at ``at``: kept until pruned, no longer pending."""
        self._db.execute("UPDATE outbox SET acked_at = ? WHERE row = ?", (at, row))

    def prune(self, acked_before: float) -> int:
        """Forget what the broker acknowledged before ``acked_before``; how many rows."""
        cur = self._db.execute("DELETE FROM outbox WHERE acked_at < ?", (acked_before,))
        return cur.rowcount

    def kept(self) -> int:
        """Acknowledged messages still kept, waiting to be pruned."""
        return int(self._db.execute(
            "SELECT count(*) FROM outbox WHERE acked_at IS NOT NULL").fetchone()[0])

    def reopen(self) -> int:
        """Every acknowledged message still kept is pending again (the broker may have
        lost it); how many."""
        cur = self._db.execute("UPDATE outbox SET acked_at = NULL WHERE acked_at IS NOT NULL")
        return cur.rowcount

    def __len__(self) -> int:
        """Messages waiting for the broker (not those kept after their acknowledgement)."""
        return int(self._db.execute(
            "SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0])

    def close(self) -> None:
        self._db.close()
