"""Errors raised by ``dpjax.crypto``.

Messages name what failed and what to check; they never contain key bytes,
data keys, passphrases or plaintext.
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "DecryptionError",
    "KeyFileError",
    "KeyPermissionWarning",
    "SignatureError",
]


class CryptoError(Exception):
    """Base class of every error ``dpjax.crypto`` raises on bad files or keys."""


class DecryptionError(CryptoError):
    """A file could not be decrypted: wrong key, or modified, truncated, swapped data.

    No plaintext is released when this is raised.
    """


class SignatureError(CryptoError):
    """A signature is missing, malformed, or does not verify under the trusted keys."""


class KeyFileError(CryptoError):
    """A key file or one-line public key cannot be read as the expected kind of key."""


class KeyPermissionWarning(UserWarning):
    """A private key file is readable or writable by users other than its owner."""
