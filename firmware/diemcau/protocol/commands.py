"""Signed commands: the centre signs them, the box verifies them.

A command is a compact JWS (EdDSA over Ed25519) made with PyJWT. The header's
``kid`` names the centre key that signed it. The box checks, in this order:
shape, signature (401), claims (400), audience (403), lifetime (401), issued
in the future (401), expiry (410). The last two need a synchronised clock. The
replay check comes after, in :mod:`diemcau.protocol.replay`, because it needs
the box's memory of earlier results.

    >>> key = generate_signing_key()
    >>> token = sign_command(key, "k1", aud="c00001-r1", cmd="audio.mute")
    >>> verify_command(token, {"k1": key.public_key()}, {"c00001-r1"}, now=time.time()).cmd
    'audio.mute'
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .messages import DEFAULT_TTL_S, MAX_TOKEN_LIFETIME_S, CommandClaims

# A command is small: anything much larger is hostile or broken.
MAX_COMMAND_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Command:
    """A command whose signature, audience, lifetime and times have been checked."""

    id: str
    cmd: str
    aud: str
    iat: float
    exp: float
    args: dict[str, Any]
    kid: str


class CommandRejected(Exception):
    """Why a command was refused, with what the reply needs.

    ``id`` and ``cmd`` are taken, unverified, from the token when they can be
    read, so that even a forged command gets an answer the sender can match.
    """

    def __init__(self, status: str, code: int, detail: str, *, id: str | None = None,
                 cmd: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.id = id
        self.cmd = cmd


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable id for a public key: the first 12 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:12]


def public_key_to_text(public_key: Ed25519PublicKey) -> str:
    """The raw 32-byte key in URL-safe base64, as written in a box's config."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Read a key written by :func:`public_key_to_text` (or a PEM block)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_keys_from_text(texts: dict[str, str], path: str,
                          ) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """Each ``kid: key`` read; a problem naming ``path.kid`` for each that cannot be."""
    keys, problems = {}, []
    for kid, text in texts.items():
        try:
            keys[kid] = public_key_from_text(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the key's fault
            problems.append(f"{path}.{kid}: not an Ed25519 public key ({exc})")
    return keys, problems


def sign_command(
    key: Ed25519PrivateKey,
    kid: str,
    *,
    aud: str,
    cmd: str,
    args: Mapping[str, Any] | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    jti: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a command for ``aud`` (a device id or ``group:{group}``), valid ``ttl_s`` seconds.

    ``ttl_s`` is 1 to :data:`MAX_TOKEN_LIFETIME_S` (one day): a box refuses a
    command valid for longer than its ``commands.max_token_lifetime_s``, one
    day by default, so this does not make one.

        >>> sign_command(generate_signing_key(), "k1", aud="c00001-r1", cmd="audio.mute",
        ...              ttl_s=2 * 86400)
        Traceback (most recent call last):
        ...
        ValueError: ttl_s must be 1-86400 s, not 172800: a box refuses a command valid for longer ...
    """
    if not 1 <= ttl_s <= MAX_TOKEN_LIFETIME_S:
        raise ValueError(f"ttl_s must be 1-{MAX_TOKEN_LIFETIME_S} s, not {ttl_s}: a box refuses a"
                         " command valid for longer than its commands.max_token_lifetime_s"
                         f" (default {MAX_TOKEN_LIFETIME_S} s)")
    issued = time.time() if now is None else now
    claims = {
        "jti": jti or uuid.uuid4().hex,
        "aud": aud,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
        "cmd": cmd,
        "args": dict(args or {}),
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def _unverified_ids(token: str) -> tuple[str | None, str | None]:
    """jti and cmd from a token we do not (yet) trust, for the reply only."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except Exception:  # noqa: BLE001 - anything unreadable is simply unattributed
        return None, None
    if not isinstance(claims, dict):
        return None, None
    jti, cmd = claims.get("jti"), claims.get("cmd")
    jti = jti if isinstance(jti, str) and 0 < len(jti) <= 128 else None
    cmd = cmd if isinstance(cmd, str) and 0 < len(cmd) <= 64 else None
    return jti, cmd


def verify_command(
    payload: bytes | str,
    keys: Mapping[str, Ed25519PublicKey],
    audiences: set[str] | frozenset[str],
    *,
    now: float,
    clock_synced: bool = True,
    leeway_s: float = 30.0,
    max_lifetime_s: float = MAX_TOKEN_LIFETIME_S,
) -> Command:
    """Check a command; return it, or raise CommandRejected saying why.

    ``exp - iat`` above ``max_lifetime_s`` is refused whatever the clock says:
    it needs none. ``leeway_s`` is the clock tolerance both ways: a command
    issued more than that ahead of ``now`` is not yet valid, one more than
    that past its ``exp`` has expired. When the box's clock is not
    synchronised, neither can be judged (the clock may be years behind) and
    both are skipped: the MQTT message expiry the centre sets still drops
    stale commands.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected("rejected", 400, f"command too large ({len(payload)} bytes)")
    try:
        token = payload.decode("ascii") if isinstance(payload, bytes) else payload
        header = jwt.get_unverified_header(token)
    except (UnicodeDecodeError, jwt.InvalidTokenError) as exc:
        # InvalidTokenError, not only DecodeError: PyJWT also raises it for a
        # header whose `kid` is not a string or whose `crit` it does not know.
        raise CommandRejected("rejected", 400, f"not a signed command: {exc}") from None
    jti, name = _unverified_ids(token)

    def reject(status: str, code: int, detail: str) -> CommandRejected:
        return CommandRejected(status, code, detail, id=jti, cmd=name)

    kid = header.get("kid")
    if header.get("alg") != "EdDSA":
        raise reject("rejected", 401, f"algorithm {header.get('alg')!r} not accepted (EdDSA only)")
    if not isinstance(kid, str) or kid not in keys:
        raise reject("rejected", 401, f"unknown signing key {kid!r}")
    try:
        raw = jwt.decode(
            token,
            keys[kid],
            algorithms=["EdDSA"],
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                     "verify_nbf": False, "verify_iss": False, "verify_sub": False,
                     "verify_jti": False},
        )
    except jwt.InvalidSignatureError:
        raise reject("rejected", 401, "bad signature") from None
    except jwt.PyJWTError as exc:
        raise reject("rejected", 400, f"unreadable command: {exc}") from None
    try:
        claims = msgspec.convert(raw, CommandClaims)
    except msgspec.ValidationError as exc:
        raise reject("rejected", 400, f"bad claims: {exc}") from None
    if not 0 < len(claims.jti) <= 128:
        raise reject("rejected", 400, "bad claims: jti must be 1-128 characters")
    if claims.aud not in audiences:
        raise reject("rejected", 403, f"audience {claims.aud!r} is not this box")
    if not (math.isfinite(claims.iat) and math.isfinite(claims.exp)):
        raise reject("rejected", 400, "bad claims: iat and exp must be finite numbers")
    if claims.exp <= claims.iat:
        raise reject("rejected", 400, "bad claims: exp is not after iat")
    lifetime = claims.exp - claims.iat
    if lifetime > max_lifetime_s:
        raise reject("rejected", 401, f"lifetime {_seconds(lifetime)} s is longer than the"
                                      f" {_seconds(max_lifetime_s)} s allowed")
    if clock_synced and claims.iat > now + leeway_s:
        ahead = claims.iat - now  # rounded up, so never to the allowance itself
        ahead_text = _seconds(math.ceil(ahead) if math.isfinite(ahead) else ahead)
        raise reject("rejected", 401, f"not yet valid: issued {ahead_text} s ahead of this"
                                      f" box's clock ({_seconds(leeway_s)} s allowed)")
    if clock_synced and now > claims.exp + leeway_s:
        raise reject("expired", 410, f"expired {now - claims.exp:.0f} s ago")
    return Command(id=claims.jti, cmd=claims.cmd, aud=claims.aud, iat=claims.iat,
                   exp=claims.exp, args=claims.args, kid=kid)


def _seconds(value: float) -> str:
    """Seconds for a reply's detail: ``172800``, ``86400.5``; ``1e+300`` for a hostile claim."""
    return format(value, ".10g")
