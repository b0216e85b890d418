"""The media adapter's profile table has a row for every video profile the protocol names."""

from __future__ import annotations

from diemcau.adapters.media import PROFILES
from diemcau.protocol.arguments import PROFILE_NAMES


def test_every_video_profile_the_protocol_names_has_a_row() -> None:
    assert set(PROFILES) == set(PROFILE_NAMES) - {"audio"}
