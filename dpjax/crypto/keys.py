"""Key pairs: X25519 (encryption), Ed25519 (signing), RSA-3072 (RSA-OAEP-SHA256).

Private keys are written as PKCS#8 PEM, created with mode 0600 (never
overwriting a file). With a passphrase, the PEM is wrapped in a dpjax envelope
(docs/crypto.md) whose only recipient is the passphrase (scrypt), so the key
file needs the passphrase to load. Loading a private key file that group or
others can read or write warns (``KeyPermissionWarning``).

Public keys print as one line that can be pasted into a config:
``dpjax-x25519:<base64url>``, ``dpjax-ed25519:<base64url>`` (the raw 32-byte
keys, RFC 7748 / RFC 8032) and ``dpjax-rsa3072:<base64url of the DER
SubjectPublicKeyInfo>``.

References: Langley, Hamburg, Turner 2016, RFC 7748 (X25519); Josefsson,
Liusvaara 2017, RFC 8032 (Ed25519); Moriarty et al. 2016, RFC 8017 (RSA-OAEP).
"""

from __future__ import annotations

import base64
import os
import stat
import warnings
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from dpjax.crypto.errors import DecryptionError, KeyFileError, KeyPermissionWarning

__all__ = [
    "KEY_KINDS",
    "PrivateKey",
    "PublicKey",
    "generate_private_key",
    "keygen",
    "load_private_key",
    "load_public_key",
    "public_key_line",
    "read_public_key",
    "write_private_key",
]

KEY_KINDS = ("x25519", "ed25519", "rsa3072")
RSA_BITS = 3072

PrivateKey = x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = x25519.X25519PublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

_PEM_BEGIN = b"-----BEGIN PRIVATE KEY-----"


def _kind_check(kind: str) -> str:
    if kind not in KEY_KINDS:
        raise ValueError(f"kind must be one of {KEY_KINDS}, got {kind!r}")
    return kind


def generate_private_key(kind: str) -> PrivateKey:
    """Returns a fresh private key of ``kind`` from the OS's entropy.

    Args:
      kind: ``"x25519"``, ``"ed25519"`` or ``"rsa3072"``.

    Returns:
      The private key object (``cryptography`` type).

    Example:
      >>> key = generate_private_key("x25519")
      >>> public_key_line(key).startswith("dpjax-x25519:")
      True
    """
    _kind_check(kind)
    if kind == "x25519":
        return x25519.X25519PrivateKey.generate()
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def key_kind(key: PrivateKey | PublicKey) -> str:
    """Returns ``"x25519"``, ``"ed25519"`` or ``"rsa3072"`` for a supported key."""
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "x25519"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size != RSA_BITS:
            raise KeyFileError(f"RSA keys must have {RSA_BITS} bits, got {key.key_size}")
        return "rsa3072"
    raise TypeError(f"expected an X25519, Ed25519 or RSA-{RSA_BITS} key, got {type(key).__name__}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise KeyFileError("public key is not valid base64url") from None


def public_key_line(key: PrivateKey | PublicKey) -> str:
    """Returns the one-line text form of ``key``'s public key.

    Example:
      >>> line = public_key_line(generate_private_key("ed25519"))
      >>> load_public_key(line) is not None
      True
    """
    kind = key_kind(key)
    pub = key.public_key() if hasattr(key, "public_key") else key
    if kind == "rsa3072":
        data = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        data = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"dpjax-{kind}:{_b64(data)}"


def load_public_key(line: str | PublicKey) -> PublicKey:
    """Parses a one-line public key (``public_key_line``); key objects pass through.

    Raises:
      KeyFileError: the text is not a dpjax public key line.
    """
    if not isinstance(line, str):
        key_kind(line)
        if hasattr(line, "private_bytes"):
            raise TypeError("expected a public key, got a private key")
        return line
    text = line.strip()
    prefix, sep, body = text.partition(":")
    kind = prefix.removeprefix("dpjax-")
    if not sep or not prefix.startswith("dpjax-") or kind not in KEY_KINDS:
        raise KeyFileError(
            "public key must look like 'dpjax-KIND:BASE64' with KIND one of "
            f"{KEY_KINDS}, got a line starting {text[:14]!r}"
        )
    data = _unb64(body)
    try:
        if kind == "x25519":
            return x25519.X25519PublicKey.from_public_bytes(data)
        if kind == "ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        pub = serialization.load_der_public_key(data)
    except ValueError:
        raise KeyFileError(f"public key is not a valid {kind} key") from None
    if not isinstance(pub, rsa.RSAPublicKey) or pub.key_size != RSA_BITS:
        raise KeyFileError(f"public key is not a valid {kind} key")
    return pub


def read_public_key(text_or_path: str | os.PathLike) -> PublicKey:
    """A public key from a one-line key (``dpjax-KIND:...``) or a file holding one (``.pub``).

    Raises:
      KeyFileError: neither a key line nor a file whose first line is one.
    """
    text = str(text_or_path)
    if text.startswith("dpjax-"):
        return load_public_key(text)
    path = Path(text)
    if not path.is_file():
        raise KeyFileError(
            f"public key must be a line 'dpjax-KIND:BASE64' or a .pub file, got {text[:80]!r}"
        )
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline(4096)
    return load_public_key(first)


def _write_new_private_file(path: Path, data: bytes) -> None:
    """Creates ``path`` with mode 0600 (refusing to replace a file) and writes ``data``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"refusing to overwrite existing key file {path}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_private_key(
    key: PrivateKey,
    path: str | os.PathLike,
    *,
    passphrase: str | bytes | None = None,
    scrypt_log_n: int | None = None,
) -> Path:
    """Writes ``key`` to a new file ``path`` with mode 0600.

    Args:
      key: a private key (``generate_private_key``).
      path: the file to create; an existing file is never overwritten.
      passphrase: if given, the key file is encrypted under it (scrypt, then
        the dpjax envelope with a passphrase recipient).
      scrypt_log_n: scrypt work factor log2(N); ``None`` is the production
        default (``dpjax.crypto.recipients.SCRYPT_LOG_N``). Lower only in tests.

    Returns:
      The path written.

    Raises:
      FileExistsError: ``path`` exists.
    """
    key_kind(key)
    path = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if passphrase is not None:
        from dpjax.crypto import envelope, recipients  # envelope imports keys

        pw = recipients.Passphrase(passphrase, log_n=scrypt_log_n)
        pem = envelope.encrypt_bytes(pem, [pw], metadata={"content": "private-key"})
    _write_new_private_file(path, pem)
    return path


def _warn_if_loose(path: Path, st: os.stat_result) -> None:
    if st.st_mode & 0o077:
        warnings.warn(
            f"private key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users "
            f"may read or replace it; run `chmod 600 {path}`",
            KeyPermissionWarning,
            stacklevel=3,
        )


def read_passphrase_file(path: str | os.PathLike, what: str = "--passphrase-file") -> str:
    """The passphrase on the first line of file ``path`` (never from a command line).

    Raises:
      ValueError: naming ``what``, for an empty file.
    """
    text = Path(path).read_text(encoding="utf-8")
    line = text.splitlines()[0] if text else ""
    if not line:
        raise ValueError(f"{what} {path} is empty; put the passphrase on its first line")
    return line


def load_private_key(
    path: str | os.PathLike, *, passphrase: str | bytes | None = None
) -> PrivateKey:
    """Loads a private key file written by ``write_private_key``.

    Warns (``KeyPermissionWarning``) when group or others have any access.

    Raises:
      KeyFileError: not a key file, the passphrase is missing or wrong.
    """
    path = Path(path)
    with open(path, "rb") as f:
        _warn_if_loose(path, os.fstat(f.fileno()))
        data = f.read()
    from dpjax.crypto import envelope, recipients  # envelope imports keys

    if data.startswith(envelope.MAGIC):
        if passphrase is None:
            raise KeyFileError(f"key file {path} is passphrase-protected: give passphrase=")
        try:
            data = envelope.decrypt_bytes(data, [recipients.Passphrase(passphrase)])
        except DecryptionError:
            raise KeyFileError(
                f"wrong passphrase for key file {path}, or the file was modified"
            ) from None
    elif not data.startswith(_PEM_BEGIN):
        raise KeyFileError(f"{path} is not a dpjax private key file (PKCS#8 PEM)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} does not hold a valid private key") from None
    try:
        key_kind(key)
    except TypeError:
        raise KeyFileError(f"{path} holds an unsupported kind of key") from None
    return key


def keygen(
    kind: str,
    path: str | os.PathLike,
    *,
    passphrase: str | bytes | None = None,
    scrypt_log_n: int | None = None,
) -> str:
    """Makes a key pair, writes the private key to ``path`` (0600), returns the public line.

    This is the logic of ``dpjax keygen``; the public key is also written
    beside the private key as ``path + ".pub"`` (one line).

    Example:
      >>> import tempfile, os
      >>> d = tempfile.mkdtemp()
      >>> line = keygen("x25519", os.path.join(d, "id"))
      >>> oct(os.stat(os.path.join(d, "id")).st_mode & 0o777)
      '0o600'
    """
    _kind_check(kind)
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists():
            raise FileExistsError(f"refusing to overwrite existing key file {p}")
    key = generate_private_key(kind)
    write_private_key(key, path, passphrase=passphrase, scrypt_log_n=scrypt_log_n)
    line = public_key_line(key)
    pub_path.write_text(line + "\n")
    return line
