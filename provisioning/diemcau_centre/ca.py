"""The centre's certificate authority: EC P-256 keys and X.509 certificates.

One CA signs everything the broker trusts: each box's certificate (CN = its
device id, from a CSR for a key the box made itself), the broker's server
certificate, and the centre's own client certificates (CN ``centre`` or
``centre-<name>``). Its directory holds::

    ca.key   ca.pem   crl.pem        the CA (key mode 0600) and its revocation list
    broker.key   broker.pem          the broker's server identity (key 0600)
    clients/<name>.key .pem          the centre's identities (keys 0600)
    issued/<serial>.pem              every certificate ever signed, for revocation

    ca = init_ca(Path("/srv/centre"))
    issue_server_cert(ca, ["mqtt.diemcau.gov.vn"])
    issue_client_cert(ca, "centre")
    cert = sign_device_csr(ca, csr_pem, "c00001-r1")   # CsrRefused says why not
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_atomic
from .identity import check_centre_name, check_device_id, is_device_id
from .keys import KeyExists

CA_KEY, CA_CERT, CRL = "ca.key", "ca.pem", "crl.pem"
SERVER_KEY, SERVER_CERT = "broker.key", "broker.pem"
CLIENTS_DIR, ISSUED_DIR = "clients", "issued"

CA_DAYS = 3650
DEVICE_DAYS = 365  # the box renews at two thirds: about four months to spare
MAX_LIFETIME_S = 36500 * 86400
SERVER_DAYS = 730
CLIENT_DAYS = 730
# Boxes have no real-time clock; a certificate that starts "now" on the centre
# may start in the future for a box whose clock lags a little.
BACKDATE = dt.timedelta(hours=1)
# Curves a box's key may use; P-256 is what boxes make.
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CaError(Exception):
    """The CA's directory cannot be used (missing, unreadable, wrong key mode)."""


class CsrRefused(ValueError):
    """A certificate signing request that will not be signed; the message says why."""


@dataclass(frozen=True, slots=True)
class CentreCa:
    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_file(self) -> Path:
        return self.directory / CA_CERT

    @property
    def crl_file(self) -> Path:
        return self.directory / CRL

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def backdate(lifetime: dt.timedelta) -> dt.timedelta:
    """How far before now a certificate starts: an hour, less for a short-lived one.

    A box renews at two thirds of the whole validity, backdating included: an
    hour on a one-minute certificate would make it due at once, for ever.
    """
    return min(BACKDATE, lifetime / 10)


def parse_lifetime(text: str) -> dt.timedelta:
    """``365d``, ``12h``, ``90m``, ``60s`` (a bare number is days); ValueError if not."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "d")
    # isdigit() alone takes '²' and other digits int() refuses: ASCII digits only.
    if not (number.isascii() and number.isdigit()) or \
            not 0 < int(number) * units[unit] <= MAX_LIFETIME_S:
        raise ValueError(f"{text!r} is not a lifetime: a whole number and a unit, like 365d, "
                         f"12h, 90m or 60s (from 1 s to {MAX_LIFETIME_S // 86400} days)")
    return dt.timedelta(seconds=int(number) * units[unit])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.UTC)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init_ca(directory: Path, *, force: bool = False, common_name: str = "diemcau centre CA",
            days: int = CA_DAYS, now: dt.datetime | None = None) -> CentreCa:
    """Make a new CA (and an empty CRL) in ``directory``; KeyExists rather than overwrite.

    Replacing a CA (``force``) makes every certificate it signed worthless.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not force:
        for existing in (directory / CA_KEY, directory / CA_CERT):
            if existing.exists():
                raise KeyExists(f"{existing} already exists (use --force to replace the CA; "
                                "every certificate it signed would stop working)")
    start = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(directory / CA_KEY, _private_pem(key), 0o600, replace=force)
    write_atomic(directory / CA_CERT, _cert_pem(cert), 0o644, replace=True)
    ca = CentreCa(directory, key, cert)
    crl = make_crl(ca, [], number=1, now=start)
    write_atomic(ca.crl_file, crl.public_bytes(serialization.Encoding.PEM))
    return ca


def load_ca(directory: Path) -> CentreCa:
    """The CA in ``directory``; CaError naming the file and what to do if it cannot be used.

    A key that other users can read is refused, as ssh does: whoever reads it
    can make a certificate for any box or for the centre.
    """
    key_file, cert_file = directory / CA_KEY, directory / CA_CERT
    try:
        st = key_file.stat()
        key_data, cert_data = key_file.read_bytes(), cert_file.read_bytes()
    except FileNotFoundError as exc:
        raise CaError(f"{exc.filename}: no such file (make the CA with "
                      f"`diemcau-centre ca init --dir {directory}`)") from None
    except OSError as exc:
        raise CaError(f"{exc.filename}: cannot read: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise CaError(f"{key_file}: readable by other users (mode "
                      f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {key_file}")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
        cert = x509.load_pem_x509_certificate(cert_data)
    except (ValueError, TypeError) as exc:
        raise CaError(f"{directory}: the CA's key or certificate is not readable PEM ({exc})"
                      ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{key_file}: not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CaError(f"{key_file} and {cert_file} do not belong together")
    return CentreCa(directory, key, cert)


def _leaf(ca: CentreCa, subject_cn: str, public_key: ec.EllipticCurvePublicKey,
          lifetime: dt.timedelta | int, usage: x509.ObjectIdentifier,
          san: list[x509.GeneralName] | None, now: dt.datetime | None) -> x509.Certificate:
    """A certificate signed by the CA, recorded under issued/ before it is returned.

    ``lifetime`` is a duration, or a number of days.
    """
    if not isinstance(lifetime, dt.timedelta):
        lifetime = dt.timedelta(days=lifetime)
    start = _now(now)
    end = min(start + lifetime, ca.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - backdate(lifetime))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    write_atomic(ca.directory / ISSUED_DIR / f"{cert.serial_number:x}.pem", _cert_pem(cert))
    return cert


def sign_device_csr(ca: CentreCa, csr_pem: bytes, device_id: str, *,
                    days: dt.timedelta | int = DEVICE_DAYS,
                    now: dt.datetime | None = None) -> x509.Certificate:
    """A box's certificate, CN = ``device_id``, for the key in its CSR; CsrRefused if not.

    The CSR must be signed by its own key (the box holds it), use an EC key
    on P-256 or P-384, and ask for no CN other than ``device_id``. Nothing
    else in it is copied: the extensions are the CA's choice. ``days`` may
    also be a duration (a short-lived certificate, to try renewal).
    """
    check_device_id(device_id)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrRefused(f"not a PEM certificate signing request ({exc})") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError, TypeError):
        valid = False
    if not valid:
        raise CsrRefused("the request's signature does not verify with its own key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                        ALLOWED_CURVES):
        raise CsrRefused("the key must be EC on P-256 (or P-384)")
    asked = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if any(cn != device_id for cn in asked):
        raise CsrRefused(f"the request asks for CN {asked[0]!r}, but this is {device_id!r}")
    return _leaf(ca, device_id, key, days, ExtendedKeyUsageOID.CLIENT_AUTH, None, now)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server_cert(ca: CentreCa, hosts: Sequence[str], *, days: int = SERVER_DAYS,
                      force: bool = False, now: dt.datetime | None = None) -> tuple[Path, Path]:
    """The broker's key and certificate for ``hosts`` (names or addresses boxes connect to).

    Returns (certificate file, key file); the key is made here, mode 0600.
    """
    if not hosts:
        raise ValueError("name at least one host the boxes connect to (--host)")
    cert_file, key_file = ca.directory / SERVER_CERT, ca.directory / SERVER_KEY
    if not force and (cert_file.exists() or key_file.exists()):
        raise KeyExists(f"{cert_file} already exists (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca, hosts[0], key.public_key(), days, ExtendedKeyUsageOID.SERVER_AUTH,
                 [_general_name(h) for h in hosts], now)
    write_atomic(key_file, _private_pem(key), 0o600)
    write_atomic(cert_file, _cert_pem(cert))
    return cert_file, key_file


def issue_client_cert(ca: CentreCa, name: str = "centre", *, days: int = CLIENT_DAYS,
                      force: bool = False, now: dt.datetime | None = None) -> tuple[Path, Path]:
    """A key and certificate for one of the centre's identities (CN ``name``).

    Returns (certificate file, key file) under clients/; the key is mode 0600.
    """
    check_centre_name(name)
    cert_file = ca.directory / CLIENTS_DIR / f"{name}.pem"
    key_file = cert_file.with_suffix(".key")
    if not force and (cert_file.exists() or key_file.exists()):
        raise KeyExists(f"{cert_file} already exists (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca, name, key.public_key(), days, ExtendedKeyUsageOID.CLIENT_AUTH, None, now)
    write_atomic(key_file, _private_pem(key), 0o600)
    write_atomic(cert_file, _cert_pem(cert))
    return cert_file, key_file


def centre_identities(directory: Path) -> list[str]:
    """The CNs of the centre's client certificates under clients/, sorted."""
    names = []
    for pem in sorted((directory / CLIENTS_DIR).glob("*.pem")):
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        names += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return sorted(set(names))


def make_crl(ca: CentreCa, revoked: Sequence[tuple[int, dt.datetime]], *, number: int,
             now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """A CRL listing ``revoked`` (serial, when), valid until the CA itself expires.

    The broker refuses every client once its CRL is past ``next_update``; so
    that a forgotten renewal cannot lock out the fleet, the CRL lasts as long
    as the CA, and a fresh one is written whenever something is revoked.
    """
    start = _now(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(start - BACKDATE)
        .next_update(ca.cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca.key, hashes.SHA256())


def write_crl(ca: CentreCa, revoked: Sequence[tuple[int, dt.datetime]], *,
              now: dt.datetime | None = None) -> Path:
    """Write crl.pem with the next CRL number; returns its path."""
    number = 1
    if ca.crl_file.exists():
        old = x509.load_pem_x509_crl(ca.crl_file.read_bytes())
        with contextlib.suppress(x509.ExtensionNotFound):
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    crl = make_crl(ca, revoked, number=number, now=now)
    write_atomic(ca.crl_file, crl.public_bytes(serialization.Encoding.PEM))
    return ca.crl_file


def issued_to(ca: CentreCa, device_id: str) -> list[x509.Certificate]:
    """Every certificate the CA signed for ``device_id`` (from issued/), oldest first."""
    found = []
    for pem in (ca.directory / ISSUED_DIR).glob("*.pem"):
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names == [device_id]:
            found.append(cert)
    return sorted(found, key=lambda c: c.not_valid_before_utc)


def revoked_serials(directory: Path) -> set[int]:
    """Serial numbers on the CA's current CRL (none if there is no CRL yet)."""
    try:
        crl = x509.load_pem_x509_crl((directory / CRL).read_bytes())
    except FileNotFoundError:
        return set()
    return {entry.serial_number for entry in crl}


def certificates_by_device(ca: CentreCa) -> dict[str, list[x509.Certificate]]:
    """Every box certificate under issued/, by device id, oldest first (one pass)."""
    found: dict[str, list[x509.Certificate]] = {}
    for pem in (ca.directory / ISSUED_DIR).glob("*.pem"):
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if len(names) == 1 and is_device_id(names[0]):
            found.setdefault(names[0], []).append(cert)
    for certs in found.values():
        certs.sort(key=lambda c: c.not_valid_before_utc)
    return found


def revoke_device(ca: CentreCa, device_id: str, *, now: dt.datetime | None = None
                  ) -> list[int]:
    """Put every certificate of ``device_id`` on the CRL; returns the serials newly revoked.

    Those already revoked stay on it. The box can come back only through a new
    token (``fleet token``), which buys a new certificate.
    """
    check_device_id(device_id)
    when = _now(now)
    revoked: dict[int, dt.datetime] = {}
    if ca.crl_file.exists():
        for entry in x509.load_pem_x509_crl(ca.crl_file.read_bytes()):
            revoked[entry.serial_number] = entry.revocation_date_utc
    new = [c.serial_number for c in issued_to(ca, device_id) if c.serial_number not in revoked]
    for serial in new:
        revoked[serial] = when
    write_crl(ca, sorted(revoked.items()), now=when)
    return new
