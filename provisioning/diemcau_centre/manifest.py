"""The fleet manifest: which box stands where, and its one-time enrollment token.

The manifest (``fleet.json`` in the centre's directory) is the list of sites
from a spreadsheet, one box per meeting room, each with its device id
(:func:`~diemcau_centre.identity.device_id_for`: ``c00001-r1``) and its
groups (province, district, commune, ``all``). Beside each box, the centre
keeps only the SHA-256 of its enrollment token, never the token itself; the
token is written once, into the box's enrollment file.

    result = import_sites(Path("/srv/centre"), Path("sites.csv").read_text(), "sites.csv",
                          service="https://enroll.diemcau.gov.vn")
    # SitesError (every bad cell, by line and column) and nothing written, or:
    result.files   # enrollment/<device>.toml, one per new box

A token is checked (:func:`check_token`) and burnt (:func:`burn_token`) by
the enrollment service, under the manifest's lock.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import difflib
import hashlib
import io
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec
import tomli_w

from .ca import CA_CERT, CaError
from .files import locked, write_atomic
from .identity import MAX_ROOM, device_id_for

MANIFEST_FILE, LOCK_FILE, ENROLLMENT_DIR = "fleet.json", ".fleet.lock", "enrollment"
# The name the box looks for on its boot partition.
BOOT_FILE_NAME = "diemcau-enroll.toml"
ENROLLMENT_FORMAT = 1
TOKEN_PREFIX = "dce1_"  # recognisable by secret scanners and by people
TOKEN_DAYS = 30
MAX_TOKEN_DAYS = 365
MAX_NAME = 100

COLUMNS = ("province_code", "province_name", "district_code", "district_name",
           "commune_code", "commune_name", "room", "room_name")
REQUIRED = frozenset(COLUMNS[:7])
# Administrative level -> (group prefix, digits in the national code).
LEVELS = {"province": ("p", 2), "district": ("d", 3), "commune": ("c", 5)}
SERVICE_SCHEMES = ("https",)

TokenState = Literal["pending", "used", "expired", "replaced"]
RefusalReason = Literal["unknown", "other_device", "replaced", "used", "expired"]


# ---------------------------------------------------------------- records


class Place(msgspec.Struct, frozen=True):
    code: str  # with its prefix: p01, d001, c00001
    name: str


class SiteRecord(msgspec.Struct, frozen=True, kw_only=True):
    province: Place
    district: Place
    commune: Place
    room: int
    room_name: str = ""

    @property
    def groups(self) -> list[str]:
        """The box's groups, broadest first, as in its configuration."""
        return [self.province.code, self.district.code, self.commune.code, "all"]


class Device(msgspec.Struct, kw_only=True):
    id: str
    site: SiteRecord
    added_at: float


class TokenRecord(msgspec.Struct, kw_only=True):
    device: str
    issued_at: float
    expires_at: float
    used_at: float | None = None
    replaced_at: float | None = None
    certificate: str | None = None  # serial (hex) of the certificate it was exchanged for

    def state(self, now: float) -> TokenState:
        if self.used_at is not None:
            return "used"
        if self.replaced_at is not None:
            return "replaced"
        return "expired" if now >= self.expires_at else "pending"


class Manifest(msgspec.Struct, kw_only=True):
    format: int = 1
    service: str = ""  # the enrollment service's address, written into enrollment files
    devices: dict[str, Device] = msgspec.field(default_factory=dict)
    tokens: dict[str, TokenRecord] = msgspec.field(default_factory=dict)  # sha256 hex -> record

    def latest_token(self, device_id: str) -> TokenRecord | None:
        mine = [t for t in self.tokens.values() if t.device == device_id]
        return max(mine, key=lambda t: t.issued_at) if mine else None


# ---------------------------------------------------------------- problems


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    column: int | None  # 1-based, as a spreadsheet counts
    column_name: str | None
    message: str

    def text(self, source: str) -> str:
        where = f"{source}, line {self.line}"
        if self.column is not None:
            where += f", column {self.column} ({self.column_name})"
        return f"{where}: {self.message}"


class SitesError(Exception):
    """The sites file cannot be imported; ``problems`` names every bad line and cell."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source = source
        self.problems = problems

    def report(self) -> str:
        lines = [f"{self.source} has {len(self.problems)} problem(s); nothing was imported:"]
        lines += [f"  {p.text(self.source)}" for p in self.problems]
        return "\n".join(lines)


class ManifestError(Exception):
    """The manifest cannot be read or does not know what was asked for."""


# ---------------------------------------------------------------- the sites file


@dataclass(frozen=True, slots=True)
class SiteRow:
    line: int
    device_id: str
    site: SiteRecord
    columns: dict[str, int]  # column name -> 1-based index, to point at a cell


def _clean_text(value: str) -> str:
    return unicodedata.normalize("NFC", value.strip())


def _code(value: str, level: str) -> str:
    """``01``, ``1`` or ``p01`` -> ``p01``: spreadsheets drop leading zeros."""
    prefix, width = LEVELS[level]
    digits = value[1:] if value[:1].lower() == prefix else value
    if not (digits.isascii() and digits.isdigit() and 0 < len(digits) <= width):
        raise ValueError(f"{value!r} is not a {level} code: up to {width} digits, like "
                         f"{'0' * (width - 1)}1 (or {prefix}{'0' * (width - 1)}1)")
    return prefix + digits.zfill(width)


def _name(value: str, what: str, required: bool = True) -> str:
    if not value and required:
        raise ValueError(f"the {what} is empty")
    if len(value) > MAX_NAME:
        raise ValueError(f"the {what} is longer than {MAX_NAME} characters")
    if not value.isprintable():
        raise ValueError(f"the {what} has a control character")
    return value


def _room(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_ROOM):
        raise ValueError(f"{value!r} is not a room number: a whole number from 1 to {MAX_ROOM}")
    return int(value)


def _header(cells: list[str]) -> tuple[dict[str, int], list[Problem]]:
    columns: dict[str, int] = {}
    problems = []
    for index, raw in enumerate(cells, start=1):
        name = _clean_text(raw).lower().replace(" ", "_").replace("-", "_")
        if name not in COLUMNS:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(Problem(1, index, raw.strip(), f"unknown column{hint}"))
        elif name in columns:
            problems.append(Problem(1, index, name, f"column given twice (also column "
                                                     f"{columns[name]})"))
        else:
            columns[name] = index
    missing = [c for c in COLUMNS if c in REQUIRED and c not in columns]
    if missing:
        problems.append(Problem(1, None, None, f"missing column(s): {', '.join(missing)}; "
                                               f"the header needs {', '.join(COLUMNS[:7])} "
                                               "(and optionally room_name)"))
    return columns, problems


def _row(line: int, cells: list[str], columns: dict[str, int]
         ) -> tuple[SiteRow | None, list[Problem]]:
    problems: list[Problem] = []

    def cell(name: str, parse: Callable[[str], object]) -> object:
        index = columns.get(name)
        raw = _clean_text(cells[index - 1]) if index is not None else ""
        try:
            return parse(raw)
        except ValueError as exc:
            problems.append(Problem(line, index, name, str(exc)))
            return None

    values = {
        "province_code": cell("province_code", lambda v: _code(v, "province")),
        "district_code": cell("district_code", lambda v: _code(v, "district")),
        "commune_code": cell("commune_code", lambda v: _code(v, "commune")),
        "province_name": cell("province_name", lambda v: _name(v, "province name")),
        "district_name": cell("district_name", lambda v: _name(v, "district name")),
        "commune_name": cell("commune_name", lambda v: _name(v, "commune name")),
        "room": cell("room", _room),
        "room_name": cell("room_name", lambda v: _name(v, "room name", required=False)),
    }
    if problems:
        return None, problems
    site = SiteRecord(
        province=Place(str(values["province_code"]), str(values["province_name"])),
        district=Place(str(values["district_code"]), str(values["district_name"])),
        commune=Place(str(values["commune_code"]), str(values["commune_name"])),
        room=int(values["room"]),  # type: ignore[call-overload]
        room_name=str(values["room_name"] or ""),
    )
    return SiteRow(line, device_id_for(site.commune.code, site.room), site, columns), []


def parse_sites(text: str, source: str = "<sites>") -> list[SiteRow]:
    """The rows of a sites CSV (UTF-8, comma or semicolon); SitesError lists every problem.

    Blank lines and rows of empty cells are skipped. Line numbers are the
    file's own, so a spreadsheet's row numbers match.
    """
    text = text.removeprefix("\ufeff")  # Excel's "CSV UTF-8" starts with a BOM
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[SiteRow] = []
    problems: list[Problem] = []
    columns: dict[str, int] | None = None
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if columns is None:
                columns, header_problems = _header(cells)
                if header_problems:
                    raise SitesError(source, header_problems)
                width = len(cells)
                continue
            if len(cells) != width:
                problems.append(Problem(start, None, None,
                                        f"{len(cells)} cells, but the header has {width}"))
                continue
            row, row_problems = _row(start, cells, columns)
            problems += row_problems
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        problems.append(Problem(reader.line_num, None, None, f"not valid CSV: {exc}"))
    if columns is None and not problems:
        problems.append(Problem(1, None, None, "the file is empty: no header, no sites"))
    problems += _consistency(rows, Manifest())
    if problems:
        raise SitesError(source, sorted(problems, key=lambda p: (p.line, p.column or 0)))
    return rows


def _consistency(rows: list[SiteRow], manifest: Manifest) -> list[Problem]:
    """Every code must mean one place: the same names, the same parents, on every row.

    Checked between rows of the file and against the boxes already in the
    manifest; a box already there must not come back different.
    """
    problems: list[Problem] = []
    # code -> (what it must be, where that was said)
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    devices: dict[str, tuple[SiteRecord, str]] = {}
    for device in manifest.devices.values():
        _remember(seen, device.site, "in the manifest")
        devices[device.id] = (device.site, "in the manifest")

    for row in rows:
        site, here = row.site, f"on line {row.line}"
        before = devices.get(row.device_id)
        if before is not None and before[1] != "in the manifest":
            problems.append(Problem(row.line, None, None,
                                    f"box {row.device_id} (commune {site.commune.code}, room "
                                    f"{site.room}) is already {before[1]}"))
            continue
        if before is not None and before[0].room_name != site.room_name:
            problems.append(Problem(row.line, row.columns.get("room_name"), "room_name",
                                    f"box {row.device_id} is already in the manifest with room "
                                    f"name {before[0].room_name!r}, here {site.room_name!r}"))
        checks = [
            ("province", site.province.code, "name", site.province.name, "province_name"),
            ("district", site.district.code, "name", site.district.name, "district_name"),
            ("district", site.district.code, "province", site.province.code, "province_code"),
            ("commune", site.commune.code, "name", site.commune.name, "commune_name"),
            ("commune", site.commune.code, "district", site.district.code, "district_code"),
        ]
        for level, code, attribute, value, column in checks:
            known = seen.get((code, attribute))
            if known is not None and known[0] != value:
                what = "called" if attribute == "name" else f"in {attribute}"
                problems.append(Problem(
                    row.line, row.columns.get(column), column,
                    f"{level} {code} is {what} {known[0]!r} {known[1]}, here {value!r}"))
        _remember(seen, site, here)
        devices.setdefault(row.device_id, (site, here))
    return problems


def _remember(seen: dict[tuple[str, str], tuple[str, str]], site: SiteRecord, where: str) -> None:
    for key, value in (((site.province.code, "name"), site.province.name),
                       ((site.district.code, "name"), site.district.name),
                       ((site.district.code, "province"), site.province.code),
                       ((site.commune.code, "name"), site.commune.name),
                       ((site.commune.code, "district"), site.district.code)):
        seen.setdefault(key, (value, where))


# ---------------------------------------------------------------- tokens


class TokenRefused(Exception):
    """An enrollment token that cannot be used; ``reason`` for the box, message for people."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the centre keeps of a token. One SHA-256 is enough: the token has 256 random bits."""
    return hashlib.sha256(token.encode()).hexdigest()


def file_id(token_digest: str) -> str:
    """An enrollment file's public id: the first 8 hex digits of its token's SHA-256.

    It tells nothing about the token, so it may be printed on the box's label.
    """
    return token_digest[:8]


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def issue_token(manifest: Manifest, device_id: str, now: float, ttl_s: float) -> str:
    """A new token for ``device_id``; any earlier token it had that is unused stops working."""
    if device_id not in manifest.devices:
        raise ManifestError(f"no box {device_id!r} in the manifest")
    for record in manifest.tokens.values():
        if record.device == device_id and record.state(now) == "pending":
            record.replaced_at = now
    token = new_token()
    manifest.tokens[token_hash(token)] = TokenRecord(device=device_id, issued_at=now,
                                                     expires_at=now + ttl_s)
    return token


def check_token(manifest: Manifest, device_id: str, token: str, now: float) -> str:
    """The token's hash if ``token`` may enroll ``device_id`` now; else TokenRefused, saying why.

    Nothing changes: burn it with :func:`burn_token` once the certificate is signed.
    """
    digest = token_hash(token)
    record = manifest.tokens.get(digest)
    if record is None or record.device not in manifest.devices:
        raise TokenRefused("unknown", "unknown enrollment token (not from this centre, or "
                                      "mistyped)")
    if record.device != device_id:
        raise TokenRefused("other_device", f"this token is for box {record.device}, not "
                                           f"{device_id}")
    state = record.state(now)
    if state == "used":
        raise TokenRefused("used", f"this token was already used on {_when(record.used_at or 0)}")
    if state == "replaced":
        raise TokenRefused("replaced", "this token was replaced by a newer one on "
                                       f"{_when(record.replaced_at or 0)}")
    if state == "expired":
        raise TokenRefused("expired", f"this token expired on {_when(record.expires_at)}")
    return digest


def burn_token(manifest: Manifest, digest: str, now: float, certificate: str | None = None
               ) -> None:
    """Mark a checked token used, with the serial of the certificate it bought."""
    record = manifest.tokens[digest]
    if record.used_at is not None:
        raise TokenRefused("used", f"this token was already used on {_when(record.used_at)}")
    record.used_at = now
    record.certificate = certificate


def redeem_token(manifest: Manifest, device_id: str, token: str, now: float,
                 certificate: str | None = None) -> TokenRecord:
    """:func:`check_token`, then :func:`burn_token`: a token works once."""
    digest = check_token(manifest, device_id, token, now)
    burn_token(manifest, digest, now, certificate)
    return manifest.tokens[digest]


# ---------------------------------------------------------------- the store


class FleetStore:
    """The manifest on disk: read whole, changed under a lock, written atomically (mode 0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / MANIFEST_FILE
        self.lock_file = directory / LOCK_FILE

    def load(self) -> Manifest:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Manifest()
        except OSError as exc:
            raise ManifestError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            return msgspec.json.decode(data, type=Manifest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ManifestError(f"{self.path}: not a diemcau fleet manifest ({exc})") from None

    def save(self, manifest: Manifest) -> None:
        data = msgspec.json.format(msgspec.json.encode(manifest), indent=1) + b"\n"
        write_atomic(self.path, data, 0o600)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Manifest]:
        """The manifest, locked; written back if the block ends without an exception."""
        with locked(self.lock_file):
            manifest = self.load()
            yield manifest
            self.save(manifest)


# ---------------------------------------------------------------- enrollment files


def check_service(url: str) -> str:
    """The enrollment service's address: ``https://host[:port]``."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"--service {url!r}: {exc}") from None
    if parts.scheme not in SERVICE_SCHEMES or not parts.hostname or port == 0:
        raise ValueError(f"--service {url!r}: expected https://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"--service {url!r}: no user, query or fragment")
    return url


def enrollment_text(device: Device, token: str, expires_at: float, service: str,
                    ca_pem: str) -> str:
    """The box's enrollment file (TOML): who it is, its token, where to enroll, whom to trust."""
    site = device.site
    room = site.room_name or f"room {site.room}"
    doc = {
        "format": ENROLLMENT_FORMAT,
        "device_id": device.id,
        "token": token,
        "expires": dt.datetime.fromtimestamp(int(expires_at), dt.UTC),
        "service": service,
        "ca_pem": ca_pem,
        "site": {"name": site.commune.name, "province": site.province.code,
                 "district": site.district.code, "commune": site.commune.code, "room": room},
    }
    header = (
        f"# diemcau enrollment file for box {device.id}: {site.commune.name}, {room}\n"
        f"# ({site.district.name}, {site.province.name}).\n"
        f"# Copy it to the boot partition of this box's SD card as {BOOT_FILE_NAME}.\n"
        f"# It holds a one-time secret: it works once, for this box only, until "
        f"{_when(expires_at)}.\n"
        f"# File id {file_id(token_hash(token))} (the same as on the box's label).\n\n"
    )
    return header + tomli_w.dumps(doc, multiline_strings=True)


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: list[Device]
    unchanged: list[str]
    files: dict[str, Path] = field(default_factory=dict)  # device id -> enrollment file
    expires_at: float = 0.0


def _ca_pem(directory: Path) -> str:
    try:
        return (directory / CA_CERT).read_text()
    except FileNotFoundError:
        raise CaError(f"{directory / CA_CERT}: no such file (make the CA first: "
                      f"`diemcau-centre ca init --dir {directory}`)") from None


def _write_enrollment(directory: Path, manifest: Manifest, devices: Iterable[Device],
                      now: float, ttl_s: float, ca_pem: str) -> dict[str, Path]:
    """New tokens and their files; if a file cannot be written, those already written go."""
    files: dict[str, Path] = {}
    try:
        for device in devices:
            token = issue_token(manifest, device.id, now, ttl_s)
            path = directory / ENROLLMENT_DIR / f"{device.id}.toml"
            write_atomic(path, enrollment_text(device, token, now + ttl_s, manifest.service,
                                               ca_pem).encode(), 0o600)
            files[device.id] = path
    except BaseException:
        for path in files.values():
            path.unlink(missing_ok=True)
        raise
    return files


def import_sites(directory: Path, text: str, source: str, *, service: str | None = None,
                 token_days: float = TOKEN_DAYS, now: float | None = None) -> ImportResult:
    """Add the sites of a CSV to the manifest, with a token and an enrollment file per new box.

    All or nothing: any problem (a bad cell, a site that contradicts the
    manifest, no CA, no service address) raises before anything is written.
    Boxes already in the manifest, unchanged, keep their tokens.
    """
    now = time.time() if now is None else now
    if not 0 < token_days <= MAX_TOKEN_DAYS:
        raise ValueError(f"--token-days: from 1 to {MAX_TOKEN_DAYS}")
    if service is not None:
        check_service(service)
    rows = parse_sites(text, source)
    ca_pem = _ca_pem(directory)
    store = FleetStore(directory)
    with locked(store.lock_file):
        manifest = store.load()
        problems = _consistency(rows, manifest)
        if problems:
            raise SitesError(source, problems)
        service = service or manifest.service
        if not service:
            raise ValueError("--service: give the enrollment service's address "
                             "(https://host[:port]) on the first import")
        manifest.service = service
        added = [Device(id=r.device_id, site=r.site, added_at=now) for r in rows
                 if r.device_id not in manifest.devices]
        unchanged = [r.device_id for r in rows if r.device_id in manifest.devices]
        for device in added:
            manifest.devices[device.id] = device
        files = _write_enrollment(directory, manifest, added, now, token_days * 86400, ca_pem)
        try:
            store.save(manifest)  # the commit: until here the manifest is as it was
        except BaseException:
            for path in files.values():
                path.unlink(missing_ok=True)
            raise
    return ImportResult(added, unchanged, files, now + token_days * 86400)


def reissue_tokens(directory: Path, device_ids: list[str], *, token_days: float = TOKEN_DAYS,
                   now: float | None = None) -> ImportResult:
    """New tokens (and enrollment files) for boxes already in the manifest; old ones stop working."""
    now = time.time() if now is None else now
    if not 0 < token_days <= MAX_TOKEN_DAYS:
        raise ValueError(f"--token-days: from 1 to {MAX_TOKEN_DAYS}")
    ca_pem = _ca_pem(directory)
    store = FleetStore(directory)
    with locked(store.lock_file):
        manifest = store.load()
        unknown = [d for d in device_ids if d not in manifest.devices]
        if unknown:
            raise ManifestError(f"not in the manifest: {', '.join(unknown)}")
        devices = [manifest.devices[d] for d in dict.fromkeys(device_ids)]
        files = _write_enrollment(directory, manifest, devices, now, token_days * 86400, ca_pem)
        try:
            store.save(manifest)
        except BaseException:
            for path in files.values():
                path.unlink(missing_ok=True)
            raise
    return ImportResult(devices, [], files, now + token_days * 86400)
