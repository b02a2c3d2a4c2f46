"""One-run auditing (Steinke, Nasr, Jagielski 2023) of dpjax training."""

import jax
import numpy as np
import pytest

from dpjax.audit import audit_dp_sgd_one_run, one_run_audit


def test_guesses_are_counted_from_the_extremes():
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    inc = np.array([False, True, False, True, True, True])
    a = one_run_audit(scores, inc, 0.0, num_positive=2, num_negative=2)
    # top two (5, 4) are in: 2 correct; bottom two (0, 1): one out -> 1 correct.
    assert (a.num_guesses, a.num_correct) == (4, 3)


def test_bad_input():
    with pytest.raises(ValueError, match="equal in size"):
        one_run_audit([1.0, 2.0], [True], 0.0)
    with pytest.raises(ValueError, match="num_positive"):
        one_run_audit([1.0, 2.0], [True, False], 0.0, num_positive=2, num_negative=1)


@pytest.mark.slow
def test_one_run_audit_passes_dpjax_and_catches_missing_clipping():
    # sigma = 6 over 10 full-batch steps: the accountant claims about 2.2;
    # 200 guesses can show up to about 4.2.
    kw = dict(noise_multiplier=6.0, num_canaries=1000, num_steps=10)
    good = audit_dp_sgd_one_run(jax.random.key(0), **kw)
    bad = audit_dp_sgd_one_run(jax.random.key(0), clip=False, **kw)
    assert good.claimed_epsilon < 3.0
    assert good.consistent
    assert not bad.consistent and bad.epsilon > bad.claimed_epsilon
