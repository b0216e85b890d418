"""Protocol v1: topics, messages and signed commands, shared by box and centre.

Nothing about the wire format is written anywhere else; ``docs/protocol.md``
and ``docs/asyncapi.yaml`` describe what this package does.
"""

import importlib
from typing import Any

from .messages import (
    ALERT_CODES,
    BROKER_LOSS_WINDOW_S,
    BROKER_SAVE_S,
    COMMAND_NAMES,
    EVENT_KINDS,
    FINAL_STATUSES,
    PROTOCOL_VERSION,
    RESEND_GRACE_S,
    Alert,
    CommandClaims,
    Event,
    Health,
    Interface,
    Meta,
    ProgrammeFigures,
    Reply,
    RoomSound,
    Site,
    State,
    Status,
    StreamFigures,
    decode,
    encode,
    now_ts,
)
from .topics import (
    ROOT,
    ParsedTopic,
    alert_topic,
    check_name,
    device_filter,
    device_topic,
    group_cmd_topic,
    parse_topic,
)

# Signing (PyJWT, cryptography) and the replay cache (SQLite) load on first
# use, so that the pure core can use the message schemas without I/O libraries.
_LAZY = {
    "Command": "commands", "CommandRejected": "commands",
    "generate_signing_key": "commands", "key_id": "commands",
    "public_key_from_text": "commands", "public_key_to_text": "commands",
    "public_keys_from_text": "commands",
    "sign_command": "commands", "verify_command": "commands",
    "ReplayCache": "replay",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALERT_CODES", "BROKER_LOSS_WINDOW_S", "BROKER_SAVE_S", "COMMAND_NAMES", "EVENT_KINDS", "FINAL_STATUSES", "PROTOCOL_VERSION", "RESEND_GRACE_S", "ROOT",
    "Alert", "Command", "CommandClaims", "CommandRejected", "Event", "Health", "Interface",
    "Meta", "ParsedTopic", "ProgrammeFigures", "ReplayCache", "Reply", "RoomSound", "Site", "State", "Status",
    "StreamFigures",
    "alert_topic", "check_name", "decode", "device_filter", "device_topic", "encode",
    "generate_signing_key", "group_cmd_topic", "key_id", "now_ts", "parse_topic",
    "public_key_from_text", "public_key_to_text", "public_keys_from_text", "sign_command",
    "verify_command",
]
