"""The enrollment service: a box trades its one-time token and a CSR for its certificate.

HTTPS in the style of EST (RFC 7030), with JSON bodies (the shapes are in
:mod:`diemcau.protocol.enrollment`), on the standard library's
``http.server`` and ``ssl``. Two requests:

- ``POST /diemcau/v1/enroll``: device id, token, CSR. Under the manifest's
  lock: the token is checked, the CSR signed (CN = device id), the token
  burnt, in one transaction, so two requests with one token let exactly one
  through, and a refused CSR leaves the token unused.
- ``POST /diemcau/v1/renew``: over mutual TLS with the box's current
  certificate (not revoked, for a box in the manifest); a CSR for its new key.

Either answers with the certificate, the CA, the box's site and groups, the
broker's address and the centre's command keys; or with a refusal reason the
box can log.

    settings = ServiceSettings(Path("/srv/centre"), Broker(host="mqtt.example.vn", port=8883),
                               {"3f2a9c0d11be": "q1rW...8"})
    server = make_server(settings, ("", 8443), cert_file, key_file)
    server.serve_forever()
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from diemcau.protocol.enrollment import (
    ENROLL_PATH,
    MAX_REQUEST_BYTES,
    RENEW_PATH,
    BadRequest,
    Broker,
    Enrolled,
    EnrollRefused,
    EnrollRequest,
    EnrollSite,
    RenewRequest,
    encode,
    parse_request,
)

from .ca import DEVICE_DAYS, CaError, CsrRefused, load_ca, revoked_serials, sign_device_csr
from .identity import is_device_id
from .manifest import FleetStore, Manifest, ManifestError, TokenRefused, burn_token, check_token

log = logging.getLogger("diemcau_centre.enroll")

# A slow or silent client holds one thread for at most this long.
REQUEST_TIMEOUT_S = 15.0
# Connections served at once; more are closed at once (boxes retry with jitter),
# so that a province's boxes all coming online cannot exhaust the centre's threads.
MAX_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    directory: Path
    broker: Broker
    centre_keys: dict[str, str]
    # How long a box's certificate is valid; shorter only to watch renewal happen.
    cert_lifetime: dt.timedelta = dt.timedelta(days=DEVICE_DAYS)


Answer = tuple[int, bytes]


def _refused(status: int, reason: str, detail: str) -> Answer:
    return status, encode(EnrollRefused(reason=reason, detail=detail))  # type: ignore[arg-type]


def _answer(settings: ServiceSettings, manifest: Manifest, device_id: str,
            cert: x509.Certificate, ca_pem: str) -> Answer:
    site = manifest.devices[device_id].site
    return 200, encode(Enrolled(
        device_id=device_id,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_pem=ca_pem,
        site=EnrollSite(name=site.commune.name, province=site.province.code,
                        district=site.district.code, commune=site.commune.code,
                        room=site.room_name or f"room {site.room}"),
        groups=site.groups,
        broker=settings.broker,
        centre_keys=dict(settings.centre_keys),
    ))


def enroll(settings: ServiceSettings, body: bytes, now: float | None = None) -> Answer:
    """Answer one enrollment request: (HTTP status, JSON body). Never raises for bad input."""
    now = time.time() if now is None else now
    try:
        request = parse_request(body, EnrollRequest)
    except BadRequest as exc:
        return _refused(400, "bad_request", str(exc))
    dev = request.device_id
    if not is_device_id(dev):
        return _refused(400, "bad_request", f"device id {dev[:40]!r} does not follow the rule "
                                            "c<5 digits>-r<room> (like c00001-r1)")
    try:
        ca = load_ca(settings.directory)
        store = FleetStore(settings.directory)
        # One transaction: check, sign, burn. Any exception leaves the manifest
        # (and so the token) exactly as it was.
        with store.transaction() as manifest:
            digest = check_token(manifest, dev, request.token, now)
            cert = sign_device_csr(ca, request.csr_pem.encode(), dev,
                                   days=settings.cert_lifetime)
            burn_token(manifest, digest, now, f"{cert.serial_number:x}")
    except TokenRefused as exc:
        log.warning("enrollment of %s refused: %s (%s)", dev, exc.reason, exc)
        return _refused(403, exc.reason, str(exc))
    except CsrRefused as exc:
        log.warning("enrollment of %s refused: bad CSR (%s)", dev, exc)
        return _refused(400, "bad_csr", str(exc))
    except (CaError, ManifestError, OSError) as exc:
        log.error("enrollment of %s failed at the centre: %s", dev, exc)
        return _refused(503, "busy", "the centre cannot enroll boxes now; try again later")
    log.info("enrolled %s: certificate %x until %s", dev, cert.serial_number,
             cert.not_valid_after_utc.isoformat())
    return _answer(settings, manifest, dev, cert, ca.cert_pem())


def renew(settings: ServiceSettings, peer_der: bytes | None, body: bytes) -> Answer:
    """Answer one renewal: the TLS layer has checked the certificate against the CA."""
    if not peer_der:
        return _refused(401, "not_authenticated",
                        "renewal needs the box's current certificate (mutual TLS)")
    peer = x509.load_der_x509_certificate(peer_der)
    names = [str(a.value) for a in peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    dev = names[0] if names else ""
    if not is_device_id(dev):
        return _refused(403, "not_authenticated", f"{dev[:40]!r} is not a box")
    if peer.serial_number in revoked_serials(settings.directory):
        log.warning("renewal of %s refused: certificate %x is revoked", dev, peer.serial_number)
        return _refused(403, "revoked", "this certificate is revoked")
    try:
        request = parse_request(body, RenewRequest)
    except BadRequest as exc:
        return _refused(400, "bad_request", str(exc))
    try:
        manifest = FleetStore(settings.directory).load()
        if dev not in manifest.devices:
            return _refused(403, "not_in_fleet", f"box {dev} is not in the fleet manifest")
        ca = load_ca(settings.directory)
        cert = sign_device_csr(ca, request.csr_pem.encode(), dev,
                                   days=settings.cert_lifetime)
    except CsrRefused as exc:
        return _refused(400, "bad_csr", str(exc))
    except (CaError, ManifestError, OSError) as exc:
        log.error("renewal of %s failed at the centre: %s", dev, exc)
        return _refused(503, "busy", "the centre cannot renew certificates now; try again later")
    log.info("renewed %s: certificate %x until %s", dev, cert.serial_number,
             cert.not_valid_after_utc.isoformat())
    return _answer(settings, manifest, dev, cert, ca.cert_pem())


# ---------------------------------------------------------------- HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    server: EnrollServer
    timeout = REQUEST_TIMEOUT_S
    server_version = "diemcau-enroll"
    sys_version = ""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if self.path not in (ENROLL_PATH, RENEW_PATH):
            self._send(*_refused(404, "bad_request", f"no such path {self.path[:80]!r}"))
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(*_refused(411, "bad_request", "Content-Length is needed"))
            return
        if not 0 <= length <= MAX_REQUEST_BYTES:
            self._send(*_refused(413, "bad_request",
                                 f"request too large (at most {MAX_REQUEST_BYTES} bytes)"))
            return
        body = self.rfile.read(length)
        settings = self.server.settings
        if self.path == ENROLL_PATH:
            answer = enroll(settings, body)
        else:
            peer = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            answer = renew(settings, peer, body)
        self._send(*answer)

    def do_GET(self) -> None:  # noqa: N802
        self._send(*_refused(405, "bad_request", "use POST"))

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.info("%s %s", self.address_string(), format % args)


class EnrollServer(http.server.ThreadingHTTPServer):
    """A thread per request; the TLS handshake happens in that thread, never in accept()."""

    daemon_threads = True

    def __init__(self, settings: ServiceSettings, address: tuple[str, int],
                 context: ssl.SSLContext, max_connections: int = MAX_CONNECTIONS) -> None:
        self.settings = settings
        self.context = context
        self._slots = threading.BoundedSemaphore(max_connections)
        self.turned_away = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.turned_away += 1
            if self.turned_away in (1, 10, 100) or self.turned_away % 1000 == 0:
                log.warning("too many connections at once: turned %d away so far",
                            self.turned_away)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(REQUEST_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)
            tls.close()


def server_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS for the service: its own certificate; a client certificate from the CA if offered."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cafile=str(ca_file))
    # Optional: enrollment has no certificate yet; renewal shows one.
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def make_server(settings: ServiceSettings, address: tuple[str, int], cert_file: Path,
                key_file: Path) -> EnrollServer:
    """A server ready for ``serve_forever()``; CaError if the CA cannot be used."""
    ca = load_ca(settings.directory)
    return EnrollServer(settings, address, server_context(ca.cert_file, cert_file, key_file))
