"""Command arguments on the wire: the schemas, the profile names, a key update's shape."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.protocol import COMMAND_NAMES
from diemcau.protocol.arguments import (
    ARGS,
    MAX_CENTRE_KEYS,
    PROFILE_NAMES,
    BadKeyUpdate,
    JoinArgs,
    key_update,
)


def test_every_schema_is_for_a_command_of_the_protocol() -> None:
    assert set(ARGS) | {"keys.update"} <= set(COMMAND_NAMES)


def test_the_profile_names() -> None:
    assert PROFILE_NAMES == ("720p30", "480p25", "360p15", "audio")
    with pytest.raises(msgspec.ValidationError, match="profile"):
        msgspec.convert({"meeting_id": "m", "publish": "srt://h:1", "profile": "1080p60"},
                        JoinArgs)


KEY = "V8sCqLeDrzvBqHHm0HJ8r3GzJQ7rVx6H2iF8LZc6b1Q"


def test_a_key_update_is_the_whole_new_set() -> None:
    assert key_update({"keys": {"k2027": KEY, "k2026": KEY}}) == {"k2027": KEY, "k2026": KEY}


@pytest.mark.parametrize(("args", "why"), [
    ({}, "one argument"),
    ({"keys": {}}, "non-empty"),
    ({"keys": [KEY]}, "non-empty"),
    ({"keys": {"k": KEY}, "more": 1}, "one argument"),
    ({"keys": {"bad kid": KEY}}, "kid 'bad kid'"),
    ({"keys": {"k": 5}}, "keys.k: a public key"),
    ({"keys": {f"k{n}": KEY for n in range(MAX_CENTRE_KEYS + 1)}}, "at most 8"),
])
def test_a_bad_key_update_says_why(args: dict, why: str) -> None:
    with pytest.raises(BadKeyUpdate, match=why):
        key_update(args)


ANY = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70),
                   lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=70), inner, max_size=9), max_leaves=20)


@given(st.dictionaries(st.text(max_size=10), ANY, max_size=3)
       | st.fixed_dictionaries({"keys": ANY}))
def test_any_arguments_give_a_key_set_or_a_reason(args: dict) -> None:
    try:
        keys = key_update(args)
    except BadKeyUpdate as exc:
        assert str(exc)
    else:
        assert 0 < len(keys) <= MAX_CENTRE_KEYS
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items())
