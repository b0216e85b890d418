"""The TV's idle screen: drawn with Pillow and DejaVu, its QR code read back with zbarimg."""

from __future__ import annotations

import dataclasses
import subprocess
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diemcau.core.idlescreen import IdleScreen
from diemcau.media import idle
from diemcau.media.defs import MediaFault
from diemcau.media.idle import (
    PROMPT_BACK,
    VIETNAM_TIME,
    clean,
    date_text,
    draw,
    font,
    next_change,
    redraw_needed,
    render,
    when_text,
)
from tests.core.test_purity import modules_after_import

NOW = datetime(2026, 12, 5, 9, 41, 30, tzinfo=VIETNAM_TIME)
STARTS = datetime(2026, 12, 5, 14, 0, tzinfo=VIETNAM_TIME).timestamp()
SIZES = [(1920, 1080), (1280, 720)]
BASE = IdleScreen(site_name="UBND xã Tân Lập", room="Phòng họp tầng 2",
                  place="p01 · d001 · c00001", device_id="c00001-r1", connection="online", state="idle")
INVITED = dataclasses.replace(
    BASE, state="invited", meeting_id="giao-ban-2026-11",
    meeting_title="Giao ban trực tuyến tháng 11: kinh tế - xã hội, quốc phòng - an ninh",
    starts_at=STARTS, invited=True)
STATES = {
    "idle": BASE,
    "connecting": dataclasses.replace(BASE, connection="connecting"),
    "offline": dataclasses.replace(BASE, connection="offline"),
    "invited": INVITED,
    "invited_mandatory": dataclasses.replace(INVITED, joins_itself=True),
    "invited_too_early": dataclasses.replace(INVITED, join_opens_at=STARTS - 900),
    "invited_no_way_to_join": dataclasses.replace(INVITED, connection="offline",
                                                      invited=False),
    "joining": dataclasses.replace(BASE, state="joining"),
    "leaving": dataclasses.replace(BASE, state="leaving"),
    "error": dataclasses.replace(BASE, state="error"),
}


def qr_text(png: Path) -> str:
    done = subprocess.run(["zbarimg", "--raw", "-q", str(png)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def inside(box: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    left, top, right, bottom = box
    return 0 <= left <= right <= size[0] and 0 <= top <= bottom <= size[1]


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}p")
@pytest.mark.parametrize("name", list(STATES))
def test_each_state_draws_and_its_qr_code_reads_back_as_the_device_id(
        name: str, size: tuple[int, int], tmp_path: Path) -> None:
    drawn = draw(STATES[name], NOW, size)
    png = tmp_path / f"{name}.png"
    drawn.image.save(png)
    assert drawn.image.size == size
    assert qr_text(png) == "c00001-r1"
    assert all(inside(box, size) for box in drawn.boxes.values()), drawn.boxes
    # Nothing drawn over anything else (the QR corner, the clock, the texts).
    names = sorted(drawn.boxes)
    clashes = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
               if overlap(drawn.boxes[a], drawn.boxes[b])]
    assert not clashes, (clashes, drawn.boxes)


def test_the_qr_code_holds_a_long_device_id(tmp_path: Path) -> None:
    device = "c99999-phong-hop-lon-tang-3_" + "x" * 35  # 64 characters, the most allowed
    render(dataclasses.replace(BASE, device_id=device), NOW, (1280, 720)).save(
        tmp_path / "long.png")
    assert qr_text(tmp_path / "long.png") == device


def test_the_text_is_dejavu_sans() -> None:
    assert Path(idle.font_path(False)).name == "DejaVuSans.ttf"
    assert Path(idle.font_path(True)).name == "DejaVuSans-Bold.ttf"


@pytest.mark.parametrize("bold", [False, True])
@pytest.mark.parametrize("letter", ["ộ", "ữ", "Ấ", "ẵ", "Ự", "đ", "Đ"])
def test_vietnamese_letters_are_real_glyphs_not_the_missing_glyph_box(letter: str,
                                                                     bold: bool) -> None:
    face = font(80, bold)
    missing = face.getmask("\ue000")  # a private-use code point: DejaVu has no glyph for it
    mask = face.getmask(letter)
    assert (mask.size, bytes(mask)) != (missing.size, bytes(missing))
    # And the marks are there: the letter is not drawn as its bare base letter.
    bare = {"đ": "d", "Đ": "D"}.get(letter, unicodedata.normalize("NFD", letter)[0])
    base = face.getmask(bare)
    assert bytes(mask) != bytes(base)


def test_the_site_name_is_drawn_in_real_glyphs() -> None:
    # The same name with the Vietnamese letters replaced by one DejaVu lacks draws differently.
    name = "Hội đồng xã Hữu Lũng"
    lost = "".join("\ue000" if ord(ch) > 127 else ch for ch in name)
    real = draw(dataclasses.replace(BASE, site_name=name), NOW, (1280, 720))
    boxed = draw(dataclasses.replace(BASE, site_name=lost), NOW, (1280, 720))
    box = real.boxes["site"]
    assert real.image.crop(box).tobytes() != boxed.image.crop(box).tobytes()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}p")
def test_the_prompt_shows_when_a_press_joins_and_not_otherwise(size: tuple[int, int]) -> None:
    shown = draw(INVITED, NOW, size)
    not_shown = draw(STATES["invited_no_way_to_join"], NOW, size)
    box = shown.boxes["prompt"]
    assert shown.image.crop(box).tobytes() != not_shown.image.crop(box).tobytes()
    # The prompt is the yellow panel, prominent: a good part of the screen's width.
    colours = shown.image.crop(box).getcolors(maxcolors=1 << 20)
    yellow = sum(n for n, colour in colours if colour == PROMPT_BACK)
    assert yellow > 0.4 * (box[2] - box[0]) * (box[3] - box[1])
    assert box[2] - box[0] > 0.35 * size[0]
    assert not any(n > 100 for n, colour in not_shown.image.getcolors(1 << 20)
                   if colour == PROMPT_BACK)


def test_before_the_join_window_the_prompt_says_from_when() -> None:
    early = STATES["invited_too_early"]
    before = draw(early, NOW)
    after = draw(early, datetime.fromtimestamp(STARTS - 900, VIETNAM_TIME))
    assert not any(n > 100 for n, c in before.image.getcolors(1 << 20) if c == PROMPT_BACK)
    assert any(n > 1000 for n, c in after.image.getcolors(1 << 20) if c == PROMPT_BACK)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(max_size=60) | st.text(min_size=60, max_size=400),
       room=st.text(max_size=120))
def test_any_site_name_stays_in_its_place(name: str, room: str) -> None:
    size = (1280, 720)
    drawn = draw(dataclasses.replace(BASE, site_name=name, room=room), NOW, size)
    boxes = drawn.boxes
    assert all(inside(box, size) for box in boxes.values()), boxes
    for text in ("site", "room"):
        if text in boxes:
            assert not overlap(boxes[text], boxes["clock"]), boxes
            assert not overlap(boxes[text], boxes["date"]), boxes
            assert boxes[text][3] < boxes["state"][1], boxes
    # The top edge stays background: nothing spilled above the margin.
    assert drawn.image.crop((0, 0, size[0], 10)).getcolors() == [(size[0] * 10, idle.BACKGROUND)]


def test_a_long_title_is_shortened_and_the_prompt_keeps_its_size() -> None:
    short = draw(INVITED, NOW)
    long = draw(dataclasses.replace(INVITED, meeting_title="Hội nghị " * 80), NOW)
    assert long.boxes["prompt"][3] - long.boxes["prompt"][1] == (
        short.boxes["prompt"][3] - short.boxes["prompt"][1])
    assert long.boxes["title"][3] < long.boxes["prompt"][1]


def test_words_for_the_clock_and_the_date_are_vietnamese() -> None:
    assert idle.clock_text(NOW) == "09:41"
    assert date_text(NOW) == "Thứ Bảy, 05/12/2026"
    # A time in UTC is shown in Vietnam's time: 23:30 UTC on Friday is 06:30 on Saturday.
    utc = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)
    assert (idle.clock_text(utc), date_text(utc)) == ("06:30", "Thứ Bảy, 05/12/2026")
    assert date_text(NOW + timedelta(days=1)) == "Chủ Nhật, 06/12/2026"


def test_a_meeting_time_is_said_from_today() -> None:
    assert when_text(STARTS, NOW) == "14:00 hôm nay"
    assert when_text(STARTS + 86400, NOW) == "14:00 ngày mai"
    assert when_text(STARTS + 2 * 86400, NOW) == "14:00 Thứ Hai, 07/12/2026"


def test_the_picture_changes_on_the_minute_or_when_the_join_window_opens() -> None:
    assert next_change(BASE, NOW) == datetime(2026, 12, 5, 9, 42, tzinfo=VIETNAM_TIME)
    opens = datetime(2026, 12, 5, 9, 41, 45, tzinfo=VIETNAM_TIME)
    view = dataclasses.replace(INVITED, join_opens_at=opens.timestamp())
    assert next_change(view, NOW) == opens
    assert next_change(view, opens) == datetime(2026, 12, 5, 9, 42, tzinfo=VIETNAM_TIME)


def test_it_is_drawn_again_only_on_a_change_or_on_the_minute() -> None:
    assert redraw_needed(None, None, BASE, NOW)
    same = dataclasses.replace(BASE)  # equal, not the same object
    assert not redraw_needed(BASE, NOW, same, NOW + timedelta(seconds=29))
    assert redraw_needed(BASE, NOW, same, NOW + timedelta(seconds=30))
    assert redraw_needed(BASE, NOW, dataclasses.replace(BASE, connection="offline"), NOW)


def test_equal_views_draw_the_same_picture() -> None:
    assert render(BASE, NOW).tobytes() == render(dataclasses.replace(BASE), NOW).tobytes()


def test_the_cores_screen_crosses_the_pipe_as_itself() -> None:
    screen = IdleScreen(site_name="UBND xã Tân Lập", room="", place="p01 · d001 · c00001",
                        device_id="c00001-r1", connection="online", state="invited",
                        meeting_id="m1", meeting_title="Giao ban", starts_at=STARTS,
                        invited=True, join_opens_at=STARTS - 900)
    # As the proxy sends it (plain data, msgpack) and the screen child decodes it.
    wire = msgspec.msgpack.encode(msgspec.to_builtins(screen))
    back = msgspec.convert(msgspec.msgpack.decode(wire), IdleScreen)
    assert back == screen and hash(back) == hash(screen)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="aware time"):
        render(BASE, datetime(2026, 12, 5, 9, 41))
    with pytest.raises(ValueError, match="aware time"):
        next_change(BASE, datetime(2026, 12, 5, 9, 41))
    with pytest.raises(ValueError, match="320x180"):
        render(BASE, NOW, (100, 50))
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**dataclasses.asdict(BASE), "connection": "lost"}, IdleScreen)


def test_a_missing_font_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(idle, "FONT_DIRS", (str(tmp_path),))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    idle.font_path.cache_clear()
    idle.font.cache_clear()
    try:
        with pytest.raises(MediaFault, match="fonts-dejavu-core"):
            render(BASE, NOW)
    finally:
        idle.font_path.cache_clear()
        idle.font.cache_clear()


def test_text_is_cleaned_for_one_line() -> None:
    decomposed = "Ho\u0323\u0302i đo\u0302\u0300ng"  # "Hội đồng" typed with combining marks
    assert clean(decomposed) == "Hội đồng"
    assert clean("a\nb\tc\x00d  e") == "a b c d e"
    assert clean("o" + "\u0301" * 50) == "ó" + "\u0301" * 2  # no tower of marks


def test_importing_the_module_loads_no_pillow() -> None:
    # Pillow loads only when a picture is drawn, in the screen child.
    loaded = set(modules_after_import("diemcau.media.idle"))
    assert not loaded & {"PIL", "segno"}
    assert "PIL" in modules_after_import("PIL.Image")  # the check sees Pillow when it loads
