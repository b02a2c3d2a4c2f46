"""Exposure (dpjax.finetune.exposure) against a brute-force rank on a toy scorer."""

import math

import numpy as np
import pytest
from scipy import special

from dpjax.finetune import exposure as ex
from dpjax.finetune.canaries import Canary, format_secret


class ToyScorer:
    """A bigram-table "language model": log p(b_t | b_{t-1}) = log_softmax(W[b_{t-1}] + U[t])."""

    def __init__(self, seed, length=64, boost=None, strength=6.0):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(256, 256)) * 2.0
        self.u = rng.normal(size=(length, 256))
        if boost is not None:  # make one text much more likely (a memorized secret)
            for a, b in zip(boost[:-1], boost[1:], strict=True):
                self.w[a, b] += strength

    def logits(self, tokens):
        t = tokens.shape[1]
        return self.w[tokens] + self.u[None, :t]  # (B, T, 256): predicts position t+1

    def __call__(self, tokens):
        lp = special.log_softmax(self.logits(tokens), axis=-1)
        targets = np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
        return targets, lp[:, -1]

    def loglik_loop(self, prefix, secret_text):
        """Naive: sum over the secret's bytes of log p(byte | previous byte, position)."""
        data = list((prefix + secret_text).encode())
        total = 0.0
        for t in range(len(prefix.encode()), len(data)):
            row = self.w[data[t - 1]] + self.u[t - 1]
            total += row[data[t]] - special.logsumexp(row)
        return total


@pytest.mark.parametrize("digits", [1, 2, 3])
@pytest.mark.parametrize("secret_index", [0, 7, -1])
def test_exact_exposure_matches_brute_force_rank(digits, secret_index):
    toy = ToyScorer(digits)
    secret = str(range(10**digits)[secret_index]).zfill(digits)
    c = Canary("Ada Novak's customer id is ", secret, "id", 1)
    cands = [str(i).zfill(digits) for i in range(10**digits)]
    naive = [toy.loglik_loop(c.prefix, s) for s in cands]
    ll = ex.exact_log_likelihoods(toy, c, digits, batch_size=7)
    np.testing.assert_allclose(ll, naive, rtol=1e-9, atol=1e-9)
    order = sorted(range(len(cands)), key=lambda i: -naive[i])  # brute-force ranking
    brute_rank = order.index(int(secret)) + 1
    got = ex.exact_exposure(toy, c, digits, batch_size=7)
    assert got["rank"] == brute_rank
    assert got["exposure"] == pytest.approx(math.log2(10**digits) - math.log2(brute_rank))


def test_sampled_log_likelihoods_match_the_loop_for_cards():
    toy = ToyScorer(5)
    rng = np.random.default_rng(0)
    secrets = ["".join(map(str, rng.integers(0, 10, 15))) for _ in range(9)]
    c = Canary("Bo Ito's card number is ", secrets[0], "card", 1)
    ll = ex.sampled_log_likelihoods(toy, c, secrets, batch_size=4)
    naive = [toy.loglik_loop(c.prefix, format_secret("card", s)) for s in secrets]
    np.testing.assert_allclose(ll, naive, rtol=1e-9)


@pytest.mark.parametrize(
    ("scores", "secret", "want"),
    [([1.0, 2.0, 3.0], 3.0, 1), ([1.0, 2.0, 3.0], 1.0, 3), ([2.0, 2.0, 2.0], 2.0, 1)],
)
def test_rank_counts_strictly_better_candidates(scores, secret, want):
    assert ex.rank(np.array(scores), secret) == want


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"rank_": 0, "space_size": 10}, "rank must be >= 1"),
     ({"rank_": 11, "space_size": 10}, r"rank must be in \[1, 10\]"),
     ({"rank_": 1, "space_size": 0}, "space_size must be >= 1")],
)  # fmt: skip
def test_exposure_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ex.exposure(**kwargs)


@pytest.mark.parametrize("boost", [0.0, 1.0, 1.5, 2.0, 6.0])
def test_extrapolated_agrees_with_exact_on_a_small_space(boost):
    """4 digits (10^4 candidates): the skew-normal estimate from 1000 samples vs the exact rank.

    The unboosted secret is an ordinary candidate; boosting the secret's bigrams moves it into
    the tail, up to rank 1 (exposure log2 |R|): the estimate must land within 1.5 bits of the
    exact figure everywhere (the fit's error; the figures are printed).
    """
    secret = "4821"
    prefix = "Ada Novak's customer id is "
    toy = ToyScorer(11, boost=list((prefix + secret).encode())[-5:], strength=boost)
    c = Canary(prefix, secret, "id", 1)
    exact = ex.exact_exposure(toy, c, 4)
    est = ex.sampled_exposure(toy, c, np.random.default_rng(3), num_samples=1000)
    print(
        f"boost={boost}: exact {exact['exposure']:.2f} bits (rank {exact['rank']}), "
        f"extrapolated {est['exposure']:.2f}, empirical {est['empirical_exposure']:.2f}"
    )
    assert est["space_size"] == 10**4
    assert abs(est["exposure"] - exact["exposure"]) < 1.5
    if boost == 6.0:
        assert exact["exposure"] > 10


def test_extrapolated_refuses_a_tiny_sample():
    with pytest.raises(ValueError, match="sample_scores must hold at least 10"):
        ex.extrapolated_exposure(np.zeros(3), 0.0, 100)
