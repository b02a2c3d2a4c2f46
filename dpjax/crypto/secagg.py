"""Secure aggregation: the server learns only the sum of the survivors' inputs.

The protocol of Bonawitz et al. 2017 (Practical Secure Aggregation for
Privacy-Preserving Machine Learning, Fig. 4, semi-honest server without the
consistency-check signatures), optionally on the SecAgg+ sparse graph of Bell
et al. 2020, as message-level functions that any transport can carry (Flower
messages, sockets), plus :func:`secure_sum`, which runs every party in this
process for simulations and tests. Inputs are vectors of ``dim`` integers mod
2^bits (see :mod:`dpjax.crypto.secagg_quantize`).

Rounds (client u, server S; U1 ⊇ U2 ⊇ U3 ⊇ U4 are the clients still present):

0. ``client_advertise``: u makes two X25519 keys, c (to encrypt shares) and
   s (to agree mask seeds), and sends their public halves.
   ``server_collect_keys``: S draws the public neighbour graph (complete, or
   Harary for SecAgg+) and sends each client its neighbours' public keys.
1. ``client_share_keys``: u draws a self-mask seed b_u, Shamir-shares b_u and
   its private s key t-of-(k+1) among its k neighbours and itself, and encrypts each pair of
   shares to its recipient with ChaCha20-Poly1305 under a key from X25519(c) +
   HKDF bound to (round, sender, recipient). ``server_collect_shares``
   forwards each ciphertext to its recipient.
2. ``client_masked_input``: u sends y_u = x_u + PRG(b_u) + sum over neighbours
   v in U2 of (+PRG(s_uv) if u < v else -PRG(s_uv)) mod 2^b; pairwise masks
   cancel in the sum. ``server_collect_masked`` adds the y_u and asks the
   survivors U3 to unmask, naming U3 and the dropped D = U2 \\ U3.
3. ``client_unmask``: u returns, for each neighbour, its share of b_v if v is
   in U3, or of s_v if v is in D; it refuses a request naming a client in both
   sets, and answers only once (otherwise the server could learn b_v and s_v
   of one client and strip all masks from its y_v). ``server_unmask``
   reconstructs each b_u (u in U3) and each dropped s_v from t shares,
   removes PRG(b_u) and the dropped clients' pairwise masks, and returns the
   sum mod 2^b.

Every step aborts with :class:`SecAggAbort` when fewer than ``threshold``
clients (or neighbours) remain: the server then holds only masked inputs and
fewer than t shares of any secret, which reveal nothing about any input.

Privacy: against a semi-honest server (and any colluding set of fewer than t
clients per neighbourhood) the view is simulatable from the sum of the U3
inputs alone (Bonawitz et al. Thm 6.2; Bell et al. Thm 3.6 for the graph).
An actively malicious server could lie about who dropped; defending that
needs signed keys and a consistency round (Bonawitz et al. Sec. 6.2), not
implemented here. The sum itself is not differentially private: add
distributed noise (:mod:`dpjax.mechanisms.skellam`) before masking.

Example:
  >>> import numpy as np
  >>> x = np.arange(12, dtype=np.uint32).reshape(4, 3)
  >>> out = secure_sum(x, np.array([False, True, False, False]), bits=8, threshold=2)
  >>> out.total.tolist(), out.survivors
  ([15, 18, 21], (0, 2, 3))
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dpjax import _validate
from dpjax.crypto import shamir
from dpjax.crypto.errors import CryptoError
from dpjax.crypto.secagg_masks import (
    SEED_BYTES,
    expand_mask,
    neighbour_graph,
    pair_seed,
    self_mask_key,
)
from dpjax.crypto.secagg_quantize import MAX_BITS

__all__ = [
    "AdvertiseMsg",
    "ClientState",
    "KeysBroadcast",
    "MaskedInputMsg",
    "SecAggAbort",
    "SecAggConfig",
    "SecureSumResult",
    "ServerState",
    "ShareKeysMsg",
    "UnmaskMsg",
    "UnmaskRequest",
    "client_advertise",
    "client_masked_input",
    "client_share_keys",
    "client_unmask",
    "message_bytes",
    "secure_sum",
    "server_collect_keys",
    "server_collect_masked",
    "server_collect_shares",
    "server_unmask",
]

_ENC_LABEL = b"dpjax-secagg-v1 share encryption"
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
_ID_BYTES = 8


class SecAggAbort(CryptoError):
    """A secure-aggregation round cannot finish safely; nothing about any input is released."""


class SecAggConfig(NamedTuple):
    """Public parameters of one round, known to every party."""

    round_id: int  # distinct per round: binds every derived key
    dim: int  # d, the number of integers per input
    bits: int  # inputs and sums live mod 2^bits (2 <= bits <= 32)
    threshold: int  # t: shares needed to recover a secret; the fewest survivors allowed


def _check_config(config: SecAggConfig) -> SecAggConfig:
    _validate.non_negative_int("round_id", config.round_id)
    _validate.positive_int("dim", config.dim)
    bits = _validate.positive_int("bits", config.bits)
    if not 2 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [2, {MAX_BITS}], got {bits}")
    t = _validate.positive_int("threshold", config.threshold)
    if t < 2:
        raise ValueError(f"threshold must be >= 2 (one share would reveal a secret), got {t}")
    return config


# ---------------------------------------------------------------------------
# Messages and states


class ClientState(NamedTuple):
    """A client's private state between rounds (never sent)."""

    client: int  # this client's id
    c_key: x25519.X25519PrivateKey  # encrypts shares sent to neighbours
    s_key: x25519.X25519PrivateKey  # agrees pairwise mask seeds
    neighbours: dict[int, tuple[bytes, bytes]]  # neighbour -> (c public, s public), from round 0
    self_seed: bytes  # b_u (empty before round 1)
    # sender -> (its share of s, its share of b), this client's own shares included
    received: dict[int, tuple[shamir.Share, shamir.Share]]
    answered: bool  # True once client_unmask has answered (it answers once)

    def __repr__(self) -> str:  # never the keys, the seed or the shares
        return (
            f"ClientState(client={self.client}, neighbours={len(self.neighbours)}, "
            f"shares_held={len(self.received)}, answered={self.answered})"
        )


class AdvertiseMsg(NamedTuple):
    client: int
    c_public: bytes  # 32-byte X25519 public key for share encryption
    s_public: bytes  # 32-byte X25519 public key for mask agreement


class KeysBroadcast(NamedTuple):
    neighbours: dict[int, tuple[bytes, bytes]]  # neighbour id -> (c public, s public)


class ShareKeysMsg(NamedTuple):
    client: int
    ciphertexts: dict[int, bytes]  # recipient -> AEAD ciphertext of (share of s, share of b)


class MaskedInputMsg(NamedTuple):
    client: int
    masked: np.ndarray  # uint32[dim], y_u mod 2^bits


class UnmaskRequest(NamedTuple):
    survivors: tuple[int, ...]  # U3: clients whose masked input arrived
    dropped: tuple[int, ...]  # U2 \ U3: shared keys, then dropped


class UnmaskMsg(NamedTuple):
    client: int
    self_shares: dict[int, bytes]  # survivor v -> share of b_v (wire form)
    key_shares: dict[int, bytes]  # dropped v -> share of v's private s key (wire form)


class ServerState(NamedTuple):
    """The server's state between rounds."""

    config: SecAggConfig
    keys: dict[int, tuple[bytes, bytes]]  # U1: client -> (c public, s public)
    graph: dict[int, tuple[int, ...]]  # public neighbour graph on U1
    shared: tuple[int, ...]  # U2 (sorted)
    survivors: tuple[int, ...]  # U3 (sorted)
    total: np.ndarray | None  # uint32[dim]: the sum of the masked inputs of U3


class SecureSumResult(NamedTuple):
    total: np.ndarray  # uint32[dim]: sum of the survivors' inputs mod 2^bits
    survivors: tuple[int, ...]  # the clients whose inputs are in the sum
    bytes_sent: dict[str, int]  # per message kind, client -> server, summed over clients


# ---------------------------------------------------------------------------
# Helpers


def _pub(raw: bytes) -> x25519.X25519PublicKey:
    if not isinstance(raw, bytes) or len(raw) != 32:
        raise SecAggAbort("a public key is not 32 bytes")
    return x25519.X25519PublicKey.from_public_bytes(raw)


def _private_raw(key: x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _ids(*values: int) -> bytes:
    return b"".join(int(v).to_bytes(_ID_BYTES, "big") for v in values)


def _share_aead(
    own: x25519.X25519PrivateKey, peer_public: bytes, round_id: int, sender: int, recipient: int
) -> tuple[ChaCha20Poly1305, bytes]:
    """The AEAD for shares sent from ``sender`` to ``recipient`` and its associated data."""
    try:
        shared = own.exchange(_pub(peer_public))
    except ValueError:
        raise SecAggAbort("a neighbour's public key is invalid (low order)") from None
    ad = _ENC_LABEL + _ids(round_id, sender, recipient)  # one direction, one message per key
    key = HKDF(hashes.SHA256(), 32, salt=None, info=ad).derive(shared)
    return ChaCha20Poly1305(key), ad


_NONCE = bytes(12)  # each AEAD key encrypts exactly one message


def _sorted_ids(ids: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(int(i) for i in ids))


def _share_points(neighbours: Iterable[int]) -> dict[int, int]:
    """Shamir evaluation point of each neighbour: its rank among the sender's neighbours + 1."""
    return {v: i + 1 for i, v in enumerate(sorted(neighbours))}


# ---------------------------------------------------------------------------
# Round 0: advertise keys


def client_advertise(config: SecAggConfig, client: int) -> tuple[ClientState, AdvertiseMsg]:
    """Round 0 (client): fresh X25519 key pairs for this round."""
    _check_config(config)
    client = _validate.non_negative_int("client", client)
    c_key, s_key = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    state = ClientState(client, c_key, s_key, {}, b"", {}, False)
    msg = AdvertiseMsg(
        client, c_key.public_key().public_bytes(*_RAW), s_key.public_key().public_bytes(*_RAW)
    )
    return state, msg


def server_collect_keys(
    config: SecAggConfig, msgs: Iterable[AdvertiseMsg], degree: int | None = None
) -> tuple[ServerState, dict[int, KeysBroadcast]]:
    """Round 0 (server): draws the neighbour graph and tells each client its neighbours' keys.

    Args:
      config: the round's parameters.
      msgs: the advertisements that arrived (U1).
      degree: None for the complete graph, or an even k for SecAgg+
        (must be >= threshold).

    Raises:
      SecAggAbort: fewer than ``threshold`` clients, repeated ids, or
        ``degree`` < ``threshold``.
    """
    _check_config(config)
    keys: dict[int, tuple[bytes, bytes]] = {}
    for m in msgs:
        if m.client in keys:
            raise SecAggAbort(f"client {m.client} advertised twice")
        keys[int(m.client)] = (bytes(m.c_public), bytes(m.s_public))
    if len(keys) < config.threshold:
        raise SecAggAbort("fewer clients than the threshold advertised keys")
    graph = neighbour_graph(list(keys), degree)
    if min(len(v) for v in graph.values()) + 1 < config.threshold:
        raise SecAggAbort("each client needs at least threshold - 1 neighbours (raise degree)")
    out = {c: KeysBroadcast({v: keys[v] for v in graph[c]}) for c in keys}
    return ServerState(config, keys, graph, (), (), None), out


# ---------------------------------------------------------------------------
# Round 1: share keys


def client_share_keys(
    config: SecAggConfig, state: ClientState, broadcast: KeysBroadcast
) -> tuple[ClientState, ShareKeysMsg]:
    """Round 1 (client): Shamir-shares b_u and the s key among neighbours, encrypted to each."""
    _check_config(config)
    nb = dict(broadcast.neighbours)
    if len(nb) + 1 < config.threshold:
        raise SecAggAbort("fewer share holders (neighbours and self) than the threshold")
    if state.client in nb:
        raise SecAggAbort("a client cannot be its own neighbour")
    own_c = state.c_key.public_key().public_bytes(*_RAW)
    if any(c == own_c for c, _ in nb.values()):
        raise SecAggAbort("a neighbour advertised this client's own key")
    seed = secrets.token_bytes(SEED_BYTES)
    points = _share_points([*nb, state.client])  # the client keeps one share itself
    s_shares = shamir.split_bytes(_private_raw(state.s_key), config.threshold, len(points))
    b_shares = shamir.split_bytes(seed, config.threshold, len(points))
    own = points[state.client] - 1
    cts = {}
    for v, x in points.items():
        if v == state.client:
            continue
        aead, ad = _share_aead(state.c_key, nb[v][0], config.round_id, state.client, v)
        s_wire = shamir.share_to_bytes(s_shares[x - 1])
        b_wire = shamir.share_to_bytes(b_shares[x - 1])
        payload = len(s_wire).to_bytes(2, "big") + s_wire + b_wire
        cts[v] = aead.encrypt(_NONCE, payload, ad)
    kept = {state.client: (s_shares[own], b_shares[own])}
    state = state._replace(neighbours=nb, self_seed=seed, received=kept)
    return state, ShareKeysMsg(state.client, cts)


def server_collect_shares(
    state: ServerState, msgs: Iterable[ShareKeysMsg]
) -> tuple[ServerState, dict[int, dict[int, bytes]]]:
    """Round 1 (server): forwards each encrypted share to its recipient.

    Returns:
      The state with U2, and each client's inbox: sender -> ciphertext.

    Raises:
      SecAggAbort: fewer than ``threshold`` clients shared keys.
    """
    inbox: dict[int, dict[int, bytes]] = {c: {} for c in state.keys}
    shared = []
    for m in msgs:
        if m.client not in state.keys or m.client in shared:
            raise SecAggAbort(f"unexpected or repeated key shares from client {m.client}")
        if set(m.ciphertexts) != set(state.graph[m.client]):
            raise SecAggAbort(f"client {m.client} did not share with exactly its neighbours")
        shared.append(int(m.client))
        for v, ct in m.ciphertexts.items():
            inbox[v][m.client] = bytes(ct)
    if len(shared) < state.config.threshold:
        raise SecAggAbort("fewer clients than the threshold shared their keys")
    u2 = _sorted_ids(shared)
    return state._replace(shared=u2), {c: inbox[c] for c in u2}


# ---------------------------------------------------------------------------
# Round 2: masked input


def _signed_pair_mask(
    s_key: x25519.X25519PrivateKey,
    peer_s_public: bytes,
    config: SecAggConfig,
    me: int,
    peer: int,
) -> tuple[np.ndarray, bool]:
    """The pairwise mask of (me, peer) and whether ``me`` adds it (me < peer) or subtracts it."""
    try:
        seed = pair_seed(s_key, _pub(peer_s_public), config.round_id, me, peer)
    except ValueError:
        raise SecAggAbort("a neighbour's public key is invalid (low order)") from None
    return expand_mask(seed, config.dim, config.bits), me < peer


def client_masked_input(
    config: SecAggConfig, state: ClientState, inbox: Mapping[int, bytes], value: Any
) -> tuple[ClientState, MaskedInputMsg]:
    """Round 2 (client): decrypts the shares it holds and sends its masked input.

    Args:
      config: the round's parameters.
      state: from :func:`client_share_keys`.
      inbox: sender -> ciphertext, the neighbours that shared keys (in U2).
      value: the input, integers in [0, 2^bits) of shape [dim] (see
        :func:`dpjax.crypto.secagg_quantize.to_ring`).

    Raises:
      SecAggAbort: fewer than ``threshold`` neighbours shared, or a share
        does not decrypt (a forged or swapped ciphertext).
      ValueError: ``value`` of the wrong shape or out of range.
    """
    _check_config(config)
    x = np.asarray(value)
    if x.shape != (config.dim,) or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"value must be integers of shape ({config.dim},), got {x.dtype}{x.shape}")
    if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << config.bits):
        raise ValueError(f"value must be in [0, 2^{config.bits})")
    if not state.self_seed:
        raise SecAggAbort("client_share_keys must run before client_masked_input")
    if not set(inbox) <= set(state.neighbours) or len(inbox) + 1 < config.threshold:
        raise SecAggAbort("the shares received are not from at least threshold - 1 neighbours")
    received = dict(state.received)  # this client's own shares
    for v, ct in inbox.items():
        aead, ad = _share_aead(
            state.c_key, state.neighbours[v][0], config.round_id, v, state.client
        )
        try:
            payload = aead.decrypt(_NONCE, bytes(ct), ad)
            n_s = int.from_bytes(payload[:2], "big")
            s_share = shamir.share_from_bytes(payload[2 : 2 + n_s])
            b_share = shamir.share_from_bytes(payload[2 + n_s :])
        except (InvalidTag, ValueError):
            raise SecAggAbort(f"the key shares from client {v} do not decrypt") from None
        received[v] = (s_share, b_share)
    y = x.astype(np.uint32) + expand_mask(
        self_mask_key(state.self_seed, config.round_id, state.client), config.dim, config.bits
    )
    for v in inbox:
        mask, add = _signed_pair_mask(state.s_key, state.neighbours[v][1], config, state.client, v)
        y = y + mask if add else y - mask  # uint32 wraps mod 2^32, a multiple of 2^bits
    y &= np.uint32((1 << config.bits) - 1) if config.bits < 32 else np.uint32(0xFFFFFFFF)
    return state._replace(received=received), MaskedInputMsg(state.client, y)


def server_collect_masked(
    state: ServerState, msgs: Iterable[MaskedInputMsg]
) -> tuple[ServerState, UnmaskRequest]:
    """Round 2 (server): sums the masked inputs and asks the survivors to unmask.

    Raises:
      SecAggAbort: fewer than ``threshold`` masked inputs arrived (the round
        ends with nothing but masked vectors revealed).
    """
    cfg = state.config
    total = np.zeros(cfg.dim, dtype=np.uint32)
    seen = []
    for m in msgs:
        y = np.asarray(m.masked)
        if m.client not in state.shared or m.client in seen:
            raise SecAggAbort(f"unexpected or repeated masked input from client {m.client}")
        if y.shape != (cfg.dim,) or y.dtype != np.uint32:
            raise SecAggAbort(f"client {m.client} sent a masked input of the wrong shape or type")
        total += y
        seen.append(int(m.client))
    if len(seen) < cfg.threshold:
        raise SecAggAbort("fewer survivors than the threshold; the round is aborted")
    u3 = _sorted_ids(seen)
    dropped = tuple(c for c in state.shared if c not in set(u3))
    return state._replace(survivors=u3, total=total), UnmaskRequest(u3, dropped)


# ---------------------------------------------------------------------------
# Round 3: unmasking


def client_unmask(
    config: SecAggConfig, state: ClientState, request: UnmaskRequest
) -> tuple[ClientState, UnmaskMsg]:
    """Round 3 (client): reveals b-shares of survivors and s-shares of dropped clients.

    Raises:
      SecAggAbort: the request names a client both as survivor and dropped
        (the consistency check), names fewer than ``threshold`` survivors,
        omits this client from the survivors, or comes a second time.
    """
    _check_config(config)
    survivors, dropped = set(request.survivors), set(request.dropped)
    if state.answered:
        raise SecAggAbort("this client has already answered an unmasking request this round")
    if survivors & dropped:
        raise SecAggAbort("refused: a client is named both survivor and dropped")
    if len(survivors) < config.threshold or state.client not in survivors:
        raise SecAggAbort(
            "refused: fewer survivors than the threshold, or this client not among them"
        )
    if len(state.received) < 2:  # own shares + at least one neighbour's after round 2
        raise SecAggAbort("client_masked_input must run before client_unmask")
    self_shares, key_shares = {}, {}
    for v, (s_share, b_share) in state.received.items():
        if v in survivors:
            self_shares[v] = shamir.share_to_bytes(b_share)
        elif v in dropped:
            key_shares[v] = shamir.share_to_bytes(s_share)
    return state._replace(answered=True), UnmaskMsg(state.client, self_shares, key_shares)


def _reconstruct(shares: list[bytes], length: int, what: str, threshold: int) -> bytes:
    if len(shares) < threshold:
        raise SecAggAbort(f"fewer than threshold shares of {what}; the round is aborted")
    try:  # exactly t shares (sorted by point) determine the secret
        parsed = sorted((shamir.share_from_bytes(s) for s in shares), key=lambda s: s.x)
        return shamir.combine_bytes(parsed[:threshold], length)
    except ValueError:
        raise SecAggAbort(f"the shares of {what} are inconsistent") from None


def server_unmask(state: ServerState, msgs: Iterable[UnmaskMsg]) -> np.ndarray:
    """Round 3 (server): removes the remaining masks and returns the sum mod 2^bits.

    Raises:
      SecAggAbort: fewer than ``threshold`` survivors answered, or some
        secret has fewer than ``threshold`` shares, or a reconstructed key
        does not match the key its owner advertised.
    """
    cfg = state.config
    if state.total is None:
        raise SecAggAbort("server_collect_masked must run before server_unmask")
    msgs = [m for m in msgs if m.client in set(state.survivors)]
    if len({m.client for m in msgs}) != len(msgs) or len(msgs) < cfg.threshold:
        raise SecAggAbort("fewer than threshold survivors answered the unmasking request")
    dropped = [c for c in state.shared if c not in set(state.survivors)]
    b_shares: dict[int, list[bytes]] = {u: [] for u in state.survivors}
    s_shares: dict[int, list[bytes]] = {v: [] for v in dropped}
    for m in msgs:
        for u, sh in m.self_shares.items():
            if u in b_shares and (m.client in state.graph[u] or m.client == u):
                b_shares[u].append(sh)
        for v, sh in m.key_shares.items():
            if v in s_shares and m.client in state.graph[v]:
                s_shares[v].append(sh)
    # Reconstruct everything before unmasking anything: an abort reveals no partial sum.
    seeds = {
        u: _reconstruct(sh, SEED_BYTES, f"client {u}'s self-mask seed", cfg.threshold)
        for u, sh in b_shares.items()
    }
    keys = {}
    for v, sh in s_shares.items():
        raw = _reconstruct(sh, 32, f"client {v}'s mask key", cfg.threshold)
        key = x25519.X25519PrivateKey.from_private_bytes(raw)
        if key.public_key().public_bytes(*_RAW) != state.keys[v][1]:
            raise SecAggAbort(
                f"the reconstructed mask key of client {v} does not match its advertised key"
            )
        keys[v] = key
    total = state.total.copy()
    for u, seed in seeds.items():
        total -= expand_mask(self_mask_key(seed, cfg.round_id, u), cfg.dim, cfg.bits)
    survivors = set(state.survivors)
    for v, key in keys.items():
        for u in state.graph[v]:
            if u in survivors:
                # u applied +mask if u < v, else -mask; v's side never arrived.
                mask, v_adds = _signed_pair_mask(key, state.keys[u][1], cfg, v, u)
                total = total + mask if v_adds else total - mask
    if cfg.bits < 32:
        total &= np.uint32((1 << cfg.bits) - 1)
    return total


# ---------------------------------------------------------------------------
# In-process simulation


def message_bytes(msg: Any) -> int:
    """Bytes a message carries on the wire (ids 8 bytes, keys and ciphertexts as they are).

    The masked input counts as its uint32 words; a transport may pack them
    to ``bits`` bits each.
    """
    if isinstance(msg, AdvertiseMsg):
        return _ID_BYTES + 64
    if isinstance(msg, ShareKeysMsg):
        return _ID_BYTES + sum(_ID_BYTES + len(c) for c in msg.ciphertexts.values())
    if isinstance(msg, MaskedInputMsg):
        return _ID_BYTES + msg.masked.nbytes
    if isinstance(msg, UnmaskMsg):
        shares = list(msg.self_shares.values()) + list(msg.key_shares.values())
        return _ID_BYTES + sum(_ID_BYTES + len(s) for s in shares)
    raise TypeError(type(msg).__name__)


def secure_sum(
    values: Any,
    dropped: Any,
    *,
    bits: int,
    threshold: int,
    round_id: int = 0,
    degree: int | None = None,
) -> SecureSumResult:
    """Runs the whole protocol in this process: every client and the server.

    Clients marked in ``dropped`` take part in rounds 0 and 1 (their keys
    and shares are out) and then vanish before sending their masked input:
    the hardest case, where their pairwise masks must be recovered. The
    mask expansion and the modular sums are NumPy uint32 operations on whole
    vectors; the key agreement, shares and encryption run per client with
    ``cryptography``, as they would on separate machines.

    Args:
      values: uint [n, d], client i's input mod 2^bits in row i.
      dropped: bool [n], clients that drop after sharing keys.
      bits: the ring Z_{2^bits} (2..32).
      threshold: t, the fewest survivors (and neighbours) allowed.
      round_id: binds all keys to this round.
      degree: None for the complete graph, else SecAgg+'s even k.

    Returns:
      ``SecureSumResult``: the survivors' sum mod 2^bits, the survivors,
      and the bytes each message kind carried (summed over clients).

    Privacy:
      Secure aggregation hides individual inputs from the server, not the
      sum: the result is exactly as private as the inputs' noise makes it
      (add Skellam shares before calling, see ``dpjax.crypto.secagg_dp``).

    Raises:
      SecAggAbort: fewer than ``threshold`` survivors (before any unmasking).
    """
    x = np.asarray(values)
    drop = np.asarray(dropped, dtype=bool)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"values must be an integer array [n, d], got {x.dtype}{x.shape}")
    if drop.shape != (x.shape[0],):
        raise ValueError(f"dropped must have shape ({x.shape[0]},), got {drop.shape}")
    config = _check_config(SecAggConfig(round_id, x.shape[1], bits, threshold))
    if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << bits):
        raise ValueError(f"values must be in [0, 2^{bits})")
    sent = {"advertise": 0, "share_keys": 0, "masked_input": 0, "unmask": 0}
    n = x.shape[0]
    states, adverts = zip(*(client_advertise(config, i) for i in range(n)), strict=True)
    states = list(states)
    sent["advertise"] = sum(message_bytes(m) for m in adverts)
    server, broadcasts = server_collect_keys(config, adverts, degree)
    share_msgs = []
    for i in range(n):
        states[i], m = client_share_keys(config, states[i], broadcasts[i])
        share_msgs.append(m)
    sent["share_keys"] = sum(message_bytes(m) for m in share_msgs)
    server, inboxes = server_collect_shares(server, share_msgs)
    masked = []
    for i in range(n):
        if not drop[i]:
            states[i], m = client_masked_input(config, states[i], inboxes[i], x[i])
            masked.append(m)
    sent["masked_input"] = sum(message_bytes(m) for m in masked)
    server, request = server_collect_masked(server, masked)
    answers = []
    for i in request.survivors:
        states[i], m = client_unmask(config, states[i], request)
        answers.append(m)
    sent["unmask"] = sum(message_bytes(m) for m in answers)
    total = server_unmask(server, answers)
    return SecureSumResult(total, request.survivors, sent)
