"""Scrubbing credentials out of text (``core.scrub``): examples, then properties.

The properties put random secrets where the box meets them (an SRT
``passphrase=``, percent-encoded as the box writes it or raw as a centre may;
the password of ``rtsp://user:password@``; the session of an access-control
stream id; the configured secrets themselves) inside the texts that carry them
(URLs, PyAV's error texts, the logged arguments of a command) and check that
nothing of the secret is left.
"""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from diemcau.core.scrub import MASK, scrub

# ---------------------------------------------------------------- examples


@pytest.mark.parametrize(("text", "clean"), [
    ("srt://m.vn:9000?mode=caller&passphrase=tre-xanh-nuoc-bac&pbkeylen=16",
     "srt://m.vn:9000?mode=caller&passphrase=***&pbkeylen=16"),
    ("srt://m.vn:9000?PASSPHRASE=abc%26def&latency=1", "srt://m.vn:9000?PASSPHRASE=***&latency=1"),
    ("rtsp://operator:pa55@m.vn:8554/live", "rtsp://***@m.vn:8554/live"),
    ("RTSP://op:p@ss@m.vn:8554/live", "RTSP://***@m.vn:8554/live"),
    ("srt://m.vn:1?streamid=#!::r=live/m1,m=publish,u=box,s=S3SS10N&x=1",
     "srt://m.vn:1?streamid=#!::r=live/m1,m=publish,u=box,s=***&x=1"),
    ("srt://m.vn:1?streamid=%23%21%3A%3Ar%3Dlive%2Cs%3DS3SS10N", "srt://m.vn:1?streamid=#!::r=live,s=***"),
    ("srt://m.vn:1?streamid=#!::r=live,tok=abc", "srt://m.vn:1?streamid=#!::r=live,tok=***"),
    ("{'publish': 'srt://m.vn:1?passphrase=abcdefghij'}", "{'publish': 'srt://m.vn:1?passphrase=***"),
    ("{'password': 'it\\'s secret', 'x': 1}", "{'password': '***', 'x': 1}"),
    ('{"srt_passphrase": "a b c", "x": 1}', '{"srt_passphrase": "***", "x": 1}'),
    ("rtp://h:1?srtp_out_params=zRSkQm3Fv8Z&x=1", "rtp://h:1?srtp_out_params=***&x=1"),
    ("token=abc key=def apikey=ghi", "token=*** key=*** apikey=***"),
])
def test_what_is_scrubbed(text: str, clean: str) -> None:
    assert scrub(text) == clean


@pytest.mark.parametrize("text", [
    "srt://127.0.0.1:9000 rejected the connection: a passphrase that differs from the server's "
    "(media.srt_passphrase), or a stream id it refuses; retrying in 0.3 s",
    "srt://m.vn:9000?mode=caller&streamid=publish:m1/c00001-r1&latency=120000&pbkeylen=16",
    "cannot publish to rtsp://127.0.0.1:8554: Connection refused ([tcp] Connection to "
    "tcp://127.0.0.1:8554?timeout=1000000 failed: Connection refused)",
    "user@example.vn wrote: e-mail is not a URL",
])
def test_what_is_left_alone(text: str) -> None:
    assert scrub(text) == text


def test_known_secrets_go_wherever_they_are_and_however_written() -> None:
    secret = "correct horse&battery"
    text = f"a {secret} b {quote(secret, safe='')} c {quote(secret)} d correct+horse%26battery"
    assert scrub(text, [secret]) == f"a {MASK} b {MASK} c {MASK} d {MASK}"
    assert scrub("abc", ["abc"]) == "abc", "too short to hide: it would blank common words"


# ---------------------------------------------------------------- properties

# Anything a configured passphrase may be (10-79 characters, SRT's rule).
PASSPHRASES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=10, max_size=79)
# What may stand raw in a URL's option value: no white space (the policy refuses it),
# no '&' (it would end the option for FFmpeg too), no '*' (the mask's own character).
RAW_VALUE = st.text(string.ascii_letters + string.digits + "-._~!$'()+,;=:%/?#@[]",
                    min_size=6, max_size=40)
# The password of user:password@: what a URL's user information may hold raw.
RAW_PASSWORD = st.text(string.ascii_letters + string.digits + "-._~!$'()+,;=:%", min_size=6,
                       max_size=40)
HOSTS = st.sampled_from(["media.hanoi.gov.vn", "127.0.0.1", "[::1]", "MEDIA.example.VN"])
OPTIONS = st.lists(st.sampled_from(["mode=caller", "latency=120000", "streamid=publish:m1/b1",
                                    "pbkeylen=16", "timeout=3000000", "tlpktdrop=0"]),
                   max_size=4)


def texts_around(url: str) -> list[str]:
    """Where a URL turns up: alone, in PyAV's error text, in a logged command's arguments."""
    return [
        url,
        f"[Errno 111] Connection refused: '{url}'; last error log: [tcp] Connection to "
        f"tcp://127.0.0.1:9000?timeout=1000000 failed: Connection refused",
        f"[Errno 1094995529] Invalid data found when processing input: {url!r}",
        repr({"meeting_id": "m1", "publish": url, "muted": False}),
        f"libav.srt: Connection to {url} failed: Input/output error",
    ]


def assert_gone(secret: str, make_url, value: str) -> None:  # noqa: ANN001
    """``secret`` is in no text around ``make_url(value)`` once scrubbed."""
    for text, skeleton in zip(texts_around(make_url(value)), texts_around(make_url(MASK)),
                              strict=True):
        # A secret the text holds anyway (a host name, a word of the template) proves nothing.
        assume(secret not in skeleton)
        assert secret not in scrub(text), (secret, text, scrub(text))


@given(PASSPHRASES, HOSTS, OPTIONS, OPTIONS, st.sampled_from(["srt", "SRT", "Srt"]))
def test_an_encoded_passphrase_never_survives(secret: str, host: str, before: list[str],
                                              after: list[str], scheme: str) -> None:
    value = quote(secret, safe="")  # how the box writes media.srt_passphrase into the URL

    def url(v: str) -> str:
        return f"{scheme}://{host}:9000?" + "&".join([*before, f"passphrase={v}", *after])

    assert_gone(value, url, value)
    assert_gone(secret, url, value)


@given(RAW_VALUE, HOSTS, OPTIONS, OPTIONS,
       st.sampled_from(["passphrase", "password", "srt_passphrase", "Passphrase", "token"]))
def test_a_raw_secret_option_never_survives(secret: str, host: str, before: list[str],
                                            after: list[str], key: str) -> None:
    def url(v: str) -> str:
        return f"srt://{host}:9000?" + "&".join([*before, f"{key}={v}", *after])

    assert_gone(secret, url, secret)


@given(RAW_PASSWORD, st.sampled_from(["operator", "op", "u-1"]), HOSTS,
       st.sampled_from(["/live/m1", "", "?x=1", "#f"]), st.sampled_from(["rtsp", "RTSP", "rtsps"]))
def test_a_url_password_never_survives(secret: str, user: str, host: str, tail: str,
                                       scheme: str) -> None:
    def url(v: str) -> str:
        return f"{scheme}://{user}:{v}@{host}:8554{tail}"

    assert_gone(secret, url, secret)


@given(st.text(string.ascii_letters + string.digits + "-._~!$'()+;:%/", min_size=6, max_size=40),
       HOSTS, st.booleans())
def test_a_stream_id_session_never_survives(secret: str, host: str, encoded: bool) -> None:
    def url(v: str) -> str:
        streamid = f"#!::r=live/m1,m=publish,u=c00001-r1,s={v}"
        return f"srt://{host}:9000?streamid={quote(streamid, safe='') if encoded else streamid}" \
            "&latency=120000"

    assert_gone(secret, url, secret)


@given(PASSPHRASES, st.text(max_size=40), st.text(max_size=40))
def test_a_known_secret_never_survives_anywhere(secret: str, left: str, right: str) -> None:
    for form in (secret, quote(secret, safe=""), quote(secret)):
        text = f"{left}{form}{right}"
        assume(secret not in f"{left}{MASK}{right}")
        assert secret not in scrub(text, [secret])
        assert quote(secret, safe="") not in scrub(text, [secret])


@given(st.text(max_size=200))
def test_scrubbing_twice_changes_nothing_more(text: str) -> None:
    once = scrub(text)
    assert scrub(once) == once
