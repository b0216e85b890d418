"""The ``diemcau`` command: run the box, check a configuration, enroll by hand.

    diemcau run --config /etc/diemcau/endpoint.toml
    diemcau check --config /etc/diemcau/endpoint.toml
    diemcau enroll --config /etc/diemcau/endpoint.toml [--file diemcau-enroll.toml] [--force]
    diemcau release install|check|wait|status   (updates: see release_cli.py)

``run`` on a box without an identity enrolls first (from ``[enrollment]
file``), retrying until it succeeds; ``enroll`` makes one attempt and says
how it went.

Exit codes: 0 fine, 1 enrollment failed (the reason is printed), 2
configuration problem or unusable enrollment file (each problem is printed),
75 stopped after a factory reset (systemd starts the box again, which enrolls
afresh).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from . import __version__
from .adapters.enroll import IdentityError
from .config import Config, ConfigError, effective_config, load_config
from .core.events import EnrollmentStopped

if TYPE_CHECKING:
    from .adapters.enroll import Identity

DEFAULT_CONFIG = "/etc/diemcau/endpoint.toml"


def _log_to_stderr() -> None:
    """The log on stderr (the journal), every line scrubbed of credentials."""
    from .adapters.logs import log_to_stderr

    log_to_stderr("INFO")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diemcau", description="The diemcau meeting box.")
    parser.add_argument("--version", action="version", version=f"diemcau {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the box"), ("check", "check a configuration and print it"),
                       ("enroll", "enroll with the centre now (one attempt)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default=os.environ.get("DIEMCAU_CONFIG", DEFAULT_CONFIG),
                       help=f"configuration file (default {DEFAULT_CONFIG})")
        if name == "enroll":
            p.add_argument("--file", help="the enrollment file (default: [enrollment] file)")
            p.add_argument("--force", action="store_true",
                           help="enroll even if the box has an identity (it is replaced)")
    from .release_cli import add_parser

    add_parser(sub, os.environ.get("DIEMCAU_CONFIG", DEFAULT_CONFIG))
    return parser


def _enroll(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .adapters.enroll import EnrollError, enroll_once, load_identity, utc_text
    from .config import boot_settings

    state_dir, enrollment = boot_settings(args.config)
    _log_to_stderr()
    try:
        current = load_identity(state_dir)
    except IdentityError:
        current = None  # replaced by this enrollment, if it succeeds
    if current is not None and not args.force:
        print(f"diemcau enroll: already enrolled as {current.device_id} (certificate until "
              f"{utc_text(current.not_after)}); --force to enroll again", file=sys.stderr)
        return 1
    try:
        identity = enroll_once(Path(args.file or enrollment.file), state_dir)
    except EnrollError as exc:
        print(f"diemcau enroll: {exc}", file=sys.stderr)
        return 2 if exc.reason in ("bad_file", "no_file") else 1
    print(f"enrolled as {identity.device_id} ({identity.info.site.name}); broker "
          f"{identity.info.broker.host}:{identity.info.broker.port}")
    return 0


def _load(path: str) -> tuple[Config, Identity | None]:
    """The configuration with the enrolled identity laid over it (enrolling first if needed)."""
    from .app import obtain_identity
    from .config import boot_settings

    state_dir, enrollment = boot_settings(path)
    identity = obtain_identity(state_dir, enrollment)
    try:
        return load_config(path, overlay=identity.overlay() if identity else None), identity
    except ConfigError as exc:
        if identity is None:
            exc.problems.append(f"(the box has no identity yet, and no enrollment file at "
                                f"{enrollment.file})")
        raise


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "release":
        from .release_cli import main as release_main

        _log_to_stderr()
        return release_main(args)
    identity = None
    try:
        if args.command == "enroll":
            return _enroll(args)
        if args.command == "run":
            from .adapters.process import settle

            settle()  # before any thread starts: see adapters/process.py
            # Logs before the configuration is whole: enrollment may take days.
            _log_to_stderr()
            cfg, identity = _load(args.config)
        else:
            from .adapters.enroll import load_identity
            from .config import boot_settings

            found = load_identity(boot_settings(args.config)[0])
            cfg = load_config(args.config, overlay=found.overlay() if found else None)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    except EnrollmentStopped:
        return 0
    except IdentityError as exc:
        print(f"diemcau: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        import tomli_w

        print(f"# {args.config}: configuration is valid; effective values (secrets masked):")
        print(tomli_w.dumps(effective_config(cfg)), end="")
        return 0
    logging.getLogger().setLevel(cfg.log.level.upper())
    from .adapters.logs import scrub_log_handlers

    # Also the configured secrets themselves, wherever they would appear.
    scrub_log_handlers(known=(cfg.media.srt_passphrase, cfg.mqtt.password))
    from .adapters.panel import PanelError
    from .app import run

    try:
        return run(cfg, identity)
    except PanelError as exc:  # a pin in use, no GPIO here: the configuration's to fix
        print(f"configuration {args.config}: panel: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
