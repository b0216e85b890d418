"""The send queue between the encoders and the network: bounded, drops video by GOP, audio last."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diemcau.core.sendqueue import Packet, SendQueue


@dataclass(frozen=True)
class Tag:
    """What the test knows about each packet it offered."""

    seq: int  # position in its own stream (video or audio)
    kind: str


# An operation: ("video", size, keyframe) | ("audio", size) | ("take",) | ("restart",)
OPS = st.lists(st.one_of(
    st.tuples(st.just("video"), st.integers(1, 400), st.booleans()),
    st.tuples(st.just("audio"), st.integers(1, 60)),
    st.tuples(st.just("take")),
    st.tuples(st.just("take")),
    st.tuples(st.just("restart")),
), max_size=300)


def run(ops: list[tuple], max_bytes: int, max_packets: int) -> None:  # noqa: C901
    q = SendQueue(max_bytes, max_packets)
    seqs = {"video": 0, "audio": 0}
    taken: list[Tag] = []
    offered = 0
    last_video: Tag | None = None  # the last video packet taken
    restarted = True  # the first video taken must be a keyframe, as after a restart
    keyframes: set[int] = set()
    for op in ops:
        if op[0] in ("video", "audio"):
            kind = op[0]
            keyframe = kind == "video" and op[2]
            tag = Tag(seqs[kind], kind)
            seqs[kind] += 1
            if keyframe:
                keyframes.add(tag.seq)
            dropped_audio = q.dropped_audio
            q.offer(Packet(kind, op[1], keyframe, tag))  # type: ignore[arg-type]
            offered += 1
            if q.dropped_audio > dropped_audio:
                assert all(p.kind == "audio" for p in q.packets), "audio went before video"
        elif op[0] == "take":
            packet = q.take()
            if packet is None:
                assert len(q) == 0 and q.bytes == 0
                continue
            tag = packet.payload
            assert isinstance(tag, Tag)
            taken.append(tag)
            if tag.kind == "video":
                if restarted or tag.seq not in keyframes:
                    # A P-frame goes out only right after the frame it refers to.
                    assert tag.seq in keyframes or (
                        not restarted and last_video is not None and last_video.seq == tag.seq - 1
                    ), f"video {tag.seq} sent without its reference"
                restarted = False
                last_video = tag
        else:
            q.restart()
            restarted = True
        # Bounded: whatever the offers, never more than the bounds (or one lone packet).
        assert len(q) <= max_packets
        assert q.bytes <= max_bytes or len(q) == 1
        assert q.bytes == sum(p.size_bytes for p in q.packets)
    # Nothing is lost unaccounted, and what leaves keeps its order in each stream.
    assert offered == len(taken) + len(q) + q.dropped_video + q.dropped_audio
    for kind in ("video", "audio"):
        seen = [t.seq for t in taken if t.kind == kind]
        assert seen == sorted(seen)


@given(ops=OPS, max_bytes=st.integers(1, 2000), max_packets=st.integers(1, 20))
@settings(max_examples=300)
def test_the_queue_stays_bounded_and_never_sends_video_without_its_references(
        ops: list[tuple], max_bytes: int, max_packets: int) -> None:
    run(ops, max_bytes, max_packets)


def test_a_dropped_p_frame_drops_video_until_the_next_keyframe_and_asks_for_one() -> None:
    q = SendQueue(max_bytes=100, max_packets=100)
    assert q.offer(Packet("video", 50, True, "I0")) is False
    assert q.offer(Packet("video", 40, False, "P1")) is False
    assert q.offer(Packet("video", 40, False, "P2")) is True  # no room: ask for a keyframe
    assert q.offer(Packet("video", 1, False, "P3")) is False  # room, but P2 is gone
    assert [q.take().payload, q.take().payload] == ["I0", "P1"]  # type: ignore[union-attr]
    assert q.offer(Packet("video", 30, True, "I4")) is False
    assert q.offer(Packet("video", 5, False, "P5")) is False
    assert [p.payload for p in q.packets] == ["I4", "P5"]
    assert q.dropped_video == 2


def test_a_keyframe_that_does_not_fit_replaces_the_queued_video() -> None:
    q = SendQueue(max_bytes=100, max_packets=100)
    q.offer(Packet("video", 40, True, "I0"))
    q.offer(Packet("audio", 10, False, "A0"))
    q.offer(Packet("video", 40, False, "P1"))
    assert q.offer(Packet("video", 60, True, "I2")) is False
    assert [p.payload for p in q.packets] == ["A0", "I2"]
    assert q.dropped_video == 2


def test_audio_throws_out_video_first_and_its_own_oldest_last() -> None:
    q = SendQueue(max_bytes=100, max_packets=100)
    q.offer(Packet("video", 60, True, "I0"))
    q.offer(Packet("audio", 30, False, "A0"))
    assert q.offer(Packet("audio", 30, False, "A1")) is True  # the video made room
    assert [p.payload for p in q.packets] == ["A0", "A1"]
    assert q.dropped_audio == 0
    q.offer(Packet("audio", 30, False, "A2"))
    q.offer(Packet("audio", 30, False, "A3"))
    assert [p.payload for p in q.packets] == ["A1", "A2", "A3"]
    assert q.dropped_audio == 1


def test_a_restart_empties_the_queue_and_waits_for_a_keyframe() -> None:
    q = SendQueue(max_bytes=1000, max_packets=10)
    q.offer(Packet("video", 10, True, "I0"))
    q.offer(Packet("audio", 10, False, "A0"))
    assert q.restart() == 2
    assert len(q) == 0 and q.bytes == 0
    q.offer(Packet("video", 10, False, "P1"))
    q.offer(Packet("audio", 10, False, "A1"))
    q.offer(Packet("video", 10, True, "I2"))
    assert [p.payload for p in q.packets] == ["A1", "I2"]


def test_a_packet_bigger_than_the_bound_goes_when_the_queue_is_empty() -> None:
    q = SendQueue(max_bytes=100, max_packets=10)
    q.offer(Packet("video", 500, True, "I0"))
    assert len(q) == 1
    assert q.offer(Packet("video", 10, False, "P1")) is True


def test_a_queue_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="room"):
        SendQueue(max_bytes=0, max_packets=1)
