"""Enrollment: the enrollment file on the SD card, and the exchange with the centre's service.

Written once here and imported by both sides: the centre writes the file
(``diemcau-centre fleet import``) and answers requests (``diemcau-centre
enroll-service``); the box reads the file and sends the requests.

The transport is HTTPS in the style of EST (RFC 7030), with JSON bodies:

``POST /diemcau/v1/enroll``
    :class:`EnrollRequest` (device id, one-time token, CSR) → 200
    :class:`Enrolled`, or an error status with :class:`EnrollRefused`.
    The box checks the server against ``ca_pem`` from its enrollment file.
``POST /diemcau/v1/renew``
    over mutual TLS with the box's current certificate: :class:`RenewRequest`
    (a CSR for a new key) → 200 :class:`Enrolled`, or :class:`EnrollRefused`.

    >>> req = parse_request(b'{"device_id": "c00001-r1", "token": "dce1_x", "csr_pem": "-----BEGIN"}',
    ...                     EnrollRequest)
    >>> req.device_id
    'c00001-r1'
"""

from __future__ import annotations

import datetime as dt
import tomllib
from typing import Literal, TypeVar

import msgspec

ENROLL_PATH = "/diemcau/v1/enroll"
RENEW_PATH = "/diemcau/v1/renew"
ENROLLMENT_FORMAT = 1
# A CSR for a P-256 key is under 1 KiB; anything much larger is broken or hostile.
MAX_REQUEST_BYTES = 16 * 1024
MAX_RESPONSE_BYTES = 256 * 1024
MAX_FILE_BYTES = 64 * 1024

RefusalReason = Literal[
    "unknown", "other_device", "replaced", "used", "expired",  # the token
    "bad_request", "bad_csr", "not_authenticated", "revoked", "not_in_fleet", "busy",
]


class EnrollmentFileError(ValueError):
    """The enrollment file cannot be used; the message says what is wrong with it."""


class BadRequest(ValueError):
    """A request body the service will not look at further; the message says why."""


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class EnrollSite(_Strict, kw_only=True):
    """The box's ``[site]``: the same keys as its configuration section."""

    name: str
    province: str
    district: str
    commune: str
    room: str = ""


class EnrollmentFile(_Strict, kw_only=True):
    """``diemcau-enroll.toml`` on the boot partition: who the box is, its token, whom to trust."""

    format: int
    device_id: str
    token: str
    expires: dt.datetime
    service: str
    ca_pem: str
    site: EnrollSite


class EnrollRequest(_Strict, kw_only=True):
    device_id: str
    token: str
    csr_pem: str


class RenewRequest(_Strict, kw_only=True):
    csr_pem: str


class Broker(_Strict, kw_only=True):
    host: str
    port: int


class Enrolled(_Strict, kw_only=True):
    """What the box gets for a good request: its certificate and everything to go online."""

    device_id: str
    certificate_pem: str  # CN = device_id
    ca_pem: str  # the chain up to the centre's CA, which the broker's certificate also chains to
    site: EnrollSite
    groups: list[str]
    broker: Broker
    centre_keys: dict[str, str]  # kid -> Ed25519 public key, as in [commands] centre_keys


class EnrollRefused(_Strict, kw_only=True):
    reason: RefusalReason
    detail: str


S = TypeVar("S", bound=msgspec.Struct)


def parse_request(body: bytes, kind: type[S]) -> S:
    """A request body as ``kind``; BadRequest saying why it cannot be one.

    Every field is a bounded string: the service never works on a body it
    could not describe in one sentence.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request too large ({len(body)} bytes, at most {MAX_REQUEST_BYTES})")
    try:
        request = msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"not a {kind.__name__}: {exc}") from None
    except RecursionError:
        raise BadRequest("nested too deeply") from None
    for field in msgspec.structs.fields(kind):
        value = getattr(request, field.name)
        if isinstance(value, str) and not 0 < len(value) <= 8192:
            raise BadRequest(f"{field.name}: 1 to 8192 characters")
    return request


def read_enrollment_file(data: bytes, source: str = "<enrollment file>") -> EnrollmentFile:
    """Parse an enrollment file; EnrollmentFileError naming the problem (truncated, garbled...)."""
    if len(data) > MAX_FILE_BYTES:
        raise EnrollmentFileError(f"{source}: {len(data)} bytes, far more than an enrollment file")
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise EnrollmentFileError(f"{source}: not UTF-8 text ({exc}); the file is damaged"
                                  ) from None
    except tomllib.TOMLDecodeError as exc:
        raise EnrollmentFileError(f"{source}: not valid TOML ({exc}); the file is damaged or "
                                  "cut short: copy it again from the centre") from None
    except RecursionError:
        raise EnrollmentFileError(f"{source}: nested too deeply") from None
    try:
        parsed = msgspec.convert(doc, EnrollmentFile)
    except msgspec.ValidationError as exc:
        raise EnrollmentFileError(f"{source}: not a diemcau enrollment file ({exc}); copy it "
                                  "again from the centre") from None
    if parsed.format != ENROLLMENT_FORMAT:
        raise EnrollmentFileError(f"{source}: format {parsed.format}, this box reads format "
                                  f"{ENROLLMENT_FORMAT}")
    if "-----BEGIN CERTIFICATE-----" not in parsed.ca_pem or \
            "-----END CERTIFICATE-----" not in parsed.ca_pem:
        raise EnrollmentFileError(f"{source}: ca_pem holds no whole certificate; the file is "
                                  "damaged or cut short")
    if not parsed.service.startswith("https://"):
        raise EnrollmentFileError(f"{source}: service {parsed.service!r} is not https://...")
    return parsed


def encode(msg: msgspec.Struct) -> bytes:
    return msgspec.json.encode(msg)


def decode(data: bytes, kind: type[S]) -> S:
    """A response body as ``kind``; msgspec.DecodeError/ValidationError if it is not one."""
    return msgspec.json.decode(data, type=kind)
