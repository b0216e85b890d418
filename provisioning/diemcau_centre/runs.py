"""The record of each command sent to a group: what was sent, to whom, and the answers.

One JSON file per run under ``<state_dir>/runs/``, named by the command id,
written when the command is published and again at the end, so ``resend``
works even after an interrupted ``send``. The record holds the claims, not
the signed token: resending needs the signing key again.

    store = RunStore(Path("~/.local/state/diemcau-centre").expanduser())
    store.save(record)
    record = store.load("last")     # or a command id, or its first characters
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from diemcau.protocol import Reply

from .files import write_atomic

RUNS_DIR = "runs"
LAST = "last"


class RunError(Exception):
    """No such run, or its record cannot be read."""


class Answered(msgspec.Struct, kw_only=True):
    reply: Reply
    at: float  # the centre's time of arrival


class RunRecord(msgspec.Struct, kw_only=True):
    format: int = 1
    id: str  # the command id (jti) the boxes remember
    aud: str  # group:p01
    cmd: str
    args: dict[str, Any] = {}
    iat: int
    exp: int
    sent_at: float  # the centre's clock
    expected: dict[str, str]  # device id -> province
    answers: dict[str, list[Answered]] = {}  # device id -> every reply to this id
    resends: list[dict[str, Any]] = []  # {"at", "id", "devices", "same_id"}


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/diemcau-centre``, else ``~/.local/state/diemcau-centre``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "diemcau-centre"


class RunStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / RUNS_DIR

    def path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.json"

    def save(self, record: RunRecord) -> Path:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path(record.id)
        # Only the operator reads who was commanded and with what arguments.
        write_atomic(path, msgspec.json.encode(record), 0o600)
        return path

    def load(self, run_id: str = LAST) -> RunRecord:
        """The run named by its command id (or a unique prefix of it), or the latest one."""
        files = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime) \
            if self.dir.is_dir() else []
        if run_id == LAST:
            if not files:
                raise RunError(f"no runs recorded in {self.dir} yet")
            chosen = files[-1]
        else:
            matches = [p for p in files if p.stem.startswith(run_id)]
            if not matches:
                raise RunError(f"no run {run_id!r} in {self.dir}")
            if len(matches) > 1:
                raise RunError(f"{run_id!r} names {len(matches)} runs; give more of the id")
            chosen = matches[0]
        try:
            return msgspec.json.decode(chosen.read_bytes(), type=RunRecord)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RunError(f"cannot read the run record {chosen}: {exc}") from None
