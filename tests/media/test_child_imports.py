"""What the media process loads: the media path and the pipe, not the box's signing."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import diemcau.media.child, diemcau.media.serve
{extra}
loaded = sorted({{name.split(".")[0] for name in sys.modules}} & {{"jwt", "cryptography", "av"}})
print(" ".join(loaded))
"""


def loaded_by(extra: str = "") -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(extra=extra)], check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


def test_the_media_process_does_not_import_pyjwt_or_cryptography_or_pyav_before_its_start() -> None:
    assert loaded_by() == set()


def test_the_probe_would_see_them() -> None:
    # Checking a configuration's keys loads them; the probe is not blind.
    assert loaded_by("import diemcau.protocol.commands") == {"jwt", "cryptography"}
