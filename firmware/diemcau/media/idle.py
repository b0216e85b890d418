"""The TV's idle screen, drawn with Pillow: what the room sees when no meeting is on.

The supervisor builds what the screen says (``core.idlescreen.idle_screen``)
and sends it to the screen child, which decodes it back into the core's
``IdleScreen``, draws it with :func:`render` and shows the picture through
its player. It draws again only when the view changes or at
:func:`next_change` (the next minute, for the clock; the opening of a join
window): the view is a frozen dataclass, equal views draw the same picture.

    >>> from datetime import datetime
    >>> view = IdleScreen(site_name="UBND xã Tân Lập", room="Phòng họp tầng 2",
    ...                   place="p01 · d001 · c00001", device_id="c00001-r1",
    ...                   connection="online", state="idle")
    >>> next_change(view, datetime(2026, 12, 5, 9, 41, 30, tzinfo=VIETNAM_TIME)).isoformat()
    '2026-12-05T09:42:00+07:00'
    >>> render(view, datetime(2026, 12, 5, 9, 41, 30, tzinfo=VIETNAM_TIME), (1280, 720)).size
    (1280, 720)

Pillow is imported here only, and only when drawing. Text is DejaVu Sans (Debian's
``fonts-dejavu-core``), which has every letter of Vietnamese.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING

from ..core.idlescreen import IdleScreen
from .defs import MediaFault

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

# Vietnam keeps one offset all year (no summer time); the box's own clock runs in UTC.
VIETNAM_TIME = timezone(timedelta(hours=7), "ICT")

FONT_FILES = {False: "DejaVuSans.ttf", True: "DejaVuSans-Bold.ttf"}
# Debian's place first; Pillow then looks under the XDG data directories' fonts/.
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)

WEEKDAYS = ("Thứ Hai", "Thứ Ba", "Thứ Tư", "Thứ Năm", "Thứ Sáu", "Thứ Bảy", "Chủ Nhật")
CONNECTION_WORDS: dict[str, str] = {
    "online": "Đã kết nối trung tâm",
    "connecting": "Đang kết nối…",
    "offline": "Mất kết nối mạng",
}
STATE_WORDS: dict[str, str] = {
    "idle": "Chưa có cuộc họp",
    "invited": "Có lời mời họp",
    "joining": "Đang vào cuộc họp…",
    "live": "Đang họp",
    "leaving": "Đang rời cuộc họp…",
    "error": "Có lỗi, báo kỹ thuật viên",
}
PROMPT = "Nhấn nút để tham gia"

BACKGROUND = (16, 42, 67)
TEXT = (255, 255, 255)
SOFT = (188, 204, 220)
AMBER = (240, 180, 41)
PROMPT_BACK = (255, 212, 59)
CONNECTION_COLOURS = {"online": (62, 189, 147), "connecting": AMBER, "offline": (239, 78, 78)}


# ---------------------------------------------------------------- when to draw


def next_change(view: IdleScreen, now: datetime) -> datetime:
    """When the picture of ``view`` next changes by itself: the next minute, or sooner the
    opening of the join window (the prompt appears then)."""
    _aware(now)
    minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if view.join_opens_at is not None:
        opens = datetime.fromtimestamp(view.join_opens_at, now.tzinfo)
        if now < opens < minute:
            return opens
    return minute


def redraw_needed(shown: IdleScreen | None, shown_at: datetime | None, view: IdleScreen,
                  now: datetime) -> bool:
    """Whether the screen showing ``shown`` (drawn at ``shown_at``) must be drawn again."""
    if shown is None or shown_at is None or shown != view:
        return True
    return now >= next_change(shown, shown_at)


# ---------------------------------------------------------------- words


def clock_text(now: datetime) -> str:
    return f"{_local(now):%H:%M}"


def date_text(now: datetime) -> str:
    """``Thứ Bảy, 05/12/2026``."""
    local = _local(now)
    return f"{WEEKDAYS[local.weekday()]}, {local:%d/%m/%Y}"


def when_text(at: float, now: datetime) -> str:
    """A time of the meeting, said from today: ``14:00 hôm nay``, ``14:00 ngày mai``,
    ``14:00 Thứ Hai, 07/12/2026``."""
    local, today = datetime.fromtimestamp(at, VIETNAM_TIME), _local(now).date()
    days = (local.date() - today).days
    if days == 0:
        return f"{local:%H:%M} hôm nay"
    if days == 1:
        return f"{local:%H:%M} ngày mai"
    return f"{local:%H:%M} {date_text(local)}"


def clean(text: str) -> str:
    """Text as it can be drawn on one line: composed (NFC, so Vietnamese letters are
    DejaVu's own glyphs), no control characters, no tower of combining marks."""
    out: list[str] = []
    marks = 0
    for ch in unicodedata.normalize("NFC", text):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp") or ch == "\t":
            ch, category = " ", "Zs"
        marks = marks + 1 if category in ("Mn", "Me") else 0
        if marks <= 2:
            out.append(ch)
    return " ".join("".join(out).split())


# ---------------------------------------------------------------- fonts


@lru_cache(maxsize=2)
def font_path(bold: bool = False) -> str:
    """The DejaVu Sans file; :class:`MediaFault` if it is not installed."""
    from PIL import ImageFont

    name = FONT_FILES[bold]
    for candidate in (*(f"{d}/{name}" for d in FONT_DIRS), name):
        try:
            return str(ImageFont.truetype(candidate, 10).path)
        except OSError:
            continue
    raise MediaFault(f"the idle screen's font {name} is not installed "
                     "(Debian's package fonts-dejavu-core)")


@lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    from PIL import ImageFont

    return ImageFont.truetype(font_path(bold), size)


# ---------------------------------------------------------------- drawing

Box = tuple[int, int, int, int]


@dataclass
class Drawn:
    """A picture, and where each of its parts went (left, top, right, bottom)."""

    image: Image.Image
    boxes: dict[str, Box] = field(default_factory=dict)


def render(view: IdleScreen, now: datetime, size: tuple[int, int] = (1920, 1080)) -> Image.Image:
    """The idle screen of ``view`` at ``now`` (an aware time), ``size`` pixels."""
    return draw(view, now, size).image


def draw(view: IdleScreen, now: datetime, size: tuple[int, int] = (1920, 1080)) -> Drawn:
    """:func:`render`, also saying where each part went (the tests check the layout)."""
    from PIL import Image, ImageDraw

    _aware(now)
    width, height = size
    if width < 320 or height < 180:
        raise ValueError(f"the idle screen needs at least 320x180 pixels, not {width}x{height}")
    image = Image.new("RGB", size, BACKGROUND)
    canvas = _Canvas(ImageDraw.Draw(image), Drawn(image), height / 1080)
    s = canvas.scale
    margin = round(60 * s)
    right = width - margin

    # The clock, top right: the largest thing on the screen after the prompt.
    clock = canvas.line("clock", clock_text(now), font(round(170 * s), True),
                        right, margin, TEXT, anchor="ra")
    canvas.line("date", date_text(now), font(round(48 * s)), right, clock[3] + round(20 * s),
                SOFT, anchor="ra")
    header_right = min(clock[0], canvas.boxes["date"][0]) - round(60 * s)

    # The site and the room, top left, shrunk or wrapped to leave the clock alone.
    site = canvas.block("site", view.site_name, (margin, margin, header_right, margin + round(200 * s)),
                        size=round(84 * s), min_size=round(44 * s), lines=2, bold=True, fill=TEXT)
    header_bottom = max(site[3], canvas.boxes["date"][3])
    if clean(view.room):
        room = canvas.block("room", view.room, (margin, site[3] + round(16 * s), header_right,
                                                site[3] + round(90 * s)),
                            size=round(56 * s), min_size=round(36 * s), lines=1, fill=SOFT)
        header_bottom = max(header_bottom, room[3])
    rule_y = header_bottom + round(28 * s)
    canvas.draw.line((margin, rule_y, right, rule_y), fill=SOFT, width=max(1, round(3 * s)))

    # The technician's corner, bottom right: the device id as a QR code and in letters.
    qr_side = round(250 * s)
    place_box = canvas.block("place", view.place, (right - round(420 * s), height - margin - round(40 * s),
                                                   right, height - margin),
                             size=round(30 * s), min_size=round(20 * s), lines=1, fill=SOFT,
                             align="right")
    id_box = canvas.block("device_id", view.device_id,
                          (right - round(420 * s), place_box[1] - round(58 * s), right,
                           place_box[1] - round(8 * s)),
                          size=round(42 * s), min_size=round(24 * s), lines=1, bold=True, fill=TEXT,
                          align="right")
    canvas.qr(view.device_id, right - qr_side, id_box[1] - round(16 * s) - qr_side, qr_side)
    corner_left = min(canvas.boxes["qr"][0], id_box[0], place_box[0])

    # The connection, bottom left.
    dot = round(30 * s)
    conn_font = font(round(52 * s), True)
    conn_y = height - margin - round(60 * s)
    canvas.draw.ellipse((margin, conn_y + round(12 * s), margin + dot, conn_y + round(12 * s) + dot),
                        fill=CONNECTION_COLOURS[view.connection])
    canvas.boxes["connection_dot"] = (margin, conn_y + round(12 * s), margin + dot,
                                      conn_y + round(12 * s) + dot)
    canvas.line("connection", CONNECTION_WORDS[view.connection], conn_font,
                margin + dot + round(24 * s), conn_y, TEXT)

    # The middle: the invitation and the prompt, or what the room is doing.
    middle = (margin, rule_y + round(32 * s), corner_left - round(60 * s), conn_y - round(40 * s))
    if view.state == "invited" and (view.meeting_id or view.meeting_title):
        _invitation(canvas, view, now, middle)
    else:
        canvas.block("state", STATE_WORDS[view.state], middle, size=round(84 * s),
                     min_size=round(40 * s), lines=2, bold=True, fill=TEXT)
    return canvas.drawn


def _invitation(canvas: _Canvas, view: IdleScreen, now: datetime, area: Box) -> None:
    """The invitation's title and start, and under them what a press does: the prompt
    keeps its size and place, the title shrinks to leave it room."""
    s = canvas.scale
    left, top, right, bottom = area
    opens = view.join_opens_at
    if view.invited and (opens is None or now.timestamp() >= opens):
        words, back, ink, size = PROMPT, PROMPT_BACK, BACKGROUND, round(84 * s)
    elif view.invited and opens is not None:
        words, back, ink, size = (f"{PROMPT} từ {when_text(opens, now)}", None, AMBER,
                                  round(56 * s))
    else:  # a press has nothing to join with and the centre cannot be asked
        words, back, ink, size = "Chờ kết nối lại để tham gia", None, AMBER, round(56 * s)
    pad = round(22 * s) if back else 0
    below = round(60 * s) if view.joins_itself else 0
    prompt_top = bottom - below - _line_height(font(size, True)) - 2 * pad

    heading = canvas.line("heading", "Lời mời họp", font(round(44 * s), True), left, top, AMBER)
    starts_face = font(round(46 * s))
    starts_room = _line_height(starts_face) + round(16 * s) if view.starts_at is not None else 0
    y = heading[3] + round(16 * s)
    title = canvas.block("title", view.meeting_title or view.meeting_id,
                         (left, y, right, prompt_top - round(24 * s) - starts_room),
                         size=round(72 * s), min_size=round(44 * s), lines=2, bold=True, fill=TEXT)
    y = title[3] + round(16 * s)
    if view.starts_at is not None:
        y = canvas.line("starts", f"Bắt đầu lúc {when_text(view.starts_at, now)}", starts_face,
                        left, y, SOFT)[3]
    y = min(y + round(28 * s), prompt_top)
    box = canvas.block("prompt", words, (left + pad, y + pad, right - pad, bottom - below - pad),
                       size=size, min_size=round(36 * s), lines=1, bold=True, fill=ink,
                       background=back, pad=pad)
    if view.joins_itself:
        at = f" lúc {when_text(view.starts_at, now)}" if view.starts_at is not None else ""
        canvas.line("joins_itself", f"Thiết bị sẽ tự vào họp{at}", font(round(40 * s)), left,
                    box[3] + round(16 * s), SOFT)


class _Canvas:
    def __init__(self, draw: ImageDraw.ImageDraw, drawn: Drawn, scale: float) -> None:
        self.draw, self.drawn, self.scale = draw, drawn, scale
        self.boxes = drawn.boxes

    def line(self, name: str, text: str, face: ImageFont.FreeTypeFont, x: int, y: int,
             fill: tuple[int, int, int], anchor: str = "la") -> Box:
        """One line of text whose top (``anchor`` ``la``) or top right (``ra``) is at x, y."""
        text = clean(text)
        self.draw.text((x, y), text, font=face, fill=fill, anchor=anchor)
        box = _int_box(self.draw.textbbox((x, y), text, font=face, anchor=anchor))
        self.boxes[name] = box
        return box

    def block(self, name: str, text: str, area: Box, *, size: int, min_size: int, lines: int,
              fill: tuple[int, int, int], bold: bool = False, align: str = "left",
              background: tuple[int, int, int] | None = None, pad: int = 0) -> Box:
        """``text`` inside ``area``: the largest size from ``size`` down to ``min_size`` at
        which it wraps into ``lines`` lines; cut short with "…" if even that is too long."""
        left, top, right, bottom = area
        width, height = right - left, bottom - top
        text = clean(text)
        face, wrapped = _fit(text, size, min_size, width, height, lines, bold)
        step = _line_height(face)
        out: list[Box] = []
        boxes = []
        for i, line in enumerate(wrapped):
            x = right if align == "right" else left
            anchor = "ra" if align == "right" else "la"
            boxes.append((line, (x, top + i * step), anchor))
            out.append(_int_box(self.draw.textbbox((x, top + i * step), line, font=face,
                                                   anchor=anchor)))
        box = _union(out) if out else (left, top, left, top)
        if background is not None:
            back = (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
            self.draw.rounded_rectangle(back, radius=pad, fill=background)
            box = back
        for line, xy, anchor in boxes:
            self.draw.text(xy, line, font=face, fill=fill, anchor=anchor)
        self.boxes[name] = box
        return box

    def qr(self, data: str, x: int, y: int, side: int) -> None:
        """``data`` as a QR code in a white square (with its quiet zone) ``side`` wide at x, y."""
        import segno
        from PIL import Image

        qr = segno.make_qr(data, error="m")
        rows = [bytes(255 if dark else 0 for dark in row) for row in qr.matrix_iter(border=4)]
        modules = len(rows)
        cell = max(1, side // modules)
        code = Image.frombytes("L", (modules, modules), b"".join(rows))
        code = code.point(lambda v: 255 - v).resize((modules * cell,) * 2, Image.Resampling.NEAREST)
        offset = (side - modules * cell) // 2
        self.draw.rectangle((x, y, x + side - 1, y + side - 1), fill=(255, 255, 255))
        self.drawn.image.paste(code.convert("RGB"), (x + offset, y + offset))
        self.boxes["qr"] = (x, y, x + side, y + side)


def _fit(text: str, size: int, min_size: int, width: int, height: int, lines: int,
         bold: bool) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    size = max(size, min_size)
    while True:
        face = font(size, bold)
        wrapped = _wrap(text, face, width)
        fits = len(wrapped) <= lines and _line_height(face) * len(wrapped) <= max(height, 1)
        if fits or size <= min_size:
            break
        size = max(min_size, int(size * 0.9))
    rows = max(1, min(lines, max(height, 1) // _line_height(face)))
    if len(wrapped) > rows:
        wrapped = [*wrapped[:rows - 1], _ellipsis(" ".join(wrapped[rows - 1:]), face, width)]
    return face, wrapped


def _wrap(text: str, face: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy wrapping at spaces; a word longer than the line is broken between letters."""
    out: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if face.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            out.append(line)
        line = ""
        for ch in word:
            if line and face.getlength(line + ch) > width:
                out.append(line)
                line = ""
            line += ch
    if line:
        out.append(line)
    return out


def _ellipsis(text: str, face: ImageFont.FreeTypeFont, width: int) -> str:
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _line_height(face: ImageFont.FreeTypeFont) -> int:
    # Room above for Vietnamese capitals' stacked marks (Ấ, Ổ), which reach above the ascent.
    ascent, descent = face.getmetrics()
    return round((ascent + descent) * 1.1)


def _int_box(box: tuple[float, float, float, float]) -> Box:
    left, top, right, bottom = box
    return int(left), int(top), int(right + 0.999), int(bottom + 0.999)


def _union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def _local(now: datetime) -> datetime:
    return _aware(now).astimezone(VIETNAM_TIME)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("the idle screen needs an aware time (with its time zone), "
                         f"not {now.isoformat()}")
    return now
