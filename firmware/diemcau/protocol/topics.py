"""Topic names of protocol v1, built and parsed in one place.

Every topic lives under ``diemcau/v1``. ``dev`` is the device id (also the
MQTT client id, username and certificate CN); ``group`` is an administrative
code (``p01``, ``d001``, ``c00001``) or ``all``.

    >>> device_topic("c00001-r1", "state")
    'diemcau/v1/dev/c00001-r1/state'
    >>> parse_topic("diemcau/v1/group/p01/cmd")
    ParsedTopic(kind='group_cmd', dev=None, group='p01', code=None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "diemcau/v1"

# What a box publishes about itself (and the one thing it reads: `cmd`).
DeviceTopicKind = Literal["state", "meta", "status", "health", "event", "cmd", "reply"]
DEVICE_TOPIC_KINDS: tuple[str, ...] = ("state", "meta", "status", "health", "event", "cmd", "reply")

# Device ids and group codes: lower-case letters, digits, '-' and '_', which
# keeps them clear of MQTT's wildcards and separators.
_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
NAME_RE = re.compile(rf"^{_NAME}$")
_TOPIC_RE = re.compile(
    rf"^{re.escape(ROOT)}/(?:"
    rf"dev/(?P<dev>{_NAME})/(?:alert/(?P<code>{_NAME})|(?P<kind>state|meta|status|health|event|cmd|reply))"
    rf"|group/(?P<group>{_NAME})/cmd)$"
)


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid device id or group code, else raise ValueError."""
    if not NAME_RE.fullmatch(name):  # fullmatch: '$' alone lets a final '\n' through
        raise ValueError(
            f"{what} {name!r} is not valid: use 1-64 lower-case letters, digits, '-' or '_'"
        )
    return name


def device_topic(dev: str, kind: DeviceTopicKind) -> str:
    return f"{ROOT}/dev/{dev}/{kind}"


def alert_topic(dev: str, code: str) -> str:
    return f"{ROOT}/dev/{dev}/alert/{code}"


def group_cmd_topic(group: str) -> str:
    return f"{ROOT}/group/{group}/cmd"


def device_filter(dev: str = "+") -> str:
    """Subscription filter for everything one device (or every device) publishes."""
    return f"{ROOT}/dev/{dev}/#"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: str  # one of DEVICE_TOPIC_KINDS, "alert" or "group_cmd"
    dev: str | None
    group: str | None
    code: str | None


def parse_topic(topic: str) -> ParsedTopic | None:
    """Parse a protocol v1 topic; None when it is not one."""
    m = _TOPIC_RE.fullmatch(topic)  # fullmatch: a final "\n" is not part of a topic
    if m is None:
        return None
    if m["group"]:
        return ParsedTopic("group_cmd", None, m["group"], None)
    if m["code"]:
        return ParsedTopic("alert", m["dev"], None, m["code"])
    return ParsedTopic(m["kind"], m["dev"], None, None)
