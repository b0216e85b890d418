"""docs/protocol.md and docs/asyncapi.yaml say what diemcau.protocol does.

- docs/asyncapi.yaml is a valid AsyncAPI 3.0.0 document, checked against the
  official JSON Schema of the AsyncAPI Initiative. That schema is not in the
  repository: `make setup` unpacks it from the npm package @asyncapi/specs into
  build/asyncapi/ (or point DIEMCAU_ASYNCAPI_SCHEMA at a copy of 3.0.0.json).
- Every payload schema in it matches msgspec's schema of the real struct, so the
  two cannot drift; every example decodes with the real struct.
- Every example in protocol.md decodes with the struct it is marked with, every
  signed example verifies, and every topic named parses.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
from pathlib import Path
from typing import Any, get_args

import jsonschema
import jwt
import msgspec
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

import diemcau.protocol as protocol
from diemcau.core.alerts import SEVERITY
from diemcau.core.update import Result as UpdateResult
from diemcau.protocol import (
    ALERT_CODES,
    COMMAND_NAMES,
    EVENT_KINDS,
    ROOT,
    CommandClaims,
    Reply,
    parse_topic,
    public_key_from_text,
    verify_command,
)
from diemcau.protocol.arguments import ARGS
from diemcau.protocol.commands import MAX_COMMAND_BYTES
from diemcau.protocol.topics import DEVICE_TOPIC_KINDS

REPO = Path(__file__).resolve().parents[1]
ASYNCAPI = REPO / "docs" / "asyncapi.yaml"
PROTOCOL_MD = REPO / "docs" / "protocol.md"
OFFICIAL_SCHEMA = Path(os.environ.get(
    "DIEMCAU_ASYNCAPI_SCHEMA", REPO / "build" / "asyncapi" / "package" / "schemas" / "3.0.0.json"))

# The structs whose schemas the document carries (nested ones come with them).
MESSAGE_STRUCTS = [protocol.State, protocol.Meta, protocol.Status, protocol.Health,
                   protocol.Alert, protocol.Event, protocol.Reply, protocol.CommandClaims]
ARG_STRUCTS = sorted(set(ARGS.values()), key=lambda t: t.__name__)
ARGS_NAMES = {t.__name__ for t in ARG_STRUCTS}
# Schemas that describe something other than a struct.
NOT_STRUCTS = {"SignedCommand", "CommandHeader"}

# Direction, QoS and retain of each topic (protocol v1, DESIGN.md).
TOPICS = {  # kind: (box's action, qos, retained)
    "state": ("send", 1, True), "meta": ("send", 1, True), "status": ("send", 1, True),
    "health": ("send", 0, False), "alert": ("send", 1, True), "event": ("send", 1, False),
    "reply": ("send", 1, False), "cmd": ("receive", 1, False), "group_cmd": ("receive", 1, False),
}
SAMPLE = {"dev": "c00001-r1", "group": "p01", "code": "temperature_high"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def md() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def follow(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


# ---------------------------------------------------------------- AsyncAPI 3.0.0


@pytest.fixture(scope="module")
def official_validator() -> jsonschema.Draft7Validator:
    if not OFFICIAL_SCHEMA.is_file():
        pytest.fail(f"the AsyncAPI 3.0.0 JSON Schema is missing ({OFFICIAL_SCHEMA}): run `make "
                    "setup`, which unpacks it from the npm package @asyncapi/specs, or set "
                    "DIEMCAU_ASYNCAPI_SCHEMA to a copy of its schemas/3.0.0.json")
    schema = json.loads(OFFICIAL_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    jsonschema.Draft7Validator.check_schema(schema)
    # The bundle carries every definition it refers to: nothing is fetched.
    return jsonschema.Draft7Validator(schema)


def test_asyncapi_document_is_valid_asyncapi_3(doc, official_validator) -> None:
    assert doc["asyncapi"] == "3.0.0"
    errors = sorted(official_validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors)


@pytest.mark.parametrize(("path", "value"), [
    (("operations", "sendState", "action"), "publish"),  # AsyncAPI 2 wording
    (("operations", "sendHealth", "bindings", "mqtt", "qos"), 3),
    (("channels", "reply", "messages", "reply"), {"payload": {"type": "strin"}}),
    (("info",), {"title": "no version"}),
])
def test_official_schema_catches_mistakes(doc, official_validator, path, value) -> None:
    broken = copy.deepcopy(doc)
    node = broken
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert list(official_validator.iter_errors(broken)), "the validator must not be vacuous"


# ---------------------------------------------------------------- schemas vs msgspec

DOC_ONLY = {"title", "description", "examples"}


def normalise(schema: Any) -> Any:
    """A schema without its prose, with refs reduced to names and sets sorted."""
    if isinstance(schema, list):
        return [normalise(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DOC_ONLY or key.startswith("x-"):
            continue
        if key == "$ref":
            out[key] = value.rsplit("/", 1)[-1]  # "#/$defs/Site", "#/components/schemas/Site"
        elif key == "properties":
            out[key] = {name: normalise(sub) for name, sub in value.items()}
        elif key in ("enum", "required"):
            if value:
                out[key] = sorted(value, key=json.dumps)
        elif key == "default":
            out[key] = value
        else:
            out[key] = normalise(value)
    return out


def msgspec_defs(struct: type) -> dict[str, Any]:
    return msgspec.json.schema(struct)["$defs"]


@pytest.mark.parametrize("struct", MESSAGE_STRUCTS + ARG_STRUCTS, ids=lambda t: t.__name__)
def test_payload_schemas_match_the_structs(doc, struct) -> None:
    schemas = doc["components"]["schemas"]
    for name, generated in msgspec_defs(struct).items():
        assert name in schemas, f"components/schemas/{name} is missing"
        assert normalise(schemas[name]) == normalise(generated), (
            f"components/schemas/{name} differs from msgspec.json.schema({struct.__name__})")


def test_every_schema_is_checked(doc) -> None:
    checked = set()
    for struct in MESSAGE_STRUCTS + ARG_STRUCTS:
        checked |= set(msgspec_defs(struct))
    assert set(doc["components"]["schemas"]) == checked | NOT_STRUCTS


def test_argument_schemas_name_their_commands(doc) -> None:
    schemas = doc["components"]["schemas"]
    for struct in ARG_STRUCTS:
        commands = sorted(cmd for cmd, t in ARGS.items() if t is struct)
        assert sorted(schemas[struct.__name__]["x-commands"]) == commands


def test_command_token_schema(doc) -> None:
    token = doc["components"]["schemas"]["SignedCommand"]
    assert token["type"] == "string" and token["maxLength"] == MAX_COMMAND_BYTES
    claims = doc["components"]["schemas"]["CommandClaims"]["description"]
    for name in COMMAND_NAMES:
        assert name in claims


def test_alert_code_parameter_lists_the_alert_codes(doc) -> None:
    assert doc["components"]["parameters"]["code"]["enum"] == list(ALERT_CODES)


# ---------------------------------------------------------------- channels and operations


def fill(address: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m[1]], address)


def test_channels_are_the_protocol_topics(doc) -> None:
    kinds = {}
    for name, channel in doc["channels"].items():
        address = channel["address"]
        assert address.startswith(ROOT + "/")
        assert set(re.findall(r"\{(\w+)\}", address)) == set(channel.get("parameters", {})), name
        parsed = parse_topic(fill(address))
        assert parsed is not None, address
        for param in channel.get("parameters", {}):
            assert getattr(parsed, param) == SAMPLE[param]
        kinds[parsed.kind] = name
    assert set(kinds) == set(DEVICE_TOPIC_KINDS) | {"alert", "group_cmd"}


def test_operations_give_direction_qos_and_retain(doc) -> None:
    seen = set()
    for name, op in doc["operations"].items():
        channel = follow(doc, op["channel"])
        kind = parse_topic(fill(channel["address"])).kind  # type: ignore[union-attr]
        action, qos, retained = TOPICS[kind]
        mqtt = op["bindings"]["mqtt"]
        assert mqtt["qos"] == qos, name
        if name == "receiveOwnState":  # the box also reads back its own retained state
            assert op["action"] == "receive"
            continue
        assert op["action"] == action, name
        assert mqtt["retain"] is retained, name
        for ref in op["messages"]:
            assert ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
        seen.add(kind)
    assert seen == set(TOPICS)


def test_server_will_is_a_lost_state(doc) -> None:
    will = doc["servers"]["broker"]["bindings"]["mqtt"]["lastWill"]
    assert parse_topic(fill(will["topic"])).kind == "state"  # type: ignore[union-attr]
    assert (will["qos"], will["retain"]) == TOPICS["state"][1:]
    assert protocol.decode(will["message"], protocol.State).state == "lost"


# ---------------------------------------------------------------- examples


def example_key(doc) -> tuple[str, Any]:
    key = doc["components"]["messages"]["command"]["x-example-signing-key"]
    return key["kid"], public_key_from_text(key["public_key"])


def verify_example(token: str, kid: str, public_key: Any):
    """Verify a documented token as its box would have, just after it was issued."""
    raw = jwt.decode(token, options={"verify_signature": False})
    return verify_command(token.encode(), {kid: public_key}, {raw["aud"]}, now=raw["iat"] + 1)


def own_schema_validator(doc, ref: str) -> jsonschema.Draft7Validator:
    registry = Registry().with_resource(
        "urn:diemcau:asyncapi", Resource.from_contents(doc, default_specification=DRAFT7))
    return jsonschema.Draft7Validator({"$ref": "urn:diemcau:asyncapi" + ref}, registry=registry)


def test_every_message_has_examples(doc) -> None:
    for name, message in doc["components"]["messages"].items():
        assert message.get("examples"), name


def test_examples_decode_with_the_real_structs(doc) -> None:
    for name, message in doc["components"]["messages"].items():
        payload = message["payload"]
        if "$ref" not in payload or payload["$ref"].endswith("/SignedCommand"):
            continue
        struct = getattr(protocol, payload["$ref"].rsplit("/", 1)[-1])
        validator = own_schema_validator(doc, payload["$ref"])
        for example in message["examples"]:
            value = example["payload"]
            wire = json.dumps(value, ensure_ascii=False).encode()
            decoded = msgspec.json.decode(wire, type=struct)
            # Complete: exactly what the box writes, every field present.
            assert json.loads(protocol.encode(decoded)) == value, (name, example["name"])
            validator.validate(value)


def test_alert_cleared_example_is_empty(doc) -> None:
    message = doc["components"]["messages"]["alertCleared"]
    assert [e["payload"] for e in message["examples"]] == [""]
    own_schema_validator(doc, "#/components/messages/alertCleared/payload").validate("")


def test_command_examples_are_signed_commands(doc) -> None:
    kid, public_key = example_key(doc)
    message = doc["components"]["messages"]["command"]
    token_schema = own_schema_validator(doc, "#/components/schemas/SignedCommand")
    header_schema = own_schema_validator(doc, "#/components/schemas/CommandHeader")
    claims_schema = own_schema_validator(doc, "#/components/schemas/CommandClaims")
    for example in message["examples"]:
        token = example["payload"]
        token_schema.validate(token)
        header_schema.validate(jwt.get_unverified_header(token))
        claims = jwt.decode(token, options={"verify_signature": False})
        claims_schema.validate(claims)
        command = verify_example(token, kid, public_key)
        assert command.cmd in COMMAND_NAMES
        if command.cmd in ARGS:
            msgspec.convert(command.args, ARGS[command.cmd])


# ---------------------------------------------------------------- protocol.md

BLOCK = re.compile(r"(?:<!-- (payload: \w+|token) -->\n)?```(json|text)\n(.*?)\n```", re.S)
TOPIC_IN_TEXT = re.compile(r"diemcau/v1(?:/[^\s`|)\]\"',]*)?")


def md_blocks(md: str) -> list[tuple[str | None, str, str]]:
    return [(m[1], m[2], m[3]) for m in BLOCK.finditer(md)]


def test_every_json_example_in_protocol_md_is_checked(md) -> None:
    blocks = md_blocks(md)
    assert len(blocks) > 40
    for marker, lang, _ in blocks:
        if lang == "json":
            assert marker and marker.startswith("payload: "), "a ```json block without a marker"


def test_protocol_md_examples_decode_with_the_real_structs(md) -> None:
    structs = {t.__name__: t for t in MESSAGE_STRUCTS + ARG_STRUCTS}
    box_messages = {t.__name__ for t in MESSAGE_STRUCTS} - {"CommandClaims"}
    counts: dict[str, int] = {}
    for marker, _, text in md_blocks(md):
        if not marker or not marker.startswith("payload: "):
            continue
        name = marker.removeprefix("payload: ")
        counts[name] = counts.get(name, 0) + 1
        if name == "header":
            header = json.loads(text)
            assert header["alg"] == "EdDSA" and isinstance(header["kid"], str)
            continue
        decoded = msgspec.json.decode(text.encode(), type=structs[name])
        if name in box_messages:
            wire = protocol.encode(decoded)
            if "\n" in text:  # pretty-printed: the same content, every field present
                assert json.loads(wire) == json.loads(text), text
            else:  # one line: the exact bytes the box writes
                assert wire.decode() == text, text
    for name in box_messages | {"CommandClaims"} | ARGS_NAMES - {"NoArgs"}:
        assert counts.get(name), f"protocol.md has no {name} example"


def test_protocol_md_replies_are_consistent(md) -> None:
    final = {"succeeded": {200}, "failed": {409, 500}, "rejected": {400, 401, 403, 404, 409},
             "in_progress": {202},
             "expired": {410}, "accepted": {202}}
    replies = [msgspec.json.decode(text.encode(), type=Reply)
               for marker, _, text in md_blocks(md) if marker == "payload: Reply"]
    assert {r.status for r in replies} >= set(final) | {"duplicate"}
    for reply in replies:
        if reply.status == "duplicate":
            assert reply.first_status is not None
        else:
            assert reply.code in final[reply.status], reply
            assert reply.first_status is None


def test_protocol_md_tokens_verify_with_the_example_key(md, doc) -> None:
    kid, public_key = example_key(doc)
    key_text = doc["components"]["messages"]["command"]["x-example-signing-key"]["public_key"]
    assert kid in md and key_text in md, "protocol.md and asyncapi.yaml use the same example key"
    tokens = [text for marker, _, text in md_blocks(md) if marker == "token"]
    assert len(tokens) >= 2
    yaml_tokens = {e["payload"] for e in doc["components"]["messages"]["command"]["examples"]}
    for token in tokens:
        command = verify_example(token, kid, public_key)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert msgspec.convert(claims, CommandClaims).jti == command.id
        assert token in yaml_tokens


def test_every_topic_in_protocol_md_parses(md) -> None:
    topics = set(TOPIC_IN_TEXT.findall(md))
    assert len(topics) > 10
    for topic in topics:
        if topic == ROOT:
            continue
        concrete = fill(topic)
        if "+" in concrete or "#" in concrete:  # a subscription filter: fill in its wildcards
            concrete = concrete.replace("+", "x1").replace("#", "state")
        assert parse_topic(concrete) is not None, topic


def test_protocol_md_topic_table(md) -> None:
    rows = re.findall(r"^\| `(diemcau/v1/[^`]+)` \| ([^|]+) \| (\d) \| (yes|no) \|", md, re.M)
    table = {}
    for topic, direction, qos, retained in rows:
        kind = parse_topic(fill(topic)).kind  # type: ignore[union-attr]
        action = "send" if direction.strip().startswith("box") else "receive"
        table[kind] = (action, int(qos), retained == "yes")
    assert table == TOPICS


def test_protocol_md_names_every_command_and_alert(md) -> None:
    for name in COMMAND_NAMES:
        assert f"`{name}`" in md, name
    for name in ARGS:
        assert re.search(rf"^### .*`{re.escape(name)}`", md, re.M), f"no section for {name}"
    for code in ALERT_CODES:
        assert f"`{code}`" in md, code


# ---------------------------------------------------------------- event kinds and alert codes


def emitted_kinds() -> tuple[set[str], list[str]]:
    """The event kinds the firmware's source emits: literal ones, and the places it builds one."""
    literal: set[str] = set()
    built: list[str] = []
    for path in sorted((REPO / "firmware" / "diemcau").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.removeprefix("_") not in ("EmitEvent", "emit"):  # a part's emit callback
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                literal.add(first.value)
            elif isinstance(first, ast.IfExp):
                literal |= {b.value for b in (first.body, first.orelse)
                            if isinstance(b, ast.Constant)}
            else:
                built.append(f"{path.name}:{node.lineno}: {ast.unparse(first)}")
    return literal, built


def test_every_event_kind_the_firmware_emits_is_listed() -> None:
    literal, built = emitted_kinds()
    assert len(literal) >= 20  # the scan found the calls
    assert literal <= set(EVENT_KINDS), literal - set(EVENT_KINDS)
    # The kinds made from a value (and the supervisor passing on the core's EmitEvent):
    # a new one here must be added below with every value it can take.
    assert sorted(b.split(": ", 1)[1] for b in built) == [
        "'stream_' + state", "f'update_{outcome.result}'", "kind"], built
    assert {f"stream_{s}" for s in ("reconnecting", "error")} <= set(EVENT_KINDS)
    assert {f"update_{r}" for r in get_args(UpdateResult)} <= set(EVENT_KINDS)
    made = literal | {f"stream_{s}" for s in ("reconnecting", "error")} | {
        f"update_{r}" for r in get_args(UpdateResult)}
    assert set(EVENT_KINDS) == made, set(EVENT_KINDS) ^ made  # no kind listed but never sent


def test_protocol_md_names_every_event_kind(md) -> None:
    section = md[md.index("## `event`"):]
    section = section[:section.index("\n## ")]
    missing = [kind for kind in EVENT_KINDS if f"`{kind}`" not in section]
    assert not missing, f"docs/protocol.md's `event` section does not name {missing}"


def test_health_md_has_a_rule_for_every_alert_code() -> None:
    health = (REPO / "docs" / "health.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \| (warning|critical) \|", health, re.M)
    assert [code for code, _ in rows] == list(ALERT_CODES)
    assert dict(rows) == dict(SEVERITY)


def test_protocol_md_counts_the_commands_right(md) -> None:
    words = {"fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
             "nineteen": 19, "twenty": 20}
    named = re.search(r"Protocol v1 names (\w+) commands", md)
    handled = re.search(r"this firmware handles (\w+)\.", md)
    unhandled = re.search(r"\.\s+((?:`[a-z.]+`(?:,| and)?\s*)+) are answered like any unknown", md)
    assert named and handled and unhandled
    # keys.update is taken by the supervisor itself, the rest by the meeting core.
    firmware = set(ARGS) | {"keys.update"}
    assert words[named[1]] == len(COMMAND_NAMES)
    assert words[handled[1]] == len(firmware & set(COMMAND_NAMES))
    assert set(re.findall(r"`([a-z.]+)`", unhandled[1])) == set(COMMAND_NAMES) - firmware


def test_asyncapi_event_schema_names_every_event_kind(doc) -> None:
    words = set(re.findall(r"[a-z_]+", doc["components"]["schemas"]["Event"]["description"]))
    assert set(EVENT_KINDS) <= words, set(EVENT_KINDS) - words
