"""Two network namespaces joined by a veth pair: a box on one side, a media server on the other.

The test makes them, uses them, and they are gone when it ends (also when it
fails): nothing outside them is touched. Addresses are a private /30 that
exists only inside the two namespaces.

    with NetnsPair() as net:
        listener = SrtListener(tmp_path, host=net.server_addr, prefix=net.server_prefix)
        ...  # the box publishes from net.box_prefix to listener.url
        net.cap(250)      # tbf on the box's way out: 250 kbit/s
        net.uncap()

This kernel has no ``netem`` qdisc and no ``gact`` action (checked: ``tc``
says "Specified qdisc kind is unknown" / "Failed to load TC action
module"), so loss and delay come from :mod:`tests.harness.udp_relay`, run
in the server's namespace. ``tbf`` and ``htb`` work.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess

_counter = itertools.count()


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` cannot run: {exc}"
    if done.returncode != 0:
        return f"`ip netns` fails: {done.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


class NetnsPair:
    """``box`` and ``server`` namespaces, a veth between them, ``box_addr``/``server_addr``."""

    def __init__(self) -> None:
        n = next(_counter)
        tag = f"{os.getpid() % 100000}{n}"
        self.box = f"dcb{tag}"
        self.server = f"dcs{tag}"
        # 10.231.x.y/30: private, and only ever inside these two namespaces.
        base = 4 * ((os.getpid() + n) % 60)
        self.box_addr = f"10.231.{n % 250}.{base + 1}"
        self.server_addr = f"10.231.{n % 250}.{base + 2}"
        self.box_if, self.server_if = "dcveth0", "dcveth1"
        self._made: list[str] = []

    @property
    def box_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.box]

    @property
    def server_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.server]

    def __enter__(self) -> NetnsPair:
        try:
            for name in (self.box, self.server):
                _ip("netns", "add", name)
                self._made.append(name)
            _ip("link", "add", self.box_if, "netns", self.box, "type", "veth",
                "peer", "name", self.server_if, "netns", self.server)
            for name, dev, addr in ((self.box, self.box_if, self.box_addr),
                                    (self.server, self.server_if, self.server_addr)):
                _ip("-n", name, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", name, "link", "set", dev, "up")
                _ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def cap(self, kbit: int) -> None:
        """Limit the box's way out to ``kbit`` kbit/s (tbf; what does not fit is dropped)."""
        subprocess.run(["tc", "-n", self.box, "qdisc", "replace", "dev", self.box_if, "root",
                        "tbf", "rate", f"{kbit}kbit", "burst", "8kb", "latency", "100ms"],
                       check=True, capture_output=True, text=True, timeout=10)

    def uncap(self) -> None:
        subprocess.run(["tc", "-n", self.box, "qdisc", "del", "dev", self.box_if, "root"],
                       check=False, capture_output=True, text=True, timeout=10)

    def close(self) -> None:
        for name in reversed(self._made):
            # Whatever still runs in a namespace this test made is the test's own.
            done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                                  timeout=10, check=False)
            for pid in done.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10,
                           check=False)
        self._made.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()
