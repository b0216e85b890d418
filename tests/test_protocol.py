"""Fast, pure tests of diemcau.protocol: topics, messages, signed commands, replay cache."""

from __future__ import annotations

import base64
import json
import math
import re

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diemcau.protocol import (
    ALERT_CODES,
    COMMAND_NAMES,
    FINAL_STATUSES,
    ROOT,
    Alert,
    Command,
    CommandClaims,
    CommandRejected,
    Event,
    Health,
    Interface,
    Meta,
    ParsedTopic,
    ReplayCache,
    Reply,
    Site,
    State,
    Status,
    alert_topic,
    check_name,
    decode,
    device_filter,
    device_topic,
    encode,
    generate_signing_key,
    group_cmd_topic,
    key_id,
    parse_topic,
    public_key_from_text,
    public_key_to_text,
    sign_command,
    verify_command,
)
from diemcau.protocol.commands import DEFAULT_TTL_S, MAX_COMMAND_BYTES, MAX_TOKEN_LIFETIME_S
from diemcau.protocol.topics import DEVICE_TOPIC_KINDS, NAME_RE

DEV = "c00001-r1"
AUDIENCES = frozenset({DEV, "group:p01", "group:d001", "group:c00001", "group:all"})
T0 = 1_795_136_400.0
KEY = generate_signing_key()
KID = key_id(KEY.public_key())
KEYS = {KID: KEY.public_key()}
OTHER_KEY = generate_signing_key()

NAMES = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")
KINDS = st.sampled_from(DEVICE_TOPIC_KINDS)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jws(header: object, claims: object, *, key=KEY, signature: bytes | None = None) -> str:
    """A compact JWS built by hand, so that header and claims can be anything."""
    h = b64(json.dumps(header).encode())
    c = b64(json.dumps(claims).encode())
    sig = key.sign(f"{h}.{c}".encode()) if signature is None else signature
    return f"{h}.{c}.{b64(sig)}"


def claims(**over: object) -> dict:
    base = {"jti": "c1", "aud": DEV, "iat": int(T0), "exp": int(T0) + 120,
            "cmd": "audio.mute", "args": {}}
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def verify(token: str | bytes, *, now: float = T0 + 1, **kw: object) -> Command:
    return verify_command(token, KEYS, AUDIENCES, now=now, **kw)


def rejected(token: str | bytes, **kw: object) -> CommandRejected:
    with pytest.raises(CommandRejected) as info:
        verify(token, **kw)
    return info.value


# ---------------------------------------------------------------- topics


@given(dev=NAMES, kind=KINDS)
def test_device_topic_round_trip(dev: str, kind: str) -> None:
    topic = device_topic(dev, kind)  # type: ignore[arg-type]
    assert topic == f"{ROOT}/dev/{dev}/{kind}"
    assert parse_topic(topic) == ParsedTopic(kind, dev, None, None)


@given(dev=NAMES, code=NAMES)
def test_alert_topic_round_trip(dev: str, code: str) -> None:
    assert parse_topic(alert_topic(dev, code)) == ParsedTopic("alert", dev, None, code)


@given(group=NAMES)
def test_group_cmd_topic_round_trip(group: str) -> None:
    assert parse_topic(group_cmd_topic(group)) == ParsedTopic("group_cmd", None, group, None)


@given(name=NAMES)
def test_check_name_accepts_valid_names(name: str) -> None:
    assert check_name(name) == name


BAD_NAMES = ["", "-c1", "_c1", "C00001", "c 1", "c/1", "c+1", "c#1", "+", "#", "c.1",
             "a" * 65, "xã", "c1\n", "c1\x00"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="site.commune"):
        check_name(name, "site.commune")
    assert parse_topic(device_topic(name, "state")) is None  # type: ignore[arg-type]
    assert parse_topic(alert_topic(DEV, name)) is None
    assert parse_topic(group_cmd_topic(name)) is None


@given(name=st.text(max_size=70).filter(lambda s: NAME_RE.fullmatch(s) is None))
def test_any_invalid_name_is_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)
    assert parse_topic(device_topic(name, "cmd")) is None  # type: ignore[arg-type]
    assert parse_topic(group_cmd_topic(name)) is None


def test_longest_name_is_64_characters() -> None:
    assert check_name("a" * 64) == "a" * 64
    assert parse_topic(device_topic("a" * 64, "state")) is not None


@pytest.mark.parametrize("topic", [
    device_filter(),  # diemcau/v1/dev/+/#
    device_filter(DEV),
    f"{ROOT}/dev/+/state",
    f"{ROOT}/dev/{DEV}/alert/+",
    f"{ROOT}/dev/{DEV}/alert/#",
    f"{ROOT}/group/+/cmd",
    f"{ROOT}/#",
    "#",
    "",
    ROOT,
    f"{ROOT}/dev/{DEV}",
    f"{ROOT}/dev/{DEV}/",
    f"{ROOT}/dev/{DEV}/state/",
    f"/{ROOT}/dev/{DEV}/state",
    f"{ROOT}/dev/{DEV}/unknown",
    f"{ROOT}/dev/{DEV}/alert",
    f"{ROOT}/dev/{DEV}/alert/a/b",
    f"{ROOT}/group/p01/reply",
    f"{ROOT}/group/p01",
    "diemcau/v2/dev/c00001-r1/state",
    "DIEMCAU/V1/dev/c00001-r1/state",
    f"{ROOT}/dev/{DEV}/state\n",
])
def test_wildcards_and_non_topics_do_not_parse(topic: str) -> None:
    assert parse_topic(topic) is None


def test_device_filter() -> None:
    assert device_filter() == "diemcau/v1/dev/+/#"
    assert device_filter(DEV) == "diemcau/v1/dev/c00001-r1/#"


# ---------------------------------------------------------------- messages


def test_messages_round_trip_with_every_field_written() -> None:
    msgs: list[msgspec.Struct] = [
        State(state="ready", session=3, ts=T0),
        Meta(model="m", serial="s", firmware="0.1.0", capabilities=["srt"],
             site=Site(name="n", province="p01", district="d001", commune="c00001"),
             groups=["p01", "d001", "c00001", "all"], config_version="v", ts=T0),
        Status(meeting_state="idle", ts=T0),
        Health(seq=1, ts=T0, uptime_s=1, cpu_percent=1, load_1m=0.1, memory_used_percent=1,
               memory_available_mb=1, process_rss_mb=1, disk_free_mb=1, disk_used_percent=1,
               interfaces=[Interface(name="eth0", up=True, addresses=[])]),
        Alert(code="disk_low", severity="warning", detail="d", since=T0),
        Event(seq=1, ts=T0, kind="joined"),
        Reply(id=None, cmd=None, status="rejected", code=400, detail="d", ts=T0),
        CommandClaims(jti="j", aud=DEV, iat=T0, exp=T0 + 1, cmd="audio.mute"),
    ]
    for msg in msgs:
        wire = encode(msg)
        assert decode(wire, type(msg)) == msg
        fields = {f.name for f in msgspec.structs.fields(msg)}
        assert set(json.loads(wire)) == fields, "defaults are written too"


def test_unknown_fields_are_ignored_and_wrong_values_refused() -> None:
    wire = b'{"state":"lost","session":2,"ts":1.0,"added_in_v1_1":true}'
    assert decode(wire, State) == State(state="lost", session=2, ts=1.0)
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"state":"asleep","session":2,"ts":1.0}', State)
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"state":"ready","ts":1.0}', State)


def test_reply_first_status_is_null_unless_duplicate() -> None:
    reply = Reply(id="c1", cmd="audio.mute", status="succeeded", code=200, detail="muted", ts=1.0)
    assert json.loads(encode(reply))["first_status"] is None
    dup = Reply(id="c1", cmd="audio.mute", status="duplicate", code=200, detail="muted", ts=2.0,
                first_status="succeeded")
    assert decode(encode(dup), Reply).first_status == "succeeded"


def test_protocol_constants() -> None:
    assert len(COMMAND_NAMES) == len(set(COMMAND_NAMES)) == 17
    assert all(re.fullmatch(r"[a-z]+\.[a-z]+", name) for name in COMMAND_NAMES)
    assert all(NAME_RE.fullmatch(code) for code in ALERT_CODES)
    assert {"accepted", "in_progress"}.isdisjoint(FINAL_STATUSES)


# ---------------------------------------------------------------- keys


def test_public_key_text_round_trip() -> None:
    pub = KEY.public_key()
    text = public_key_to_text(pub)
    assert "=" not in text and len(text) == 43
    assert key_id(public_key_from_text(text)) == KID
    assert key_id(public_key_from_text(f"  {text}\n")) == KID
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert key_id(public_key_from_text(pem)) == KID


def test_public_key_from_text_refuses_other_keys() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        public_key_from_text(b64(b"\x01" * 31))
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ValueError, match="Ed25519"):
        public_key_from_text(ec_pem)


def test_key_id_is_short_stable_and_distinct() -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", KID)
    assert key_id(KEY.public_key()) == KID
    assert key_id(OTHER_KEY.public_key()) != KID


# ---------------------------------------------------------------- sign and verify


def test_sign_verify_round_trip() -> None:
    token = sign_command(KEY, KID, aud=DEV, cmd="audio.volume", args={"percent": 60},
                         jti="c42", now=T0 + 0.7)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": KID, "typ": "JWT"}
    command = verify(token.encode())
    assert command == Command(id="c42", cmd="audio.volume", aud=DEV, iat=T0, exp=T0 + DEFAULT_TTL_S,
                              args={"percent": 60}, kid=KID)
    assert verify(token) == command, "a str payload works like bytes"


@pytest.mark.parametrize("ttl_s", [0, 0.5, -120, MAX_TOKEN_LIFETIME_S + 1, 2 * 86400,
                                   10 * 365 * 86400, float("nan"), float("inf")])
def test_sign_command_refuses_a_lifetime_a_box_would_refuse(ttl_s: float) -> None:
    with pytest.raises(ValueError, match="ttl_s must be 1-86400 s"):
        sign_command(KEY, KID, aud=DEV, cmd="audio.mute", ttl_s=ttl_s, now=T0)


@given(ttl_s=st.floats(1, MAX_TOKEN_LIFETIME_S) | st.sampled_from([1, MAX_TOKEN_LIFETIME_S]),
       issued=st.floats(0, 4e9) | st.just(T0 + 0.999), late=st.floats(0, 30))
def test_what_sign_command_makes_a_box_accepts(ttl_s: float, issued: float, late: float) -> None:
    """Any lifetime the signer allows passes a box with the default config, received within
    the leeway of being signed, or with an unsynchronised clock whatever it says."""
    token = sign_command(KEY, KID, aud=DEV, cmd="audio.mute", ttl_s=ttl_s, now=issued)
    command = verify(token, now=issued + late)
    assert 0 < command.exp - command.iat <= MAX_TOKEN_LIFETIME_S
    assert verify(token, now=0.0, clock_synced=False) == command


def test_sign_command_defaults() -> None:
    token = sign_command(KEY, KID, aud="group:all", cmd="health.report", ttl_s=30, now=T0)
    raw = jwt.decode(token, options={"verify_signature": False})
    assert re.fullmatch(r"[0-9a-f]{32}", raw["jti"])
    assert raw["args"] == {} and raw["exp"] - raw["iat"] == 30
    assert verify(token).aud == "group:all"


@pytest.mark.parametrize("aud", sorted(AUDIENCES))
def test_each_own_audience_is_accepted(aud: str) -> None:
    assert verify(sign_command(KEY, KID, aud=aud, cmd="audio.mute", now=T0)).aud == aud


def test_several_keys_pick_by_kid() -> None:
    kid2 = key_id(OTHER_KEY.public_key())
    keys = {KID: KEY.public_key(), kid2: OTHER_KEY.public_key()}
    token = sign_command(OTHER_KEY, kid2, aud=DEV, cmd="audio.mute", now=T0)
    assert verify_command(token, keys, AUDIENCES, now=T0).kid == kid2


# ------------------------------------------------------------ rejections, in check order


def test_garbage_is_rejected_unattributed() -> None:
    for payload in (b"", b"hello", b"a.b", b"\xff\xfe.\x00.x", "hé.llo.x".encode(), b"{}", b"..."):
        err = rejected(payload)
        assert (err.status, err.code, err.id, err.cmd) == ("rejected", 400, None, None)
        assert err.detail.startswith("not a signed command")


def test_too_large_is_rejected_before_parsing() -> None:
    assert rejected(b"a" * MAX_COMMAND_BYTES).detail.startswith("not a signed command")
    big = sign_command(KEY, KID, aud=DEV, cmd="audio.mute", args={"pad": "x" * MAX_COMMAND_BYTES},
                       now=T0)
    err = rejected(big.encode())
    assert (err.status, err.code, err.id) == ("rejected", 400, None)
    assert err.detail == f"command too large ({len(big)} bytes)"


@pytest.mark.parametrize("alg", ["HS256", "none"])
def test_other_algorithms_are_refused(alg: str) -> None:
    secret = None if alg == "none" else public_key_to_text(KEY.public_key())  # key confusion
    token = jwt.encode(claims(jti="forged-1"), secret, algorithm=alg, headers={"kid": KID})
    err = rejected(token)
    assert (err.status, err.code) == ("rejected", 401)
    assert err.detail == f"algorithm {alg!r} not accepted (EdDSA only)"
    assert (err.id, err.cmd) == ("forged-1", "audio.mute")


@pytest.mark.parametrize("header", [{"kid": KID}, {"alg": "eddsa", "kid": KID},
                                    {"alg": ["EdDSA"], "kid": KID}])
def test_missing_or_odd_alg_is_refused(header: dict) -> None:
    err = rejected(jws(header, claims()))
    assert (err.code, err.id) == (401, "c1")


@pytest.mark.parametrize("header", [{"alg": "EdDSA"}, {"alg": "EdDSA", "kid": "k-retired"},
                                    {"alg": "EdDSA", "kid": ""}])
def test_unknown_kid_is_refused(header: dict) -> None:
    err = rejected(jws(header, claims()))
    assert (err.status, err.code, err.id, err.cmd) == ("rejected", 401, "c1", "audio.mute")
    assert err.detail == f"unknown signing key {header.get('kid')!r}"


@pytest.mark.parametrize("header", [{"alg": "EdDSA", "kid": 7}, {"alg": "EdDSA", "kid": None},
                                    {"alg": "EdDSA", "kid": KID, "crit": ["exp"]},
                                    {"alg": "EdDSA", "kid": KID, "crit": "b64"}])
def test_malformed_header_is_a_shape_error(header: dict) -> None:
    err = rejected(jws(header, claims()))
    assert (err.status, err.code) == ("rejected", 400)
    assert err.detail.startswith("not a signed command")


def test_deeply_nested_header_is_a_shape_error() -> None:
    nested = "[" * 5000 + "]" * 5000  # JSON's parser recurses once per level
    err = rejected(f"{b64(nested.encode())}.e30.AA")
    assert (err.code, err.id) == (400, None)


def test_signature_from_another_key_is_refused_but_attributed() -> None:
    token = sign_command(OTHER_KEY, KID, aud=DEV, cmd="device.reboot", jti="forged-2", now=T0)
    err = rejected(token)
    assert (err.status, err.code, err.detail) == ("rejected", 401, "bad signature")
    assert (err.id, err.cmd) == ("forged-2", "device.reboot")


def test_tampered_claims_are_refused() -> None:
    good = sign_command(KEY, KID, aud=DEV, cmd="audio.volume", args={"percent": 10}, now=T0)
    h, _, s = good.split(".")
    evil = b64(json.dumps(claims(cmd="audio.volume", args={"percent": 100})).encode())
    assert rejected(f"{h}.{evil}.{s}").code == 401
    assert rejected(f"{h}.{good.split('.')[1]}.{b64(b'x' * 64)}").code == 401
    assert rejected(f"{h}.{good.split('.')[1]}.").code in (400, 401)


def test_signed_claims_that_are_not_an_object_are_unreadable() -> None:
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, ["jti", "c1"]))
    assert (err.code, err.id) == (400, None)
    assert err.detail.startswith("unreadable command")


@pytest.mark.parametrize("field", ["jti", "aud", "iat", "exp", "cmd"])
def test_missing_claim_is_named(field: str) -> None:
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, claims(**{field: ...})))
    assert (err.status, err.code) == ("rejected", 400)
    assert err.detail == f"bad claims: Object missing required field `{field}`"


@pytest.mark.parametrize(("over", "where"), [
    ({"iat": "soon"}, "$.iat"), ({"exp": None}, "$.exp"), ({"cmd": 5}, "$.cmd"),
    ({"args": [1]}, "$.args"), ({"aud": [DEV]}, "$.aud"), ({"jti": 12}, "$.jti"),
    ({"iat": True}, "$.iat"),
])
def test_claim_of_wrong_type_is_named(over: dict, where: str) -> None:
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, claims(**over)))
    assert err.code == 400 and err.detail.startswith("bad claims:")
    assert f"`{where}`" in err.detail


def test_jti_length_limits() -> None:
    assert verify(jws({"alg": "EdDSA", "kid": KID}, claims(jti="j" * 128))).id == "j" * 128
    for jti in ("", "j" * 129):
        err = rejected(jws({"alg": "EdDSA", "kid": KID}, claims(jti=jti)))
        assert (err.code, err.detail) == (400, "bad claims: jti must be 1-128 characters")
        assert err.id is None, "an id the box would not accept is not echoed"


@pytest.mark.parametrize("aud", ["c00002-r1", "group:p02", "group:c00001-r1", DEV.upper(),
                                 "p01", "group:", ""])
def test_wrong_audience_is_forbidden(aud: str) -> None:
    err = rejected(sign_command(KEY, KID, aud=aud, cmd="audio.mute", jti="c9", now=T0))
    assert (err.status, err.code, err.id) == ("rejected", 403, "c9")
    assert err.detail == f"audience {aud!r} is not this box"


def test_audience_is_checked_before_times() -> None:
    token = jws({"alg": "EdDSA", "kid": KID}, claims(aud="c00002-r1", exp=int(T0) - 1))
    assert rejected(token).code == 403


@pytest.mark.parametrize("exp", [T0, T0 - 1, float("nan"), float("inf"), float("-inf")])
def test_exp_must_be_finite_and_after_iat(exp: float) -> None:
    token = jws({"alg": "EdDSA", "kid": KID}, claims(iat=T0, exp=exp))
    err = rejected(token, clock_synced=False)
    assert (err.status, err.code) == ("rejected", 400)
    assert err.detail.startswith("bad claims:")


def test_nan_iat_is_refused() -> None:
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, claims(iat=float("nan"))))
    assert err.code == 400


def test_expired_with_a_synchronised_clock() -> None:
    token = sign_command(KEY, KID, aud=DEV, cmd="meeting.leave", jti="c7", now=T0)
    exp = T0 + DEFAULT_TTL_S
    assert verify(token, now=exp + 30.0).id == "c7", "30 s of leeway by default"
    err = rejected(token, now=exp + 31.0)
    assert (err.status, err.code, err.id, err.cmd) == ("expired", 410, "c7", "meeting.leave")
    assert err.detail == "expired 31 s ago"
    assert rejected(token, now=exp + 1, leeway_s=0).code == 410


def test_unsynchronised_clock_does_not_judge_expiry() -> None:
    token = sign_command(KEY, KID, aud=DEV, cmd="audio.mute", now=T0)
    assert verify(token, now=T0 + 10 * 86400, clock_synced=False).cmd == "audio.mute"
    assert verify(token, now=0.0, clock_synced=False).cmd == "audio.mute"
    # every other check still applies
    assert rejected(sign_command(OTHER_KEY, KID, aud=DEV, cmd="x", now=T0),
                    clock_synced=False).code == 401
    assert rejected(sign_command(KEY, KID, aud="c2", cmd="x", now=T0), clock_synced=False).code == 403


TEN_YEARS = 10 * 365 * 86400


def test_the_reported_attack_is_refused_once_the_clock_is_synchronised() -> None:
    """Issue 11: issued ten years ahead, valid 120 s from then."""
    token = sign_command(KEY, KID, aud=DEV, cmd="audio.volume", args={"percent": 77},
                         jti="c11", now=T0 + TEN_YEARS)
    err = rejected(token, now=T0)
    assert (err.status, err.code, err.id, err.cmd) == ("rejected", 401, "c11", "audio.volume")
    assert err.detail == f"not yet valid: issued {TEN_YEARS} s ahead of this box's clock (30 s allowed)"
    # A box whose clock is not synchronised may be years behind: it cannot tell.
    assert verify(token, now=T0, clock_synced=False).args == {"percent": 77}


def test_iat_in_the_future_within_the_leeway() -> None:
    token = sign_command(KEY, KID, aud=DEV, cmd="audio.mute", now=T0 + 30)
    assert verify(token, now=T0).cmd == "audio.mute", "30 s of leeway by default"
    token = sign_command(KEY, KID, aud=DEV, cmd="audio.mute", now=T0 + 31)
    err = rejected(token, now=T0)
    assert err.detail == "not yet valid: issued 31 s ahead of this box's clock (30 s allowed)"
    assert verify(token, now=T0, leeway_s=31).cmd == "audio.mute"
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, claims(iat=T0 + 30.25, exp=T0 + 150)),
                   now=T0)
    assert err.detail.startswith("not yet valid: issued 31 s ahead"), "rounded up, never to 30"


def test_lifetime_above_the_maximum_is_refused_whatever_the_clock() -> None:
    def token(lifetime: float) -> str:
        return jws({"alg": "EdDSA", "kid": KID}, claims(jti="c12", iat=T0, exp=T0 + lifetime))

    for synced in (True, False):
        assert verify(token(MAX_TOKEN_LIFETIME_S), clock_synced=synced).id == "c12"
        for lifetime, text in ((MAX_TOKEN_LIFETIME_S + 0.5, "86400.5"), (2 * 86400, "172800"),
                               (TEN_YEARS, "315360000")):
            err = rejected(token(lifetime), clock_synced=synced)
            assert (err.status, err.code, err.id) == ("rejected", 401, "c12")
            assert err.detail == f"lifetime {text} s is longer than the 86400 s allowed"
    assert rejected(token(3600), max_lifetime_s=600).detail == (
        "lifetime 3600 s is longer than the 600 s allowed")
    # A hostile pair whose difference overflows is still a number too large.
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, claims(iat=-1.7e308, exp=1.7e308)))
    assert err.detail == "lifetime inf s is longer than the 86400 s allowed"


def test_times_are_checked_in_order() -> None:
    """Audience, then lifetime, then issued in the future, then expiry."""
    long_ahead = claims(iat=T0 + TEN_YEARS, exp=T0 + TEN_YEARS + 2 * 86400)
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, long_ahead | {"aud": "c00002-r1"}), now=T0)
    assert err.code == 403
    err = rejected(jws({"alg": "EdDSA", "kid": KID}, long_ahead), now=T0)
    assert err.detail.startswith("lifetime")
    long_past = claims(iat=T0 - TEN_YEARS, exp=T0 - TEN_YEARS + 2 * 86400)
    assert rejected(jws({"alg": "EdDSA", "kid": KID}, long_past), now=T0).code == 401


@st.composite
def times_near_the_bounds(draw: st.DrawFn) -> tuple[float, float, float, float]:
    """(leeway, max lifetime, iat - now, exp - iat), mostly within a few seconds of a bound."""
    leeway = draw(st.sampled_from([0.0, 30.0, 300.0]) | st.floats(0, 300))
    max_lifetime = draw(st.sampled_from([120, MAX_TOKEN_LIFETIME_S, 604800])
                        | st.integers(120, 604800))
    near = st.integers(-3, 3) | st.floats(-1, 1)
    lifetime = draw(st.sampled_from([max_lifetime, 1, 120]).flatmap(
        lambda edge: near.map(lambda d: edge + d)).filter(lambda v: v > 0)
                    | st.sampled_from([2 * 86400, TEN_YEARS]) | st.floats(0.001, 1e10))
    # iat ahead of now by about the leeway (issued in the future), or so far behind that
    # exp is about the leeway past now (expired), or years either way, or anything.
    offset = draw(st.sampled_from([leeway, -lifetime - leeway, 0.0]).flatmap(
        lambda edge: near.map(lambda d: edge + d))
                  | st.sampled_from([TEN_YEARS, -TEN_YEARS]) | st.floats(-1e10, 1e10))
    return leeway, max_lifetime, offset, lifetime


@settings(max_examples=500)
@given(times=times_near_the_bounds(), synced=st.booleans())
def test_lifetime_and_issue_time_bounds(times: tuple[float, float, float, float],
                                        synced: bool) -> None:
    leeway, max_lifetime, offset, lifetime = times
    now = T0
    iat = now + offset
    exp = iat + lifetime
    token = jws({"alg": "EdDSA", "kid": KID}, claims(jti="c13", iat=iat, exp=exp))
    not_after = exp <= iat  # a lifetime too small to survive the addition
    too_long = exp - iat > max_lifetime
    ahead = synced and iat > now + leeway
    expired = synced and now > exp + leeway
    try:
        command = verify_command(token, KEYS, AUDIENCES, now=now, clock_synced=synced,
                                 leeway_s=leeway, max_lifetime_s=max_lifetime)
    except CommandRejected as err:
        if not_after:
            assert (err.code, err.detail) == (400, "bad claims: exp is not after iat")
        elif too_long:
            assert (err.code, err.detail.split()[0]) == (401, "lifetime"), err.detail
        elif ahead:
            assert (err.code, err.detail.split(":")[0]) == (401, "not yet valid"), err.detail
        else:
            assert expired and (err.status, err.code) == ("expired", 410), err.detail
        return
    assert not (not_after or too_long or ahead or expired), (not_after, too_long, ahead, expired)
    assert (command.iat, command.exp) == (iat, exp)


def test_attribution_of_forged_tokens() -> None:
    header = {"alg": "HS256", "kid": KID}
    cases = [
        (claims(jti="forged", cmd="device.reboot"), ("forged", "device.reboot")),
        (claims(jti=42), (None, "audio.mute")),
        (claims(cmd="c" * 65), ("c1", None)),
        (claims(cmd="c" * 64), ("c1", "c" * 64)),
        (claims(jti=None, cmd=None), (None, None)),
        ("not an object", (None, None)),
    ]
    for body, expected in cases:
        err = rejected(jws(header, body, signature=b"\0" * 32))
        assert (err.id, err.cmd) == expected, body


# ---------------------------------------------------------------- fuzz: only CommandRejected escapes

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
CLAIM_VALUES = st.one_of(JSON, st.sampled_from([DEV, "group:p01", "c2", T0, T0 + 60, "audio.mute"]))
CLAIMS = st.fixed_dictionaries(
    {}, optional={k: CLAIM_VALUES for k in ("jti", "aud", "iat", "exp", "cmd", "args")}
) | JSON
HEADERS = st.fixed_dictionaries(
    {}, optional={"alg": st.sampled_from(["EdDSA", "HS256", "none"]) | JSON,
                  "kid": st.sampled_from([KID, "other"]) | JSON,
                  "crit": JSON, "b64": JSON, "typ": JSON},
) | JSON


def _check(payload: bytes | str, now: float, synced: bool) -> None:
    try:
        command = verify_command(payload, KEYS, AUDIENCES, now=now, clock_synced=synced)
    except CommandRejected as err:
        assert (err.status, err.code) in {("rejected", 400), ("rejected", 401),
                                          ("rejected", 403), ("expired", 410)}
        assert err.id is None or 0 < len(err.id) <= 128
        return
    # Whatever is accepted keeps the promises the rest of the box relies on.
    assert 0 < len(command.id) <= 128 and command.aud in AUDIENCES and command.kid in KEYS
    assert math.isfinite(command.iat) and math.isfinite(command.exp)
    assert command.exp > command.iat and isinstance(command.args, dict)
    assert command.exp - command.iat <= MAX_TOKEN_LIFETIME_S
    if synced:
        assert command.iat - 30 <= now <= command.exp + 30


FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(payload=st.binary(max_size=512) | st.text(max_size=256), synced=st.booleans())
def test_random_bytes_only_raise_command_rejected(payload: bytes | str, synced: bool) -> None:
    with pytest.raises(CommandRejected):
        verify_command(payload, KEYS, AUDIENCES, now=T0, clock_synced=synced)


@FUZZ
@given(value=JSON)
def test_random_json_only_raises_command_rejected(value: object) -> None:
    with pytest.raises(CommandRejected):
        verify_command(json.dumps(value).encode(), KEYS, AUDIENCES, now=T0)


@FUZZ
@given(header=HEADERS, body=CLAIMS, signed=st.booleans(), now=st.sampled_from([T0, T0 + 1e6]),
       synced=st.booleans())
def test_random_tokens_only_raise_command_rejected(header: object, body: object, signed: bool,
                                                   now: float, synced: bool) -> None:
    token = jws(header, body, signature=None if signed else b"\x07" * 64)
    _check(token.encode(), now, synced)


@FUZZ
@given(body=st.fixed_dictionaries({
    "jti": st.text(min_size=0, max_size=130), "aud": st.sampled_from([DEV, "group:all", "c2"]),
    "iat": st.floats() | st.integers(), "exp": st.floats() | st.integers(),
    "cmd": st.text(max_size=70), "args": st.dictionaries(st.text(max_size=5), JSON, max_size=3),
}), synced=st.booleans())
def test_random_well_formed_claims_keep_the_promises(body: dict, synced: bool) -> None:
    _check(jws({"alg": "EdDSA", "kid": KID}, body), T0, synced)


# ---------------------------------------------------------------- replay cache


def _reply(jti: str, status: str = "succeeded", code: int = 200) -> Reply:
    return Reply(id=jti, cmd="meeting.join", status=status, code=code,  # type: ignore[arg-type]
                 detail="live in m1", ts=T0)


def test_replay_cache_remember_and_first_result() -> None:
    cache = ReplayCache(":memory:")
    assert cache.first_result("c1") is None and len(cache) == 0
    cache.remember("c1", T0 + 120)
    in_progress = cache.first_result("c1")
    assert in_progress is not None
    assert (in_progress.id, in_progress.status, in_progress.code) == ("c1", "in_progress", 202)
    cache.remember("c1", T0 + 120, _reply("c1", "accepted", 202))
    assert cache.first_result("c1") == _reply("c1", "accepted", 202)
    cache.remember("c1", T0 + 120, _reply("c1"))
    assert cache.first_result("c1") == _reply("c1"), "the latest reply recorded is repeated"
    assert len(cache) == 1


def test_replay_cache_duplicate_flow() -> None:
    """What the box does with a second delivery: repeat the result, marked duplicate."""
    cache = ReplayCache(":memory:")
    token = sign_command(KEY, KID, aud=DEV, cmd="meeting.join", jti="j1", now=T0)
    answers = []
    for _ in range(2):
        command = verify(token)
        first = cache.first_result(command.id)
        if first is None:
            cache.remember(command.id, command.exp)
            cache.remember(command.id, command.exp, _reply(command.id))
            answers.append(_reply(command.id))
        else:
            answers.append(Reply(id=command.id, cmd=command.cmd, status="duplicate", code=first.code,
                                 detail=first.detail, ts=T0 + 5, first_status=first.status))
    assert answers[1].status == "duplicate" and answers[1].first_status == "succeeded"
    assert (answers[1].code, answers[1].detail) == (answers[0].code, answers[0].detail)
    assert decode(encode(answers[1]), Reply) == answers[1]


def test_replay_cache_persists_across_reopen(tmp_path) -> None:
    path = tmp_path / "replay.sqlite"
    cache = ReplayCache(path)
    cache.remember("c1", T0 + 120, _reply("c1"))
    cache.remember("c2", T0 + 120)
    cache.close()
    again = ReplayCache(path)
    assert again.first_result("c1") == _reply("c1")
    assert again.first_result("c2").status == "in_progress"  # type: ignore[union-attr]
    assert again.first_result("c3") is None and len(again) == 2
    again.close()


def test_replay_cache_purge_by_expiry() -> None:
    cache = ReplayCache(":memory:")
    for jti, exp in (("a", 100.0), ("b", 200.0), ("c", 300.0)):
        cache.remember(jti, exp)
    assert cache.purge(now=230.0, leeway_s=30.0) == 1, "exp < now - leeway goes; b is on the edge"
    assert cache.first_result("a") is None and cache.first_result("b") is not None
    assert cache.purge(now=1000.0) == 2 and len(cache) == 0


def test_replay_cache_keeps_the_first_expiry() -> None:
    cache = ReplayCache(":memory:")
    cache.remember("a", 100.0)
    cache.remember("a", 10_000.0, _reply("a"))
    assert cache.purge(now=200.0, leeway_s=0) == 1


def test_replay_cache_is_bounded_closest_to_expiry_first() -> None:
    cache = ReplayCache(":memory:", max_entries=3)
    for i, jti in enumerate("abcd"):
        cache.remember(jti, 100.0 + i)
    assert len(cache) == 3 and cache.first_result("a") is None
    cache.remember("e", 50.0)  # nearer expiry than any: it is the one dropped
    assert len(cache) == 3 and cache.first_result("e") is None
    assert all(cache.first_result(j) is not None for j in "bcd")


@settings(max_examples=50)
@given(ops=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 1000)), max_size=40))
def test_replay_cache_never_exceeds_its_bound(ops: list[tuple[str, float]]) -> None:
    cache = ReplayCache(":memory:", max_entries=4)
    for jti, exp in ops:
        cache.remember(jti, exp)
        assert len(cache) <= 4
        assert cache.first_result(jti) is not None or len(cache) == 4
