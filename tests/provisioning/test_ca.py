"""The centre's CA: its files and their modes, and what it will and will not sign."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from diemcau.core.identity import renew_at
from diemcau_centre.ca import (
    CaError,
    CsrRefused,
    centre_identities,
    init_ca,
    issue_client_cert,
    issue_server_cert,
    load_ca,
    parse_lifetime,
    sign_device_csr,
    write_crl,
)
from diemcau_centre.keys import KeyExists
from tests.provisioning.conftest import csr_for


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_init_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "centre")
    assert mode(tmp_path / "centre") == 0o700
    assert mode(tmp_path / "centre/ca.key") == 0o600
    assert mode(tmp_path / "centre/ca.pem") == 0o644
    cert = ca.cert
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert load_ca(tmp_path / "centre").cert == cert
    # Nothing else lies about: no temporary files left behind.
    assert sorted(p.name for p in (tmp_path / "centre").iterdir()) == ["ca.key", "ca.pem",
                                                                        "crl.pem"]


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(KeyExists, match="--force"):
        init_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == before
    second = init_ca(tmp_path, force=True)
    assert second.cert != first.cert
    assert mode(tmp_path / "ca.key") == 0o600


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    init_ca(tmp_path)
    (tmp_path / "ca.key").chmod(0o640)
    with pytest.raises(CaError, match="chmod 600"):
        load_ca(tmp_path)


def test_no_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="ca init"):
        load_ca(tmp_path)


def test_the_initial_crl_is_empty_and_signed_by_the_ca(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())
    assert len(crl) == 0
    # It lasts as long as the CA: a stale CRL would lock every box out.
    assert crl.next_update_utc == ca.cert.not_valid_after_utc
    write_crl(ca, [(1234, dt.datetime.now(dt.UTC))])
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(1234) is not None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_a_device_certificate_names_the_device_and_only_logs_in(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_device_csr(ca, csr_for(key, "c00001-r1"), "c00001-r1")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "c00001-r1"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.cert)
    assert (tmp_path / "issued" / f"{cert.serial_number:x}.pem").is_file()
    # A CSR with no CN at all is fine: the CA names the box.
    sign_device_csr(ca, csr_for(key, None), "c00001-r1")


def test_the_csr_extensions_are_never_copied(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c00001-r1")]))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256()))
    cert = sign_device_csr(ca, csr.public_bytes(Encoding.PEM), "c00001-r1")
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _tampered(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    body = base64.encodebytes(bytes(der))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize("case, why", [
    ("other_cn", "asks for CN 'c00002-r1'"),
    ("rsa", "EC on P-256"),
    ("garbage", "not a PEM certificate signing request"),
    ("tampered", "signature does not verify"),
])
def test_a_csr_that_will_not_be_signed_says_why(tmp_path: Path, case: str, why: str) -> None:
    ca = init_ca(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = {
        "other_cn": lambda: csr_for(key, "c00002-r1"),
        "rsa": lambda: csr_for(rsa.generate_private_key(65537, 2048), "c00001-r1"),  # type: ignore[arg-type]
        "garbage": lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n",
        "tampered": lambda: _tampered(csr_for(key, "c00001-r1")),
    }[case]()
    with pytest.raises(CsrRefused, match=why):
        sign_device_csr(ca, pem, "c00001-r1")
    assert not (tmp_path / "issued").exists()


@pytest.mark.parametrize("device_id", ["centre", "c00001", "c00001-r0", "C00001-R1", "c1-r1"])
def test_only_device_ids_get_device_certificates(tmp_path: Path, device_id: str) -> None:
    ca = init_ca(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="device id"):
        sign_device_csr(ca, csr_for(key, device_id), device_id)


def test_the_broker_certificate_names_its_hosts(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    cert_file, key_file = issue_server_cert(ca, ["mqtt.diemcau.gov.vn", "10.0.0.5"])
    assert mode(key_file) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.diemcau.gov.vn"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(KeyExists):
        issue_server_cert(ca, ["other"])


def test_the_centre_identities(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    cert_file, key_file = issue_client_cert(ca, "centre")
    issue_client_cert(ca, "centre-wall")
    assert mode(key_file) == 0o600
    assert centre_identities(tmp_path) == ["centre", "centre-wall"]
    for bad in ("c00001-r1", "operator", "centre-"):
        with pytest.raises(ValueError):
            issue_client_cert(ca, bad)
    with pytest.raises(KeyExists):
        issue_client_cert(ca, "centre")


@pytest.mark.parametrize(("text", "seconds"), [("365d", 365 * 86400), ("365", 365 * 86400),
                                               ("12h", 43200), ("90m", 5400), ("60s", 60),
                                               (" 2D ", 2 * 86400)])
def test_a_lifetime_reads_with_its_unit(text: str, seconds: int) -> None:
    assert parse_lifetime(text).total_seconds() == seconds


@given(st.text(max_size=12))
def test_any_text_is_a_lifetime_or_a_clear_error(text: str) -> None:
    try:
        lifetime = parse_lifetime(text)
    except ValueError as exc:
        assert "is not a lifetime" in str(exc)
    else:
        assert 0 < lifetime.total_seconds() <= 36500 * 86400


@pytest.mark.parametrize("seconds", [60, 600, 3600 * 24 * 365])
def test_a_certificate_of_any_lifetime_is_due_for_renewal_in_the_future(tmp_path: Path,
                                                                        seconds: int) -> None:
    # An hour backdated on a one-minute certificate would make it due at once, for ever.
    ca = init_ca(tmp_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = sign_device_csr(ca, csr_for(ec.generate_private_key(ec.SECP256R1()), "c00001-r1"),
                           "c00001-r1", days=dt.timedelta(seconds=seconds), now=now)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert end - now == dt.timedelta(seconds=seconds)
    assert now - start == min(dt.timedelta(hours=1), dt.timedelta(seconds=seconds) / 10)
    assert renew_at(start.timestamp(), end.timestamp()) > now.timestamp()
