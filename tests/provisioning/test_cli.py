"""``diemcau-centre ca``, ``fleet`` and ``broker-config`` as an operator runs them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from diemcau_centre.cli import main
from diemcau_centre.manifest import FleetStore, TokenRefused, check_token
from tests.provisioning.conftest import HEADER, SERVICE, SITES


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def sites(tmp_path: Path) -> Path:
    path = tmp_path / "sites.csv"
    path.write_text(SITES, encoding="utf-8")
    return path


def test_the_runbook_from_an_empty_directory(tmp_path: Path, sites: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # No configuration is needed, nor read, for any of these.
    monkeypatch.setenv("DIEMCAU_CENTRE_CONFIG", str(tmp_path / "missing.toml"))
    d = str(tmp_path / "centre")
    code, out, err = run("ca", "init", "--dir", d)
    assert code == 0, err
    assert "mode 0600" in out
    assert run("ca", "server-cert", "--dir", d, "--host", "mqtt.example.vn")[0] == 0
    code, out, _ = run("ca", "client-cert", "--dir", d)
    assert code == 0 and "cert_file" in out and "clients/centre.pem" in out
    code, out, err = run("fleet", "import", str(sites), "--dir", d, "--service", SERVICE)
    assert code == 0, err
    assert "4 new box(es), 0 already in the manifest" in out
    assert "c00001-r1" in out and "diemcau-enroll.toml" in out

    code, out, _ = run("fleet", "list", "--dir", d, "--json")
    records = json.loads(out)
    assert [r["device"] for r in records] == ["c00001-r1", "c00001-r2", "c00004-r1", "c00688-r1"]
    assert {r["token"] for r in records} == {"pending"}

    code, out, err = run("broker-config", "--dir", d, "--port", "8883")
    assert code == 0, err
    conf = (tmp_path / "centre/broker/mosquitto.conf").read_text()
    assert "use_username_as_clientid true" in conf
    assert "user c00688-r1" in (tmp_path / "centre/broker/acl").read_text()


def test_ca_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run("ca", "init", "--dir", str(tmp_path))[0] == 0
    key = (tmp_path / "ca.key").read_bytes()
    code, _, err = run("ca", "init", "--dir", str(tmp_path))
    assert code == 1 and "refusing to overwrite" in err and "--force" in err
    assert (tmp_path / "ca.key").read_bytes() == key
    assert run("ca", "init", "--dir", str(tmp_path), "--force")[0] == 0
    assert (tmp_path / "ca.key").read_bytes() != key


def test_a_bad_sites_file_exits_2_naming_line_and_column(tmp_path: Path) -> None:
    run("ca", "init", "--dir", str(tmp_path))
    bad = tmp_path / "sites.csv"
    bad.write_text(HEADER + "01,Hà Nội,001,Ba Đình,0001a,Phúc Xá,1,\n", encoding="utf-8")
    code, out, err = run("fleet", "import", str(bad), "--dir", str(tmp_path), "--service", SERVICE)
    assert code == 2 and out == ""
    assert f"{bad}, line 2, column 5 (commune_code): '0001a' is not a commune code" in err
    assert not (tmp_path / "fleet.json").exists()

    bad.write_bytes("province_code\nHà Nội".encode("utf-16"))
    code, _, err = run("fleet", "import", str(bad), "--dir", str(tmp_path), "--service", SERVICE)
    assert code == 2 and "not UTF-8" in err


def test_import_before_the_ca_exits_2(tmp_path: Path, sites: Path) -> None:
    code, _, err = run("fleet", "import", str(sites), "--dir", str(tmp_path / "none"),
                       "--service", SERVICE)
    assert code == 2 and "ca init" in err


def test_fleet_token_gives_a_new_file_and_the_old_token_stops(tmp_path: Path, sites: Path) -> None:
    d = str(tmp_path)
    run("ca", "init", "--dir", d)
    run("fleet", "import", str(sites), "--dir", d, "--service", SERVICE)
    file = tmp_path / "enrollment/c00004-r1.toml"
    old = tomllib.loads(file.read_text())["token"]
    code, out, _ = run("fleet", "token", "c00004-r1", "--dir", d, "--token-days", "3")
    assert code == 0 and "no longer work" in out
    new = tomllib.loads(file.read_text())["token"]
    manifest = FleetStore(tmp_path).load()
    with pytest.raises(TokenRefused, match="replaced"):
        check_token(manifest, "c00004-r1", old, 0)
    check_token(manifest, "c00004-r1", new, 0)

    code, _, err = run("fleet", "token", "c09999-r1", "--dir", d)
    assert code == 2 and "c09999-r1" in err


def test_broker_config_without_a_centre_identity_exits_2(tmp_path: Path) -> None:
    d = str(tmp_path)
    run("ca", "init", "--dir", d)
    run("ca", "server-cert", "--dir", d, "--host", "127.0.0.1")
    code, _, err = run("broker-config", "--dir", d)
    assert code == 2 and "ca client-cert" in err
    assert not (tmp_path / "broker").exists()


def test_revoke_puts_a_box_on_the_crl_and_copies_it_to_the_broker(tmp_path: Path) -> None:
    from cryptography import x509

    from tests.provisioning.conftest import box_identity, centre_dir_for

    d = centre_dir_for(tmp_path / "centre")
    cert, _ = box_identity(d, "c00001-r1", tmp_path / "ids")
    box_identity(d, "c00004-r1", tmp_path / "ids")
    assert run("broker-config", "--dir", str(d))[0] == 0
    code, out, err = run("revoke", "c00001-r1", "--dir", str(d))
    assert code == 0, err
    assert "revoked 1 certificate(s) of c00001-r1" in out and "SIGHUP" in out
    serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    for crl_file in (d / "crl.pem", d / "broker/crl.pem"):
        crl = x509.load_pem_x509_crl(crl_file.read_bytes())
        assert [e.serial_number for e in crl] == [serial]
    code, out, _ = run("revoke", "c00001-r1", "--dir", str(d))
    assert code == 0 and "already revoked" in out

    # fleet list shows it: revoked, the other enrolled box valid, the rest without one.
    code, out, _ = run("fleet", "list", "--dir", str(d), "--json")
    certs = {r["device"]: r["certificate"] for r in json.loads(out)}
    assert certs == {"c00001-r1": "revoked", "c00004-r1": "valid", "c00001-r2": None,
                     "c00688-r1": None}
    table = run("fleet", "list", "--dir", str(d))[1].splitlines()
    assert "CERTIFICATE" in table[0]
    assert [line.split()[0] for line in table if " revoked " in line] == ["c00001-r1"]

    # Anything else that is not a box with a certificate: a clear error, the CRLs untouched.
    crls = {f: f.read_bytes() for f in (d / "crl.pem", d / "broker/crl.pem")}
    for device, says in (("c00001-r2", "c00001-r2 has never enrolled"),
                         ("c09999-r1", "'c09999-r1' is not a box of this centre"),
                         ("centre", "'centre' is not a box's device id")):
        code, out, err = run("revoke", device, "--dir", str(d))
        assert code == 2 and says in err and "nothing was changed" in err, err
        assert out == ""
    assert {f: f.read_bytes() for f in crls} == crls


@pytest.mark.parametrize(("args", "message"), [
    (["--broker", "mqtt.example.vn:99999"], "expected HOST or HOST:PORT"),
    (["--broker", "mqtt.example.vn", "--centre-key", "/nonexistent.pub"], "cannot read"),
])
def test_enroll_service_refuses_bad_options(tmp_path: Path, args: list[str],
                                            message: str) -> None:
    from tests.provisioning.conftest import centre_dir_for

    d = centre_dir_for(tmp_path / "centre")
    if "--centre-key" not in args:
        args = [*args, "--centre-key", str(d / "ca.pem")]
    code, _, err = run("enroll-service", "--dir", str(d), *args)
    assert code == 2 and message in err


def test_send_checks_a_key_update_before_it_reaches_the_boxes() -> None:
    from diemcau.protocol import generate_signing_key, public_key_to_text
    from diemcau_centre.send import UsageError, build_args

    good = public_key_to_text(generate_signing_key().public_key())
    assert build_args("keys.update", json_text=f'{{"keys": {{"k2027": "{good}"}}}}') == {
        "keys": {"k2027": good}}
    for bad, why in (('{"keys": {}}', "non-empty"), ('{"keys": {"k": "abc"}}', "keys.k: not an")):
        with pytest.raises(UsageError, match=why):
            build_args("keys.update", json_text=bad)


@pytest.mark.parametrize("argv", [["ca", "init"], ["fleet", "list"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, sites: Path,
                                                         argv: list[str]) -> None:
    # `diemcau-centre ... | head`: the pipe's reader is gone before anything is written.
    d = str(tmp_path / "centre")
    if argv[0] == "fleet":
        assert run("ca", "init", "--dir", d)[0] == 0
        assert run("fleet", "import", str(sites), "--dir", d, "--service", SERVICE)[0] == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "diemcau_centre.cli", *argv, "--dir", d],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              check=False)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
    if argv[0] == "ca":
        assert (tmp_path / "centre" / "ca.key").is_file()  # the work was done all the same
