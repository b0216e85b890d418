"""Who is who: the device id rule and the names of the centre's own identities.

A box's device id is its certificate's CN, its MQTT username and its client
id. It is derived from where the box stands: the commune's national code (5
digits, unique in the country) and the room's number in that commune.

    >>> device_id_for("c00001", 1)
    'c00001-r1'
    >>> is_device_id("c00001-r1"), is_device_id("centre")
    (True, False)

The centre's identities (the console, later the enrollment service) are
``centre`` or ``centre-<something>``: they can never be taken for a box.

    >>> check_centre_name("centre-hanoi")
    'centre-hanoi'
"""

from __future__ import annotations

import re

from diemcau.protocol import check_name

MAX_ROOM = 99
DEVICE_ID_RE = re.compile(r"^c[0-9]{5}-r[1-9][0-9]?$")
CENTRE_NAME_RE = re.compile(r"^centre(-[a-z0-9][a-z0-9_-]{0,56})?$")


def device_id_for(commune_code: str, room: int) -> str:
    """``{commune code}-r{room}``: ``c00001`` and room 1 give ``c00001-r1``."""
    dev = f"{commune_code}-r{room}"
    if not DEVICE_ID_RE.fullmatch(dev):
        raise ValueError(f"no device id for commune {commune_code!r} and room {room!r}: "
                         f"need a code like c00001 and a room from 1 to {MAX_ROOM}")
    return dev


def is_device_id(name: str) -> bool:
    return DEVICE_ID_RE.fullmatch(name) is not None


def check_device_id(name: str) -> str:
    """Return ``name`` if it follows the device id rule, else raise ValueError."""
    if not is_device_id(name):
        raise ValueError(f"device id {name!r} does not follow the rule c<5 digits>-r<room 1-99>"
                         " (like c00001-r1)")
    return name


def check_centre_name(name: str) -> str:
    """Return ``name`` if it is a valid centre identity, else raise ValueError."""
    check_name(name, "centre identity")
    if not CENTRE_NAME_RE.fullmatch(name):
        raise ValueError(f"centre identity {name!r}: must be 'centre' or 'centre-<name>' "
                         "(like centre-hanoi), so that it is never taken for a box")
    return name
