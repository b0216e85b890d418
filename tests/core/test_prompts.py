"""The prompts table: the code's wording is the wording the clerk's sheet prints."""

from __future__ import annotations

import re
from pathlib import Path

from diemcau.core.prompts import PROMPTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "room-controls.md"


def documented() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8").split("<!-- prompts -->", 1)[1]
    rows = re.findall(r"^\| [^|]+ \| ([^|]+) \| `([a-z_]+)` \|$", text, flags=re.MULTILINE)
    return {key: said.strip() for said, key in rows}


def test_every_prompt_is_documented_with_its_exact_wording() -> None:
    table = documented()
    assert {k: v for k, v in table.items() if k != "identify"} == dict(PROMPTS)
    assert "identify" in table

