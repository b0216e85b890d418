"""What the box says, in Vietnamese: one prompt per thing the room should hear.

The supervisor turns its events into prompts with :func:`prompt_for_event`;
the voice adapter speaks them. Pure data: the wording is printed in
``docs/room-controls.md`` and a test checks the two agree.

    >>> prompt_for_event("floor_revoked")
    'muted'
    >>> PROMPTS["invited"]
    'có cuộc họp, nhấn nút để tham gia'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

PROMPTS: Mapping[str, str] = MappingProxyType({
    "connected": "đã kết nối trung tâm",
    "link_lost": "mất kết nối",
    "invited": "có cuộc họp, nhấn nút để tham gia",
    "join_too_early": "cuộc họp chưa bắt đầu",
    "call_request": "đã gửi yêu cầu tới trung tâm",
    "joining": "đang vào cuộc họp",
    "joined": "đã vào cuộc họp",
    "muted": "micro đã tắt",
    "unmuted": "micro đã bật",
    "hand_raised": "đã giơ tay phát biểu",
    "hand_lowered": "đã hạ tay",
    "floor_granted": "được phát biểu",
    "left": "đã rời cuộc họp",
    "error": "có lỗi, báo kỹ thuật viên",
    "factory_reset": "đang khôi phục cài đặt gốc",
})

# Events that say the same as another prompt.
_SAME_AS = {"floor_revoked": "muted", "invitation_expired": None, "leaving": None}


def prompt_for_event(kind: str) -> str | None:
    """The prompt key an event of ``kind`` is announced with; None: it is not spoken."""
    if kind in _SAME_AS:
        return _SAME_AS[kind]
    return kind if kind in PROMPTS else None
