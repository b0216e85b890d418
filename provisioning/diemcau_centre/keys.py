"""The centre's Ed25519 signing key: made once, kept private, read to sign commands.

The private key is PKCS8 PEM, mode 0600; the public key is written beside it
(SubjectPublicKeyInfo PEM). A box trusts the key through one line of its
``[commands] centre_keys`` table, which :func:`box_config_line` prints.

    >>> pair = init_keys(Path("/srv/centre"))
    >>> print(box_config_line(pair.public_key))
    "3f2a9c0d11be" = "q1rW...8"
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from diemcau.config import ConfigError
from diemcau.protocol import generate_signing_key, key_id, public_key_to_text

PRIVATE_NAME = "centre-signing.key"
PUBLIC_NAME = "centre-signing.pub"


class KeyExists(Exception):
    """A key is already there and was not to be overwritten."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_file: Path
    public_file: Path
    public_key: Ed25519PublicKey

    @property
    def kid(self) -> str:
        return key_id(self.public_key)


def box_config_line(public_key: Ed25519PublicKey, kid: str | None = None) -> str:
    """The line for a box's ``[commands] centre_keys`` table."""
    return f'"{kid or key_id(public_key)}" = "{public_key_to_text(public_key)}"'


def _write(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    """Write ``data`` whole or not at all; never replace a file unless ``force``."""
    from .files import write_atomic  # files imports KeyExists from here

    write_atomic(path, data, mode, replace=force)


def init_keys(directory: Path, *, force: bool = False, private_name: str = PRIVATE_NAME,
              public_name: str = PUBLIC_NAME) -> KeyPair:
    """Make a new key pair in ``directory``; raise KeyExists rather than overwrite.

    The release key (``diemcau-centre release keys init``) is made the same
    way under other names.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_file, public_file = directory / private_name, directory / public_name
    if not force:
        for existing in (private_file, public_file):
            if existing.exists():
                raise KeyExists(f"{existing} already exists (use --force to replace it)")
    key = generate_signing_key()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write(private_file, private_pem, 0o600, force=force)
    _write(public_file, public_pem, 0o644, force=force)
    return KeyPair(private_file, public_file, key.public_key())


def load_signing_key(path: str | Path, setting: str = "signing.key_file") -> Ed25519PrivateKey:
    """Read the private key; raise ConfigError naming ``setting`` if it cannot be used.

    A key that other users can read is refused, as ssh does: anyone who can
    read it can command every box.
    """
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"{setting}: cannot read: {exc.strerror}"]) from None
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(str(path), [
            f"{setting}: readable by other users (mode {mode:04o}); run: chmod 600 {path}"])
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(path), [f"{setting}: not an unencrypted PEM private key ({exc})"]
                          ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(str(path), [f"{setting}: not an Ed25519 key"])
    return key
