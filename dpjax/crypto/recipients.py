"""Key-wrap stanzas: how a file's 32-byte data key reaches each recipient.

One stanza per recipient, in the envelope header (docs/crypto.md):

- ``x25519``: HPKE base mode (RFC 9180), DHKEM(X25519, HKDF-SHA256),
  HKDF-SHA256, AES-256-GCM, ``info = b"dpjax-envelope-v1 x25519"``. Single-shot
  seal of the data key to the recipient's public key (``cryptography``'s
  ``hpke.Suite``).
- ``rsa-oaep-sha256``: RSA-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017),
  label ``b"dpjax-envelope-v1 rsa"``, RSA-3072 keys, for key-management systems
  that only hold RSA keys.
- ``scrypt``: key = scrypt(passphrase, salt, N=2**log_n, r=8, p=1) (RFC 7914),
  then AES-256-GCM of the data key (12-byte random nonce, AD = the stanza
  label and parameters). As in age, a passphrase stanza must be the file's only
  stanza.

Unwrapping failures all read the same (``None``), so an error message cannot
tell which recipient or step failed.
"""

from __future__ import annotations

import base64
import os
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from dpjax.crypto import keys

__all__ = ["Passphrase", "SCRYPT_LOG_N", "wrap", "unwrap", "DATA_KEY_BYTES"]

DATA_KEY_BYTES = 32
SCRYPT_LOG_N = 18  # N = 2**18, r = 8: 256 MiB, about a second (age's default).
SCRYPT_MAX_LOG_N = 22  # decrypting refuses more work than this (denial of service)
SCRYPT_MIN_LOG_N = 1
_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_HPKE_INFO = b"dpjax-envelope-v1 x25519"
_RSA_LABEL = b"dpjax-envelope-v1 rsa"
_SCRYPT_AD = b"dpjax-envelope-v1 scrypt"


@dataclass(frozen=True)
class Passphrase:
    """A passphrase used as a recipient (to encrypt) or an identity (to decrypt).

    The passphrase is NFC-normalized and UTF-8 encoded; its ``repr`` hides it.

    Args:
      passphrase: text or bytes, non-empty.
      log_n: scrypt work factor log2(N) when encrypting; ``None`` is
        ``SCRYPT_LOG_N``. Decrypting reads it from the file (at most
        ``SCRYPT_MAX_LOG_N``).
    """

    passphrase: bytes = field(repr=False)
    log_n: int | None = None

    def __init__(self, passphrase: str | bytes, log_n: int | None = None):
        if isinstance(passphrase, str):
            passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        if not isinstance(passphrase, bytes) or not passphrase:
            raise ValueError("passphrase must be a non-empty str or bytes")
        if log_n is not None and (
            isinstance(log_n, bool)
            or not isinstance(log_n, int)
            or not SCRYPT_MIN_LOG_N <= log_n <= SCRYPT_MAX_LOG_N
        ):
            raise ValueError(
                f"log_n must be an int in [{SCRYPT_MIN_LOG_N}, {SCRYPT_MAX_LOG_N}], got {log_n!r}"
            )
        object.__setattr__(self, "passphrase", passphrase)
        object.__setattr__(self, "log_n", log_n)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


def _scrypt_key(pw: bytes, salt: bytes, log_n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**log_n, r=8, p=1).derive(pw)


def _scrypt_ad(salt: bytes, log_n: int) -> bytes:
    return _SCRYPT_AD + bytes([log_n]) + salt


def normalize_recipient(r: Any) -> Any:
    """Returns an X25519/RSA public key or a ``Passphrase``; one-line keys are parsed."""
    if isinstance(r, Passphrase):
        return r
    pub = keys.load_public_key(r)
    kind = keys.key_kind(pub)
    if kind == "ed25519":
        raise ValueError(
            "recipients must be X25519 or RSA-3072 public keys or a Passphrase, "
            "got an Ed25519 (signing) key"
        )
    return pub


def wrap(data_key: bytes, recipient: Any) -> dict[str, str]:
    """Returns the JSON stanza that carries ``data_key`` to ``recipient``."""
    if isinstance(recipient, Passphrase):
        log_n = SCRYPT_LOG_N if recipient.log_n is None else recipient.log_n
        salt = os.urandom(16)
        nonce = os.urandom(12)
        ct = AESGCM(_scrypt_key(recipient.passphrase, salt, log_n)).encrypt(
            nonce, data_key, _scrypt_ad(salt, log_n)
        )
        return {"type": "scrypt", "log_n": log_n, "salt": _b64(salt), "body": _b64(nonce + ct)}
    if isinstance(recipient, x25519.X25519PublicKey):
        return {"type": "x25519", "body": _b64(_HPKE.encrypt(data_key, recipient, _HPKE_INFO))}
    if isinstance(recipient, rsa.RSAPublicKey):
        ct = recipient.encrypt(data_key, _oaep())
        return {"type": "rsa-oaep-sha256", "body": _b64(ct)}
    raise TypeError(f"unsupported recipient type {type(recipient).__name__}")


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=_RSA_LABEL
    )


def unwrap(stanza: dict[str, Any], identity: Any) -> bytes | None:
    """Returns the data key if ``identity`` opens ``stanza``, else ``None``.

    Raises:
      ValueError: a passphrase stanza asks for more scrypt work than
        ``SCRYPT_MAX_LOG_N`` (refused before any work).
    """
    kind = stanza.get("type")
    body = _unb64(stanza.get("body"))
    if body is None:
        return None
    if kind == "scrypt" and isinstance(identity, Passphrase):
        log_n, salt = stanza.get("log_n"), _unb64(stanza.get("salt"))
        if isinstance(log_n, bool) or not isinstance(log_n, int) or salt is None:
            return None
        if not SCRYPT_MIN_LOG_N <= log_n <= SCRYPT_MAX_LOG_N:
            raise ValueError(
                f"scrypt log_n in the file must be in [{SCRYPT_MIN_LOG_N}, "
                f"{SCRYPT_MAX_LOG_N}], got {log_n}"
            )
        if len(salt) != 16 or len(body) != 12 + DATA_KEY_BYTES + 16:
            return None
    try:
        if kind == "scrypt" and isinstance(identity, Passphrase):
            key = _scrypt_key(identity.passphrase, salt, log_n)
            out = AESGCM(key).decrypt(body[:12], body[12:], _scrypt_ad(salt, log_n))
        elif kind == "x25519" and isinstance(identity, x25519.X25519PrivateKey):
            out = _HPKE.decrypt(body, identity, _HPKE_INFO)
        elif kind == "rsa-oaep-sha256" and isinstance(identity, rsa.RSAPrivateKey):
            out = identity.decrypt(body, _oaep())
        else:
            return None
    except (InvalidTag, ValueError):
        return None
    return out if len(out) == DATA_KEY_BYTES else None


IDENTITY_TYPES = (x25519.X25519PrivateKey, rsa.RSAPrivateKey, Passphrase)
