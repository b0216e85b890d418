"""``diemcau release``: the update steps that must run from a release known to work.

    diemcau release install ARTEFACT [--activate]   install beside the others (first: --activate)
    diemcau release check   (ExecStartPre)   count a start of a release on trial, or go back
    diemcau release wait    (ExecStartPost)  the release on trial connects in time, or go back
    diemcau release status                   print the update record and the links

The service runs ``check`` and ``wait`` from ``<root>/committed``, never from
the release on trial: a release that cannot even import still gets rolled
back. Both exit 0 unless ``wait`` gave up on the release (1: the service
manager then stops it and starts the previous one). See docs/updates.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .config import ConfigError, Updates, load_config

if TYPE_CHECKING:  # loaded when a release command runs, not for every `diemcau run`
    from .adapters.releases import ReleaseStore

log = logging.getLogger("diemcau.release")
POLL_S = 0.5


def add_parser(sub: argparse._SubParsersAction, default_config: str) -> None:
    release = sub.add_parser("release", help="install a release; the update checks around a start")
    actions = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    for name, text in (("install", "install a release artefact beside the others"),
                       ("check", "before a start: count it, or go back to the previous release"),
                       ("wait", "after a start: wait until a release on trial is healthy"),
                       ("status", "print the update record and the release links")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--config", default=default_config, help="the box's configuration")
        p.add_argument("--root", help="release root (default: updates.root, /opt/diemcau)")
        p.add_argument("--state-dir", help="state directory (default: device.state_dir)")
        if name == "install":
            p.add_argument("artefact", type=Path, help="diemcau-<version>.tar")
            p.add_argument("--activate", action="store_true",
                           help="make it current and committed (a new box's first release)")


def _settings(args: argparse.Namespace) -> tuple[ReleaseStore, Updates, bool]:
    """The store and update settings; without a usable configuration, the defaults.

    ``check`` and ``wait`` must still go back when a new release brought a
    configuration the box cannot read, so a bad file is logged, not fatal.
    """
    from .adapters.releases import ReleaseStore

    updates, state_dir, readable = Updates(), "/var/lib/diemcau", False
    try:
        cfg = load_config(args.config)
        updates, state_dir, readable = cfg.updates, cfg.device.state_dir, True
    except ConfigError as exc:
        log.warning("%s; using the default update settings", exc)
    store = ReleaseStore(args.root or updates.root, args.state_dir or state_dir, updates.python)
    return store, updates, readable


def main(args: argparse.Namespace) -> int:
    from .adapters.releases import InstallError

    store, updates, config_ok = _settings(args)
    match args.release_command:
        case "install":
            try:
                version = store.install(args.artefact)
                if args.activate:
                    store.activate(version)
            except (InstallError, OSError) as exc:
                print(f"diemcau release install: {exc}", file=sys.stderr)
                return 1
            print(f"installed {version}" + (" (current and committed)" if args.activate else ""))
            return 0
        case "check":
            return check(store, updates, args.config if config_ok else None)
        case "wait":
            return wait(store, updates.health_deadline_s)
        case _:
            record = msgspec.to_builtins(store.read())
            record["current"] = store.version_of(store.current)
            record["committed_link"] = store.version_of(store.committed)
            print(json.dumps(record, indent=2))
            return 0


def check(store: ReleaseStore, updates: Updates, config: str | None) -> int:
    """ExecStartPre: decide whether the release on trial gets this start."""
    decision = store.check_at_start(updates.max_trial_starts)
    record = store.read()
    if decision != "run":
        log.warning("update %s: %s", decision, record.outcome.detail if record.outcome else "")
        return 0
    if record.trial is None or config is None:
        return 0
    # A release that cannot even read the configuration would fail every start: go back now.
    command = store.current / "bin" / "diemcau"
    try:
        done = subprocess.run([str(command), "check", "--config", config], capture_output=True,
                              text=True, timeout=120, check=False)
        failed = done.returncode != 0
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] if failed else []
    except (OSError, subprocess.TimeoutExpired) as exc:
        failed, why = True, [str(exc)]
    if failed:
        detail = (f"{record.trial.version} failed its configuration check "
                  f"({' '.join(why)[:300]}); back on {record.trial.previous}")
        store.give_up(detail)
        log.warning("update rolled back: %s", detail)
    return 0


def wait(store: ReleaseStore, deadline_s: float) -> int:
    """ExecStartPost: exit 0 once the release on trial commits; 1 after going back."""
    trial = store.read().trial
    if trial is None:
        return 0
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if store.read().trial is None:
            return 0
        time.sleep(POLL_S)
    detail = (f"{trial.version} started but did not connect to the broker within "
              f"{deadline_s:g} s; back on {trial.previous}")
    if not store.give_up(detail):
        return 0  # committed at the last moment
    log.warning("update rolled back: %s", detail)
    return 1
