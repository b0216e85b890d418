"""The ledger: one SQLite file for everything the box has promised the centre.

Four tables share it: the outbox (replies, events and alert changes not yet
acknowledged by the broker, or acknowledged within the last ``RESEND_GRACE_S``:
the broker saves on a timer), the replay cache (command ids seen, with their
latest reply), the counters that must never repeat (the event ``seq``) and
the room's settings (the volume, the pending invitation). Because they share
one file, the supervisor makes each step one transaction: a command's
reply, the events it caused and the room's new settings are on disk together
or not at all, and only after the commit does the box acknowledge the
command to the broker (PUBACK) and send what it wrote.

``synchronous=FULL``: a commit survives a power cut, not only a crash of the
process (WAL's ``NORMAL`` may lose the last commits when the power goes).
Owned by the supervisor's thread.

    >>> ledger = Ledger(":memory:")
    >>> with ledger.transaction():
    ...     ledger.bump("event_seq")
    1
    >>> ledger.get_setting("volume_percent") is None
    True
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("diemcau.ledger")

FILE_NAME = "ledger.sqlite"


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS counters"
                        " (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS settings"
                        " (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._depth = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One durable step: committed at the end, rolled back on an exception.

        Nested blocks join the outer one.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ counters

    def get(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def bump(self, name: str) -> int:
        """The counter's next value, written in the caller's transaction."""
        value = self.get(name) + 1
        self._set(name, value)
        return value

    def raise_to(self, name: str, value: int) -> None:
        """At least ``value`` from now on (a counter kept elsewhere by an older release)."""
        if value > self.get(name):
            self._set(name, value)

    def _set(self, name: str, value: int) -> None:
        self.db.execute("INSERT INTO counters (name, value) VALUES (?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    # ------------------------------------------------------------ the room's settings

    def get_setting(self, name: str) -> Any:
        """A setting as it was saved (JSON), or None if never saved."""
        row = self.db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            log.error("setting %s is not JSON: ignored", name)
            return None

    def put_setting(self, name: str, value: Any) -> None:
        """Save a setting (None deletes it), in the caller's transaction."""
        if value is None:
            self.db.execute("DELETE FROM settings WHERE name = ?", (name,))
        else:
            self.db.execute("INSERT INTO settings (name, value) VALUES (?, ?)"
                            " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                            (name, json.dumps(value, ensure_ascii=False)))

    # ------------------------------------------------------------ an older release's files

    def adopt(self, state_dir: Path) -> None:
        """Take over what releases before the ledger kept in their own files, once.

        ``outbox.sqlite`` and ``replay.sqlite`` (their rows), ``invitation.json``
        and ``counters.json``'s event ``seq``. Call after the outbox and the
        replay cache have made their tables in this file.
        """
        old_outbox, old_replay = state_dir / "outbox.sqlite", state_dir / "replay.sqlite"
        invitation, counters = state_dir / "invitation.json", state_dir / "counters.json"
        with self.transaction():
            if old_outbox.exists():
                self._copy_rows(old_outbox, "SELECT topic, payload, retain FROM outbox ORDER BY row",
                                "INSERT INTO outbox (topic, payload, retain) VALUES (?, ?, ?)")
            if old_replay.exists():
                self._copy_rows(old_replay, "SELECT jti, exp, reply FROM seen",
                                "INSERT OR IGNORE INTO seen (jti, exp, reply) VALUES (?, ?, ?)")
            if invitation.exists() and self.get_setting("invitation") is None:
                try:
                    saved = json.loads(invitation.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    saved = {"garbled": str(invitation)}  # refused by the invitation's checks
                self.put_setting("invitation", saved)
            try:
                seq = json.loads(counters.read_text()).get("event_seq")
            except (OSError, ValueError, AttributeError):
                seq = None
            if isinstance(seq, int):
                self.raise_to("event_seq", seq)
        # Only once all of it is committed: a crash before this line adopts again, and
        # the outbox's copies are then sent twice rather than never.
        for path in (old_outbox, old_replay):
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        invitation.unlink(missing_ok=True)

    def _copy_rows(self, path: Path, select: str, insert: str) -> None:
        try:
            old = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = old.execute(select).fetchall()
            finally:
                old.close()
        except sqlite3.Error as exc:
            log.error("cannot read %s (%s): nothing taken from it", path.name, exc)
            return
        self.db.executemany(insert, rows)
        log.info("took %d row(s) from %s", len(rows), path.name)

    def close(self) -> None:
        self.db.close()
