"""Releases at the centre: pack the artefact, keep the release key, sign manifests.

    diemcau-centre release pack build/release/wheels --out out      (make release does this)
    diemcau-centre release keys init --dir /srv/centre/release
    diemcau-centre release sign out/diemcau-0.2.0.tar --key /srv/centre/release/release-signing.key \\
        --url https://releases.example.vn/diemcau-0.2.0.tar
    diemcau-centre send group:p01 firmware.update --arg manifest="$(cat out/diemcau-0.2.0.tar.manifest)"

An artefact is one tar, ``diemcau-<version>.tar``, holding ``release.json``
(``{"version": ...}``) and ``wheels/*.whl``: the firmware's wheel and every
dependency's, for the box's architecture. It is packed reproducibly (sorted
names, no owners, no times), so the same wheels give the same SHA-256. The
manifest is what the box trusts: see :mod:`diemcau.protocol.release`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import TextIO

from diemcau.protocol import key_id
from diemcau.protocol.release import sign_manifest

from .keys import KeyExists, box_config_line, init_keys, load_signing_key

COMMANDS = frozenset({"release"})
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PRIVATE_NAME, PUBLIC_NAME = "release-signing.key", "release-signing.pub"
_FIRMWARE_WHEEL = re.compile(r"diemcau-([^-]+)-py3-none-any\.whl")


class ReleaseError(Exception):
    """The wheels or the artefact cannot be used; nothing was written."""


def pack(wheels: Path, out_dir: Path) -> Path:
    """Pack ``wheels/*.whl`` into ``out_dir/diemcau-<version>.tar``; return its path."""
    files = sorted(wheels.glob("*.whl"))
    versions = [m[1] for f in files if (m := _FIRMWARE_WHEEL.fullmatch(f.name))]
    if len(versions) != 1:
        raise ReleaseError(f"{wheels}: expected one diemcau wheel, found {len(versions)}")
    version = versions[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"diemcau-{version}.tar"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [("release.json", json.dumps({"version": version}).encode() + b"\n")]
        entries += [(f"wheels/{f.name}", f.read_bytes()) for f in files]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    from .files import write_atomic

    write_atomic(target, buffer.getvalue(), 0o644)
    return target


def artefact_version(artefact: Path) -> str:
    try:
        with tarfile.open(artefact) as tar:
            f = tar.extractfile("release.json")
            return str(json.loads(f.read())["version"]) if f else ""
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise ReleaseError(f"{artefact}: not a release artefact ({exc})") from None


def manifest_for(artefact: Path, key_file: Path, url: str) -> str:
    """A manifest for ``artefact``, to be downloaded from ``url``, signed with the release key."""
    key = load_signing_key(key_file, "--key")
    data = artefact.read_bytes()
    return sign_manifest(key, key_id(key.public_key()), version=artefact_version(artefact),
                         url=url, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    release = sub.add_parser("release", help="pack, sign and describe firmware releases")
    actions = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    p = actions.add_parser("pack", parents=[common], help="pack a wheel directory into an artefact")
    p.add_argument("wheels", type=Path, help="directory of wheels (diemcau's and its dependencies')")
    p.add_argument("--out", type=Path, default=Path("out"), help="where to write (default: out)")
    k = actions.add_parser("keys", parents=[common], help="make the release key pair")
    k.add_argument("keys_action", choices=["init"])
    k.add_argument("--dir", type=Path, default=Path("."), help="where to write the key pair")
    k.add_argument("--force", action="store_true", help="replace an existing key pair")
    s = actions.add_parser("sign", parents=[common], help="sign a manifest for an artefact")
    s.add_argument("artefact", type=Path, help="diemcau-<version>.tar")
    s.add_argument("--key", type=Path, required=True, help="the release key (private, 0600)")
    s.add_argument("--url", required=True, help="where boxes download the artefact from")
    s.add_argument("--out", type=Path, help="manifest file (default: ARTEFACT.manifest)")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        if args.release_command == "pack":
            print(pack(args.wheels, args.out), file=out)
        elif args.release_command == "keys":
            pair = init_keys(args.dir, force=args.force, private_name=PRIVATE_NAME,
                             public_name=PUBLIC_NAME)
            print(f"wrote {pair.private_file} (private, mode 0600) and {pair.public_file}", file=out)
            print("\nFor each box's configuration, in its [updates] release_keys table:\n", file=out)
            print(f"  {box_config_line(pair.public_key)}", file=out)
        else:
            token = manifest_for(args.artefact, args.key, args.url)
            target = args.out or args.artefact.with_name(args.artefact.name + ".manifest")
            from .files import write_atomic

            write_atomic(target, token.encode() + b"\n", 0o644)
            print(f"wrote {target}; send it with:\n  diemcau-centre send TARGET firmware.update "
                  f'--arg manifest="$(cat {target})" --timeout 600', file=out)
    except ReleaseError as exc:
        print(f"diemcau-centre release: {exc}", file=err)
        return EXIT_USAGE
    except KeyExists:
        raise
    except BrokenPipeError:
        raise  # the reader of our output went away: main() ends quietly
    except OSError as exc:
        print(f"diemcau-centre release: {exc}", file=err)
        return EXIT_FAILED
    return EXIT_OK
