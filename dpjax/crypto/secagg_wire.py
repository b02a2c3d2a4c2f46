"""Byte encoding of the secure-aggregation messages, for any transport.

A transport (Flower messages, a queue, a socket) carries bytes; it should not
pickle protocol objects from other parties (unpickling runs code). Each
message of :mod:`dpjax.crypto.secagg` encodes to a tagged, length-checked
big-endian byte string; :func:`decode` accepts exactly what :func:`encode`
writes and raises :class:`~dpjax.crypto.secagg.SecAggAbort` on anything else
(unknown tag, truncated or trailing bytes). A forwarded inbox (the ciphertexts
one client receives in round 1) travels as :class:`Inbox`. A masked input is
sent as uint32 words, or packed to ``bits`` bits per word with
``encode(msg, bits=b)`` (what Bonawitz et al. count: 26-bit words for 2^10
clients of 16-bit inputs instead of 32).

Example:
  >>> from dpjax.crypto import secagg
  >>> cfg = secagg.SecAggConfig(0, 4, 8, 2)
  >>> _, msg = secagg.client_advertise(cfg, 3)
  >>> decode(encode(msg)) == msg
  True
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

from dpjax.crypto.secagg import (
    AdvertiseMsg,
    KeysBroadcast,
    MaskedInputMsg,
    SecAggAbort,
    ShareKeysMsg,
    UnmaskMsg,
    UnmaskRequest,
)

__all__ = ["Inbox", "decode", "encode"]

_MAX_ITEMS = 1 << 20  # entries in one message
_MAX_DIM = 1 << 28  # words in one masked input


class Inbox(NamedTuple):
    """The ciphertexts the server forwards to one client in round 1."""

    ciphertexts: dict[int, bytes]  # sender -> AEAD ciphertext


_TAGS = {
    AdvertiseMsg: 1,
    KeysBroadcast: 2,
    ShareKeysMsg: 3,
    Inbox: 4,
    MaskedInputMsg: 5,
    UnmaskRequest: 6,
    UnmaskMsg: 7,
}


def _blobs(items: dict[int, bytes]) -> bytes:
    out = [struct.pack(">I", len(items))]
    for k in sorted(items):
        out.append(struct.pack(">QI", k, len(items[k])) + bytes(items[k]))
    return b"".join(out)


def _ids(ids) -> bytes:
    return struct.pack(">I", len(ids)) + b"".join(struct.pack(">Q", i) for i in ids)


def _pack(words: np.ndarray, bits: int) -> bytes:
    """The low ``bits`` bits of each word, concatenated little-endian, zero-padded to a byte."""
    if words.size and int(words.max()) >> bits:
        raise ValueError(f"masked words must be < 2^{bits} to pack them to {bits} bits")
    planes = (words[:, None] >> np.arange(bits, dtype=np.uint32)) & np.uint32(1)
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack(data: bytes, dim: int, bits: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    flat = np.unpackbits(raw, bitorder="little")
    if flat[dim * bits :].any():
        raise SecAggAbort("a packed masked input has non-zero padding")
    planes = flat[: dim * bits].reshape(dim, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


def encode(msg: Any, bits: int | None = None) -> bytes:
    """Encodes one protocol message (or an :class:`Inbox`) to bytes.

    Args:
      msg: the message.
      bits: for a :class:`MaskedInputMsg` only: pack each word to this many
        bits (the round's ``SecAggConfig.bits``); None sends uint32 words.
    """
    tag = _TAGS.get(type(msg))
    if tag is None:
        raise TypeError(f"msg must be a secure-aggregation message, got {type(msg).__name__}")
    head = bytes([tag])
    if isinstance(msg, AdvertiseMsg):
        return head + struct.pack(">Q", msg.client) + msg.c_public + msg.s_public
    if isinstance(msg, KeysBroadcast):
        keys = {v: c + s for v, (c, s) in msg.neighbours.items()}
        return head + _blobs(keys)
    if isinstance(msg, ShareKeysMsg):
        return head + struct.pack(">Q", msg.client) + _blobs(msg.ciphertexts)
    if isinstance(msg, Inbox):
        return head + _blobs(msg.ciphertexts)
    if isinstance(msg, MaskedInputMsg):
        words = np.ascontiguousarray(msg.masked, dtype="<u4")
        if bits is None or bits == 32:
            return head + struct.pack(">QIB", msg.client, words.size, 32) + words.tobytes()
        if not 2 <= bits < 32:
            raise ValueError(f"bits must be in [2, 32], got {bits}")
        packed = _pack(words.astype(np.uint32), bits)
        return head + struct.pack(">QIB", msg.client, words.size, bits) + packed
    if bits is not None:
        raise ValueError("bits applies to a MaskedInputMsg only")
    if isinstance(msg, UnmaskRequest):
        return head + _ids(msg.survivors) + _ids(msg.dropped)
    return head + struct.pack(">Q", msg.client) + _blobs(msg.self_shares) + _blobs(msg.key_shares)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SecAggAbort("a secure-aggregation message is truncated")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def count(self) -> int:
        (n,) = self.unpack(">I")
        if n > _MAX_ITEMS:
            raise SecAggAbort("a secure-aggregation message has too many entries")
        return n

    def blobs(self, size: int | None = None) -> dict[int, bytes]:
        out = {}
        for _ in range(self.count()):
            k, n = self.unpack(">QI")
            if k in out or (size is not None and n != size):
                raise SecAggAbort("a secure-aggregation message has a repeated or malformed entry")
            out[k] = self.take(n)
        return out

    def ids(self) -> tuple[int, ...]:
        return tuple(self.unpack(">Q")[0] for _ in range(self.count()))

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SecAggAbort("a secure-aggregation message has trailing bytes")


def decode(data: bytes) -> Any:
    """Decodes bytes written by :func:`encode`.

    Raises:
      SecAggAbort: unknown message kind, truncated, trailing or malformed data.
    """
    r = _Reader(bytes(data))
    (tag,) = r.take(1)
    if tag == 1:
        (client,) = r.unpack(">Q")
        msg: Any = AdvertiseMsg(client, r.take(32), r.take(32))
    elif tag == 2:
        keys = r.blobs(64)
        msg = KeysBroadcast({v: (b[:32], b[32:]) for v, b in keys.items()})
    elif tag == 3:
        (client,) = r.unpack(">Q")
        msg = ShareKeysMsg(client, r.blobs())
    elif tag == 4:
        msg = Inbox(r.blobs())
    elif tag == 5:
        client, dim, bits = r.unpack(">QIB")
        if dim > _MAX_DIM or not 2 <= bits <= 32:
            raise SecAggAbort("a masked input has a bad length or bit width")
        if bits == 32:
            words = np.frombuffer(r.take(4 * dim), dtype="<u4").astype(np.uint32)
        else:
            words = _unpack(r.take(-(-dim * bits // 8)), dim, bits)
        msg = MaskedInputMsg(client, words)
    elif tag == 6:
        msg = UnmaskRequest(r.ids(), r.ids())
    elif tag == 7:
        (client,) = r.unpack(">Q")
        msg = UnmaskMsg(client, r.blobs(), r.blobs())
    else:
        raise SecAggAbort("unknown secure-aggregation message kind")
    r.done()
    return msg
