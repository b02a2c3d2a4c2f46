"""Membership inference against a trained model: loss threshold and offline LiRA.

* Loss threshold (Yeom, Giacomelli, Fredrikson, Jha 2018, Privacy Risk in
  Machine Learning): members tend to have lower loss; score = -loss.
* Offline LiRA (Carlini, Chien, Nasr, Song, Terzis, Tramer 2022, Membership
  Inference Attacks From First Principles, Sec. 4 and the offline variant):
  shadow models trained without the target example give a Gaussian for its
  logit-scaled confidence ``phi = log(p_y / (1 - p_y))``; the score is how far
  the target model's ``phi`` sits above that Gaussian (a one-sided
  likelihood-ratio test).

Reports the ROC curve, AUC and TPR at 0.1% and 1% FPR -- the low-FPR regime
is what matters for privacy (Carlini et al. 2022, Sec. 3) -- and a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "RocCurve",
    "roc_curve",
    "logit_confidence",
    "loss_threshold_scores",
    "lira_offline_scores",
    "plot_roc",
    "membership_report",
]

FPR_LEVELS = (0.001, 0.01)


class RocCurve(NamedTuple):
    fpr: np.ndarray  # float64[K], increasing from 0 to 1
    tpr: np.ndarray  # float64[K]
    auc: float
    tpr_at: dict[float, float]  # TPR at FPR <= level, for each level in FPR_LEVELS

    def summary(self) -> dict[str, float]:
        out = {"auc": self.auc}
        out.update({f"tpr_at_{100 * k:g}%_fpr": v for k, v in self.tpr_at.items()})
        return out


def roc_curve(scores_members, scores_nonmembers) -> RocCurve:
    """ROC of the test "member when score >= t" over all thresholds.

    Ties are handled exactly (a threshold step moves both rates at once); the
    AUC is the trapezoid area, i.e. the Mann-Whitney probability that a member
    outscores a non-member (ties count 1/2).

    >>> r = roc_curve([3.0, 2.0], [1.0, 0.0])
    >>> r.auc, r.tpr_at[0.01]
    (1.0, 1.0)
    """
    s_in = np.asarray(scores_members, np.float64).ravel()
    s_out = np.asarray(scores_nonmembers, np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.all(np.isfinite(s_in)) and np.all(np.isfinite(s_out))):
        raise ValueError("scores must be finite")
    thr = np.unique(np.concatenate([s_in, s_out]))[::-1]
    tp = s_in.size - np.searchsorted(np.sort(s_in), thr, side="left")
    fp = s_out.size - np.searchsorted(np.sort(s_out), thr, side="left")
    tpr = np.concatenate([[0.0], tp / s_in.size])
    fpr = np.concatenate([[0.0], fp / s_out.size])
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    tpr_at = {lvl: float(np.max(tpr[fpr <= lvl])) for lvl in FPR_LEVELS}
    return RocCurve(fpr, tpr, auc, tpr_at)


def logit_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``phi = log p_y - log(1 - p_y)`` per example, computed in log space.

    ``log(1 - p_y) = logsumexp`` of the other classes' log-probabilities, so
    confident predictions do not round to ``log(0)``.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    lp_y = jnp.sum(jnp.where(onehot, logp, jnp.zeros_like(logp)), axis=-1)
    lp_rest = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, logp), axis=-1)
    return lp_y - lp_rest


def loss_threshold_scores(losses) -> np.ndarray:
    """Loss-threshold attack: score = -loss (Yeom et al. 2018)."""
    return -np.asarray(losses, np.float64)


def lira_offline_scores(target_phi, shadow_phi, shadow_in, *, min_std: float = 1e-3) -> np.ndarray:
    """Offline LiRA scores from OUT shadow models (Carlini et al. 2022).

    Args:
      target_phi: ``phi`` of each example under the target model, shape (n,).
      shadow_phi: ``phi`` under each shadow model, shape (K, n).
      shadow_in: bool (K, n): whether shadow k trained on example i; only
        OUT shadows (False) are used.
      min_std: floor on the per-example std (a global std is used where an
        example has fewer than two OUT shadows).

    Returns:
      ``(phi - mu_out) / sigma_out`` per example: the one-sided z-score of the
      likelihood-ratio test against the OUT distribution.
    """
    t = np.asarray(target_phi, np.float64)
    s = np.asarray(shadow_phi, np.float64)
    out = ~np.asarray(shadow_in, bool)
    if s.ndim != 2 or s.shape != out.shape or s.shape[1] != t.size:
        raise ValueError(
            f"shadow_phi and shadow_in must be (K, n) with n={t.size}, got {s.shape}, {out.shape}"
        )
    cnt = out.sum(0)
    mu = np.where(cnt > 0, (s * out).sum(0) / np.maximum(cnt, 1), np.mean(s))
    var = ((s - mu) ** 2 * out).sum(0) / np.maximum(cnt - 1, 1)
    global_std = float(np.std(s[out])) if out.any() else 1.0
    std = np.where(cnt >= 2, np.sqrt(var), global_std)
    return (t - mu) / np.maximum(std, min_std)


def plot_roc(curves: dict[str, RocCurve], path: str | Path, *, title: str = "") -> Path:
    """Writes a log-log ROC plot (the scale that shows low-FPR behaviour) as PNG."""
    import matplotlib  # optional and slow to import: only for the plot

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # after use("Agg")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    floor = 1e-4
    for name, c in curves.items():
        ax.plot(
            np.maximum(c.fpr, floor),
            np.maximum(c.tpr, floor),
            label=f"{name} (AUC {c.auc:.3f}, TPR@0.1% {c.tpr_at[0.001]:.3f})",
        )
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "membership inference ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def membership_report(
    members: dict[str, Any], nonmembers: dict[str, Any], *, plot: str | Path | None = None
) -> dict[str, Any]:
    """ROC summaries of several attacks; ``members[name]`` are that attack's scores.

    >>> rep = membership_report({"loss": [0.0, -0.1]}, {"loss": [-2.0, -3.0]})
    >>> rep["loss"]["auc"]
    1.0
    """
    curves = {k: roc_curve(members[k], nonmembers[k]) for k in members}
    out: dict[str, Any] = {k: c.summary() for k, c in curves.items()}
    if plot is not None:
        out["plot"] = str(plot_roc(curves, plot))
    return out
