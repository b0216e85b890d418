"""A real three-node ejabberd cluster (MQTT 5 through ``mod_mqtt``) on loopback.

Each node is its own Erlang VM with its own configuration, Mnesia spool, log
and MQTT port; they share a random cookie and a private ``epmd`` (on a free
port, bound to 127.0.0.1, so nothing else on the machine is touched), and the
second and third join the first with ejabberd's own ``join_cluster``.

The nodes are started with ``erl ... -s ejabberd`` directly, as ``ejabberdctl
foreground`` does, rather than through the ``ejabberdctl`` script: run as root,
that script switches to the ``ejabberd`` system user, who could not read the
test's directories. Administration commands (``register``, ``join_cluster``,
``list_cluster``) go through ejabberd's ``ejabberd_ctl`` module, which is what
``ejabberdctl --node NODE COMMAND`` runs.

Clients log in with a password (ejabberd's ``internal`` store, replicated to
every node): an MQTT username is the account, the client id its resource.
Topic rules as production would have them: a box (any account) may publish
only under its own ``diemcau/v1/dev/{username}/``; the ``centre`` account
may publish anywhere under ``diemcau/v1/``.

    cluster = EjabberdCluster(tmp_path / "ej", users={"c00001-r1": "pw", "centre": "pw"})
    cluster.start()                    # a, b, c, clustered
    cluster.node("a").port             # its MQTT port on 127.0.0.1
    cluster.kill("a")                  # SIGKILL the node's VM
    cluster.stop()
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .broker import free_port, wait_for_port
from .process import stop_process

ERL = shutil.which("erl") or "/usr/bin/erl"
EPMD = shutil.which("epmd") or "/usr/bin/epmd"
# Where Debian puts ejabberd's and its dependencies' Erlang applications.
ERL_LIBS = "/usr/lib/x86_64-linux-gnu" if Path("/usr/lib/x86_64-linux-gnu").is_dir() else ""
MAIL_HOST = "localhost"  # the ejabberd virtual host: accounts are user@localhost

# What the fleet's topics need from mod_mqtt (docs/broker-cluster.md):
# - session_expiry: ejabberd caps a client's session expiry to this (default 5
#   minutes); the box asks for mqtt.session_expiry_s (7 days).
# - match_retained_limit: at most this many retained messages are sent to a new
#   subscription (default 1000): the centre's diemcau/v1/dev/+/# matches about
#   four per box.
# - max_topic_depth: 8 by default; the deepest fleet topic has 6 levels.
MOD_MQTT = """\
  mod_mqtt:
    session_expiry: 604800
    match_retained_limit: infinity
    max_queue: 5000
    queue_type: ram
    access_publish:
      "diemcau/v1/dev/%u/#": everyone
      "diemcau/v1/#": centre_only
"""


def available() -> bool:
    """ejabberd and Erlang are installed (Debian's ``ejabberd`` package)."""
    return Path(ERL).exists() and any(Path(ERL_LIBS or "/nonexistent").glob("ejabberd-*"))


@dataclass
class EjabberdNode:
    name: str  # "a"
    node: str  # "ejabberd_a@localhost"
    port: int  # MQTT on 127.0.0.1
    workdir: Path
    host: str = "127.0.0.1"
    tls: bool = False  # for the test harness's Broker-like users
    ca_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_file(self) -> Path:
        return self.workdir / "ejabberd.log"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class EjabberdCluster:
    def __init__(self, workdir: Path, *, names: tuple[str, ...] = ("a", "b", "c"),
                 users: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cookie = secrets.token_hex(16)
        self.users = dict(users or {})
        self.epmd_port = free_port()
        self._epmd: subprocess.Popen[bytes] | None = None
        self._ctl_count = itertools.count()
        self.nodes = [EjabberdNode(n, f"ejabberd_{n}@localhost", free_port(), self.workdir / n)
                      for n in names]

    # ------------------------------------------------------------ set-up

    def _env(self, node: EjabberdNode | None = None) -> dict[str, str]:
        env = {**os.environ, "ERL_EPMD_PORT": str(self.epmd_port),
               "ERL_EPMD_ADDRESS": "127.0.0.1", "ERL_LIBS": ERL_LIBS, "HOME": str(self.workdir)}
        if node is not None:
            env["EJABBERD_CONFIG_PATH"] = str(node.workdir / "ejabberd.yml")
            env["EJABBERD_LOG_PATH"] = str(node.log_file)
            env["ERL_CRASH_DUMP"] = str(node.workdir / "erl_crash.dump")
        return env

    def _erl_args(self) -> list[str]:
        # Distribution only on loopback; the cookie shared by the three nodes.
        return ["-setcookie", self.cookie, "-kernel", "inet_dist_use_interface", "{127,0,0,1}"]

    def _write_config(self, node: EjabberdNode) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        (node.workdir / "ejabberd.yml").write_text(f"""\
hosts:
  - {MAIL_HOST}
loglevel: info
log_rotate_count: 0
auth_method: internal
listen:
  - port: {node.port}
    ip: "127.0.0.1"
    module: mod_mqtt
    backlog: 1024
acl:
  centre:
    user: centre
access_rules:
  everyone:
    allow: all
  centre_only:
    allow: centre
modules:
{MOD_MQTT}""")

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node, make accounts on the first, join the others to it."""
        self._epmd = subprocess.Popen([EPMD, "-port", str(self.epmd_port), "-address",
                                       "127.0.0.1"], env=self._env(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.epmd_port)
        for node in self.nodes:
            self.start_node(node.name, timeout_s=timeout_s)
        first = self.nodes[0]
        for user, password in self.users.items():
            self.ctl(first.name, "register", user, MAIL_HOST, password)
        for node in self.nodes[1:]:
            self.ctl(node.name, "join_cluster", first.node)
            # join_cluster restarts ejabberd on the joining node: wait for its listener.
            wait_for_port(node.port, timeout_s)
        deadline = time.monotonic() + timeout_s
        while len(self.members(first.name)) < len(self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not form: {self.members(first.name)}")
            time.sleep(0.2)

    def start_node(self, name: str, timeout_s: float = 60.0) -> None:
        node = self.node(name)
        if node.running:
            return
        self._write_config(node)
        node.proc = subprocess.Popen(
            [ERL, "-sname", node.node, *self._erl_args(), "-noinput",
             "-mnesia", "dir", f'"{node.workdir / "spool"}"', "-s", "ejabberd"],
            cwd=node.workdir, env=self._env(node),
            stdout=subprocess.DEVNULL, stderr=open(node.workdir / "stderr.txt", "ab"),  # noqa: SIM115
        )
        try:
            wait_for_port(node.port, timeout_s)
        except TimeoutError:
            raise RuntimeError(f"ejabberd node {node.node} did not start; log:\n"
                               f"{node.log_text()[-4000:]}") from None

    def ctl(self, name: str, *args: str, timeout_s: float = 60.0) -> str:
        """``ejabberdctl --node <that node> ARGS``; returns what it printed."""
        node = self.node(name)
        me = f"ctl{next(self._ctl_count)}_{os.getpid()}@localhost"
        done = subprocess.run(
            [ERL, "-sname", me, "-hidden", *self._erl_args(), "-noinput",
             "-s", "ejabberd_ctl", "-extra", node.node, *args],
            env=self._env(), capture_output=True, text=True, timeout=timeout_s, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ejabberdctl --node {node.node} {' '.join(args)}: exit "
                               f"{done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    def members(self, name: str) -> list[str]:
        """The nodes that ``name`` counts in its cluster (``list_cluster``)."""
        return [line.strip().strip("'") for line in self.ctl(name, "list_cluster").split()
                if line.strip()]

    # ------------------------------------------------------------ using it

    def node(self, name: str) -> EjabberdNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def kill(self, name: str) -> None:
        """SIGKILL the node's VM, as a power cut: nothing saved, no goodbye to the others."""
        node = self.node(name)
        if node.proc is not None:
            stop_process(node.proc, signal.SIGKILL)
            node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                stop_process(node.proc, timeout_s=10.0)
                node.proc = None
        if self._epmd is not None:
            stop_process(self._epmd)
            self._epmd = None

    def __enter__(self) -> EjabberdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
