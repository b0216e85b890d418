"""Enrollment on the box: its own key, the centre's certificate, kept under ``<state_dir>/identity/``.

A blank box finds its enrollment file (``[enrollment] file``; on the image,
the SD card's boot partition), makes an EC P-256 key that never leaves it,
and sends a CSR with its one-time token to the centre's service over HTTPS,
trusting only the CA named in the file. What comes back is stored as one
directory, all or nothing::

    identity/key.pem            the private key (0600)
    identity/cert.pem           its certificate, CN = device id
    identity/ca.pem             the centre's CA (the broker's certificate chains to it)
    identity/identity.json      device id, site, groups, broker, service address
    identity/centre-keys.json   the centre's command keys (replaced by ``keys.update``)

The directory is written under a temporary name and renamed into place: a
power cut leaves the old identity or the new one, never half of one.

    identity = load_identity(state_dir) or enroll_once(enroll_file, state_dir)
    cfg = load_config(path, overlay=identity.overlay())
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
import random
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ..core.backoff import backoff_delay
from ..core.events import CertificateStatus
from ..core.identity import renew_at
from ..protocol.enrollment import (
    ENROLL_PATH,
    MAX_RESPONSE_BYTES,
    RENEW_PATH,
    Broker,
    Enrolled,
    EnrollmentFile,
    EnrollmentFileError,
    EnrollRefused,
    EnrollRequest,
    EnrollSite,
    RenewRequest,
    decode,
    encode,
    read_enrollment_file,
)
from ..shared import write_atomic

log = logging.getLogger("diemcau.enroll")

IDENTITY_DIR = "identity"
KEY_FILE, CERT_FILE, CA_FILE = "key.pem", "cert.pem", "ca.pem"
INFO_FILE, KEYS_FILE = "identity.json", "centre-keys.json"
REQUEST_TIMEOUT_S = 20.0
# Refusals that a new enrollment file (from `diemcau-centre fleet token`) can cure.
TOKEN_REASONS = frozenset({"unknown", "other_device", "replaced", "used", "expired"})


class EnrollError(Exception):
    """One enrollment or renewal attempt failed; ``reason`` is short, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class IdentityError(Exception):
    """The stored identity cannot be read (a failing SD card); the message says what to do."""


class IdentityInfo(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``identity.json``: what the box learnt when it enrolled."""

    device_id: str
    site: EnrollSite
    groups: list[str]
    broker: Broker
    service: str  # where to renew
    enrolled_at: float


@dataclass(frozen=True, slots=True)
class Identity:
    directory: Path
    info: IdentityInfo
    centre_keys: dict[str, str]
    not_before: float  # the certificate's, Unix seconds
    not_after: float

    @property
    def device_id(self) -> str:
        return self.info.device_id

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert_file(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_FILE

    def overlay(self) -> dict[str, Any]:
        """The configuration this identity decides; it wins over the configuration file."""
        site = msgspec.structs.asdict(self.info.site)
        return {
            "device": {"id": self.info.device_id},
            "site": site,
            "mqtt": {"host": self.info.broker.host, "port": self.info.broker.port,
                     "tls": {"enabled": True, "ca_file": str(self.ca_file),
                             "cert_file": str(self.cert_file), "key_file": str(self.key_file),
                             "insecure_skip_verify": False}},
            "commands": {"centre_keys": dict(self.centre_keys)},
        }


# ---------------------------------------------------------------- on disk


def identity_dir(state_dir: Path) -> Path:
    return state_dir / IDENTITY_DIR


def _old_dir(state_dir: Path) -> Path:
    return state_dir / f".{IDENTITY_DIR}.old"


def _cert_dates(pem: bytes) -> tuple[float, float]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def load_identity(state_dir: Path) -> Identity | None:
    """The stored identity, or None if the box has none (yet, or since a factory reset).

    Finishes a replacement a power cut interrupted, and clears temporary
    directories a failed attempt left.
    """
    current, old = identity_dir(state_dir), _old_dir(state_dir)
    if not (current / INFO_FILE).exists() and old.is_dir():
        # Cut between "old aside" and "new in place": the old one is whole.
        if current.exists():
            shutil.rmtree(current)
        os.replace(old, current)
    elif old.exists():
        shutil.rmtree(old)
    for stale in state_dir.glob(f".{IDENTITY_DIR}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    if not (current / INFO_FILE).exists():
        return None
    try:
        info = msgspec.json.decode((current / INFO_FILE).read_bytes(), type=IdentityInfo)
        not_before, not_after = _cert_dates((current / CERT_FILE).read_bytes())
        keys = load_centre_keys(state_dir) or {}
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IdentityError(f"{current}: the stored identity is damaged ({exc}); a factory "
                            "reset and a new enrollment file (`diemcau-centre fleet token`) "
                            "enroll the box again") from None
    return Identity(current, info, keys, not_before, not_after)


def load_centre_keys(state_dir: Path) -> dict[str, str] | None:
    """The centre keys ``keys.update`` (or enrollment) left, or None."""
    try:
        data = json.loads((identity_dir(state_dir) / KEYS_FILE).read_text())
    except FileNotFoundError:
        return None
    return {str(k): str(v) for k, v in data.items()}


def store_centre_keys(state_dir: Path, keys: dict[str, str]) -> None:
    """Replace the centre keys in one step (a file rename)."""
    write_atomic(identity_dir(state_dir) / KEYS_FILE,
                 json.dumps(keys, indent=1, sort_keys=True).encode())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_identity(state_dir: Path, key_pem: bytes, enrolled: Enrolled, service: str,
                   *, keep_keys: bool = False) -> Identity:
    """Write a whole identity under a temporary name, then rename it into place.

    ``keep_keys`` (renewal): the centre keys stay as ``keys.update`` left them.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    keys = (load_centre_keys(state_dir) if keep_keys else None) or enrolled.centre_keys
    info = IdentityInfo(device_id=enrolled.device_id, site=enrolled.site, groups=enrolled.groups,
                        broker=enrolled.broker, service=service, enrolled_at=round(time.time()))
    tmp = Path(tempfile.mkdtemp(dir=state_dir, prefix=f".{IDENTITY_DIR}.tmp"))
    try:
        write_atomic(tmp / KEY_FILE, key_pem, 0o600)
        write_atomic(tmp / CERT_FILE, enrolled.certificate_pem.encode())
        write_atomic(tmp / CA_FILE, enrolled.ca_pem.encode())
        write_atomic(tmp / KEYS_FILE, json.dumps(keys, indent=1, sort_keys=True).encode())
        write_atomic(tmp / INFO_FILE, msgspec.json.encode(info))  # last: it marks a whole one
        os.chmod(tmp, 0o700)
        current, old = identity_dir(state_dir), _old_dir(state_dir)
        if current.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(current, old)
        os.replace(tmp, current)
        _fsync_dir(state_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(_old_dir(state_dir), ignore_errors=True)
    loaded = load_identity(state_dir)
    assert loaded is not None
    return loaded


# ---------------------------------------------------------------- talking to the service


def _new_key_and_csr(device_id: str) -> tuple[bytes, str]:
    """A fresh EC P-256 key (PKCS8 PEM) and a CSR for it with CN = ``device_id``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def _post(service: str, path: str, body: bytes, context: ssl.SSLContext) -> Enrolled:
    """POST to the service; the Enrolled answer, or EnrollError saying why not."""
    parts = urlsplit(service)
    host = parts.hostname or ""
    conn = http.client.HTTPSConnection(host, parts.port or 443, context=context,
                                       timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", parts.path.rstrip("/") + path, body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or str(exc)
        if "not yet valid" in why or "expired" in why:
            # No real-time clock: before NTP answers, the box may think it is 1970.
            raise EnrollError("clock", f"cannot check the service at {host}: {why}; is the "
                                       "clock set? (trying again)") from None
        raise EnrollError("untrusted", f"the service at {host} is not the centre's "
                                       f"({why})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise EnrollError("unreachable", f"cannot reach {service}: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        try:
            refused = decode(data, EnrollRefused)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise EnrollError("http", f"{service} answered {response.status} "
                                      f"{response.reason}") from None
        raise EnrollError(refused.reason, f"refused ({refused.reason}): {refused.detail}")
    try:
        return decode(data, Enrolled)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EnrollError("bad_answer", f"{service} sent an unreadable answer: {exc}") from None


def _check_answer(enrolled: Enrolled, device_id: str, key_pem: bytes) -> None:
    """The certificate is for this box and this key; anything else is not stored."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(enrolled.certificate_pem.encode())
        x509.load_pem_x509_certificate(enrolled.ca_pem.encode())
    except ValueError as exc:
        raise EnrollError("bad_answer", f"the answer holds no certificate: {exc}") from None
    key = serialization.load_pem_private_key(key_pem, password=None)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if enrolled.device_id != device_id or names != [device_id]:
        raise EnrollError("bad_answer", f"the certificate is for {names}, not {device_id}")
    if cert.public_key() != key.public_key():
        raise EnrollError("bad_answer", "the certificate is not for the key this box made")
    if not enrolled.centre_keys:
        raise EnrollError("bad_answer", "the answer names no centre key")


def read_enrollment(path: Path) -> EnrollmentFile:
    """The enrollment file at ``path``; EnrollError("no_file" / "bad_file") if unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EnrollError("no_file", f"no enrollment file at {path}") from None
    except OSError as exc:
        raise EnrollError("no_file", f"cannot read {path}: {exc.strerror}") from None
    try:
        return read_enrollment_file(data, str(path))
    except EnrollmentFileError as exc:
        raise EnrollError("bad_file", str(exc)) from None


def enroll_once(enroll_file: Path, state_dir: Path) -> Identity:
    """One attempt: read the file, make a key, ask the service, store the identity."""
    doc = read_enrollment(enroll_file)
    try:
        context = ssl.create_default_context(cadata=doc.ca_pem)
    except ssl.SSLError as exc:
        raise EnrollError("bad_file", f"{enroll_file}: ca_pem is not a usable certificate "
                                      f"({exc})") from None
    key_pem, csr = _new_key_and_csr(doc.device_id)
    request = EnrollRequest(device_id=doc.device_id, token=doc.token, csr_pem=csr)
    enrolled = _post(doc.service, ENROLL_PATH, encode(request), context)
    _check_answer(enrolled, doc.device_id, key_pem)
    identity = store_identity(state_dir, key_pem, enrolled, doc.service)
    log.info("enrolled as %s (%s); certificate valid until %s", identity.device_id,
             identity.info.site.name, utc_text(identity.not_after))
    return identity


def renew_once(state_dir: Path) -> Identity:
    """One renewal over mutual TLS with the current certificate, for a new key."""
    current = load_identity(state_dir)
    if current is None:
        raise EnrollError("no_identity", "nothing to renew: the box has no identity")
    context = ssl.create_default_context(cafile=str(current.ca_file))
    context.load_cert_chain(current.cert_file, current.key_file)
    key_pem, csr = _new_key_and_csr(current.device_id)
    enrolled = _post(current.info.service, RENEW_PATH, encode(RenewRequest(csr_pem=csr)), context)
    _check_answer(enrolled, current.device_id, key_pem)
    identity = store_identity(state_dir, key_pem, enrolled, current.info.service, keep_keys=True)
    log.info("certificate renewed; valid until %s", utc_text(identity.not_after))
    return identity


def utc_text(ts: float) -> str:
    """A Unix time as a short UTC date and time, for logs and messages."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def enroll_until_done(enroll_file: Path, state_dir: Path, *, retry_min_s: float,
                      retry_max_s: float, stopping: threading.Event,
                      alive: Callable[[], None] = lambda: None,
                      rng: random.Random | None = None) -> Identity | None:
    """Try until enrolled (or ``stopping`` is set: None), with backoff and jitter.

    Each failure is logged with its reason and the wait before the next try.
    The file is read again on every try, so a technician can fix or replace it
    without touching the box. ``alive`` is called often (the systemd watchdog).
    """
    rng = rng or random.Random()
    attempt = 0
    while not stopping.is_set():
        try:
            return enroll_once(enroll_file, state_dir)
        except EnrollError as exc:
            # A refused token or a bad file will not cure itself soon: wait long.
            patient = exc.reason in TOKEN_REASONS or exc.reason in ("bad_file", "no_file")
            step = attempt + 32 if patient else attempt
            delay = backoff_delay(step, retry_min_s, retry_max_s, rng.random)
            log.warning("enrollment failed (%s): %s; next try in %.0f s", exc.reason, exc, delay)
        attempt += 1
        deadline = time.monotonic() + delay
        while not stopping.is_set() and time.monotonic() < deadline:
            alive()
            stopping.wait(min(5.0, max(0.0, deadline - time.monotonic())))
    return None


class Renewer:
    """A thread that renews the certificate at two thirds of its lifetime, then again.

    It posts :class:`CertificateStatus` to the supervisor at start and after
    every attempt; the supervisor's alert rule decides when failing renewals
    become a ``certificate_expiring`` alert.
    """

    # The wall clock may jump (NTP after boot): look again at least this often.
    CHECK_EVERY_S = 3600.0

    def __init__(self, state_dir: Path, identity: Identity, post: Callable[[object], None], *,
                 retry_min_s: float, retry_max_s: float, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self._state_dir = state_dir
        self._identity = identity
        self._post = post
        self._retry = (retry_min_s, retry_max_s)
        self._clock = clock
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="renewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread:
            self._thread.join(5.0)

    def _status(self, error: str = "", renewed: bool = False) -> None:
        self._post(CertificateStatus(self._identity.not_before, self._identity.not_after,
                                     error, renewed))

    def _run(self) -> None:
        self._status()
        attempt = 0
        while not self._stopping.is_set():
            due = renew_at(self._identity.not_before, self._identity.not_after)
            wait = due - self._clock()
            if wait > 0:
                attempt = 0
                self._stopping.wait(min(wait, self.CHECK_EVERY_S))
                continue
            try:
                self._identity = renew_once(self._state_dir)
            except (EnrollError, OSError, ssl.SSLError, ValueError) as exc:
                delay = backoff_delay(attempt, *self._retry, self._rng.random)
                attempt += 1
                log.warning("certificate renewal failed: %s; next try in %.0f s", exc, delay)
                self._status(str(exc))
                self._stopping.wait(delay)
                continue
            self._status(renewed=True)
