"""Credentials out of any text before the box logs or publishes it: pure, no I/O.

:func:`scrub` is applied to every FFmpeg or PyAV error text before it becomes
a stream detail (``status``, events, replies), to the arguments of every
command the box logs, and, as the last line of defence, to every line the
box logs (``diemcau.adapters.logs``). What it removes:

- the value of any ``key=value`` whose key names a secret: ``passphrase``,
  ``password``, ``passwd``, ``pwd``, ``secret``, ``token``, ``auth``, a
  ``...key`` (``key=``, ``apikey=``) and SRTP's ``srtp_..._params``.
  ``pbkeylen`` (the key length) is not a secret and stays;
- the user information of a URL: ``rtsp://user:password@host`` becomes
  ``rtsp://***@host``;
- in an SRT access-control stream id (``streamid=#!::r=...,u=...,s=...``),
  every value but those of ``r`` (resource), ``m`` (mode), ``t`` (type),
  ``h`` (host) and ``u`` (user name): the session id ``s`` and any key of the
  server's own. A plain stream id (the box's ``publish:{meeting}/{device}``)
  stays: it names the meeting, and holds no secret;
- the ``known`` secrets themselves (the configured passphrase and password),
  as written and percent-encoded, wherever they appear.

    >>> scrub("srt://m.example:9000?mode=caller&passphrase=tre-xanh-nuoc&pbkeylen=16")
    'srt://m.example:9000?mode=caller&passphrase=***&pbkeylen=16'
    >>> scrub("Connection refused: 'rtsp://op:pw@10.0.0.5:8554/live'")
    "Connection refused: 'rtsp://***@10.0.0.5:8554/live'"
    >>> scrub("srt://m:1?streamid=#!::r=live/m1,u=box,s=abc123&latency=1")
    'srt://m:1?streamid=#!::r=live/m1,u=box,s=***&latency=1'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote

MASK = "***"

_SECRET_KEY = r"[\w.-]*?(?:passphrase|password|passwd|pwd|secret|token|auth|key|srtp_\w*params)"
# key=value where the key names a secret. The value runs to the next option ('&') or white
# space: a quote may be part of it, and a quote after it is masked too (better than a leak).
_SECRET_VALUE = re.compile(rf"(?i)((?<![\w-]){_SECRET_KEY}(?:%3D|=))[^&\s]*")
# The same as a quoted key and value ({'password': 'x'}, "passphrase": "x"), escapes and all.
_SECRET_ITEM = re.compile(rf"""(?i)((?<![\w-])(['"]){_SECRET_KEY}\2\s*:\s*(['"]))((?:\\.|(?!\3).)*)(\3|$)""")
# scheme://userinfo@ : the user information runs to the last '@' before '/', '?', '#' or a space.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@")
# An SRT stream id's value, raw or percent-encoded, up to the next option.
_STREAMID = re.compile(r"(?i)(streamid(?:%3D|=))([^&\s]*)")
# The keys of SRT's access-control syntax that name things rather than prove them.
_STREAMID_PUBLIC = frozenset({"r", "m", "t", "h", "u"})


def _streamid(match: re.Match[str]) -> str:
    value = match.group(2)
    plain = unquote(value)
    if not plain.startswith("#!::"):
        return match.group(0)
    items = []
    for item in plain[4:].split(","):
        key, eq, _ = item.partition("=")
        items.append(item if key in _STREAMID_PUBLIC or not eq else f"{key}={MASK}")
    return f"{match.group(1)}#!::{','.join(items)}"


def _forms(secret: str) -> set[str]:
    """How a secret may be written: as is, and percent-encoded as URLs carry it."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """``text`` without credentials (see the module's docstring); ``known``: secrets to remove
    wherever they appear (shorter than 4 characters they would hide too much, and are skipped).
    """
    for secret in known:
        if len(secret) >= 4:
            for form in sorted(_forms(secret), key=len, reverse=True):
                text = text.replace(form, MASK)
    text = _STREAMID.sub(_streamid, text)
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _SECRET_ITEM.sub(rf"\1{MASK}\5", text)
    return _SECRET_VALUE.sub(rf"\1{MASK}", text)
