"""The ``diemcau`` command: run the box, check a configuration.

    diemcau run --config /etc/diemcau/endpoint.toml
    diemcau check --config /etc/diemcau/endpoint.toml
    diemcau release install|check|wait|status   (updates: see release_cli.py)

Exit codes: 0 fine, 2 configuration problem (each one is printed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .config import ConfigError, effective_config, load_config

DEFAULT_CONFIG = "/etc/diemcau/endpoint.toml"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diemcau", description="The diemcau meeting box.")
    parser.add_argument("--version", action="version", version=f"diemcau {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the box"), ("check", "check a configuration and print it")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default=os.environ.get("DIEMCAU_CONFIG", DEFAULT_CONFIG),
                       help=f"configuration file (default {DEFAULT_CONFIG})")
    from .release_cli import add_parser

    add_parser(sub, os.environ.get("DIEMCAU_CONFIG", DEFAULT_CONFIG))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "release":
        from .release_cli import main as release_main

        logging.basicConfig(level="INFO", format=LOG_FORMAT, stream=sys.stderr)
        return release_main(args)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    if args.command == "check":
        import tomli_w

        print(f"# {args.config}: configuration is valid; effective values (secrets masked):")
        print(tomli_w.dumps(effective_config(cfg)), end="")
        return 0
    logging.basicConfig(level=cfg.log.level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    from .app import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
