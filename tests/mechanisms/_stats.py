"""Goodness-of-fit helpers shared by the statistical tests."""

import numpy as np
from scipy import stats

ALPHA = 1e-3  # a correct sampler fails a test with probability ~ 1e-3 (keys are fixed)


def chisquare_pvalue(samples: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square p-value of integer ``samples`` against ``pmf`` on ``support`` (+ tail bin)."""
    samples = np.asarray(samples)
    n = len(samples)
    pmf = np.asarray(pmf, np.float64)
    counts = np.array([np.sum(samples == s) for s in support], np.float64)
    rest_p = max(0.0, 1.0 - pmf.sum())
    rest_c = n - counts.sum()
    exp = np.append(pmf * n, rest_p * n)
    obs = np.append(counts, rest_c)
    keep = exp >= 5  # pool small cells into one
    exp = np.append(exp[keep], exp[~keep].sum())
    obs = np.append(obs[keep], obs[~keep].sum())
    if exp[-1] < 5:
        exp[-2] += exp[-1]
        obs[-2] += obs[-1]
        exp, obs = exp[:-1], obs[:-1]
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def categorical_pvalue(index: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square p-value of sampled indices (-1 allowed as the last category) vs ``probs``."""
    k = len(probs)
    idx = np.where(np.asarray(index) < 0, k - 1, index)
    return chisquare_pvalue(idx, np.arange(k), probs)
