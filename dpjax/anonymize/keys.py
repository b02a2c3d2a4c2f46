"""Secret keys for pseudonyms and substitution: made, written and read safely.

A key is at least 32 bytes from the operating system's CSPRNG. Whoever holds it
can re-identify pseudonyms by enumeration, so a key file is created readable and
writable by its owner only (mode 0600), never over an existing file, and flushed
to disk before it is reported written; reading a key file that its group or
other users can read or write warns (:class:`KeyFilePermissionWarning`). No
message of this module contains key bytes, only the file's name, length and mode.

Example:
    >>> import os, stat, tempfile
    >>> from dpjax.anonymize import load_key, write_key
    >>> path = os.path.join(tempfile.mkdtemp(), "key.bin")
    >>> key = write_key(path)
    >>> oct(stat.S_IMODE(os.stat(path).st_mode)), load_key(path) == key
    ('0o600', True)
"""

from __future__ import annotations

import os
import secrets
import stat
import warnings
from typing import Any

from dpjax.anonymize.files import fsync_dir

__all__ = [
    "KeyFilePermissionWarning",
    "MAX_ENCRYPTED_KEY_FILE_BYTES",
    "MAX_KEY_FILE_BYTES",
    "MIN_KEY_BYTES",
    "generate_key",
    "load_key",
    "write_key",
]

MIN_KEY_BYTES = 32  # the HMAC-SHA256 output length; shorter keys weaken the PRF bound
MAX_KEY_FILE_BYTES = 4096  # a larger "key file" is a mistake (a data file, /dev/urandom)


# dpjax.crypto.envelope.MAGIC; an envelope of a 4096-byte key with a few recipients fits.
_ENVELOPE_MAGIC = b"DPJAXENC"
MAX_ENCRYPTED_KEY_FILE_BYTES = 65536


def _decrypt(data: bytes, identity: Any, name: str) -> bytes:
    if identity is None:
        raise ValueError(
            f"{name} is encrypted (dpjax encrypt); give the identity that decrypts it "
            "(--key-identity or --key-passphrase-file)"
        )
    if len(data) > MAX_ENCRYPTED_KEY_FILE_BYTES:
        raise ValueError(f"{name} must hold at most {MAX_ENCRYPTED_KEY_FILE_BYTES} bytes")
    from dpjax.crypto import CryptoError, decrypt_bytes

    try:
        return decrypt_bytes(data, identity)
    except CryptoError as e:
        raise ValueError(f"{name} cannot be decrypted: {e}") from None


class KeyFilePermissionWarning(UserWarning):
    """A key file can be read or written by users other than its owner."""


def generate_key() -> bytes:
    """A fresh 32-byte key from the operating system's CSPRNG (``secrets``)."""
    return secrets.token_bytes(MIN_KEY_BYTES)


def _check_key(key: Any, name: str = "key") -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"{name} must be bytes (e.g. generate_key()), got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{name} must hold at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    if len(set(key)) == 1:
        raise ValueError(f"{name} is one byte repeated; use generate_key()")
    return bytes(key)


def write_key(path: str | os.PathLike[str]) -> bytes:
    """Writes a fresh key (:func:`generate_key`) to a new file that only its owner can use.

    The file is created with mode 0600 whatever the umask, and only if nothing
    (not even a dangling symbolic link) has that name; its contents are flushed to
    disk (``fsync``, then the folder's) before the call returns. On any failure no
    file is left behind.

    Privacy: the key is what makes pseudonyms unpredictable. Keep the file apart
    from the data, back it up as a secret, and delete it when linkage is no longer
    needed.

    Args:
      path: the new key file.

    Returns:
      The key, so that it can be used at once.

    Raises:
      FileExistsError: if ``path`` exists; it is left as it was.
    """
    key = generate_key()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FileExistsError(
            f"key file {os.fspath(path)!r} exists; refusing to overwrite a key "
            "(pseudonyms made with it could no longer be joined)"
        ) from None
    try:
        if os.name == "posix":
            os.fchmod(fd, 0o600)
        view = memoryview(key)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return key


def load_key(path: str | os.PathLike[str], *, identity: Any = None) -> bytes:
    """Reads a raw binary key file (32 to 4096 bytes, used whole), or an encrypted one.

    A file written by ``dpjax encrypt`` (a ``dpjax.crypto`` envelope) is
    decrypted with ``identity`` (a private key or ``dpjax.crypto.Passphrase``);
    without one it is refused, never used as raw key bytes (its ciphertext is
    not secret).

    Warns with :class:`KeyFilePermissionWarning` when the file's group or other
    users may read or write it (``chmod 600`` fixes that). Pipes such as
    ``<(vault read ...)`` are accepted as they are.

    Raises:
      ValueError: if the file holds fewer than 32 or more than 4096 bytes, or one
        byte repeated; if it is encrypted and ``identity`` is missing or cannot
        decrypt it.
      OSError: if it cannot be opened (FileNotFoundError, PermissionError ...).
    """
    name = f"key file {os.fspath(path)!r}"
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if os.name == "posix" and stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            warnings.warn(
                f"{name} can be read or written by group or other users (mode {mode:04o}); "
                f"anyone who reads it can re-identify pseudonyms: run chmod 600 on it",
                KeyFilePermissionWarning,
                stacklevel=2,
            )
        data = f.read(MAX_ENCRYPTED_KEY_FILE_BYTES + 1)
    if data.startswith(_ENVELOPE_MAGIC):
        data = _decrypt(data, identity, name)
    elif identity is not None:
        raise ValueError(f"{name} is not encrypted, but an identity to decrypt it was given")
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{name} must hold at most {MAX_KEY_FILE_BYTES} bytes; is it a key?")
    return _check_key(data, name=name)
