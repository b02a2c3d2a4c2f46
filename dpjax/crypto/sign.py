"""Ed25519 signatures over an envelope's header and a digest of its payload.

A detached signature file (``FILE.sig``, one JSON line) lets anyone holding
the signer's public key check, without decrypting, who produced an encrypted
artifact and with what privacy guarantee its header states (``dpjax verify``).

The signed message is::

    b"dpjax-signature-v1\\x00" || header block (magic .. header MAC) || SHA-512(payload)

where the payload is the ciphertext after the header. A signature therefore
fails if any byte of the file changes, if the header is moved to another
payload, or if the signature belongs to another file. The signer named in the
``.sig`` file is not trusted: ``verify_file`` checks against the public keys
the caller trusts.

References: Josefsson, Liusvaara 2017, RFC 8032 (Ed25519).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from dpjax.crypto import envelope, keys
from dpjax.crypto.errors import CryptoError, SignatureError

__all__ = ["check_signing_key", "sign_digest", "sign_file", "verify_file", "signature_path"]

_DOMAIN = b"dpjax-signature-v1\x00"
_FORMAT = "dpjax-signature-v1"
MAX_SIG_FILE_BYTES = 4096


def signature_path(path: str | os.PathLike) -> Path:
    """Returns the default detached-signature path ``path + ".sig"``."""
    p = Path(path)
    return p.with_name(p.name + ".sig")


def check_signing_key(key: Any) -> ed25519.Ed25519PrivateKey:
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError(f"sign_with must be an Ed25519 private key, got {type(key).__name__}")
    return key


def _message(path: Path) -> tuple[bytes, envelope.Header]:
    with open(path, "rb") as f:
        try:
            header = envelope.read_header(f)
        except CryptoError as e:
            raise SignatureError(f"cannot verify {path}: {e}") from None
        h = hashlib.sha512()
        while block := f.read(envelope.READ_SIZE):
            h.update(block)
    return _DOMAIN + header.raw + h.digest(), header


def sign_file(
    path: str | os.PathLike,
    key: ed25519.Ed25519PrivateKey,
    *,
    sig_path: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Signs envelope file ``path`` with ``key``; writes the detached signature.

    Returns:
      The signature file written (default ``path + ".sig"``).
    """
    check_signing_key(key)
    path = Path(path)
    sig_path = signature_path(path) if sig_path is None else Path(sig_path)
    if sig_path.exists() and not overwrite:
        raise FileExistsError(f"signature {sig_path} exists; pass overwrite=True to replace it")
    msg, _ = _message(path)
    return _write_signature(sig_path, key, msg)


def sign_digest(
    path: str | os.PathLike,
    key: ed25519.Ed25519PrivateKey,
    header_raw: bytes,
    payload_sha512: bytes,
) -> Path:
    """Signs ``path`` (replacing ``path + ".sig"``) from its header block and payload digest.

    For writers that hashed the payload ciphertext as they wrote it
    (``encrypt_file``, ``encrypt_tree``): the same signature as ``sign_file``
    without a second pass over the file.
    """
    check_signing_key(key)
    return _write_signature(signature_path(path), key, _DOMAIN + header_raw + payload_sha512)


def _write_signature(sig_path: Path, key: ed25519.Ed25519PrivateKey, msg: bytes) -> Path:
    record = {
        "format": _FORMAT,
        "signer": keys.public_key_line(key),
        "signature": base64.b64encode(key.sign(msg)).decode("ascii"),
    }
    text = json.dumps(record, sort_keys=True) + "\n"
    envelope.write_atomically(sig_path, lambda f: f.write(text.encode()))
    return sig_path


def _load_signature(sig_path: Path) -> bytes:
    try:
        with open(sig_path, "rb") as f:
            raw = f.read(MAX_SIG_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SignatureError(f"no signature file {sig_path}") from None
    try:
        record = json.loads(raw)
        if len(raw) > MAX_SIG_FILE_BYTES or record.get("format") != _FORMAT:
            raise ValueError
        return base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise SignatureError(f"signature file {sig_path} is malformed") from None


def _trusted_keys(trusted: Any) -> list[ed25519.Ed25519PublicKey]:
    if isinstance(trusted, str) or not isinstance(trusted, Iterable):
        trusted = [trusted]
    pubs = [keys.load_public_key(t) for t in trusted]
    if not pubs or not all(isinstance(p, ed25519.Ed25519PublicKey) for p in pubs):
        raise ValueError("trusted must be one or more Ed25519 public keys")
    return pubs


def check_signature(
    path: Path, header_raw: bytes, payload_sha512: bytes, trusted: Any, sig_path: Path | None = None
) -> None:
    """Checks ``path``'s signature over a header block and payload digest already computed.

    Used to verify the exact bytes that were decrypted (one pass over the file).

    Raises:
      SignatureError: as ``verify_file``.
    """
    pubs = _trusted_keys(trusted)
    sig = _load_signature(signature_path(path) if sig_path is None else Path(sig_path))
    msg = _DOMAIN + header_raw + payload_sha512
    for pub in pubs:
        try:
            pub.verify(sig, msg)
            return
        except InvalidSignature:
            continue
    raise SignatureError(
        f"signature on {path} does not verify under any trusted key (the file, its "
        "header or the signature was modified, or another key signed it)"
    )


def verify_file(
    path: str | os.PathLike,
    trusted: Any,
    *,
    sig_path: str | os.PathLike | None = None,
) -> envelope.Header:
    """Checks ``path``'s signature against ``trusted`` Ed25519 public key(s) (``dpjax verify``).

    Args:
      path: the envelope file.
      trusted: an Ed25519 public key (object or one-line text) or a list of them.
      sig_path: the signature file; default ``path + ".sig"``.

    Returns:
      The header, whose ``metadata`` (e.g. the privacy guarantee) is now known
      to come from a trusted signer.

    Raises:
      SignatureError: no signature, malformed, or not valid under any trusted key.

    Example:
      >>> import os, tempfile
      >>> from dpjax.crypto import encrypt_bytes, generate_private_key, public_key_line
      >>> d = tempfile.mkdtemp()
      >>> enc, signer = generate_private_key("x25519"), generate_private_key("ed25519")
      >>> path = os.path.join(d, "run.enc")
      >>> with open(path, "wb") as f:
      ...     _ = f.write(encrypt_bytes(b"record", [enc.public_key()],
      ...                               metadata={"privacy": {"epsilon": 1.0}}))
      >>> _ = sign_file(path, signer)
      >>> verify_file(path, public_key_line(signer)).metadata
      {'privacy': {'epsilon': 1.0}}
    """
    path = Path(path)
    _trusted_keys(trusted)
    sig_path = signature_path(path) if sig_path is None else Path(sig_path)
    _load_signature(sig_path)
    msg, header = _message(path)
    check_signature(path, header.raw, msg[len(_DOMAIN) + len(header.raw) :], trusted, sig_path)
    return header
