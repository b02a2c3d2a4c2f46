"""Envelope encryption of files: a fresh data key per file, wrapped per recipient.

The age / Tink pattern on standards (layout byte by byte in docs/crypto.md):
the payload is C2SP chunked-encryption, Cobblestone-256 (AES-256-GCM, 16 KiB
chunks, counter nonces with a last-chunk flag, so truncation, reordering and
chunk swaps between files fail); the data key reaches each recipient in a
stanza (``dpjax.crypto.recipients``: HPKE for X25519, RSA-OAEP-SHA256, scrypt).
The header (version, algorithms, stanzas, the artifact's metadata) is
authenticated by an HMAC-SHA256 under a key derived from the data key, and its
SHA-256 is the Cobblestone context, so a header cannot be moved to another file
nor its metadata edited.

Decryption streams into a temporary file beside the output and renames it
only after the last chunk authenticates; on any error the temporary file is
removed, so no partial plaintext is ever left or returned.

Streaming uses two preallocated buffers of about ``READ_SIZE`` bytes: the
input is read with ``readinto`` and encrypted or decrypted with Cobblestone's
``update_into``, so a multi-GB file costs a few MiB of memory and no per-chunk
allocation; the payload is hashed only when a signature is checked.

References: C2SP chunked-encryption (c2sp.org/chunked-encryption); Barnes et
al. 2022, RFC 9180 (HPKE); Krawczyk, Eronen 2010, RFC 5869 (HKDF); Valsorda,
age-encryption.org/v1 (header MAC, stanza design).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dpjax.crypto import recipients as _rc
from dpjax.crypto.errors import DecryptionError

__all__ = [
    "MAGIC",
    "Header",
    "decrypt_bytes",
    "decrypt_file",
    "encrypt_bytes",
    "encrypt_file",
    "read_header",
]

MAGIC = b"DPJAXENC"
VERSION = 1
PAYLOAD_ALG = "c2sp-chunked-encryption/cobblestone-256"
MAX_HEADER_BYTES = 1 << 20
MAX_STANZAS = 256
MAC_BYTES = 32
CHUNK_BYTES = 1 << 14  # Cobblestone's plaintext chunk (16 KiB); 16-byte tag per chunk
READ_SIZE = 1 << 18  # bytes read per step: 16 Cobblestone chunks
# update_into may emit up to a chunk of input held back from the previous call, the
# stream prefix and one tag per chunk
_OUT_SLACK = 64 + CHUNK_BYTES + 16 * (READ_SIZE // CHUNK_BYTES + 2)
_PREFIX = len(MAGIC) + 1 + 4
_INFO_MAC = b"dpjax-envelope-v1 header-mac"
_INFO_PAYLOAD = b"dpjax-envelope-v1 payload"
_CONTEXT = b"dpjax-envelope-v1 payload context\x00"


def _new_data_key() -> bytes:
    return os.urandom(_rc.DATA_KEY_BYTES)


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


class Header:
    """The parsed, not yet authenticated, header of an envelope file.

    Attributes:
      raw: the header block as stored (magic .. MAC), what the MAC, the
        payload context and signatures cover.
      fields: the JSON header (``version``, ``payload``, ``recipients``,
        ``metadata``).
    """

    def __init__(self, raw: bytes, fields: dict[str, Any]):
        self.raw = raw
        self.fields = fields

    @property
    def metadata(self) -> dict[str, Any]:
        return self.fields["metadata"]

    def __repr__(self) -> str:
        return f"Header(metadata={self.metadata!r})"


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON (finite numbers, str keys): {e}") from None
    return metadata


def _normalize_recipients(recipients: Iterable[Any]) -> list[Any]:
    if isinstance(recipients, str | bytes) or not isinstance(recipients, Iterable):
        raise TypeError("recipients must be a list of public keys or Passphrase")
    rs = [_rc.normalize_recipient(r) for r in recipients]
    if not rs:
        raise ValueError("recipients must hold at least 1 recipient, got 0")
    if len(rs) > MAX_STANZAS:
        raise ValueError(f"recipients must hold at most {MAX_STANZAS}, got {len(rs)}")
    if any(isinstance(r, _rc.Passphrase) for r in rs) and len(rs) > 1:
        raise ValueError("a Passphrase must be the only recipient of a file (as in age)")
    return rs


def _header_block(data_key: bytes, rs: list[Any], metadata: dict[str, Any]) -> bytes:
    fields = {
        "version": VERSION,
        "payload": PAYLOAD_ALG,
        "recipients": [_rc.wrap(data_key, r) for r in rs],
        "metadata": metadata,
    }
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(f"header must be at most {MAX_HEADER_BYTES} bytes, got {len(body)}")
    head = MAGIC + bytes([VERSION]) + len(body).to_bytes(4, "big") + body
    mac = hmac.new(_derive(data_key, _INFO_MAC), head, hashlib.sha256).digest()
    return head + mac


class _Writer(io.RawIOBase):
    """A write-only stream that encrypts into ``out`` (header written on creation).

    Input of any size is encrypted ``READ_SIZE`` bytes at a time into one
    reused output buffer, so memory stays bounded and nothing is copied
    besides the ciphertext itself. ``payload_hash`` (a ``hashlib`` object),
    if given, is updated with the payload ciphertext as it is written, so a
    signature needs no second pass over the file.
    """

    def __init__(self, out: IO[bytes], data_key: bytes, header: bytes, payload_hash: Any = None):
        self._out = out
        self._hash = payload_hash
        self._enc = Cobblestone256Encryptor(
            _derive(data_key, _INFO_PAYLOAD), _CONTEXT + hashlib.sha256(header).digest()
        )
        self._buf = bytearray(READ_SIZE + _OUT_SLACK)
        self._view = memoryview(self._buf)
        out.write(header)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for i in range(0, len(view), READ_SIZE):
            n = self._enc.update_into(view[i : i + READ_SIZE], self._buf)
            self._emit(self._view[:n])
        return len(view)

    def write_from(self, f: IO[bytes]) -> None:
        """Encrypts the rest of the binary file ``f`` (``readinto`` a reused buffer)."""
        inbuf = bytearray(READ_SIZE)
        inview = memoryview(inbuf)
        while n := f.readinto(inbuf):
            m = self._enc.update_into(inview[:n], self._buf)
            self._emit(self._view[:m])

    def _emit(self, ciphertext) -> None:
        if self._hash is not None:
            self._hash.update(ciphertext)
        self._out.write(ciphertext)

    def finish(self) -> None:
        self._emit(self._enc.finalize())


def _start(out: IO[bytes], recipients: Iterable[Any], metadata: dict[str, Any] | None) -> _Writer:
    rs = _normalize_recipients(recipients)
    md = _check_metadata(metadata)
    data_key = _new_data_key()
    return _Writer(out, data_key, _header_block(data_key, rs, md))


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DecryptionError("file is truncated inside the header")
    return data


def read_header(f: IO[bytes] | str | os.PathLike) -> Header:
    """Reads and parses an envelope header (not authenticated: see ``open_payload``).

    Raises:
      DecryptionError: not a dpjax envelope, unsupported version, malformed header.
    """
    if not hasattr(f, "read"):
        with open(f, "rb") as fh:
            return read_header(fh)
    prefix = f.read(_PREFIX)
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise DecryptionError("not a dpjax envelope file (bad magic bytes)")
    if len(prefix) < _PREFIX:
        raise DecryptionError("file is truncated inside the header")
    if prefix[len(MAGIC)] != VERSION:
        raise DecryptionError(f"envelope version must be {VERSION}, got {prefix[len(MAGIC)]}")
    n = int.from_bytes(prefix[len(MAGIC) + 1 :], "big")
    if n > MAX_HEADER_BYTES:
        raise DecryptionError(f"header length must be at most {MAX_HEADER_BYTES}, got {n}")
    body = _read_exact(f, n)
    mac = _read_exact(f, MAC_BYTES)
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DecryptionError("header is not valid JSON (the file was modified)") from None
    ok = (
        isinstance(fields, dict)
        and fields.get("version") == VERSION
        and fields.get("payload") == PAYLOAD_ALG
        and isinstance(fields.get("recipients"), list)
        and 0 < len(fields["recipients"]) <= MAX_STANZAS
        and all(isinstance(s, dict) for s in fields["recipients"])
        and isinstance(fields.get("metadata"), dict)
    )
    if ok and len(fields["recipients"]) > 1:
        # As in age: a passphrase stanza must be alone (checked on reading too).
        ok = all(s.get("type") != "scrypt" for s in fields["recipients"])
    if not ok:
        raise DecryptionError("header fields are malformed or unsupported (the file was modified)")
    return Header(prefix + body + mac, fields)


def _normalize_identities(identities: Any) -> list[Any]:
    if not isinstance(identities, list | tuple):
        identities = [identities]
    if not identities:
        raise ValueError("identities must hold at least 1 private key or Passphrase, got 0")
    for ident in identities:
        if not isinstance(ident, _rc.IDENTITY_TYPES):
            raise TypeError(
                "identities must be X25519 or RSA private keys or a Passphrase, got "
                f"{type(ident).__name__} (load a key file with load_private_key)"
            )
    return list(identities)


def open_payload(f: IO[bytes], identities: Any) -> tuple[Header, Cobblestone256Decryptor]:
    """Reads the header of ``f``, unwraps the data key, authenticates the header.

    Returns the header and a decryptor for the rest of ``f``. Chunks it
    returns are authenticated one by one; truncation is only detected by
    ``finalize()``, so callers must not release plaintext before it returns.

    Raises:
      DecryptionError: no identity opens a stanza, or the header was modified.
    """
    ids = _normalize_identities(identities)
    header = read_header(f)
    data_key = None
    for stanza in header.fields["recipients"]:
        for ident in ids:
            data_key = _rc.unwrap(stanza, ident)
            if data_key is not None:
                break
        if data_key is not None:
            break
    if data_key is None:
        raise DecryptionError(
            "no identity given can open this file (wrong key or passphrase, or the "
            "recipient stanzas were modified)"
        )
    head, mac = header.raw[:-MAC_BYTES], header.raw[-MAC_BYTES:]
    expect = hmac.new(_derive(data_key, _INFO_MAC), head, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expect):
        raise DecryptionError(
            "header authentication failed: the header was modified or belongs to another file"
        )
    dec = Cobblestone256Decryptor(
        _derive(data_key, _INFO_PAYLOAD), _CONTEXT + hashlib.sha256(header.raw).digest()
    )
    return header, dec


_PAYLOAD_ERROR = (
    "payload authentication failed: the file was modified, truncated or reordered, "
    "or its header belongs to another file"
)


def decrypt_stream(src: IO[bytes], identities: Any, sink, payload_hash: Any = None) -> Header:
    """Decrypts binary file ``src`` into ``sink(chunk)``; raises before returning on any failure.

    ``sink`` receives chunks before the end authenticates: it must write to
    a place that is discarded on error (``decrypt_file`` uses a temp file).
    Each chunk is a ``memoryview`` of a reused buffer, valid only during the
    call: a sink that keeps it must copy it (``bytes(chunk)``).
    ``payload_hash`` (a ``hashlib`` object), if given, is updated with the
    payload ciphertext as read, in the same pass, so a signature can be
    checked against the very bytes that were decrypted; without it the
    payload is not hashed (the AEAD tags alone authenticate it).
    """
    header, dec = open_payload(src, identities)
    decrypt_payload(src, dec, sink, payload_hash)
    return header


def decrypt_payload(
    src: IO[bytes], dec: Cobblestone256Decryptor, sink, payload_hash: Any = None
) -> None:
    """The payload part of ``decrypt_stream``, after ``open_payload`` (same contract)."""
    inbuf = bytearray(READ_SIZE)
    inview = memoryview(inbuf)
    outbuf = bytearray(READ_SIZE + _OUT_SLACK)
    outview = memoryview(outbuf)
    try:
        while n := src.readinto(inbuf):
            block = inview[:n]
            if payload_hash is not None:
                payload_hash.update(block)
            m = dec.update_into(block, outbuf)
            if m:
                sink(outview[:m])
        sink(memoryview(dec.finalize()))
    except InvalidTag:
        raise DecryptionError(_PAYLOAD_ERROR) from None


def encrypt_bytes(
    data: bytes, recipients: Iterable[Any], *, metadata: dict[str, Any] | None = None
) -> bytes:
    """Encrypts ``data`` in memory (small artifacts: key files, run records).

    Example:
      >>> from dpjax.crypto import keys
      >>> k = keys.generate_private_key("x25519")
      >>> ct = encrypt_bytes(b"hi", [k.public_key()], metadata={"epsilon": 1.0})
      >>> decrypt_bytes(ct, [k])
      b'hi'
    """
    out = io.BytesIO()
    w = _start(out, recipients, metadata)
    w.write(data)
    w.finish()
    return out.getvalue()


def decrypt_bytes(data: bytes, identities: Any) -> bytes:
    """Decrypts ``encrypt_bytes`` output; on failure raises ``DecryptionError``, returns nothing."""
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(data), identities, out.write)
    return out.getvalue()


def _temp_beside(dst: Path) -> tuple[IO[bytes], Path]:
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb"), Path(name)


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"input file {src} does not exist or is not a file")
    if dst.exists():
        if dst.resolve() == src.resolve():
            raise ValueError(f"output must differ from the input, got {dst} for both")
        if not overwrite:
            raise FileExistsError(f"output {dst} exists; pass overwrite=True to replace it")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"output directory {dst.parent} does not exist")


def _sync(fd: int) -> None:
    """``os.fsync`` (one place, so the benchmark can time the format without it)."""
    os.fsync(fd)


def _sync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            _sync(fd)
        finally:
            os.close(fd)


def write_atomically(dst: Path, fill) -> None:
    """Calls ``fill(f)`` on a 0600 temp file beside ``dst``; renames it to ``dst`` on success.

    Durability: the temp file's data is fsynced before the rename and the
    folder after it, so once this returns ``dst`` is complete on disk and
    survives a crash or power loss; before it returns, a crash leaves either
    the old ``dst`` (or none) and at most a stray ``.part`` file, never a
    partly written ``dst``.
    """
    f, tmp = _temp_beside(dst)
    try:
        with f:
            fill(f)
            f.flush()
            _sync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(dst.parent)


def encrypt_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    recipients: Iterable[Any],
    *,
    metadata: dict[str, Any] | None = None,
    sign_with: Any = None,
    overwrite: bool = False,
) -> Header:
    """Encrypts file ``src`` to ``dst`` for ``recipients``, streaming (``dpjax encrypt``).

    Args:
      src: the plaintext file.
      dst: the envelope file to write (0600, atomically and durably:
        fsynced with its folder before this returns, see ``write_atomically``).
      recipients: X25519 / RSA-3072 public keys (objects or one-line text),
        or a single ``Passphrase``.
      metadata: JSON dict stored in the header, authenticated but NOT
        encrypted: e.g. ``{"privacy": {"epsilon": 1.0, "delta": 1e-5,
        "accountant": "rdp"}}`` and the tree description.
      sign_with: an Ed25519 private key; writes ``dst + ".sig"``
        (``dpjax.crypto.sign``) over the ciphertext hashed as it is written.
      overwrite: replace an existing ``dst``.

    Returns:
      The header written.

    Privacy:
      Hides the content from everyone without a recipient's key; the header
      (metadata, number and kinds of recipients, payload length) is public.
    """
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, overwrite)
    if sign_with is not None:
        from dpjax.crypto import sign as _sign  # sign imports envelope

        _sign.check_signing_key(sign_with)
    rs = _normalize_recipients(recipients)
    md = _check_metadata(metadata)

    digest = hashlib.sha512() if sign_with is not None else None

    def fill(out: IO[bytes]) -> None:
        data_key = _new_data_key()
        w = _Writer(out, data_key, _header_block(data_key, rs, md), digest)
        with open(src, "rb", buffering=0) as f:
            w.write_from(f)
        w.finish()

    write_atomically(dst, fill)
    with open(dst, "rb") as f:
        header = read_header(f)
    if digest is not None:
        _sign.sign_digest(dst, sign_with, header.raw, digest.digest())
    return header


def decrypt_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    identities: Any,
    *,
    verify_with: Any = None,
    overwrite: bool = False,
) -> Header:
    """Decrypts envelope ``src`` to ``dst`` (0600), the logic of ``dpjax decrypt``.

    The plaintext goes to a temp file beside ``dst``, renamed only after the
    last chunk authenticates; on any error it is removed and ``dst`` is left
    as it was.

    Args:
      src: the envelope file.
      dst: the plaintext file to write (0600, fsynced with its folder).
      identities: private key(s) (X25519, RSA-3072) or a ``Passphrase``.
      verify_with: Ed25519 public key(s) one of which must have signed
        ``src`` (``src + ".sig"``); checked before decrypting and again
        against the exact ciphertext decrypted, before ``dst`` appears.
        Without it the payload is not hashed: the AEAD tags and the
        last-chunk flag still refuse any modified, truncated or reordered
        byte.
      overwrite: replace an existing ``dst``.

    Returns:
      The authenticated header (its ``metadata``).

    Raises:
      DecryptionError: wrong key, or the file was modified, truncated,
        reordered or has another file's header.

    Example:
      >>> import os, tempfile
      >>> from dpjax.crypto import Passphrase
      >>> d = tempfile.mkdtemp()
      >>> with open(os.path.join(d, "run.json"), "w") as f:
      ...     _ = f.write('{"epsilon": 1.0}')
      >>> pw = Passphrase("correct horse battery staple", log_n=10)  # tests only: tiny work
      >>> _ = encrypt_file(os.path.join(d, "run.json"), os.path.join(d, "run.enc"), [pw])
      >>> _ = decrypt_file(os.path.join(d, "run.enc"), os.path.join(d, "back.json"), pw)
      >>> from pathlib import Path
      >>> Path(d, "back.json").read_text()
      '{"epsilon": 1.0}'
    """
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, overwrite)
    ids = _normalize_identities(identities)
    if verify_with is not None:
        from dpjax.crypto import sign as _sign  # sign imports envelope

        _sign.verify_file(src, verify_with)
    result: list[Header] = []

    def fill(out: IO[bytes]) -> None:
        # Hash the ciphertext only to check a signature (in the same pass);
        # without one the AEAD tags authenticate every byte decrypted.
        digest = hashlib.sha512() if verify_with is not None else None
        with open(src, "rb", buffering=0) as f:
            result.append(decrypt_stream(f, ids, out.write, digest))
        if digest is not None:
            _sign.check_signature(src, result[0].raw, digest.digest(), verify_with)

    write_atomically(dst, fill)
    return result[0]
