"""Release manifests: signed by the release key, refused when anything is off."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.protocol import generate_signing_key, sign_command
from diemcau.protocol.release import ManifestRejected, sign_manifest, verify_manifest

KEY = generate_signing_key()
KEYS = {"rel1": KEY.public_key()}
CLAIMS = {"version": "0.2.0", "url": "https://c.example.vn/diemcau-0.2.0.tar",
          "sha256": "b" * 64, "size_bytes": 1234}


def rejected(token: str, code: int) -> str:
    with pytest.raises(ManifestRejected) as err:
        verify_manifest(token, KEYS)
    assert err.value.code == code
    return err.value.detail


def test_a_signed_manifest_verifies() -> None:
    m = verify_manifest(sign_manifest(KEY, "rel1", **CLAIMS, now=5), KEYS)
    assert (m.version, m.url, m.sha256, m.size_bytes, m.iat) == (*CLAIMS.values(), 5)


def test_another_key_or_a_command_key_is_refused() -> None:
    other = generate_signing_key()
    assert "bad manifest signature" in rejected(sign_manifest(other, "rel1", **CLAIMS), 401)
    assert "unknown release key" in rejected(sign_manifest(KEY, "cmd1", **CLAIMS), 401)
    # A command signed by the same key is still not a manifest.
    command = sign_command(KEY, "rel1", aud="x", cmd="firmware.update")
    assert "not a release manifest" in rejected(command, 400)


def test_a_changed_claim_breaks_the_signature() -> None:
    header, payload, sig = sign_manifest(KEY, "rel1", **CLAIMS).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sha256"] = "c" * 64
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert "bad manifest signature" in rejected(f"{header}.{forged}.{sig}", 401)


def test_extra_or_missing_claims_are_refused() -> None:
    token = jwt.encode({**CLAIMS, "iat": 1, "extra": 1}, KEY, algorithm="EdDSA",
                       headers={"kid": "rel1", "typ": "diemcau-release+jwt"})
    assert "bad manifest" in rejected(token, 400)
    token = jwt.encode({"version": "1"}, KEY, algorithm="EdDSA",
                       headers={"kid": "rel1", "typ": "diemcau-release+jwt"})
    assert "bad manifest" in rejected(token, 400)


@given(st.text(max_size=5000))
def test_any_text_is_refused_cleanly(text: str) -> None:
    with pytest.raises(ManifestRejected) as err:
        verify_manifest(text, KEYS)
    assert err.value.code in (400, 401)


@given(st.integers(0, 200), st.integers(0, 255))
def test_any_flipped_byte_is_refused(at: int, value: int) -> None:
    token = sign_manifest(KEY, "rel1", **CLAIMS, now=1)
    at %= len(token)
    changed = token[:at] + chr(value) + token[at + 1:]
    if changed == token:
        return
    try:
        m = verify_manifest(changed, KEYS)
    except ManifestRejected as exc:
        assert exc.code in (400, 401)
    else:  # base64 padding bits can change without changing the bytes
        assert (m.version, m.sha256, m.url) == (CLAIMS["version"], CLAIMS["sha256"], CLAIMS["url"])


def test_an_unsigned_manifest_is_refused() -> None:
    token = jwt.encode({**CLAIMS, "iat": 1}, None, algorithm="none",
                       headers={"kid": "rel1", "typ": "diemcau-release+jwt"})
    assert "not accepted (EdDSA only)" in rejected(token, 401)
    header, payload, _ = sign_manifest(KEY, "rel1", **CLAIMS).split(".")
    assert rejected(f"{header}.{payload}.", 401)  # the signature cut off
