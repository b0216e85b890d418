"""Firmware updates: which manifests to accept, and the trial of a new release. Pure.

The box keeps one small :class:`Record` (the adapter :mod:`diemcau.adapters.releases`
stores it): the committed release, the minimum version it will ever accept
again, the release on trial and the outcome of the last update. Each step is
a function from record to record, so the decisions are tested without files.

    committed 0.1.0 ──firmware.update 0.2.0──▶ trial 0.2.0 (current → 0.2.0)
       ▲      │ healthy (connected, born)          │ crashes, never connects,
       │      ▼                                    │ or started too often
    committed 0.2.0, minimum 0.2.0        rolled back: current → 0.1.0

    >>> check_manifest("0.1.0", url="https://c.example.vn/a.tar", sha256="0" * 64,
    ...                size_bytes=10, running="0.2.0", minimum="0.2.0")
    Traceback (most recent call last):
    ...
    diemcau.core.update.UpdateRefused: version 0.1.0 is not newer than 0.2.0 (no downgrades)
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec
from packaging.version import InvalidVersion, Version

MAX_ARTEFACT_BYTES = 1024 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


class UpdateRefused(Exception):
    """A reason to refuse an update before anything changes; ``code`` is the reply's."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_version(text: str) -> Version:
    """A release version: PEP 440, written canonically (it names a directory)."""
    try:
        version = Version(text)
    except InvalidVersion:
        raise UpdateRefused(400, f"version {text!r} is not a release version (like 1.2.0)") from None
    if str(version) != text:
        raise UpdateRefused(400, f"version {text!r} is not written canonically ({version})")
    return version


def is_newer(version: str, than: str | None) -> bool:
    return than is None or Version(version) > Version(than)


def check_manifest(version: str, *, url: str, sha256: str, size_bytes: int, running: str,
                   minimum: str | None) -> None:
    """Refuse a manifest the box must not install; return if it may go ahead.

    ``running`` is the version running now, ``minimum`` the newest one ever
    committed: nothing at or below either is installed (no downgrade attacks,
    no reinstalls).
    """
    parse_version(version)
    floor = max((v for v in (running, minimum) if v is not None), key=Version)
    if not is_newer(version, floor):
        raise UpdateRefused(409, f"version {version} is not newer than {floor} (no downgrades)")
    if not _SHA256.fullmatch(sha256):
        raise UpdateRefused(400, "sha256: 64 lower-case hex digits")
    if not 0 < size_bytes <= MAX_ARTEFACT_BYTES:
        raise UpdateRefused(400, f"size_bytes: must be 1-{MAX_ARTEFACT_BYTES}")
    if len(url) > 1024 or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise UpdateRefused(400, "url: at most 1024 printable characters, no spaces")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("https", "http") or not rest.split("/", 1)[0]:
        raise UpdateRefused(400, f"url: an http(s) URL to download from, not {url[:80]!r}")


# A restart ends a meeting: an installed release waits until none is under way.
BUSY_MEETING_STATES = frozenset({"joining", "live", "leaving"})


def may_restart(meeting_state: str) -> bool:
    """Whether the box may restart into a new release now."""
    return meeting_state not in BUSY_MEETING_STATES


# ---------------------------------------------------------------- the record


class Trial(msgspec.Struct, kw_only=True):
    """A release switched to but not yet committed."""

    version: str
    previous: str  # what to go back to
    command_id: str
    command_exp: float
    starts: int = 0  # how often the service has started it


Result = Literal["committed", "rolled_back", "abandoned"]


class Outcome(msgspec.Struct, kw_only=True):
    """How the last update ended; reported to the centre once the box is online."""

    command_id: str
    command_exp: float
    version: str
    result: Result
    detail: str
    reported: bool = False


class Pending(msgspec.Struct, kw_only=True):
    """An update accepted and downloading or installing; nothing switched yet."""

    command_id: str
    command_exp: float
    version: str


class Record(msgspec.Struct, kw_only=True):
    """The update record. Every field has a default and unknown fields are ignored: the
    committed release's ``release check`` reads what a newer release wrote, and back."""

    committed: str | None = None
    minimum: str | None = None
    pending: Pending | None = None
    trial: Trial | None = None
    outcome: Outcome | None = None


def accept(record: Record, pending: Pending) -> Record:
    """An update was accepted: remembered, so that a restart midway still gets a reply."""
    return msgspec.structs.replace(record, pending=pending)


def drop_pending(record: Record) -> Record:
    """The update failed before switching (and said so in its reply)."""
    return msgspec.structs.replace(record, pending=None)


def interrupted(record: Record) -> Record:
    """At start: an update that was downloading or installing when the box stopped."""
    p = record.pending
    if p is None or record.trial is not None:
        return record
    outcome = Outcome(command_id=p.command_id, command_exp=p.command_exp, version=p.version,
                      result="abandoned", detail=f"the box restarted while downloading or "
                                                 f"installing {p.version}; nothing was switched: "
                                                 f"send the update again")
    return msgspec.structs.replace(record, pending=None, outcome=outcome)


Decision = Literal["run", "rolled_back", "abandoned"]


def begin(record: Record, trial: Trial) -> Record:
    """The trial starts: the next start of the service runs ``trial.version``."""
    return msgspec.structs.replace(record, trial=trial, pending=None)


def on_start(record: Record, current: str | None, max_starts: int) -> tuple[Record, Decision]:
    """Before the service starts: let the release on trial run once more, or give up on it.

    ``current`` is the release the ``current`` link names. Giving up means
    the caller points ``current`` back at ``trial.previous``.
    """
    trial = record.trial
    if trial is None:
        return record, "run"
    if current != trial.version:
        # Stopped after the trial was written, before the switch: nothing ran.
        return finish(record, "abandoned", f"interrupted before switching to {trial.version}; "
                                           f"still on {current}"), "abandoned"
    if trial.starts >= max_starts:
        return rolled_back(record, f"{trial.version} did not become healthy in {trial.starts} "
                                   f"start(s); back on {trial.previous}"), "rolled_back"
    return msgspec.structs.replace(record, trial=msgspec.structs.replace(
        trial, starts=trial.starts + 1)), "run"


def rolled_back(record: Record, detail: str) -> Record:
    return finish(record, "rolled_back", detail)


def finish(record: Record, result: Result, detail: str) -> Record:
    trial = record.trial
    assert trial is not None, "no trial to finish"
    outcome = Outcome(command_id=trial.command_id, command_exp=trial.command_exp,
                      version=trial.version, result=result, detail=detail)
    return msgspec.structs.replace(record, trial=None, outcome=outcome)


def commit(record: Record, running: str) -> Record | None:
    """The release on trial is healthy: it becomes the committed one. None if not on trial."""
    trial = record.trial
    if trial is None or trial.version != running:
        return None
    minimum = running if is_newer(running, record.minimum) else record.minimum
    done = finish(record, "committed", f"{running} is running and committed "
                                       f"(after {trial.starts} start(s))")
    return msgspec.structs.replace(done, committed=running, minimum=minimum)


def unreported(record: Record) -> Outcome | None:
    out = record.outcome
    return out if out is not None and not out.reported else None


def reported(record: Record) -> Record:
    if record.outcome is None:
        return record
    return msgspec.structs.replace(record, outcome=msgspec.structs.replace(
        record.outcome, reported=True))
