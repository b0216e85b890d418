"""The box's log: every line scrubbed of credentials before a handler writes it.

The last line of defence behind scrubbing at the source (see
:mod:`diemcau.core.scrub`): FFmpeg's own messages, which PyAV logs under
``libav.*``, and any text the box did not think to scrub, go through it too.

    scrub_log_handlers(known=[cfg.media.srt_passphrase, cfg.mqtt.password])
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from ..core.scrub import scrub

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ScrubFilter(logging.Filter):
    """Scrubs each record a handler writes: its message, arguments and traceback.

    On the handlers, not on a logger: a logger's filters do not see what its
    children propagate. ``known``: the configured secrets (see ``scrub``).
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        super().__init__()
        self.known: tuple[str, ...] = tuple(s for s in known if s)
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler reports it
            return True
        clean = scrub(message, self.known)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.known)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.known)
        return True


def scrub_log_handlers(known: Iterable[str] = (), logger: logging.Logger | None = None) -> None:
    """Put a :class:`ScrubFilter` on every handler of ``logger`` (the root logger), or update
    the secrets of the one already there."""
    known = tuple(known)
    for handler in (logger or logging.getLogger()).handlers:
        found = [f for f in handler.filters if isinstance(f, ScrubFilter)]
        if found:
            found[0].known = tuple(s for s in known if s)
        else:
            handler.addFilter(ScrubFilter(known))


def log_to_stderr(level: str = "INFO", known: Iterable[str] = ()) -> None:
    """The log on stderr (the journal), every line scrubbed: the box's and its media process's."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    scrub_log_handlers(known)
