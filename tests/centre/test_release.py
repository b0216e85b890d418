"""diemcau-centre release: pack reproducibly, make the release key, sign manifests the box accepts."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from diemcau.protocol import public_key_from_text
from diemcau.protocol.release import verify_manifest
from diemcau_centre.cli import main


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out, err), out.getvalue(), err.getvalue()


def wheels(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "wheels"
    d.mkdir()
    for n in names:
        (d / n).write_bytes(n.encode() * 100)
    return d


def test_pack_is_reproducible_and_holds_only_the_release(tmp_path: Path) -> None:
    w = wheels(tmp_path, ["diemcau-0.3.0-py3-none-any.whl", "paho_mqtt-2.2.0-py3-none-any.whl"])
    code, out, _ = run("release", "pack", str(w), "--out", str(tmp_path / "out"))
    artefact = Path(out.strip())
    assert code == 0 and artefact.name == "diemcau-0.3.0.tar"
    first = hashlib.sha256(artefact.read_bytes()).hexdigest()
    run("release", "pack", str(w), "--out", str(tmp_path / "out"))
    assert hashlib.sha256(artefact.read_bytes()).hexdigest() == first
    with tarfile.open(artefact) as tar:
        assert tar.getnames() == ["release.json", "wheels/diemcau-0.3.0-py3-none-any.whl",
                                  "wheels/paho_mqtt-2.2.0-py3-none-any.whl"]
        assert tar.extractfile("release.json").read() == b'{"version": "0.3.0"}\n'  # type: ignore[union-attr]


def test_pack_needs_exactly_one_firmware_wheel(tmp_path: Path) -> None:
    w = wheels(tmp_path, ["paho_mqtt-2.2.0-py3-none-any.whl"])
    code, _, err = run("release", "pack", str(w), "--out", str(tmp_path / "out"))
    assert code == 2 and "expected one diemcau wheel, found 0" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_keys_then_sign_give_a_manifest_the_box_verifies(tmp_path: Path) -> None:
    code, out, _ = run("release", "keys", "init", "--dir", str(tmp_path / "rk"))
    assert code == 0
    line = next(x.strip() for x in out.splitlines() if x.strip().startswith('"'))
    kid, _, text = line.partition(" = ")
    keys = {kid.strip('"'): public_key_from_text(text.strip('"'))}
    key_file = tmp_path / "rk" / "release-signing.key"
    assert key_file.stat().st_mode & 0o077 == 0

    w = wheels(tmp_path, ["diemcau-0.3.0-py3-none-any.whl"])
    _, out, _ = run("release", "pack", str(w), "--out", str(tmp_path / "out"))
    artefact = Path(out.strip())
    code, out, _ = run("release", "sign", str(artefact), "--key", str(key_file),
                       "--url", "https://r.example.vn/diemcau-0.3.0.tar")
    assert code == 0 and "firmware.update" in out
    manifest = verify_manifest(artefact.with_name(artefact.name + ".manifest").read_text().strip(),
                               keys)
    data = artefact.read_bytes()
    assert (manifest.version, manifest.sha256, manifest.size_bytes) == (
        "0.3.0", hashlib.sha256(data).hexdigest(), len(data))

    # The key pair is never overwritten by accident.
    code, _, err = run("release", "keys", "init", "--dir", str(tmp_path / "rk"))
    assert code == 1 and "refusing to overwrite" in err
