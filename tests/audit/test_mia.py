"""Membership-inference statistics against sklearn and naive references."""

import numpy as np
import pytest
from sklearn import metrics

import dpjax.audit as audit


def test_roc_matches_sklearn():
    rng = np.random.default_rng(0)
    s_in = np.round(rng.normal(1.0, 1.0, 700), 1)  # rounding makes ties
    s_out = np.round(rng.normal(0.0, 1.0, 900), 1)
    r = audit.roc_curve(s_in, s_out)
    y = np.r_[np.ones(700), np.zeros(900)]
    s = np.r_[s_in, s_out]
    assert r.auc == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(y, s)
    for lvl in (0.001, 0.01):
        assert r.tpr_at[lvl] == pytest.approx(tpr[fpr <= lvl].max())


def test_logit_confidence_matches_float64_reference():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 5, (50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    got = np.asarray(audit.logit_confidence(logits, labels))
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p[np.arange(50), labels]
    np.testing.assert_allclose(got, np.log(py) - np.log1p(-py), rtol=1e-4, atol=1e-4)


def test_offline_lira_beats_loss_threshold_when_examples_differ_in_difficulty():
    # Each example has its own typical confidence; membership adds +1.5.
    rng = np.random.default_rng(2)
    n, k = 4000, 16
    base = rng.normal(0, 3, n)
    member = rng.random(n) < 0.5
    shadow_in = rng.random((k, n)) < 0.5
    shadow = base + rng.normal(0, 0.5, (k, n)) + 1.5 * shadow_in
    target = base + rng.normal(0, 0.5, n) + 1.5 * member
    lira = audit.lira_offline_scores(target, shadow, shadow_in)
    r_lira = audit.roc_curve(lira[member], lira[~member])
    r_loss = audit.roc_curve(target[member], target[~member])  # global threshold
    assert r_lira.auc > 0.9 > r_loss.auc
    assert r_lira.tpr_at[0.01] > 5 * max(r_loss.tpr_at[0.01], 1e-3)


def test_report_writes_a_png(tmp_path):
    rng = np.random.default_rng(3)
    rep = audit.membership_report(
        {"a": rng.normal(1, 1, 100)}, {"a": rng.normal(0, 1, 100)}, plot=tmp_path / "roc.png"
    )
    assert set(rep["a"]) == {"auc", "tpr_at_0.1%_fpr", "tpr_at_1%_fpr"}
    data = (tmp_path / "roc.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bad_input():
    with pytest.raises(ValueError, match="at least one member"):
        audit.roc_curve([], [1.0])
    with pytest.raises(ValueError, match=r"\(K, n\)"):
        audit.lira_offline_scores(np.zeros(3), np.zeros((2, 4)), np.zeros((2, 4), bool))
