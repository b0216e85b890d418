"""A centre directory (CA, broker and centre certificates, an imported fleet) and
Mosquitto running the configuration ``broker-config`` wrote for it."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from diemcau_centre.broker_config import BrokerSettings, write_broker_config
from diemcau_centre.ca import (
    init_ca,
    issue_client_cert,
    issue_server_cert,
    load_ca,
    sign_device_csr,
)
from diemcau_centre.manifest import import_sites
from tests.harness.broker import Broker, free_port

SERVICE = "https://enroll.example.vn:8443"
HEADER = ("province_code,province_name,district_code,district_name,commune_code,commune_name,"
          "room,room_name\n")
# Two boxes in one commune, one in another commune of the same district, one in another province.
SITES = HEADER + (
    "01,Thành phố Hà Nội,001,Quận Ba Đình,00001,Phường Phúc Xá,1,Phòng họp 1\n"
    "01,Thành phố Hà Nội,001,Quận Ba Đình,00001,Phường Phúc Xá,2,Hội trường\n"
    "01,Thành phố Hà Nội,001,Quận Ba Đình,00004,Phường Trúc Bạch,1,\n"
    "02,Tỉnh Hà Giang,024,Thành phố Hà Giang,00688,Phường Quang Trung,1,Phòng họp\n"
)
A, A2, B, C = "c00001-r1", "c00001-r2", "c00004-r1", "c00688-r1"


def csr_for(key: ec.EllipticCurvePrivateKey, cn: str | None) -> bytes:
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def box_identity(centre_dir: Path, device_id: str, out: Path) -> tuple[Path, Path]:
    """What a box will do: make its own key, send a CSR, get a certificate back."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_device_csr(load_ca(centre_dir), csr_for(key, device_id), device_id)
    out.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = out / f"{device_id}.pem", out / f"{device_id}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture
def centre_dir(tmp_path: Path) -> Path:
    """A centre directory as the runbook leaves it before the broker is set up."""
    return centre_dir_for(tmp_path / "centre")


def centre_dir_for(directory: Path) -> Path:
    ca = init_ca(directory)
    issue_server_cert(ca, ["127.0.0.1", "localhost"])
    issue_client_cert(ca, "centre")
    import_sites(directory, SITES, "sites.csv", service=SERVICE)
    return directory


def start_fleet_broker(centre_dir: Path, workdir: Path) -> Broker:
    port = free_port()
    settings = BrokerSettings(port=port, bind="127.0.0.1",
                              run_as=pwd.getpwuid(os.getuid()).pw_name,
                              persistence_dir=str(workdir / "data"),
                              log_file=str(workdir / "mosquitto.log"))
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    files = write_broker_config(centre_dir, workdir / "conf", settings)
    broker = Broker(workdir, port=port, config_text=files.conf.read_text())
    broker.start()
    return broker


@pytest.fixture
def fleet_broker(centre_dir: Path, tmp_path: Path,
                 request: pytest.FixtureRequest) -> Iterator[Broker]:
    broker = start_fleet_broker(centre_dir, tmp_path / "broker")
    yield broker
    broker.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"----- broker log -----\n{broker.log_text()[-6000:]}")
