"""The URL the box publishes to, and media URLs kept out of logs.

:func:`publish_url` adds the box's SRT options to the centre's URL;
:func:`redact` cuts a URL down to ``scheme://host:port`` for a log line;
:func:`ffmpeg_error_text` turns PyAV's error into a detail for the centre;
:func:`redact_ffmpeg_logs` filters FFmpeg's own log lines. Every one of them
removes credentials with :func:`diemcau.core.scrub.scrub`, the box's one
scrubber.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from ..core.meeting import normalise_media_url
from ..core.scrub import scrub
from .defs import MIN_IO_TIMEOUT_MS, MIN_SRT_SNDBUF, SRT_SNDBUF_S, MediaFault

if TYPE_CHECKING:
    from ..config import Media


def publish_url(url: str, *, meeting_id: str, device_id: str, cfg: Media,
                top_kbps: int = 0) -> str:
    """The URL to publish to, with the box's defaults for options an SRT URL lacks.

    ``rtsp://`` URLs are used as given (the RTSP muxer's options are set on
    it, see :class:`~diemcau.media.muxer.Muxer`). For ``srt://`` this adds
    ``streamid=publish:{meeting_id}/{device_id}``, ``latency`` (µs, from
    ``srt_latency_ms``), ``connect_timeout`` (ms), ``timeout`` (µs, the
    longest one write may wait), ``tlpktdrop=0`` and ``sndbuf`` (bytes, half
    a second at ``top_kbps`` plus the audio: SRT's own buffer stays short and
    a slow network blocks the writer, so the box's queue decides what to
    drop), and ``passphrase`` when ``srt_passphrase`` is set (AES). The
    centre's own options are kept verbatim, as FFmpeg reads them: everything
    after the first ``?``, split at ``&`` (so a ``#!::r=...`` stream id is
    data, not a URL fragment).

        >>> from diemcau.config import Media
        >>> url = publish_url("srt://media.example:9000", meeting_id="m1", device_id="b1",
        ...                   cfg=Media())
        >>> url.split("&")  # doctest: +NORMALIZE_WHITESPACE
        ['srt://media.example:9000?mode=caller', 'streamid=publish:m1/b1', 'latency=200000',
         'connect_timeout=3000', 'timeout=3000000', 'tlpktdrop=0', 'sndbuf=65536']

    The scheme and host come out in lower case (the command policy has done
    so already; this is for any other caller).
    """
    url = normalise_media_url(url)
    base, _, query = url.partition("?")
    scheme = urlsplit(base).scheme
    if scheme == "rtsp":
        return url
    if scheme != "srt":
        raise MediaFault(f"publishing over {scheme}:// is not supported (only srt:// and rtsp://)")
    present = {item.partition("=")[0] for item in query.split("&")}
    io_timeout_ms = max(cfg.connect_timeout_ms, MIN_IO_TIMEOUT_MS)
    sndbuf = max(MIN_SRT_SNDBUF, int((top_kbps + cfg.audio_bitrate_kbps) * 125 * SRT_SNDBUF_S))
    defaults = [
        ("mode", "caller"),
        ("streamid", f"publish:{meeting_id}/{device_id}"),
        ("latency", str(cfg.srt_latency_ms * 1000)),  # FFmpeg wants microseconds
        ("connect_timeout", str(cfg.connect_timeout_ms)),  # ...but milliseconds here
        ("timeout", str(io_timeout_ms * 1000)),  # microseconds again
        ("tlpktdrop", "0"),
        ("sndbuf", str(sndbuf)),
    ]
    if cfg.srt_passphrase:
        if not 10 <= len(cfg.srt_passphrase) <= 79:
            raise MediaFault("media.srt_passphrase must be 10-79 characters (SRT's rule)")
        defaults.append(("passphrase", quote(cfg.srt_passphrase, safe="")))
    added = "&".join(f"{key}={value}" for key, value in defaults if key not in present)
    query = "&".join(part for part in (query, added) if part)
    return f"{base}?{query}" if query else base


def redact(url: str) -> str:
    """``scheme://host:port`` only: stream ids and passphrases stay out of logs."""
    parts = urlsplit(url.partition("?")[0])
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


def ffmpeg_error_text(exc: Exception, known: tuple[str, ...] = ()) -> str:
    """PyAV's error as a detail: FFmpeg's reason and its last error message, scrubbed.

    Not ``str(exc)``: PyAV puts the whole URL in it (the file name), passphrase
    and ``user:password@`` included, and FFmpeg's last error message may name
    another URL. ``known``: secrets to remove wherever they appear.
    """
    reason = getattr(exc, "strerror", None) or str(exc)
    entry = getattr(exc, "log", None)
    if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
        reason = f"{reason} ([{entry[1]}] {str(entry[2]).strip()})"
    return scrub(reason, known)


# scheme://host:port of a media URL in a log line, without credentials, path or options.
_URL_QUERY = re.compile(r"(?i)((?:srt|rtsp|rtsps)://)(?:[^\s/?#]*@)?([^\s?/#]*)\S*")


class _RedactUrls(logging.Filter):
    """Cut stream ids, passphrases and credentials off media URLs in FFmpeg's own log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = scrub(_URL_QUERY.sub(r"\1\2/…", text))
        if clean != text:
            record.msg, record.args = clean, ()
        return True


def redact_ffmpeg_logs() -> None:
    """Filter FFmpeg's own log lines (SRT, RTSP, TCP) through :class:`_RedactUrls`."""
    # PyAV logs FFmpeg's messages under "libav.<component>"; logger filters are
    # not inherited, so the SRT protocol's own logger gets it.
    for name in ("libav.srt", "libav.rtsp", "libav.tcp"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactUrls) for f in logger.filters):
            logger.addFilter(_RedactUrls())
