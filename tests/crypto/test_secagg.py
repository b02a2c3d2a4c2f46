"""Secure aggregation: exact sums, uniform masked inputs, dropouts, aborts, refusals."""

import re
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from scipy import stats

from dpjax.crypto import secagg, shamir
from dpjax.crypto import secagg_quantize as sq
from dpjax.crypto.secagg import SecAggAbort, SecAggConfig
from dpjax.crypto.secagg_masks import expand_mask, neighbour_graph, pair_seed, self_mask_key
from tests.mechanisms._stats import ALPHA


def _values(n, d, bits, seed=0):
    rng = np.random.default_rng(seed)  # test inputs only; masks never come from here
    return rng.integers(0, 2**bits, size=(n, d), dtype=np.uint64).astype(np.uint32)


def _plain_sum(x, keep, bits):
    return (x[keep].astype(np.uint64).sum(axis=0) % 2**bits).astype(np.uint32)


@pytest.mark.parametrize(
    "n, d, bits, t, degree, dropped",
    [
        (3, 5, 8, 2, None, []),
        (5, 17, 16, 3, None, [1, 4]),  # n - t dropouts on the complete graph
        (6, 9, 32, 2, None, [0, 1, 2, 3]),  # n - t dropouts, full 32-bit words
        (12, 33, 20, 4, 6, [0, 5, 7]),  # SecAgg+: 6-regular graph
        (10, 4, 2, 2, 4, []),
    ],
)
def test_unmasked_sum_equals_plain_sum(n, d, bits, t, degree, dropped):
    x = _values(n, d, bits)
    drop = np.zeros(n, bool)
    drop[dropped] = True
    out = secagg.secure_sum(x, drop, bits=bits, threshold=t, round_id=3, degree=degree)
    assert out.survivors == tuple(int(i) for i in np.flatnonzero(~drop))
    assert out.total.dtype == np.uint32
    np.testing.assert_array_equal(out.total, _plain_sum(x, ~drop, bits))
    assert out.bytes_sent["masked_input"] == (n - len(dropped)) * (8 + 4 * d)


def _run_to_masked(n, d, bits, t, inputs, degree=None, round_id=0):
    """Rounds 0-2 by message: (config, client states, server state, masked messages)."""
    cfg = SecAggConfig(round_id, d, bits, t)
    states, adverts = zip(*(secagg.client_advertise(cfg, i) for i in range(n)), strict=True)
    states = list(states)
    server, broadcasts = secagg.server_collect_keys(cfg, adverts, degree)
    msgs = []
    for i in range(n):
        states[i], m = secagg.client_share_keys(cfg, states[i], broadcasts[i])
        msgs.append(m)
    server, inboxes = secagg.server_collect_shares(server, msgs)
    masked = []
    for i in range(n):
        states[i], m = secagg.client_masked_input(cfg, states[i], inboxes[i], inputs[i])
        masked.append(m)
    return cfg, states, server, masked, inboxes


@pytest.mark.slow
def test_one_masked_input_is_uniform():
    """A client's masked input (input all zeros) is uniform on Z_256 in every coordinate.

    Chi-square over 256 cells from 2 x 12,800 coordinates (false-positive
    rate ALPHA); a mask that were missing or biased (e.g. a seed of 0 or a
    reduced word) fails.
    """
    n, d, bits = 3, 12_800, 8
    x = np.zeros((n, d), np.uint32)
    _, _, _, masked, _ = _run_to_masked(n, d, bits, 2, x)
    for m in masked[:2]:
        counts = np.bincount(m.masked, minlength=256)
        assert stats.chisquare(counts).pvalue > ALPHA
    # and it is not uniform if a client masks nothing: the test can fail
    assert stats.chisquare(np.bincount(x[0], minlength=256) + 1).pvalue < ALPHA


def test_fewer_than_t_survivors_abort_before_unmasking():
    n, d, bits, t = 5, 8, 16, 3
    x = _values(n, d, bits)
    drop = np.array([True, True, True, False, False])
    with pytest.raises(SecAggAbort, match="fewer survivors than the threshold"):
        secagg.secure_sum(x, drop, bits=bits, threshold=t)
    # A server that nevertheless asks the two survivors to unmask gets nothing.
    cfg, states, server, masked, _ = _run_to_masked(n, d, bits, t, x)
    request = secagg.UnmaskRequest(survivors=(3, 4), dropped=(0, 1, 2))
    for i in (3, 4):
        with pytest.raises(SecAggAbort, match="fewer survivors than the threshold"):
            secagg.client_unmask(cfg, states[i], request)
    # With fewer than t answers, the server refuses to unmask (no partial sum).
    server, request = secagg.server_collect_masked(server, masked)
    answers = [secagg.client_unmask(cfg, states[i], request)[1] for i in (0, 1)]
    with pytest.raises(SecAggAbort, match="fewer than threshold survivors answered"):
        secagg.server_unmask(server, answers)


def _strip_masks(cfg, server, victim, y, answers):
    """The attack: with t shares of both b_victim and s_victim, remove every mask from y."""
    b_sh = [
        shamir.share_from_bytes(m.self_shares[victim]) for m in answers if victim in m.self_shares
    ]
    s_sh = [
        shamir.share_from_bytes(m.key_shares[victim]) for m in answers if victim in m.key_shares
    ]
    if min(len(b_sh), len(s_sh)) < cfg.threshold:
        return None
    seed = shamir.combine_bytes(b_sh[: cfg.threshold], 32)
    s_key = x25519.X25519PrivateKey.from_private_bytes(
        shamir.combine_bytes(s_sh[: cfg.threshold], 32)
    )
    x = y - expand_mask(self_mask_key(seed, cfg.round_id, victim), cfg.dim, cfg.bits)
    for v in server.graph[victim]:
        peer = x25519.X25519PublicKey.from_public_bytes(server.keys[v][1])
        mask = expand_mask(pair_seed(s_key, peer, cfg.round_id, victim, v), cfg.dim, cfg.bits)
        x = x - mask if victim < v else x + mask
    return x & np.uint32(2**cfg.bits - 1)


def test_consistency_check_stops_the_unmasking_attack():
    """A server names client 0 both survivor and dropped to get b_0 and s_0 and strip y_0.

    Each client refuses such a request (Bonawitz's consistency check), and
    answers only once per round, so the server cannot collect t shares of
    both secrets of one client. Without the check, ``_strip_masks`` returns
    x_0 exactly.
    """
    n, d, bits, t = 4, 6, 16, 2
    x = _values(n, d, bits)
    cfg, states, server, masked, _ = _run_to_masked(n, d, bits, t, x)
    evil = secagg.UnmaskRequest(survivors=(0, 1, 2, 3), dropped=(0,))
    answers = []
    for i in range(1, n):
        try:
            states[i], m = secagg.client_unmask(cfg, states[i], evil)
            answers.append(m)
        except SecAggAbort as e:
            assert "both survivor and dropped" in str(e)
    recovered = _strip_masks(cfg, server, 0, masked[0].masked, answers)
    assert recovered is None or not np.array_equal(recovered, x[0])
    assert answers == []
    # Two requests in turn (0 survived, then 0 dropped): the second is refused.
    honest = secagg.UnmaskRequest(survivors=(0, 1, 2, 3), dropped=())
    states[1], first = secagg.client_unmask(cfg, states[1], honest)
    with pytest.raises(SecAggAbort, match="already answered"):
        secagg.client_unmask(cfg, states[1], secagg.UnmaskRequest((1, 2, 3), (0,)))


def test_tampered_or_swapped_share_ciphertexts_abort():
    n, d, bits, t = 4, 3, 8, 2
    cfg = SecAggConfig(0, d, bits, t)
    states, adverts = zip(*(secagg.client_advertise(cfg, i) for i in range(n)), strict=True)
    states = list(states)
    server, broadcasts = secagg.server_collect_keys(cfg, adverts)
    msgs = []
    for i in range(n):
        states[i], m = secagg.client_share_keys(cfg, states[i], broadcasts[i])
        msgs.append(m)
    server, inboxes = secagg.server_collect_shares(server, msgs)
    x = np.zeros(d, np.uint32)
    flipped = dict(inboxes[0])
    ct = bytearray(flipped[1])
    ct[5] ^= 1
    flipped[1] = bytes(ct)
    with pytest.raises(SecAggAbort, match="do not decrypt"):
        secagg.client_masked_input(cfg, states[0], flipped, x)
    swapped = dict(inboxes[0])
    swapped[1], swapped[2] = swapped[2], swapped[1]  # bound to (sender, recipient)
    with pytest.raises(SecAggAbort, match="do not decrypt"):
        secagg.client_masked_input(cfg, states[0], swapped, x)
    wrong_recipient = {1: inboxes[2][1], 2: inboxes[0][2], 3: inboxes[0][3]}
    with pytest.raises(SecAggAbort, match="do not decrypt"):
        secagg.client_masked_input(cfg, states[0], wrong_recipient, x)


def test_messages_reveal_no_secret_in_plaintext():
    n, d, bits, t = 3, 4, 8, 2
    x = _values(n, d, bits)
    cfg, states, server, masked, inboxes = _run_to_masked(n, d, bits, t, x)
    seed = states[0].self_seed
    assert seed.hex() not in repr(states[0]) and str(seed) not in repr(states[0])
    for inbox in inboxes.values():
        for ct in inbox.values():
            assert seed not in ct
    for m in masked:
        assert not np.array_equal(m.masked, x[m.client])


def test_pair_seed_is_symmetric_and_bound_to_round_and_ids():
    a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    s_ab = pair_seed(a, b.public_key(), 7, 1, 2)
    assert s_ab == pair_seed(b, a.public_key(), 7, 2, 1)
    assert s_ab != pair_seed(a, b.public_key(), 8, 1, 2)
    assert s_ab != pair_seed(a, b.public_key(), 7, 1, 3)
    assert not np.array_equal(expand_mask(s_ab, 64, 32), expand_mask(bytes(32), 64, 32))
    with pytest.raises(ValueError, match="different clients"):
        pair_seed(a, b.public_key(), 7, 1, 1)


@pytest.mark.parametrize("n, k", [(10, 4), (11, 6), (30, 8)])
def test_harary_graph_is_regular_and_symmetric(n, k):
    g = neighbour_graph(range(n), k)
    assert all(len(v) == k and c not in v for c, v in g.items())
    assert all(c in g[v] for c, vs in g.items() for v in vs)
    with pytest.raises(ValueError, match="degree must be even"):
        neighbour_graph(range(n), k - 1)
    assert neighbour_graph(range(n)) == {c: tuple(x for x in range(n) if x != c) for c in range(n)}


def test_reconstructed_secrets_match_advertised_keys():
    """Shares held by t neighbours rebuild a dropped client's mask key exactly."""
    n, d, bits, t = 4, 3, 8, 3
    x = _values(n, d, bits)
    cfg, states, server, masked, _ = _run_to_masked(n, d, bits, t, x)
    shares = [states[i].received[0][0] for i in (1, 2, 3)]
    raw = shamir.combine_bytes(shares, 32)
    rebuilt = x25519.X25519PrivateKey.from_private_bytes(raw)
    assert rebuilt.public_key().public_bytes_raw() == server.keys[0][1]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(bits=1, threshold=2), ValueError, "bits must be in"),
        (dict(bits=33, threshold=2), ValueError, "bits must be in"),
        (dict(bits=8, threshold=1), ValueError, "threshold must be >= 2"),
        (dict(bits=8, threshold=5), SecAggAbort, "fewer clients than the threshold"),
        (dict(bits=4, threshold=2), ValueError, "values must be in"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    x = np.full((4, 3), 20, np.uint32)
    with pytest.raises(exc, match=match):
        secagg.secure_sum(x, np.zeros(4, bool), **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"values must be an integer array \[n, d\]"):
        secagg.secure_sum(np.zeros(3, np.uint32), np.zeros(3, bool), bits=8, threshold=2)
    with pytest.raises(ValueError, match="dropped must have shape"):
        secagg.secure_sum(np.zeros((3, 2), np.uint32), np.zeros(2, bool), bits=8, threshold=2)
    with pytest.raises(ValueError, match=r"values must be an integer array"):
        secagg.secure_sum(np.zeros((3, 2)), np.zeros(3, bool), bits=8, threshold=2)


def test_docs_example_runs():
    """docs/crypto.md's secure-aggregation example (the ```py block) runs and is right."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "crypto.md").read_text()
    (code,) = re.findall(r"```py\n(.*?)```", text, flags=re.S)
    ns: dict = {}
    exec(compile(code, "docs/crypto.md", "exec"), ns)
    keep = ~ns["dropped"]
    np.testing.assert_array_equal(
        sq.from_ring(ns["out"].total, ns["bits"]), ns["noisy"][keep].sum(axis=0)
    )
    assert 0 < ns["epsilon"] < 10
