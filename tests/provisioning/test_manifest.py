"""The fleet manifest: importing sites (all or nothing), enrollment files, one-time tokens."""

from __future__ import annotations

import threading
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diemcau_centre.ca import CaError, init_ca
from diemcau_centre.manifest import (
    ENROLLMENT_DIR,
    MANIFEST_FILE,
    FleetStore,
    ManifestError,
    SitesError,
    TokenRefused,
    check_token,
    import_sites,
    parse_sites,
    redeem_token,
    reissue_tokens,
    token_hash,
)
from tests.provisioning.conftest import HEADER, SERVICE, SITES

ROW = "01,Thành phố Hà Nội,001,Quận Ba Đình,00001,Phường Phúc Xá,1,Phòng họp 1\n"


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "centre"
    init_ca(directory)
    return directory


def enrollment(directory: Path, dev: str) -> dict:
    return tomllib.loads((directory / ENROLLMENT_DIR / f"{dev}.toml").read_text())


def nothing_written(directory: Path) -> bool:
    return not (directory / MANIFEST_FILE).exists() and not (directory / ENROLLMENT_DIR).exists()


# ---------------------------------------------------------------- a good import


def test_import_makes_one_box_per_room_with_its_groups_and_file(ca_dir: Path) -> None:
    result = import_sites(ca_dir, SITES, "sites.csv", service=SERVICE)
    assert [d.id for d in result.added] == ["c00001-r1", "c00001-r2", "c00004-r1", "c00688-r1"]
    manifest = FleetStore(ca_dir).load()
    assert manifest.devices["c00688-r1"].site.groups == ["p02", "d024", "c00688", "all"]
    assert manifest.devices["c00001-r2"].site.room_name == "Hội trường"
    assert manifest.service == SERVICE

    doc = enrollment(ca_dir, "c00001-r1")
    assert doc["device_id"] == "c00001-r1" and doc["service"] == SERVICE
    assert doc["ca_pem"] == (ca_dir / "ca.pem").read_text()
    assert doc["site"] == {"name": "Phường Phúc Xá", "province": "p01", "district": "d001",
                           "commune": "c00001", "room": "Phòng họp 1"}
    assert doc["token"].startswith("dce1_") and len(doc["token"]) > 40
    assert abs(doc["expires"].timestamp() - (time.time() + 30 * 86400)) < 60
    # The centre keeps the token's hash, never the token.
    assert token_hash(doc["token"]) in manifest.tokens
    assert doc["token"] not in (ca_dir / MANIFEST_FILE).read_text()
    for path in [ca_dir / MANIFEST_FILE, *(ca_dir / ENROLLMENT_DIR).iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert all(not p.name.startswith(".") for p in (ca_dir / ENROLLMENT_DIR).iterdir())


def test_a_spreadsheet_export_is_read_as_meant(ca_dir: Path) -> None:
    # Excel: a BOM, semicolons, CRLF, leading zeros dropped, a blank row, columns reordered,
    # a header with capitals and spaces, a quoted name with the delimiter in it.
    text = ("\ufeffRoom;Commune Code;Commune_Name;District Code;district_name;"
            "Province Code;province_name\r\n"
            "1;1;Phường Phúc Xá;1;Quận Ba Đình;1;Thành phố Hà Nội\r\n"
            ";;;;;;\r\n"
            "\r\n"
            '3;c4;"Phường Trúc Bạch; cũ";d001;Quận Ba Đình;p01;Thành phố Hà Nội\r\n')
    rows = parse_sites(text)
    assert [r.device_id for r in rows] == ["c00001-r1", "c00004-r3"]
    assert rows[1].site.commune.name == "Phường Trúc Bạch; cũ"
    assert rows[1].line == 5
    assert rows[0].site.province.code == "p01" and rows[0].site.district.code == "d001"


# ---------------------------------------------------------------- bad files


BAD = {
    "commune code": (ROW.replace(",00001,", ",0001a,"), 2, 5, "not a commune code"),
    "empty name": (ROW.replace("Thành phố Hà Nội", ""), 2, 2, "province name is empty"),
    "room zero": (ROW.replace(",1,Phòng", ",0,Phòng"), 2, 7, "not a room number"),
    "room word": (ROW.replace(",1,Phòng", ",một,Phòng"), 2, 7, "not a room number"),
    "control character": (ROW.replace("Phúc Xá", "Phúc\x1b[2JXá"), 2, 6, "control character"),
    "few cells": ("01,Hà Nội,001\n", 2, None, "3 cells, but the header has 8"),
    "duplicate box": (ROW + ROW.replace("Phòng họp 1", "Khác"), 3, None,
                      "c00001-r1 (commune c00001, room 1) is already on line 2"),
    "commune renamed": (ROW + ROW.replace(",1,Phòng", ",2,Phòng").replace("Phúc Xá", "Phuc Xa"),
                        3, 6, "commune c00001 is called 'Phường Phúc Xá' on line 2"),
    "commune moved": (ROW + ROW.replace(",1,Phòng", ",2,Phòng").replace(",001,", ",002,"),
                      3, 3, "commune c00001 is in district 'd001' on line 2, here 'd002'"),
    "open quote": (ROW + '01,"Hà Nội,001\n', 3, None, "not valid CSV"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_row_is_named_by_line_and_column_and_nothing_is_written(ca_dir: Path,
                                                                     name: str) -> None:
    rows, line, column, message = BAD[name]
    with pytest.raises(SitesError) as caught:
        import_sites(ca_dir, HEADER + rows, "sites.csv", service=SERVICE)
    problem = caught.value.problems[0]
    assert (problem.line, problem.column) == (line, column), caught.value.report()
    assert message in problem.message
    assert "nothing was imported" in caught.value.report()
    assert nothing_written(ca_dir)


def test_every_problem_is_reported_at_once_in_file_order(ca_dir: Path) -> None:
    text = HEADER + ROW.replace(",00001,", ",x,") + ROW.replace(",1,Phòng", ",2,Phòng") + \
        ROW.replace(",1,Phòng", ",200,Phòng").replace("Thành phố Hà Nội", "")
    with pytest.raises(SitesError) as caught:
        import_sites(ca_dir, text, "sites.csv", service=SERVICE)
    report = caught.value.report()
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, 5), (4, 2), (4, 7)]
    assert "sites.csv, line 4, column 7 (room): '200' is not a room number" in report
    assert nothing_written(ca_dir)


def test_a_quoted_line_break_keeps_line_numbers_true(ca_dir: Path) -> None:
    text = HEADER + ROW.replace("Phòng họp 1", '"Phòng\nhọp 1"') + \
        ROW.replace(",1,Phòng", ",x,Phòng")
    with pytest.raises(SitesError) as caught:
        parse_sites(text)
    # A line break is no part of a name; the next row is the file's line 4 (the sheet's row 3).
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, 8), (4, 7)]


@pytest.mark.parametrize("header, message", [
    (HEADER.replace("commune_code", "comune_code"), "unknown column (did you mean 'commune_code"),
    (HEADER.replace(",room,", ",room,room,"), "column given twice"),
    ("", "the file is empty"),
])
def test_a_bad_header_is_named(header: str, message: str) -> None:
    with pytest.raises(SitesError) as caught:
        parse_sites(header)
    assert message in caught.value.report()
    assert all(p.line == 1 for p in caught.value.problems)


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from(list(',;"\n\r 0123456789aáp\x00\ufeff')), max_size=200))
def test_any_text_gives_rows_or_named_problems(text: str) -> None:
    try:
        parse_sites(HEADER + text)
    except SitesError as exc:
        assert exc.problems and all(p.line >= 1 for p in exc.problems)


def test_no_ca_or_no_service_writes_nothing(tmp_path: Path, ca_dir: Path) -> None:
    with pytest.raises(CaError, match="ca init"):
        import_sites(tmp_path / "empty", SITES, "sites.csv", service=SERVICE)
    with pytest.raises(ValueError, match="--service"):
        import_sites(ca_dir, SITES, "sites.csv")
    with pytest.raises(ValueError, match="--service"):
        import_sites(ca_dir, SITES, "sites.csv", service="http://plain.example.vn")
    assert nothing_written(ca_dir)


def test_a_failed_commit_leaves_no_enrollment_files(ca_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: FleetStore, manifest: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FleetStore, "save", fail)
    with pytest.raises(OSError, match="No space"):
        import_sites(ca_dir, SITES, "sites.csv", service=SERVICE)
    assert not (ca_dir / MANIFEST_FILE).exists()
    assert list((ca_dir / ENROLLMENT_DIR).iterdir()) == []


# ---------------------------------------------------------------- importing again


def test_importing_again_keeps_known_boxes_and_their_tokens(ca_dir: Path) -> None:
    import_sites(ca_dir, SITES, "sites.csv", service=SERVICE)
    before = (ca_dir / MANIFEST_FILE).read_bytes()
    token = enrollment(ca_dir, "c00001-r1")["token"]
    more = SITES + ROW.replace(",1,Phòng", ",3,Phòng")
    result = import_sites(ca_dir, more, "sites.csv")  # the service is remembered
    assert [d.id for d in result.added] == ["c00001-r3"]
    assert len(result.unchanged) == 4
    assert enrollment(ca_dir, "c00001-r1")["token"] == token
    assert before != (ca_dir / MANIFEST_FILE).read_bytes()


def test_a_row_that_contradicts_the_manifest_is_refused(ca_dir: Path) -> None:
    import_sites(ca_dir, SITES, "sites.csv", service=SERVICE)
    before = (ca_dir / MANIFEST_FILE).read_bytes()
    files = {p.name: p.read_bytes() for p in (ca_dir / ENROLLMENT_DIR).iterdir()}
    changed = HEADER + ROW.replace(",1,Phòng", ",5,Phòng").replace("Phúc Xá", "Phúc Xá Mới") + \
        "01,Thành phố Hà Nội,001,Quận Ba Đình,00004,Phường Trúc Bạch,1,Phòng khác\n"
    with pytest.raises(SitesError) as caught:
        import_sites(ca_dir, changed, "new.csv")
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, 6), (3, 8)]
    assert "in the manifest" in caught.value.problems[0].message
    assert (ca_dir / MANIFEST_FILE).read_bytes() == before
    assert {p.name: p.read_bytes() for p in (ca_dir / ENROLLMENT_DIR).iterdir()} == files


# ---------------------------------------------------------------- tokens


@pytest.fixture
def imported(ca_dir: Path) -> Path:
    import_sites(ca_dir, SITES, "sites.csv", service=SERVICE)
    return ca_dir


def test_a_token_works_once(imported: Path) -> None:
    token = enrollment(imported, "c00001-r1")["token"]
    store = FleetStore(imported)
    with store.transaction() as manifest:
        record = redeem_token(manifest, "c00001-r1", token, time.time(), certificate="abc1")
    assert record.used_at is not None
    manifest = store.load()  # what was written
    assert manifest.tokens[token_hash(token)].certificate == "abc1"
    with pytest.raises(TokenRefused) as caught:
        check_token(manifest, "c00001-r1", token, time.time())
    assert caught.value.reason == "used" and "already used on" in str(caught.value)


def test_refusals_say_why(imported: Path) -> None:
    manifest = FleetStore(imported).load()
    token = enrollment(imported, "c00001-r1")["token"]
    cases = [
        ("c00001-r2", token, time.time(), "other_device", "for box c00001-r1, not c00001-r2"),
        ("c00001-r1", token, time.time() + 31 * 86400, "expired", "expired on"),
        ("c00001-r1", token + "x", time.time(), "unknown", "unknown enrollment token"),
        ("c00001-r1", "", time.time(), "unknown", "unknown enrollment token"),
    ]
    for device, presented, now, reason, message in cases:
        with pytest.raises(TokenRefused) as caught:
            check_token(manifest, device, presented, now)
        assert (caught.value.reason, message in str(caught.value)) == (reason, True)
    # None of that burnt it.
    check_token(manifest, "c00001-r1", token, time.time())


def test_a_new_token_replaces_the_old_one(imported: Path) -> None:
    old = enrollment(imported, "c00001-r1")["token"]
    other = enrollment(imported, "c00004-r1")["token"]
    result = reissue_tokens(imported, ["c00001-r1"], token_days=7)
    new = enrollment(imported, "c00001-r1")["token"]
    assert new != old and result.files["c00001-r1"].name == "c00001-r1.toml"
    manifest = FleetStore(imported).load()
    with pytest.raises(TokenRefused) as caught:
        check_token(manifest, "c00001-r1", old, time.time())
    assert caught.value.reason == "replaced"
    check_token(manifest, "c00001-r1", new, time.time())
    check_token(manifest, "c00004-r1", other, time.time())  # the others are untouched
    with pytest.raises(ManifestError, match="c09999-r1"):
        reissue_tokens(imported, ["c09999-r1"])


def test_two_services_racing_for_one_token_let_one_through(imported: Path) -> None:
    token = enrollment(imported, "c00001-r1")["token"]
    results: list[str] = []
    start = threading.Barrier(4)

    def enroll() -> None:
        start.wait()
        try:
            with FleetStore(imported).transaction() as manifest:
                redeem_token(manifest, "c00001-r1", token, time.time())
            results.append("ok")
        except TokenRefused as exc:
            results.append(exc.reason)

    threads = [threading.Thread(target=enroll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "used", "used", "used"]
