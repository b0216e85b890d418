"""The light's phase away from the centre: ``no_network`` or ``connecting``, from a health reading.

End to end (the box in network namespaces the test makes, the light read
from its pins): ``tests/e2e/test_room_network.py``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from diemcau.core.light import LightView, light_state, offline_phase


@dataclass(frozen=True)
class If:
    """An interface as ``adapters.health.NetInterface`` has it."""

    up: bool
    addresses: tuple[str, ...]
    name: str = "eth0"


def with_prefix(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"{ip}/{24 if ip.version == 4 else 64}"


link_local = st.one_of(
    st.ip_addresses(network="169.254.0.0/16"), st.ip_addresses(network="fe80::/10"),
).map(with_prefix)
# Addresses a DHCP server, SLAAC or a static configuration give: beyond the cable.
routable = st.ip_addresses().filter(
    lambda ip: not (ip.is_link_local or ip.is_loopback)).map(with_prefix)
any_address = st.one_of(link_local, routable, st.text(max_size=40))
interfaces = st.lists(st.builds(If, up=st.booleans(),
                                addresses=st.lists(any_address, max_size=4).map(tuple)),
                      max_size=5)


def test_no_interface_at_all_is_no_network() -> None:
    assert offline_phase([]) == "no_network"


def test_a_cable_without_a_dhcp_answer_is_no_network() -> None:
    # An interface that is up always has a link-local address: it is no way out.
    assert offline_phase([If(True, ("fe80::c4b4:e6ff:febe:117e/64",))]) == "no_network"
    assert offline_phase([If(True, ("169.254.10.3/16", "fe80::1/64"))]) == "no_network"


def test_an_address_beyond_the_cable_is_a_network_the_centre_may_be_missing_from() -> None:
    assert offline_phase([If(True, ("192.168.1.20/24", "fe80::1/64"))]) == "connecting"
    assert offline_phase([If(True, ("2001:db8::7/64",))]) == "connecting"


def test_an_interface_that_is_down_counts_for_nothing() -> None:
    assert offline_phase([If(False, ("192.168.1.20/24",), "wlan0")]) == "no_network"


@given(interfaces, st.lists(st.builds(If, up=st.just(False),
                                      addresses=st.lists(any_address).map(tuple))))
def test_interfaces_that_are_down_never_change_the_phase(found: list[If], down: list[If]) -> None:
    assert offline_phase(found + down) == offline_phase(found) == offline_phase(down + found)


@given(interfaces, st.lists(link_local, min_size=1, max_size=3))
def test_link_local_addresses_never_make_a_network(found: list[If], local: list[str]) -> None:
    assert offline_phase(found + [If(True, tuple(local))]) == offline_phase(found)


@given(interfaces, routable)
def test_one_interface_up_with_a_routable_address_is_enough(found: list[If], address: str) -> None:
    assert offline_phase([*found, If(True, (address,))]) == "connecting"


@given(interfaces)
def test_any_reading_gives_a_phase_and_the_light_shows_it_while_idle(found: list[If]) -> None:
    phase = offline_phase(found)
    assert phase in ("no_network", "connecting")
    assert light_state(LightView(phase=phase)) == phase


@given(st.text(min_size=1, max_size=40).filter(lambda t: _unreadable(t)))
def test_an_address_that_cannot_be_read_is_not_blamed(text: str) -> None:
    assert offline_phase([If(True, (text,))]) == "connecting"


def _unreadable(text: str) -> bool:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return True
    return False
