"""Release manifests: the centre's release key vouches for one firmware artefact.

A manifest is a compact JWS (EdDSA over Ed25519, made with PyJWT like a
command) whose claims name the version, where to download the artefact, its
SHA-256 and its size. It is signed with the centre's *release* key, a key
apart from the command-signing keys, so a stolen command key cannot install
firmware. The box trusts the release keys listed in ``[updates] release_keys``.

    >>> key = generate_signing_key()
    >>> token = sign_manifest(key, "r1", version="0.2.0", url="https://c.example.vn/diemcau-0.2.0.tar",
    ...                       sha256="ab" * 32, size_bytes=1000, now=1.0)
    >>> verify_manifest(token, {"r1": key.public_key()}).version
    '0.2.0'
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .commands import generate_signing_key  # noqa: F401 - for the example above

# The JWS header's `typ`: a command token is never mistaken for a manifest.
MANIFEST_TYPE = "diemcau-release+jwt"
MAX_MANIFEST_BYTES = 4096


class ReleaseManifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The claims of a release manifest."""

    version: str
    url: str
    sha256: str
    size_bytes: int
    iat: int


class ManifestRejected(Exception):
    """Why a manifest cannot be trusted; ``code`` is the reply's (400 or 401)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def sign_manifest(key: Ed25519PrivateKey, kid: str, *, version: str, url: str, sha256: str,
                  size_bytes: int, now: float | None = None) -> str:
    """Sign a manifest for one artefact with the release key ``key`` (named ``kid``)."""
    claims = {"version": version, "url": url, "sha256": sha256.lower(), "size_bytes": size_bytes,
              "iat": int(time.time() if now is None else now)}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": MANIFEST_TYPE})


def verify_manifest(token: str, keys: Mapping[str, Ed25519PublicKey]) -> ReleaseManifest:
    """Check the manifest's signature against the release keys; return its claims.

    Raises ManifestRejected: 401 for an unknown key or a bad signature, 400
    for anything unreadable. What the claims mean (is the version newer?) is
    the update policy's business (:mod:`diemcau.core.update`).
    """
    if len(token) > MAX_MANIFEST_BYTES:
        raise ManifestRejected(400, f"manifest too large ({len(token)} characters)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise ManifestRejected(400, f"not a signed manifest: {exc}") from None
    if header.get("typ") != MANIFEST_TYPE:
        raise ManifestRejected(400, f"not a release manifest (typ {header.get('typ')!r})")
    if header.get("alg") != "EdDSA":
        raise ManifestRejected(401, f"algorithm {header.get('alg')!r} not accepted (EdDSA only)")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise ManifestRejected(401, f"manifest signed by an unknown release key {kid!r}")
    try:
        raw = jwt.decode(token, keys[kid], algorithms=["EdDSA"],
                         options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                  "verify_aud": False, "verify_iss": False})
    except jwt.InvalidSignatureError:
        raise ManifestRejected(401, "bad manifest signature") from None
    except jwt.PyJWTError as exc:
        raise ManifestRejected(400, f"unreadable manifest: {exc}") from None
    try:
        return msgspec.convert(raw, ReleaseManifest)
    except msgspec.ValidationError as exc:
        raise ManifestRejected(400, f"bad manifest: {exc}") from None
