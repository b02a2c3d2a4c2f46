"""Statistics that turn attack outcomes into empirical epsilon lower bounds.

Two ways:

* Threshold tests on two score samples (canary in / canary out), with
  Clopper-Pearson confidence intervals on the true and false positive rates:
  an (epsilon, delta)-DP mechanism satisfies ``TPR <= e^eps FPR + delta`` and
  ``TNR <= e^eps FNR + delta`` for every test, so
  ``eps >= log((TPR_lo - delta) / FPR_hi)`` with confidence (Jagielski, Ullman,
  Oprea 2020, Auditing Differentially Private Machine Learning: How Private is
  Private SGD?, Sec. 3; Nasr et al. 2021, Adversary Instantiation, Sec. 3).
* Guessing games with many canaries in one run (Steinke, Nasr, Jagielski 2023,
  Privacy Auditing with One (1) Training Run, Thm. 3.1 and Appendix D): ``v``
  correct out of ``r`` guesses is unlikely under (eps, delta)-DP when
  ``P[Binomial(r, e^eps / (1 + e^eps)) >= v]`` plus a delta term is small.

All of it runs on host in NumPy float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special, stats

from dpjax import _validate

__all__ = [
    "AuditResult",
    "clopper_pearson",
    "empirical_epsilon",
    "one_run_p_value",
    "one_run_epsilon",
]


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` confidence interval of a binomial proportion.

    Clopper, Pearson 1934: the interval inverts two one-sided binomial tests,
    each at level ``alpha / 2``.

    >>> lo, hi = clopper_pearson(0, 100, 0.05)
    >>> lo, round(hi, 4)
    (0.0, 0.0362)
    """
    k = _validate.non_negative_int("successes", successes)
    n = _validate.positive_int("trials", trials)
    if k > n:
        raise ValueError(f"successes must be <= trials={n}, got {k}")
    _validate.open_unit("alpha", alpha)
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.isf(alpha / 2, k + 1, n - k))
    return lo, hi


class AuditResult(NamedTuple):
    """An empirical epsilon lower bound and the test that gave it."""

    epsilon: float  # lower bound; holds with probability >= confidence
    delta: float
    confidence: float
    threshold: float  # the score threshold of the chosen test
    test: str  # "high" (guess "in" when score > threshold) or "low" (TNR/FNR form)
    tpr: float  # observed on the evaluation trials
    fpr: float
    num_in: int  # evaluation trials with the canary
    num_out: int  # evaluation trials without it


def _rates(s_in: np.ndarray, s_out: np.ndarray, thresholds: np.ndarray):
    """Counts of ``score > t`` for sorted samples, for every threshold t."""
    k_in = s_in.size - np.searchsorted(np.sort(s_in), thresholds, side="right")
    k_out = s_out.size - np.searchsorted(np.sort(s_out), thresholds, side="right")
    return k_in, k_out


def _bounds(k_in, k_out, n_in, n_out, delta, alpha):
    """Vectorized epsilon lower bounds of both test forms, per threshold.

    Each form uses two one-sided Clopper-Pearson bounds at ``alpha / 2``, so
    the bound holds with probability ``>= 1 - alpha`` (union bound).
    """
    a = alpha / 2
    k_in = np.asarray(k_in, np.float64)
    k_out = np.asarray(k_out, np.float64)

    def lower(k, n):  # one-sided lower bound at level a
        with np.errstate(all="ignore"):
            v = special.betaincinv(k, n - k + 1, a)
        return np.where(k <= 0, 0.0, v)

    def upper(k, n):
        with np.errstate(all="ignore"):
            v = special.betaincinv(k + 1, n - k, 1 - a)
        return np.where(k >= n, 1.0, v)

    tpr_lo, fpr_hi = lower(k_in, n_in), upper(k_out, n_out)
    tnr_lo, fnr_hi = lower(n_out - k_out, n_out), upper(n_in - k_in, n_in)
    with np.errstate(divide="ignore", invalid="ignore"):
        high = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        low = np.log(np.maximum(tnr_lo - delta, 0.0) / fnr_hi)
    high = np.where(np.isfinite(high), high, 0.0)
    low = np.where(np.isfinite(low), low, 0.0)
    return np.maximum(high, 0.0), np.maximum(low, 0.0)


def empirical_epsilon(
    scores_in,
    scores_out,
    delta: float,
    *,
    confidence: float = 0.95,
    selection_fraction: float = 0.25,
    threshold: float | None = None,
) -> AuditResult:
    """Empirical epsilon lower bound from scores with and without the canary.

    The first ``selection_fraction`` of each sample picks the threshold and
    the test form that give the best bound there; the rest of the trials,
    untouched by that choice, give the bound (so its confidence is honest).
    With an explicit ``threshold`` all trials give the bound.

    Args:
      scores_in: scores of trials where the canary was present (higher means
        "present" under the best linear test).
      scores_out: scores of trials without the canary.
      delta: the delta of the DP guarantee under test, in [0, 1).
      confidence: the probability that the bound holds, in (0, 1).
      selection_fraction: the share of trials used to choose the test, in (0, 1).
      threshold: a fixed threshold (skips the selection).

    Returns:
      ``AuditResult``; ``epsilon`` is a lower bound on the true epsilon with
      probability ``>= confidence`` (0 when nothing is detected).

    Privacy:
      The mechanism under test is (eps, delta)-DP only if ``eps >= result.epsilon``
      (with probability ``confidence``): Jagielski, Ullman, Oprea 2020, Thm. 1.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> r = empirical_epsilon(rng.normal(4, 1, 20000), rng.normal(0, 1, 20000), 1e-5)
    >>> 2.0 < r.epsilon < 8.0
    True
    """
    s_in = np.asarray(scores_in, np.float64).ravel()
    s_out = np.asarray(scores_out, np.float64).ravel()
    if s_in.size < 2 or s_out.size < 2:
        raise ValueError(
            f"need at least 2 scores on each side, got {s_in.size} in and {s_out.size} out"
        )
    if not (np.all(np.isfinite(s_in)) and np.all(np.isfinite(s_out))):
        raise ValueError("scores must be finite")
    _validate.in_range("delta", delta, 0.0, 1.0, hi_closed=False)
    _validate.open_unit("confidence", confidence)
    alpha = 1.0 - confidence
    if threshold is None:
        _validate.open_unit("selection_fraction", selection_fraction)
        m_in = max(1, int(s_in.size * selection_fraction))
        m_out = max(1, int(s_out.size * selection_fraction))
        sel_in, s_in = s_in[:m_in], s_in[m_in:]
        sel_out, s_out = s_out[:m_out], s_out[m_out:]
        cands = np.unique(np.concatenate([sel_in, sel_out]))
        k_in, k_out = _rates(sel_in, sel_out, cands)
        high, low = _bounds(k_in, k_out, sel_in.size, sel_out.size, delta, alpha)
        if high.max() >= low.max():
            test, threshold = "high", float(cands[int(np.argmax(high))])
        else:
            test, threshold = "low", float(cands[int(np.argmax(low))])
        k_in, k_out = _rates(s_in, s_out, np.asarray([threshold]))
        high, low = _bounds(k_in, k_out, s_in.size, s_out.size, delta, alpha)
        eps = float(high[0] if test == "high" else low[0])
    else:
        # A threshold fixed in advance: both test forms, union-bounded.
        _validate.finite("threshold", threshold)
        k_in, k_out = _rates(s_in, s_out, np.asarray([threshold]))
        high, low = _bounds(k_in, k_out, s_in.size, s_out.size, delta, alpha / 2)
        test = "high" if high[0] >= low[0] else "low"
        eps = float(max(high[0], low[0]))
    return AuditResult(
        epsilon=eps,
        delta=float(delta),
        confidence=float(confidence),
        threshold=float(threshold),
        test=test,
        tpr=float(k_in[0]) / s_in.size,
        fpr=float(k_out[0]) / s_out.size,
        num_in=int(s_in.size),
        num_out=int(s_out.size),
    )


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` correct guesses out of ``r`` under (epsilon, delta)-DP.

    Steinke, Nasr, Jagielski 2023, Thm. 3.1 (delta = 0) and its delta > 0
    extension (Appendix D): with ``m`` canaries, each included independently
    with probability 1/2, and ``q = e^eps / (1 + e^eps)``,
    ``P[W >= v] <= P[Bin(r, q) >= v] + 2 m delta max_{1<=i<=v} P[v-i <= Bin(r, q) < v] / i``.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = special.expit(epsilon)
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Bin = v-1], ..., P[Bin = 0]
    ratio = np.max(np.cumsum(pmf) / np.arange(1, v + 1))
    return min(1.0, tail + 2.0 * m * delta * float(ratio))


def one_run_epsilon(
    m: int, r: int, v: int, delta: float, *, confidence: float = 0.95, tol: float = 1e-4
) -> float:
    """Largest epsilon rejected at ``confidence`` by ``v`` of ``r`` correct guesses.

    The p-value is decreasing in epsilon's complement: bisect for the epsilon
    where it crosses ``1 - confidence`` (Steinke, Nasr, Jagielski 2023, Alg. 1).

    >>> round(one_run_epsilon(1000, 100, 90, 0.0), 2)
    1.63
    """
    _validate.in_range("delta", delta, 0.0, 1.0, hi_closed=False)
    _validate.open_unit("confidence", confidence)
    beta = 1.0 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return math.inf
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo
