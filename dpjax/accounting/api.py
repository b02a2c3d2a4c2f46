"""Host convenience functions: epsilon / delta of an event, in one call.

These wrap the pure accountants (``rdp``, ``pld``) for the common case of a
whole run described by one event. They return Python floats.
"""

from __future__ import annotations

from dpjax import _validate
from dpjax.accounting import events as ev
from dpjax.accounting import rdp

__all__ = ["ACCOUNTANTS", "epsilon", "delta"]

ACCOUNTANTS = _validate.ACCOUNTANTS


def epsilon(event: ev.Event, delta: float, *, accountant: str = "rdp") -> float:
    """Epsilon such that ``event`` is (epsilon, delta)-DP: an upper bound.

    Args:
      event: what the mechanism did, e.g. ``dp_sgd_event(noise_multiplier,
        sampling_rate, steps)`` for a DP-SGD run.
      delta: target delta in (0, 1).
      accountant: ``"rdp"`` (fast, looser) or ``"pld"`` (tight).

    Returns:
      epsilon as a Python float; ``inf`` if no finite bound exists.

    Raises:
      ValueError: on a parameter outside its range.

    Privacy: the neighbouring relation is the one of the event (add/remove for
    Poisson sampling, replace-one for sampling without replacement).

    >>> e = dp_sgd_event(1.1, 0.01, 1000)
    >>> round(epsilon(e, 1e-5), 3)
    1.712
    """
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, ACCOUNTANTS)
    if accountant == "rdp":
        return rdp.epsilon(rdp.compose(rdp.init(), event), delta)
    from dpjax.accounting import pld  # jax: the RDP path stays numpy-only

    # Both are upper bounds, so their minimum is one; RDP (exact to float64
    # round-off) backs up the PLD where its grid is too coarse.
    rdp_eps = rdp.epsilon(rdp.compose(rdp.init(), event), delta)
    return min(pld.epsilon_of_event(event, delta), rdp_eps)


def delta(event: ev.Event, epsilon: float, *, accountant: str = "rdp") -> float:
    """Delta such that ``event`` is (epsilon, delta)-DP: an upper bound.

    >>> e = SelfComposed(GaussianEvent(1.0), count=1)
    >>> round(delta(e, 1.0, accountant="pld"), 4)
    0.1269
    """
    _validate.non_negative("epsilon", epsilon)
    _validate.one_of("accountant", accountant, ACCOUNTANTS)
    if accountant == "rdp":
        return rdp.delta(rdp.compose(rdp.init(), event), epsilon)
    from dpjax.accounting import pld  # jax: the RDP path stays numpy-only

    return min(
        pld.delta_of_event(event, epsilon), rdp.delta(rdp.compose(rdp.init(), event), epsilon)
    )


# Names used in the doctests above.
GaussianEvent = ev.GaussianEvent
SelfComposed = ev.SelfComposed
dp_sgd_event = ev.dp_sgd_event
