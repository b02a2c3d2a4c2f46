"""Exposure of a planted secret (Carlini et al. 2019, "The Secret Sharer").

Rank every candidate secret r in the candidate space R by the model's
log-likelihood of the canary's record ``prefix + r``; with the true secret at
``rank`` (1 = the model's most likely candidate),

    exposure = log2 |R| - log2 rank,

from 0 (the least likely) to log2 |R| (the model's first guess). A candidate
drawn at random has rank uniform on {1..|R|}: expected exposure ~ 1/ln 2 =
1.44 bits. Ties are ranked in the secret's favour (``rank = 1 + #candidates
strictly more likely``): the reported exposure never understates.

Two ways to find the rank:

- **exact** (:func:`exact_log_likelihoods`, small R such as a 5-digit id):
  every candidate is scored. A decoder's log-likelihood of ``prefix + d1..dL``
  is the sum of its next-byte log-probabilities, so one forward pass over
  ``prefix + d1..d(L-1)`` gives the log-likelihood of all ten candidates
  that start with ``d1..d(L-1)`` (the last position's distribution):
  |R| / 10 sequences, in fixed-size batches of one compiled function.
- **extrapolated** (:func:`extrapolated_exposure`, large R such as a card
  number): score a uniform sample of candidates, fit a skew-normal
  distribution to their log-perplexities and read the secret's tail
  probability from it, the paper's section 4.3 estimate
  ``exposure ~ -log2 P(log-perplexity <= the secret's)``.

Both are compared on the same small space in tests/finetune/test_exposure.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from dpjax import _validate
from dpjax.finetune.canaries import CARD_DIGITS, Canary, format_secret

__all__ = [
    "ScoreFn",
    "exact_exposure",
    "exact_log_likelihoods",
    "exposure",
    "extrapolated_exposure",
    "rank",
    "sampled_exposure",
    "sampled_log_likelihoods",
]

# score(tokens int32 (B, T)) -> (log p(tokens[:, t+1] | tokens[:, :t+1]) for t < T-1: (B, T-1),
#                                 the last position's log-softmax over bytes: (B, 256))
ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8).astype(np.int32)


def rank(candidate_scores: np.ndarray, secret_score: float) -> int:
    """1 + the number of candidates strictly more likely than the secret."""
    return 1 + int(np.count_nonzero(np.asarray(candidate_scores) > secret_score))


def exposure(rank_: int, space_size: int) -> float:
    """``log2 |R| - log2 rank`` (Carlini et al. 2019, definition 3)."""
    space_size = _validate.positive_int("space_size", space_size)
    rank_ = _validate.positive_int("rank", rank_)
    if rank_ > space_size:
        raise ValueError(f"rank must be in [1, {space_size}] (space_size), got {rank_}")
    return math.log2(space_size) - math.log2(rank_)


def _encode(texts: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(t.encode(), dtype=np.uint8) for t in texts], dtype=np.int32)


def _batched(score: ScoreFn, tokens: np.ndarray, batch_size: int):
    """Runs ``score`` on fixed-size batches (the last one padded): one compiled shape."""
    outs_t, outs_l = [], []
    for i in range(0, len(tokens), batch_size):
        chunk = tokens[i : i + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        lp_t, lp_last = score(chunk)
        outs_t.append(np.asarray(lp_t)[:n])
        outs_l.append(np.asarray(lp_last)[:n])
    return np.concatenate(outs_t), np.concatenate(outs_l)


def sampled_log_likelihoods(
    score: ScoreFn, canary: Canary, secrets: list[str], *, batch_size: int = 256
) -> np.ndarray:
    """log p(formatted secret | prefix) (nats, float64) for each digit string in ``secrets``."""
    texts = [canary.prefix + format_secret(canary.kind, s) for s in secrets]
    tokens = _encode(texts)
    lp_t, _ = _batched(score, tokens, batch_size)
    start = len(canary.prefix.encode()) - 1  # the first secret byte's prediction
    return lp_t[:, start:].astype(np.float64).sum(axis=1)


def exact_log_likelihoods(
    score: ScoreFn, canary: Canary, digits: int, *, batch_size: int = 256
) -> np.ndarray:
    """The log-likelihood of every ``digits``-digit secret, indexed by its integer value.

    ``canary.kind`` must format the secret with its last digit last (``"id"``).
    Runs ``10 ** (digits - 1)`` sequences.
    """
    digits = _validate.positive_int("digits", digits)
    heads = [str(i).zfill(digits - 1) if digits > 1 else "" for i in range(10 ** (digits - 1))]
    # prefix + all but the last digit: the last position predicts the last digit.
    texts = [canary.prefix + format_secret(canary.kind, h + "0")[:-1] for h in heads]
    tokens = _encode(texts)
    lp_t, lp_last = _batched(score, tokens, batch_size)
    start = len(canary.prefix.encode()) - 1
    head_ll = lp_t[:, start:].astype(np.float64).sum(axis=1)  # all but the last digit
    last = lp_last[:, _DIGITS].astype(np.float64)  # (heads, 10)
    return (head_ll[:, None] + last).reshape(-1)


def exact_exposure(
    score: ScoreFn, canary: Canary, digits: int, *, batch_size: int = 256
) -> dict[str, Any]:
    """Exposure of ``canary`` by scoring all ``10 ** digits`` candidates."""
    if canary.kind != "id" or len(canary.secret) != digits:
        raise ValueError(
            f"exact exposure needs an 'id' canary with {digits} digits, got {canary.kind!r} "
            f"with {len(canary.secret)}"
        )
    ll = exact_log_likelihoods(score, canary, digits, batch_size=batch_size)
    r = rank(ll, ll[int(canary.secret)])
    return {
        "method": "exact",
        "space_size": 10**digits,
        "candidates_scored": 10**digits,
        "rank": r,
        "exposure": exposure(r, 10**digits),
        "log2_space": digits * math.log2(10),
        "secret_log_likelihood": float(ll[int(canary.secret)]),
    }


def extrapolated_exposure(
    sample_scores: np.ndarray, secret_score: float, space_size: int
) -> dict[str, Any]:
    """Estimated exposure from a uniform sample of candidate log-likelihoods.

    Fits a skew-normal distribution to the sample's log-perplexities
    (``-log2`` likelihood) and returns ``-log2 CDF(secret's log-perplexity)``,
    clipped to [0, log2 |R|] (Carlini et al. 2019, section 4.3). Also returns
    the empirical estimate ``log2(n + 1) - log2(1 + #sampled more likely)``
    that needs no fit but cannot exceed ``log2(n + 1)``.
    """
    s = np.asarray(sample_scores, dtype=np.float64)
    if s.ndim != 1 or len(s) < 10:
        raise ValueError(f"sample_scores must hold at least 10 scores, got shape {s.shape}")
    log2_space = math.log2(_validate.positive_int("space_size", space_size))
    perplexity = -s / math.log(2)
    a, loc, scale = stats.skewnorm.fit(perplexity)
    log_cdf = float(stats.skewnorm.logcdf(-secret_score / math.log(2), a, loc, scale))
    est = min(max(-log_cdf / math.log(2), 0.0), log2_space)
    better = int(np.count_nonzero(s > secret_score))
    return {
        "method": "extrapolated",
        "space_size": space_size,
        "candidates_scored": len(s),
        "rank": None,
        "exposure": est,
        "log2_space": log2_space,
        "empirical_exposure": math.log2(len(s) + 1) - math.log2(1 + better),
        "skewnorm": [float(a), float(loc), float(scale)],
        "secret_log_likelihood": float(secret_score),
    }


def sampled_exposure(
    score: ScoreFn,
    canary: Canary,
    rng: np.random.Generator,
    *,
    num_samples: int = 2000,
    digits: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """:func:`extrapolated_exposure` of ``canary`` from ``num_samples`` uniform candidates."""
    n = CARD_DIGITS if canary.kind == "card" else (digits or len(canary.secret))
    samples = ["".join(map(str, rng.integers(0, 10, size=n))) for _ in range(num_samples)]
    ll = sampled_log_likelihoods(score, canary, [*samples, canary.secret], batch_size=batch_size)
    return extrapolated_exposure(ll[:-1], float(ll[-1]), 10**n)
