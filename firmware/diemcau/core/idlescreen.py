"""What the TV's idle screen says, from the facts the supervisor holds: pure.

The supervisor calls :func:`idle_screen` after every event, as it does for
the light, and hands the result to the screen child only when it differs
from the last one; the child decodes it back into an :class:`IdleScreen`.
The clock on the screen is the child's business: it redraws on the minute
without being told.

Whether the screen tells the room to press the button is decided by asking
:func:`~diemcau.core.meeting.handle_press` what a press would do now, so the
screen and the button can never disagree.

    >>> from diemcau.config import SiteConfig
    >>> from diemcau.core.meeting import Invitation, Room
    >>> site = SiteConfig(name="UBND xã Tân Lập", province="p01", district="d001",
    ...                   commune="c00001", room="Phòng họp tầng 2")
    >>> inv = Invitation("m1", "Giao ban", starts_at=1000.0, publish="srt://m.example.vn:9000")
    >>> s = idle_screen(site, "c00001-r1", "ready", Room(state="invited", invitation=inv),
    ...                 now=0.0, join_early_s=900)
    >>> s.connection, s.invited, s.join_opens_at
    ('online', True, 100.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import SiteConfig
from .light import Phase
from .meeting import EmitEvent, MeetingState, Room, StartMedia, handle_press

Connection = Literal["online", "offline", "connecting"]

CONNECTION_OF_PHASE: dict[Phase, Connection] = {
    "ready": "online",
    "starting": "connecting",
    "connecting": "connecting",
    "no_network": "offline",
}


@dataclass(frozen=True, slots=True)
class IdleScreen:
    """Everything the idle screen shows except the clock; equal values draw the same picture."""

    site_name: str
    room: str
    # The site's administrative codes (province, district, commune), for the technician.
    place: str
    device_id: str
    connection: Connection
    state: MeetingState
    # The invitation the room holds; "" and None with none.
    meeting_id: str = ""
    meeting_title: str = ""
    starts_at: float | None = None  # Unix seconds
    # A press of the join button joins (or asks the centre to join) ...
    invited: bool = False
    # ... from this time on (Unix seconds); None: already now.
    join_opens_at: float | None = None
    # A mandatory meeting the box joins by itself at its start.
    joins_itself: bool = False


def connection_of(phase: Phase) -> Connection:
    return CONNECTION_OF_PHASE[phase]


def idle_screen(site: SiteConfig, device_id: str, phase: Phase, room: Room, *, now: float,
                join_early_s: float) -> IdleScreen:
    """The idle screen for this site, link phase and room; ``now`` in Unix seconds.

    ``phase`` is the link's, as the light has it (``Panel.phase``); ``join_early_s``
    is ``panel.join_early_s``.
    """
    connection = connection_of(phase)
    screen = IdleScreen(site_name=site.name, room=site.room,
                        place=f"{site.province} · {site.district} · {site.commune}",
                        device_id=device_id, connection=connection, state=room.state)
    inv = room.invitation
    if room.state != "invited" or inv is None:
        return screen
    invited, opens_at = _press_joins(room, now, join_early_s, online=connection == "online")
    return IdleScreen(
        site_name=screen.site_name, room=screen.room, place=screen.place,
        device_id=device_id, connection=connection, state=room.state,
        meeting_id=inv.meeting_id, meeting_title=inv.title, starts_at=inv.starts_at,
        invited=invited, join_opens_at=opens_at,
        joins_itself=inv.mandatory and inv.publish is not None)


def _press_joins(room: Room, now: float, join_early_s: float, *,
                 online: bool) -> tuple[bool, float | None]:
    """Whether a short press of the join button joins the invitation, and from when."""
    assert room.invitation is not None
    effects = handle_press(room, "join", "short_press", now, join_early_s, online=online).effects
    for effect in effects:
        if isinstance(effect, StartMedia):
            return True, None
        if isinstance(effect, EmitEvent) and effect.kind == "call_request":
            return True, None  # the centre is asked, and it sends meeting.join
        if isinstance(effect, EmitEvent) and effect.kind == "join_too_early":
            return True, room.invitation.join_window(join_early_s)[0]
    return False, None
