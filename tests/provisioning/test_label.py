"""``diemcau-centre fleet label``: a QR code that a real reader decodes, and no secret on it."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from diemcau_centre.label import Label, label_svg
from diemcau_centre.manifest import Device, Place, SiteRecord, file_id, token_hash
from tests.provisioning.conftest import A, centre_dir_for
from tests.provisioning.test_cli import run


def zbar(png: bytes, tmp_path: Path) -> str:
    """What a QR reader (zbarimg, from Debian's zbar-tools) reads in a PNG."""
    path = tmp_path / "scan.png"
    path.write_bytes(png)
    done = subprocess.run(["zbarimg", "--raw", "-q", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def svg_qr_png(svg: str) -> bytes:
    """The QR code as drawn on the printed label (a PNG inside the SVG)."""
    image = ET.fromstring(svg).find("{http://www.w3.org/2000/svg}image")
    assert image is not None
    prefix = "data:image/png;base64,"
    href = image.get("href", "")
    assert href.startswith(prefix)
    return base64.b64decode(href[len(prefix):])


def test_each_box_gets_a_label_whose_qr_code_names_it_and_its_file(tmp_path: Path) -> None:
    d = centre_dir_for(tmp_path / "centre")
    code, out, err = run("fleet", "label", "--dir", str(d))
    assert code == 0, err
    assert "wrote 4 label(s)" in out
    enrollment = tomllib.loads((d / "enrollment" / f"{A}.toml").read_text())
    token = enrollment["token"]
    fid = file_id(token_hash(token))
    assert f"# File id {fid} " in (d / "enrollment" / f"{A}.toml").read_text()

    svg = (d / "labels" / f"{A}.svg").read_text()
    png = (d / "labels" / f"{A}.png").read_bytes()
    read = zbar(png, tmp_path)
    assert zbar(svg_qr_png(svg), tmp_path) == read  # the printed code is the same code
    assert json.loads(read) == {"v": 1, "box": A, "province": "p01", "district": "d001",
                                "commune": "c00001", "room": 1, "file": fid,
                                "expires": enrollment["expires"].strftime("%Y-%m-%d")}
    for text in ("c00001-r1", "Phường Phúc Xá", "Phòng họp 1", "Quận Ba Đình",
                 f"enrollment file {fid}"):
        assert text in svg, text
    # Stuck outside the box: no token, nor any of its characters' longer runs.
    secret = token.removeprefix("dce1_")
    for label_file in (d / "labels").iterdir():
        data = label_file.read_bytes()
        assert token.encode() not in data and secret[:16].encode() not in data
    assert secret[:16] not in read and token not in out


def test_a_new_token_changes_the_label_and_an_unknown_box_writes_nothing(tmp_path: Path) -> None:
    d = centre_dir_for(tmp_path / "centre")
    assert run("fleet", "label", A, "--dir", str(d))[0] == 0
    before = json.loads(zbar((d / "labels" / f"{A}.png").read_bytes(), tmp_path))
    assert sorted(p.name for p in (d / "labels").iterdir()) == [f"{A}.png", f"{A}.svg"]
    assert run("fleet", "token", A, "--dir", str(d))[0] == 0
    assert run("fleet", "label", A, "--dir", str(d))[0] == 0
    after = json.loads(zbar((d / "labels" / f"{A}.png").read_bytes(), tmp_path))
    token = tomllib.loads((d / "enrollment" / f"{A}.toml").read_text())["token"]
    assert after["file"] == file_id(token_hash(token)) != before["file"]

    out_dir = tmp_path / "nowhere"
    code, out, err = run("fleet", "label", A, "c09999-r1", "--dir", str(d), "--out", str(out_dir))
    assert code == 2 and "not in the manifest: c09999-r1" in err and "nothing" in err
    assert not out_dir.exists()


names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60)


@settings(max_examples=60)
@given(commune=names, room=names, fid=st.from_regex(r"[0-9a-f]{8}", fullmatch=True))
def test_any_site_names_make_a_well_formed_label_and_an_ascii_code(commune: str, room: str,
                                                                   fid: str) -> None:
    site = SiteRecord(province=Place(code="p01", name="Tỉnh <A> & \"B\""),
                      district=Place(code="d001", name="Quận 1"),
                      commune=Place(code="c00001", name=commune), room=7, room_name=room)
    label = Label(Device(id="c00001-r7", site=site, added_at=0.0), fid, 1.75e9)
    svg = label_svg(label)
    root = ET.fromstring(svg)  # escaped: any name leaves the XML well formed
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts[:3] == ["c00001-r7", commune, room]
    payload = label.payload()
    assert payload.isascii() and json.loads(payload)["file"] == fid
    assert re.fullmatch(r"[ -~]+", payload)
