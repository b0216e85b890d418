"""What waits between the encoders and the network, and what is dropped when it cannot leave.

Pure: no threads, no I/O. The media path keeps one :class:`SendQueue` under
a lock (:mod:`diemcau.media.shared`); the encoding thread ``offer``s encoded packets, the network writer
``take``s them. The queue is bounded in packets and in bytes, so memory
never grows however slow the network is. When a packet does not fit:

- **Video is dropped a whole GOP tail at a time.** Once one video packet is
  dropped, every later one references something missing, so video is
  dropped until the next keyframe (the queue asks for one: ``offer``
  returns True). Video already queued before the gap is a whole prefix and
  still goes out.
- **A keyframe that does not fit** replaces the video queued before it: it
  is newer and needs nothing older.
- **Audio goes last.** Audio that does not fit first throws out all queued
  video (and opens a gap, as above); only if it still does not fit does the
  oldest audio go.
- A packet bigger than the whole bound is taken when the queue is empty, so
  a large keyframe cannot keep the video off for good.

    >>> q = SendQueue(max_bytes=100, max_packets=10)
    >>> q.offer(Packet("video", 60, True, "I0")), q.offer(Packet("video", 60, False, "P1"))
    (False, True)
    >>> q.offer(Packet("video", 10, False, "P2"))  # still in the gap: dropped, no new request
    False
    >>> [p.payload for p in q.packets], q.dropped_video
    (['I0'], 2)
    >>> q.offer(Packet("audio", 50, False, "A0")), q.dropped_video  # the video makes room
    (True, 3)
    >>> q.take().payload, q.take()
    ('A0', None)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

Kind = Literal["video", "audio"]


@dataclass(frozen=True, slots=True)
class Packet:
    """One encoded packet; ``payload`` is whatever the writer sends (an ``av.Packet``)."""

    kind: Kind
    size_bytes: int
    keyframe: bool
    payload: object


class SendQueue:
    """A bounded FIFO of encoded packets that drops video by GOP and audio last."""

    def __init__(self, max_bytes: int, max_packets: int) -> None:
        if max_bytes <= 0 or max_packets <= 0:
            raise ValueError("a send queue needs room for something")
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self.packets: deque[Packet] = deque()
        self.bytes = 0
        self.video_gap = True  # video waits for the next keyframe (the first one too)
        self.dropped_video = 0
        self.dropped_audio = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        return len(self.packets)

    def _fits(self, size: int) -> bool:
        if not self.packets:
            return True
        return self.bytes + size <= self.max_bytes and len(self.packets) < self.max_packets

    def _append(self, packet: Packet) -> None:
        self.packets.append(packet)
        self.bytes += packet.size_bytes
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _evict_video(self) -> bool:
        """Drop every queued video packet; True if there was any (a gap opens)."""
        kept = deque(p for p in self.packets if p.kind != "video")
        evicted = len(self.packets) - len(kept)
        if evicted:
            self.dropped_video += evicted
            self.packets = kept
            self.bytes = sum(p.size_bytes for p in kept)
            self.video_gap = True
        return evicted > 0

    def offer(self, packet: Packet) -> bool:
        """Queue ``packet`` or drop something; True when a keyframe should be asked for."""
        if packet.kind == "video":
            return self._offer_video(packet)
        want_keyframe = False
        if not self._fits(packet.size_bytes):
            want_keyframe = self._evict_video()
        while not self._fits(packet.size_bytes):
            oldest = self.packets.popleft()  # only audio is left
            self.bytes -= oldest.size_bytes
            self.dropped_audio += 1
        self._append(packet)
        return want_keyframe

    def _offer_video(self, packet: Packet) -> bool:
        if self.video_gap and not packet.keyframe:
            self.dropped_video += 1
            return False
        if not self._fits(packet.size_bytes) and packet.keyframe:
            self._evict_video()
        if self._fits(packet.size_bytes):
            self._append(packet)
            if packet.keyframe:
                self.video_gap = False
            return False
        self.dropped_video += 1
        was_in_gap = self.video_gap
        self.video_gap = True
        # A keyframe that did not fit was the answer to a request: ask again.
        return packet.keyframe or not was_in_gap

    def take(self) -> Packet | None:
        """The oldest packet, or None when the queue is empty."""
        if not self.packets:
            return None
        packet = self.packets.popleft()
        self.bytes -= packet.size_bytes
        return packet

    def restart(self) -> int:
        """Empty the queue for a new connection, whose video must start at a keyframe.

        Returns how many packets were thrown away (counted as dropped).
        """
        thrown = len(self.packets)
        for p in self.packets:
            if p.kind == "video":
                self.dropped_video += 1
            else:
                self.dropped_audio += 1
        self.packets.clear()
        self.bytes = 0
        self.video_gap = True
        return thrown
