"""What each command's ``args`` look like on the wire: one schema per command, the profile
names, and the key set a ``keys.update`` carries.

The box parses a command's arguments with these schemas before its policy
(``core.meeting``, ``core.update``) decides what the command does; the
centre checks them with the same schemas before it signs a command, so a
typo is caught before it reaches a thousand boxes.

    >>> import msgspec
    >>> msgspec.convert({"percent": 30}, ARGS["audio.volume"])
    VolumeArgs(percent=30)
    >>> key_update({"keys": {}})
    Traceback (most recent call last):
    ...
    diemcau.protocol.arguments.BadKeyUpdate: keys: a non-empty table {kid: public key}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

import msgspec

# The media profiles a meeting can ask for, by name (what each one is in pixels
# and kbit/s is the media adapter's business).
Profile = Literal["720p30", "480p25", "360p15", "audio"]
PROFILE_NAMES: tuple[str, ...] = get_args(Profile)

UPDATE_COMMAND = "firmware.update"

# A meeting id: 1-64 letters, digits, '.', '_' or '-', not starting with a punctuation mark
# (match with fullmatch: '$' alone lets a final newline through).
MEETING_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class InviteArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str
    title: str = ""
    starts_at: float | None = None
    ends_at: float | None = None
    mandatory: bool = False
    publish: str | None = None
    play: str | None = None
    profile: Profile = "720p30"
    muted: bool = False


class JoinArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str
    publish: str
    play: str | None = None
    profile: Profile = "720p30"
    muted: bool = False


class LeaveArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str | None = None


class CancelArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str


class NoArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    pass


class VolumeArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    percent: int


class IdentifyArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    duration_s: int = 10


class ProfileArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    profile: Profile


class UpdateArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    """``firmware.update`` arguments: the release manifest, signed by the release key."""

    manifest: str


# Every command but keys.update, whose one argument is a table (see key_update).
ARGS: dict[str, type[msgspec.Struct]] = {
    "meeting.invite": InviteArgs,
    "meeting.join": JoinArgs,
    "meeting.leave": LeaveArgs,
    "meeting.cancel": CancelArgs,
    "audio.mute": NoArgs,
    "audio.unmute": NoArgs,
    "audio.volume": VolumeArgs,
    "floor.grant": NoArgs,
    "floor.revoke": NoArgs,
    "health.report": NoArgs,
    "device.identify": IdentifyArgs,
    UPDATE_COMMAND: UpdateArgs,
    "media.keyframe": NoArgs,
    "media.profile": ProfileArgs,
}


# ---------------------------------------------------------------- keys.update

MAX_CENTRE_KEYS = 8
KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BadKeyUpdate(ValueError):
    """A ``keys.update`` the box will not apply; the message says why (reply 400)."""


def key_update(args: Mapping[str, Any]) -> dict[str, str]:
    """The new key set a ``keys.update`` carries, checked in shape; BadKeyUpdate if not usable.

    ``args`` is ``{"keys": {kid: public key text, ...}}``: the whole set, which
    replaces the old one. It must keep at least one key, at most eight. The
    key that signed the command may leave the set (that is how a key is
    retired); the caller checks that each text really is an Ed25519 key.
    """
    if set(args) != {"keys"}:
        raise BadKeyUpdate("keys.update takes one argument, 'keys': {kid: public key}")
    keys = args["keys"]
    if not isinstance(keys, dict) or not keys:
        raise BadKeyUpdate("keys: a non-empty table {kid: public key}")
    if len(keys) > MAX_CENTRE_KEYS:
        raise BadKeyUpdate(f"keys: at most {MAX_CENTRE_KEYS} keys, not {len(keys)}")
    for kid, text in keys.items():
        if not isinstance(kid, str) or not KID_RE.match(kid):
            raise BadKeyUpdate(f"keys: kid {str(kid)[:70]!r} must be 1-64 letters, digits, "
                               "'.', '_' or '-'")
        if not isinstance(text, str) or not 0 < len(text) <= 512:
            raise BadKeyUpdate(f"keys.{kid}: a public key as text")
    return dict(keys)
