"""The replay cache: which command ids a box has seen, and what it answered.

Kept on disk (SQLite) until each command's expiry, so a command delivered
twice (QoS 1 is at-least-once, and a box may restart in between) runs once,
and the second delivery gets the first result again, marked ``duplicate``.
Owned by one thread (the supervisor's).

    >>> cache = ReplayCache(":memory:")
    >>> cache.first_result("c1") is None
    True
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .messages import Reply, decode, encode

# A box cannot be made to keep more than this many ids (a flood of valid,
# distinct commands): the ones closest to expiry go first.
MAX_ENTRIES = 20_000


class ReplayCache:
    def __init__(self, db: str | Path | sqlite3.Connection, *,
                 max_entries: int = MAX_ENTRIES) -> None:
        """``db``: a connection shared with other tables (the box's ledger), or a file."""
        if isinstance(db, sqlite3.Connection):
            self._db = db
        else:
            self._db = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (jti TEXT PRIMARY KEY, exp REAL NOT NULL, reply BLOB)"
        )
        self._max_entries = max_entries

    def first_result(self, jti: str) -> Reply | None:
        """The reply last recorded for ``jti``, or None if it was never seen.

        A command seen but not yet answered comes back as ``in_progress``.
        """
        row = self._db.execute("SELECT reply FROM seen WHERE jti = ?", (jti,)).fetchone()
        if row is None:
            return None
        if row[0] is None:
            return Reply(id=jti, cmd=None, status="in_progress", code=202,
                         detail="still being handled", ts=0.0)
        return decode(row[0], Reply)

    def remember(self, jti: str, exp: float, reply: Reply | None = None) -> None:
        """Record ``jti`` as seen, with its latest reply."""
        self._db.execute(
            "INSERT INTO seen (jti, exp, reply) VALUES (?, ?, ?) "
            "ON CONFLICT(jti) DO UPDATE SET reply = excluded.reply",
            (jti, exp, None if reply is None else encode(reply)),
        )
        count = self._db.execute("SELECT count(*) FROM seen").fetchone()[0]
        if count > self._max_entries:
            self._db.execute(
                "DELETE FROM seen WHERE jti IN (SELECT jti FROM seen ORDER BY exp LIMIT ?)",
                (count - self._max_entries,),
            )

    def unfinished(self) -> list[tuple[str, float, Reply | None]]:
        """Commands whose last reply promised more (``accepted``, ``in_progress``) or that
        have none: (id, exp, that reply), oldest expiry first."""
        out = []
        for jti, exp, blob in self._db.execute("SELECT jti, exp, reply FROM seen ORDER BY exp"):
            reply = None if blob is None else decode(blob, Reply)
            if reply is None or reply.status in ("accepted", "in_progress"):
                out.append((jti, exp, reply))
        return out

    def purge(self, now: float, leeway_s: float = 30.0) -> int:
        """Forget ids whose command has expired; only call with a synchronised clock."""
        cur = self._db.execute("DELETE FROM seen WHERE exp < ?", (now - leeway_s,))
        return cur.rowcount

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM seen").fetchone()[0]

    def close(self) -> None:
        self._db.close()
