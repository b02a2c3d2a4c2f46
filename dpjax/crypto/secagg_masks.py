"""Mask seeds and mask streams for secure aggregation (Bonawitz et al. 2017).

* Pairwise seeds: X25519 agreement between two clients' mask keys, then
  HKDF-SHA256 with an ``info`` that binds the round id and both client ids
  (smaller id first), so a seed is never reused across rounds or pairs.
* Self-mask seeds b_u: 32 random bytes from the OS, expanded under their own
  HKDF label so a self mask and a pairwise mask never share a keystream.
* Masks: the ChaCha20 keystream (RFC 8439, from ``cryptography``) of a 32-byte
  key, read as little-endian uint32 words and reduced mod 2^b. Each word is
  uniform on [0, 2^32), so its residue is uniform on Z_{2^b} (2^b divides 2^32).
  Never ``jax.random`` or ``np.random``: their streams are not designed to be
  unpredictable, and 32-bit seeds can be searched.
* SecAgg+ (Bell et al. 2020, Secure Single-Server Aggregation with
  (Poly)Logarithmic Overhead): clients pair only with their neighbours in a
  Harary graph H(k, n) whose node labels the server permutes at random
  (:func:`neighbour_graph`): each client is adjacent to the k/2 clients on
  either side of it on a randomly permuted ring. The graph is public.

Security parameter trade-off of the sparse graph: with the complete graph
(k = n - 1) the server learns only the sum of all survivors, for any number of
dropouts up to n - t. With k neighbours each client's mask depends on k seeds
and its shares go to k parties, so work and bytes fall from O(n) to O(k) per
client, but (i) the threshold t applies per neighbourhood: a client's
secrets are shared among its k neighbours and itself, so t of those k + 1
must survive, and (ii) the graph must stay
connected among honest survivors, or the server learns partial sums of the
components. Bell et al. (Thm 3.6) show k = O(log n + sigma) neighbours keep
this failure probability below 2^-sigma against a fraction of corrupt and
dropped clients, which is why ``default_degree`` grows with log2(n); for
small n use the complete graph.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dpjax import _validate

__all__ = [
    "SEED_BYTES",
    "default_degree",
    "expand_mask",
    "neighbour_graph",
    "pair_seed",
    "self_mask_key",
]

SEED_BYTES = 32
_PAIR_LABEL = b"dpjax-secagg-v1 pairwise mask"
_SELF_LABEL = b"dpjax-secagg-v1 self mask"
_ZERO_NONCE = bytes(16)  # each key is HKDF output bound to one round and one purpose


def _ids(round_id: int, *clients: int) -> bytes:
    return b"".join(int(v).to_bytes(8, "big") for v in (round_id, *clients))


def pair_seed(
    private_key: x25519.X25519PrivateKey,
    peer_public: x25519.X25519PublicKey,
    round_id: int,
    me: int,
    peer: int,
) -> bytes:
    """The 32-byte pairwise mask key shared by clients ``me`` and ``peer`` in ``round_id``.

    Both sides get the same bytes: X25519(me, peer) then HKDF-SHA256 with
    info = label || round || min(id) || max(id).

    Raises:
      ValueError: when ``me == peer`` or the agreement yields the all-zero
        secret (a low-order public key).
    """
    if me == peer:
        raise ValueError("me and peer must be different clients")
    shared = private_key.exchange(peer_public)  # raises ValueError on an all-zero result
    info = _PAIR_LABEL + _ids(round_id, min(me, peer), max(me, peer))
    return HKDF(hashes.SHA256(), SEED_BYTES, salt=None, info=info).derive(shared)


def self_mask_key(seed: bytes, round_id: int, client: int) -> bytes:
    """The 32-byte ChaCha20 key of client ``client``'s self mask from its seed b_u."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    info = _SELF_LABEL + _ids(round_id, client)
    return HKDF(hashes.SHA256(), SEED_BYTES, salt=None, info=info).derive(seed)


def expand_mask(key: bytes, dim: int, bits: int) -> np.ndarray:
    """``dim`` uniform words mod 2^bits from the ChaCha20 keystream of ``key`` (uint32)."""
    if len(key) != SEED_BYTES:
        raise ValueError(f"key must be {SEED_BYTES} bytes, got {len(key)}")
    dim = _validate.positive_int("dim", dim)
    enc = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    words = np.frombuffer(enc.update(bytes(4 * dim)), dtype="<u4")
    if bits < 32:
        return words & np.uint32((1 << bits) - 1)
    return words.copy()


def default_degree(n: int, sigma: int = 40) -> int:
    """A neighbour count for SecAgg+: the complete graph for small n, else ~ 3 log2(n) + sigma/2.

    An even number (a Harary graph H(k, n) with even k is k-regular), capped at n - 1.
    """
    n = _validate.positive_int("n", n)
    k = 3 * math.ceil(math.log2(max(n, 2))) + sigma // 2
    k += k % 2
    return n - 1 if k >= n - 1 else k


def neighbour_graph(
    clients: Sequence[int], degree: int | None = None
) -> dict[int, tuple[int, ...]]:
    """The server's public pairing graph: each client -> its sorted neighbours.

    ``degree`` None (or >= n - 1) gives the complete graph (Bonawitz et al.);
    an even ``degree`` k < n - 1 gives the Harary graph H(k, n) on a ring whose
    order the server draws with :mod:`secrets` (Bell et al. 2020).

    Example:
      >>> g = neighbour_graph(range(10), degree=4)
      >>> sorted(len(v) for v in g.values()) == [4] * 10
      True
    """
    ids = [int(c) for c in clients]
    n = len(ids)
    if n < 2 or len(set(ids)) != n or min(ids) < 0:
        raise ValueError("clients must hold at least 2 distinct ids >= 0")
    if degree is None or degree >= n - 1:
        return {c: tuple(sorted(set(ids) - {c})) for c in ids}
    degree = _validate.positive_int("degree", degree)
    if degree % 2:
        raise ValueError(f"degree must be even (or >= n - 1 = {n - 1}), got {degree}")
    order = list(ids)
    for i in range(n - 1, 0, -1):  # Fisher-Yates with the OS CSPRNG
        j = secrets.randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    half = degree // 2
    graph = {}
    for pos, c in enumerate(order):
        near = {order[(pos + k) % n] for k in range(-half, half + 1) if k}
        graph[c] = tuple(sorted(near))
    return graph
