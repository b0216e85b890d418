"""Printable labels: which box this is, and which enrollment file is meant for it.

A label is stuck on the outside of the box, where anyone can read it, so it
never carries the token. It names the box (device id, commune, room, district,
province) and the enrollment file by its *file id*: the first 8 hex digits of
the token's SHA-256, which the centre keeps anyway and which tell nothing about
the token. The same id is printed at the top of the enrollment file, so a
technician can check that the card and the box belong together, and the centre
can tell which token a box was sent.

Per box, ``<device>.svg`` is the label to print (90 x 50 mm: the QR code and
the same facts as text) and ``<device>.png`` the QR code alone, for a label
printer's own software. The QR code holds ASCII JSON::

    {"box":"c00001-r1","commune":"c00001","district":"d001","expires":"2025-07-01",
     "file":"3f2a9c0d","province":"p01","room":1,"v":1}

    paths = write_labels(Path("/srv/centre"), ["c00001-r1"], Path("/srv/centre/labels"))
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import segno

from .files import write_atomic
from .manifest import Device, FleetStore, Manifest, ManifestError, TokenRecord, file_id

LABELS_DIR = "labels"
# Medium error correction: a label that gets scratched still reads.
QR_ERROR = "m"


@dataclass(frozen=True, slots=True)
class Label:
    device: Device
    file_id: str | None  # None: the box never had a token
    expires_at: float | None

    def payload(self) -> str:
        """What the QR code says: ASCII JSON, short enough for a small code."""
        site = self.device.site
        data: dict[str, object] = {
            "v": 1, "box": self.device.id, "province": site.province.code,
            "district": site.district.code, "commune": site.commune.code, "room": site.room,
        }
        if self.file_id is not None and self.expires_at is not None:
            data["file"] = self.file_id
            data["expires"] = _date(self.expires_at)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def lines(self) -> list[str]:
        """The label's text, top to bottom."""
        site = self.device.site
        enrollment = (f"enrollment file {self.file_id}, until {_date(self.expires_at)}"
                      if self.file_id is not None and self.expires_at is not None
                      else "no enrollment file yet")
        return [self.device.id, site.commune.name, site.room_name or f"room {site.room}",
                f"{site.district.name}, {site.province.name}", enrollment]


def _date(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _latest(manifest: Manifest, device_id: str) -> tuple[str, TokenRecord] | None:
    mine = [(digest, t) for digest, t in manifest.tokens.items() if t.device == device_id]
    return max(mine, key=lambda item: item[1].issued_at) if mine else None


def labels_for(manifest: Manifest, device_ids: Sequence[str]) -> list[Label]:
    """Labels for ``device_ids`` (every box if empty); ManifestError names an unknown one."""
    unknown = [d for d in device_ids if d not in manifest.devices]
    if unknown:
        raise ManifestError(f"not in the manifest: {', '.join(sorted(unknown))[:200]} "
                            "(`diemcau-centre fleet list` shows the boxes); nothing was written")
    ids = list(device_ids) or sorted(manifest.devices)
    labels = []
    for dev in ids:
        latest = _latest(manifest, dev)
        labels.append(Label(manifest.devices[dev], file_id(latest[0]) if latest else None,
                            latest[1].expires_at if latest else None))
    return labels


def qr_code(label: Label) -> segno.QRCode:
    return segno.make_qr(label.payload(), error=QR_ERROR)


def label_svg(label: Label) -> str:
    """A 90 x 50 mm label: the QR code on the left, the facts on the right."""
    qr = qr_code(label)
    # The code as a PNG drawn without smoothing: sharp at any print size, and what a
    # reader decodes is exactly the PNG the tests decode.
    png = qr.png_data_uri(scale=10, border=4)
    text = []
    for i, line in enumerate(label.lines()):
        size, weight = (5.5, "bold") if i == 0 else (3.4, "normal")
        y = 11 + (0 if i == 0 else 4 + 6 * i)
        # A long name is squeezed into the label's width rather than cut.
        fit = ' textLength="39" lengthAdjust="spacingAndGlyphs"' if len(line) * size * 0.55 > 39 \
            else ""
        text.append(f'  <text x="48" y="{y}" font-size="{size}" font-weight="{weight}"{fit}>'
                    f"{escape(line)}</text>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="90mm" height="50mm" '
        'viewBox="0 0 90 50" font-family="DejaVu Sans, Arial, sans-serif">\n'
        '  <rect x="0.5" y="0.5" width="89" height="49" rx="2" fill="white" stroke="black" '
        'stroke-width="0.3"/>\n'
        f'  <image x="3" y="5" width="42" height="42" href="{png}" '
        'style="image-rendering:pixelated" preserveAspectRatio="xMidYMid meet"/>\n'
        + "\n".join(text) + "\n</svg>\n")


def write_labels(directory: Path, device_ids: Sequence[str], out: Path) -> list[Path]:
    """``<device>.svg`` and ``<device>.png`` in ``out`` for each box; the paths written."""
    labels = labels_for(FleetStore(directory).load(), device_ids)
    written = []
    for label in labels:
        svg, png = out / f"{label.device.id}.svg", out / f"{label.device.id}.png"
        write_atomic(svg, label_svg(label).encode())
        write_atomic(png, _png_bytes(qr_code(label)))
        written += [svg, png]
    return written


def _png_bytes(qr: segno.QRCode) -> bytes:
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=10, border=4)
    return buffer.getvalue()
