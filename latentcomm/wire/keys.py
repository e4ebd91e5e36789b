"""Key files and keyrings for sealed frames: 256-bit keys, their public ids, files only the owner reads.

Both ways of sealing use them: a TCP connection's handshake (:mod:`latentcomm.wire.sealed`) and
frames sealed per stream through a broker (:mod:`latentcomm.wire.broker_seal`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from latentcomm.errors import LatentcommError

log = logging.getLogger(__name__)


KEY_BYTES = 32
KEY_ID_BYTES = 8
KEY_FILE_TAG = "latentcomm-key-v1"


class KeyFileError(LatentcommError):
    """A key file is missing, malformed, the wrong length or readable by other users."""


# -- keys ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A long-term 256-bit key and its public id (which frames carry in clear)."""

    secret: bytes = field(repr=False)
    path: str = ""

    @property
    def key_id(self) -> bytes:
        """8 bytes that name the key without revealing it (an HMAC of a constant under the key)."""
        return hmac.new(self.secret, b"latentcomm key id", hashlib.sha256).digest()[:KEY_ID_BYTES]

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()


def generate_key(path: str | Path) -> Key:
    """Write a new random key to ``path`` (mode 0600, never overwriting a file) and return it."""
    path = Path(path)
    secret = secrets.token_bytes(KEY_BYTES)
    text = f"{KEY_FILE_TAG} {base64.b64encode(secret).decode()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; keygen never overwrites a key (remove it first)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return Key(secret, str(path))


def load_key(path: str | Path) -> Key:
    """Read a key file, refusing anything that isn't exactly a private latentcomm key."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        hint = f"create one with: python -m latentcomm keygen {path}"
        raise KeyFileError(f"key file {path} does not exist ({hint})") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    if st.st_size > 1024:
        raise KeyFileError(f"key file {path} is not a latentcomm key (too long)")
    try:
        tag, b64 = path.read_text(encoding="ascii").split()
        if tag != KEY_FILE_TAG:
            raise ValueError
        secret = base64.b64decode(b64, validate=True)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(
            f"key file {path} is not a latentcomm key (expected one line '{KEY_FILE_TAG} <base64>')"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"key in {path} is {len(secret)} bytes; latentcomm keys are {KEY_BYTES} bytes (256 bits)")
    return Key(secret, str(path))


class Keyring:
    """The keys a receiver accepts (one per sender or fleet), looked up by the id each HELLO carries."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys: dict[bytes, Key] = {}
        for k in keys:
            if k.key_id in self.keys:
                raise KeyFileError(f"{k.path} holds the same key as {self.keys[k.key_id].path}")
            self.keys[k.key_id] = k

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, key_id: bytes) -> Key | None:
        return self.keys.get(key_id)
