"""The network link: FFmpeg's own ``srt://`` protocol called through ctypes, off the GIL.

PyAV opens an output URL while holding the GIL, so an SRT handshake with a
dead server would freeze every thread of the box (the supervisor, MQTT
keep-alives) for the whole connect timeout. So the muxer writes MPEG-TS into
a :class:`Link`, which sends it through libavformat's ``avio_*`` calls: the
same code and URL options, without the GIL, and cut short by an
:class:`Interrupt` the moment the session stops. :class:`SrtStatsReader`
reads SRT's own figures (``srt_bstats``) for adaptive bitrate.

    link = Link(url, Interrupt())   # LinkError if the server cannot be reached
    link.write(ts_bytes)
    link.close()
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Any

from .defs import LinkError, MediaFault
from .urls import redact

log = logging.getLogger("diemcau.media")


class _Avio:
    """libavformat's own I/O calls through ctypes: the library PyAV has loaded, used off the GIL.

    ctypes releases the GIL for the length of each call, which PyAV does not
    do when it opens an output URL.
    """

    WRITE = 2  # AVIO_FLAG_WRITE

    def __init__(self) -> None:
        import ctypes

        import av

        major = av.library_versions["libavformat"][0]
        try:
            lib = ctypes.CDLL(f"libavformat.so.{major}")
        except OSError as exc:
            raise MediaFault(f"cannot load FFmpeg's libavformat for the network: {exc}") from None

        class InterruptCB(ctypes.Structure):  # AVIOInterruptCB
            _fields_ = [("callback", ctypes.c_void_p), ("opaque", ctypes.c_void_p)]

        class Head(ctypes.Structure):
            # AVIOContext's public fields up to ``error``; the same since FFmpeg 4.
            _fields_ = [("av_class", ctypes.c_void_p), ("buffer", ctypes.c_void_p),
                        ("buffer_size", ctypes.c_int), ("buf_ptr", ctypes.c_void_p),
                        ("buf_end", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
                        ("read_packet", ctypes.c_void_p), ("write_packet", ctypes.c_void_p),
                        ("seek", ctypes.c_void_p), ("pos", ctypes.c_int64),
                        ("eof_reached", ctypes.c_int), ("error", ctypes.c_int)]

        self.interrupt_cb_type = InterruptCB
        self.head_type = Head
        pointer = ctypes.c_void_p
        lib.avio_open2.argtypes = [ctypes.POINTER(pointer), ctypes.c_char_p, ctypes.c_int,
                                   ctypes.POINTER(InterruptCB), pointer]
        lib.avio_open2.restype = ctypes.c_int
        lib.avio_write.argtypes = [pointer, ctypes.c_char_p, ctypes.c_int]
        lib.avio_write.restype = None
        lib.avio_flush.argtypes = [pointer]
        lib.avio_flush.restype = None
        lib.avio_closep.argtypes = [ctypes.POINTER(pointer)]
        lib.avio_closep.restype = ctypes.c_int
        self.lib = lib

    def head(self, pb: Any) -> Any:
        return self.head_type.from_address(pb.value)


_avio_api: _Avio | None = None


def avio() -> _Avio:
    """libavformat's I/O calls, loaded once (and PyAV with them)."""
    global _avio_api
    if _avio_api is None:
        _avio_api = _Avio()
    return _avio_api


def error_reason(code: int) -> tuple[Exception, str]:
    """PyAV's exception for an FFmpeg error code, and its text."""
    import av.error

    exc = av.error.make_error(code)
    return exc, getattr(exc, "strerror", None) or str(exc)


# SRT_TRACEBSTATS (libsrt 1.5's srt.h, CBytePerfMon) up to the fields read
# here, as type codes in declaration order; the rest of the struct is room.
_SRT_STATS_FIELDS = (
    "q msTimeStamp q pktSentTotal q pktRecvTotal i pktSndLossTotal i pktRcvLossTotal "
    "i pktRetransTotal i pktSentACKTotal i pktRecvACKTotal i pktSentNAKTotal i pktRecvNAKTotal "
    "q usSndDurationTotal i pktSndDropTotal i pktRcvDropTotal i pktRcvUndecryptTotal "
    "Q byteSentTotal Q byteRecvTotal Q byteRcvLossTotal Q byteRetransTotal Q byteSndDropTotal "
    "Q byteRcvDropTotal Q byteRcvUndecryptTotal q pktSent q pktRecv i pktSndLoss i pktRcvLoss "
    "i pktRetrans i pktRcvRetrans i pktSentACK i pktRecvACK i pktSentNAK i pktRecvNAK "
    "d mbpsSendRate d mbpsRecvRate q usSndDuration i pktReorderDistance d pktRcvAvgBelatedTime "
    "q pktRcvBelated i pktSndDrop i pktRcvDrop i pktRcvUndecrypt Q byteSent Q byteRecv "
    "Q byteRcvLoss Q byteRetrans Q byteSndDrop Q byteRcvDrop Q byteRcvUndecrypt "
    "d usPktSndPeriod i pktFlowWindow i pktCongestionWindow i pktFlightSize d msRTT "
    "d mbpsBandwidth i byteAvailSndBuf i byteAvailRcvBuf d mbpsMaxBW i byteMSS i pktSndBuf "
    "i byteSndBuf i msSndBuf"
)
SRT_STATS_BYTES = 1024  # 496 in libsrt 1.5; newer ones append fields


@dataclass(frozen=True, slots=True)
class SrtStats:
    """What SRT itself knows about the connection, for adaptive bitrate.

    ``unacked_ms``: the span of data sent but not yet acknowledged;
    ``rtt_ms``: the round trip; the totals count since the connection began.
    """

    unacked_ms: int
    rtt_ms: float
    packets_sent: int
    packets_lost: int  # reported lost by the receiver (each is sent again)


class SrtStatsReader:
    """libsrt's ``srt_bstats`` for the socket inside FFmpeg's ``srt://`` connection.

    FFmpeg does not give the socket out, so it is read from FFmpeg's own
    structs: ``AVIOContext.opaque`` is the ``URLContext``, whose protocol is
    checked to be ``srt`` (FFmpeg's libsrt protocol) and whose ``priv_data`` starts with the SRT
    context's class and socket. If anything does not look as expected the
    reader is not made, and adaptive bitrate goes on the send queue alone.
    """

    def __init__(self, lib: Any, socket_id: int) -> None:
        import ctypes

        codes = {"q": ctypes.c_int64, "Q": ctypes.c_uint64, "i": ctypes.c_int,
                 "d": ctypes.c_double}
        items = _SRT_STATS_FIELDS.split()

        class Stats(ctypes.Structure):
            _fields_ = [(name, codes[code]) for code, name in zip(items[::2], items[1::2],
                                                                  strict=True)]

        self._lib = lib
        self._socket = socket_id
        self._buffer = ctypes.create_string_buffer(SRT_STATS_BYTES)
        self._stats = Stats.from_buffer(self._buffer)

    @classmethod
    def attach(cls, pb: Any, head: Any) -> SrtStatsReader | None:
        import ctypes

        try:
            url_context = head.opaque
            prot, priv = (ctypes.c_void_p * 3).from_address(url_context)[1:3]
            name = ctypes.c_char_p.from_address(prot).value if prot else None
            if name != b"srt" or not priv:
                return None
            socket_id = ctypes.c_int.from_address(priv + ctypes.sizeof(ctypes.c_void_p)).value
            lib = _libsrt()
            if lib is None:
                return None
            reader = cls(lib, socket_id)
            return reader if reader.read() is not None else None
        except (OSError, ValueError, TypeError) as exc:
            log.debug("no SRT statistics: %s", exc)
            return None

    def read(self) -> SrtStats | None:
        if self._lib.srt_bstats(self._socket, self._buffer, 0) != 0:
            return None
        s = self._stats
        return SrtStats(unacked_ms=s.msSndBuf, rtt_ms=s.msRTT, packets_sent=s.pktSentTotal,
                        packets_lost=s.pktSndLossTotal)


_libsrt_handle: list[Any] = []


def _libsrt() -> Any:
    """The libsrt that libavformat was linked with (found among the loaded libraries)."""
    import ctypes

    if not _libsrt_handle:
        path = None
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                if "/libsrt" in line:
                    path = line.split(None, 5)[-1].strip()
                    break
        lib = ctypes.CDLL(path) if path else None
        if lib is not None:
            lib.srt_bstats.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
            lib.srt_bstats.restype = ctypes.c_int
        _libsrt_handle.append(lib)
    return _libsrt_handle[0]


class Interrupt:
    """A flag FFmpeg polls while it connects or waits to send: once set, that call ends at once.

    FFmpeg asks its interrupt callback before every send and every 100 ms
    while it waits, several hundred times a second when live. A Python
    callback would take the GIL each time (measured: ~420 calls a second,
    about 4 ms of CPU a second plus the thread switches), so the callback is
    libc's ``strlen`` over a two-byte buffer, answered in C: "" is 0 (go
    on), "x" is 1 (give up).
    """

    def __init__(self) -> None:
        import ctypes

        self._flag = ctypes.create_string_buffer(2)
        strlen = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value
        # FFmpeg copies the struct when it connects; the buffer must outlive the connection.
        self.callback = avio().interrupt_cb_type(strlen, ctypes.addressof(self._flag))

    def set(self) -> None:
        self._flag[0] = b"x"

    def clear(self) -> None:
        self._flag[0] = b"\0"

    def is_set(self) -> bool:
        return self._flag[0] != b"\0"


class Link:
    """One connection to the media server: bytes in, SRT packets out, never holding the GIL.

    FFmpeg polls ``interrupt`` while it connects or waits; once it is set,
    the connect or write in progress ends at once. PyAV writes the MPEG-TS
    here as to a file (``write``).
    """

    def __init__(self, url: str, interrupt: Interrupt) -> None:
        import ctypes

        import av.error

        api = avio()
        self._api = api
        self._interrupt = interrupt  # FFmpeg reads its flag for the connection's life
        self._pb = ctypes.c_void_p()
        self.bytes_sent = 0
        self._failed = False
        code = api.lib.avio_open2(ctypes.byref(self._pb), url.encode(), api.WRITE,
                                  ctypes.byref(interrupt.callback), None)
        if code < 0:
            exc, reason = error_reason(code)
            if isinstance(exc, av.error.ProtocolNotFoundError):
                raise MediaFault("this FFmpeg has no SRT support (PyPI's PyAV wheels lack it; "
                                 "use the distribution's python3-av)")
            if isinstance(exc, av.error.ValueError):
                raise MediaFault(f"FFmpeg rejects the publish URL {redact(url)}: {reason}")
            if code == -errno.EIO:
                # How FFmpeg reports an SRT handshake the server rejected; the
                # reason (libsrt's) is gone with the socket.
                secret = "passphrase=" in url.partition("?")[2]
                hint = ("a passphrase that differs from the server's (media.srt_passphrase), "
                        "or a stream id it refuses") if secret else \
                    "a stream id it refuses, or it wants a passphrase (media.srt_passphrase)"
                raise LinkError(f"{redact(url)} rejected the connection: {hint}")
            raise LinkError(f"cannot connect to {redact(url)}: {reason}")
        if not 0 < api.head(self._pb).buffer_size <= 1 << 20:
            self.close()
            raise MediaFault("this libavformat's AVIOContext is not laid out as expected")
        self.stats = SrtStatsReader.attach(self._pb, api.head(self._pb))
        if self.stats is None:
            log.warning("SRT statistics are not available: adaptive bitrate goes on the "
                        "send queue alone")

    def write(self, data: bytes) -> int:
        """Send ``data`` now; LinkError if the connection is gone."""
        if self._failed or not self._pb:
            return len(data)  # already reported; PyAV's trailer may still write
        lib = self._api.lib
        lib.avio_write(self._pb, data, len(data))
        lib.avio_flush(self._pb)  # whole TS packets: send them now, not when a buffer fills
        code = self._api.head(self._pb).error
        if code < 0:
            self._failed = True
            raise LinkError(f"connection lost: {error_reason(code)[1]}")
        self.bytes_sent += len(data)
        return len(data)

    def close(self) -> None:
        import ctypes

        if self._pb:
            self._api.lib.avio_closep(ctypes.byref(self._pb))
