"""The example configuration (firmware/examples/endpoint.toml), made loadable off a box.

Its keys are placeholders and its CA file is on the box: stand in for each
with a real value, so a test loads exactly what an operator copies.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from diemcau.protocol.commands import public_key_to_text

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware" / "examples" / "endpoint.toml"
KEY_PLACEHOLDERS = ("REPLACE-WITH-THE-CENTRE-PUBLIC-KEY-43-CHARACTERS-BASE64URL",
                    "REPLACE-WITH-THE-RELEASE-PUBLIC-KEY-43-CHARACTERS-BASE64URL")
CA_ON_THE_BOX = "/etc/diemcau/centre-ca.pem"


def loadable_example(directory: Path) -> Path:
    """A copy of the example in ``directory`` with real keys and a CA file there."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for placeholder in KEY_PLACEHOLDERS:
        assert placeholder in text, f"the example no longer has {placeholder}"
        text = text.replace(placeholder, public_key_to_text(Ed25519PrivateKey.generate().public_key()))
    ca = directory / "centre-ca.pem"
    ca.write_text("a stand-in: only its existence is checked at load time\n", encoding="utf-8")
    text = text.replace(CA_ON_THE_BOX, str(ca))
    path = directory / "endpoint.toml"
    path.write_text(text, encoding="utf-8")
    return path
