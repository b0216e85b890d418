"""Protocol v1: topics, messages and signed commands, shared by box and centre.

Nothing about the wire format is written anywhere else; ``docs/protocol.md``
and ``docs/asyncapi.yaml`` describe what this package does.
"""

from .commands import (
    Command,
    CommandRejected,
    generate_signing_key,
    key_id,
    public_key_from_text,
    public_key_to_text,
    sign_command,
    verify_command,
)
from .messages import (
    ALERT_CODES,
    COMMAND_NAMES,
    FINAL_STATUSES,
    PROTOCOL_VERSION,
    Alert,
    CommandClaims,
    Event,
    Health,
    Interface,
    Meta,
    Reply,
    Site,
    State,
    Status,
    StreamFigures,
    decode,
    encode,
    now_ts,
)
from .replay import ReplayCache
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

__all__ = [
    "ALERT_CODES", "COMMAND_NAMES", "FINAL_STATUSES", "PROTOCOL_VERSION", "ROOT",
    "Alert", "Command", "CommandClaims", "CommandRejected", "Event", "Health", "Interface",
    "Meta", "ParsedTopic", "ReplayCache", "Reply", "Site", "State", "Status", "StreamFigures",
    "alert_topic", "check_name", "decode", "device_filter", "device_topic", "encode",
    "generate_signing_key", "group_cmd_topic", "key_id", "now_ts", "parse_topic",
    "public_key_from_text", "public_key_to_text", "sign_command", "verify_command",
]
