"""The media vocabulary: the profile table covers the protocol's profile names, and only those."""

from __future__ import annotations

from typing import get_args

from diemcau.media.defs import DEFAULT_VIDEO_PROFILE, PROFILES, VideoProfile, top_kbps
from diemcau.protocol.arguments import Profile


def test_every_video_profile_name_has_an_entry_and_audio_none() -> None:
    # The names are the wire's (meeting.join, media.profile); the table is the media path's.
    assert set(PROFILES) | {"audio"} == set(get_args(Profile))
    assert DEFAULT_VIDEO_PROFILE in PROFILES


def test_the_table_goes_from_the_best_picture_down() -> None:
    # The adaptive bitrate ladder is built in the table's order.
    rates = [p.bitrate_kbps for p in PROFILES.values()]
    assert rates == sorted(rates, reverse=True)


def test_the_configured_bitrate_replaces_the_profiles_own_and_0_keeps_it() -> None:
    profile = VideoProfile(640, 360, 15, 400)
    assert top_kbps(profile, 0) == 400
    assert top_kbps(profile, 250) == 250
    assert top_kbps(None, 250) == 0
