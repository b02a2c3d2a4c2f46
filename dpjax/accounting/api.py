"""Host convenience functions: epsilon / delta of an event, in one call.

These wrap the pure accountants (``rdp``, ``pld``) for the common case of a
whole run described by one event. They return Python floats.
"""

from __future__ import annotations

from dpjax import _validate
from dpjax.accounting import events as ev
from dpjax.accounting import rdp

__all__ = ["ACCOUNTANTS", "epsilon", "epsilon_curve", "delta"]

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


def epsilon_curve(
    noise_multiplier: float,
    sampling_rate: float,
    steps: list[int] | tuple[int, ...],
    delta: float,
    *,
    accountant: str = "rdp",
) -> list[float]:
    """Epsilon of DP-SGD after each of ``steps`` steps: an upper bound at every point.

    The privacy curve of one run (e.g. at its epoch boundaries) in one pass.
    With ``accountant="pld"`` one grid plan serves every point: the plan
    ``epsilon`` makes for the largest step count (its grids hold the loss of
    every shorter run, the tails it cuts shrink with the run), so there is
    one compilation instead of one per step count, and the last point is
    the value ``epsilon`` returns for that step count. Each point is the
    minimum of that PLD bound and the RDP bound, both upper bounds. Points
    well before the last are a little looser than ``epsilon`` of their own
    step count (the grid's bias is budgeted for the last point's epsilon:
    measured +0.7 % at a tenth of a 1000-step run).

    Args:
      noise_multiplier: sigma > 0.
      sampling_rate: Poisson sampling rate in (0, 1].
      steps: step counts >= 0 (any order; 0 gives 0).
      delta: the accountant's delta in (0, 1).
      accountant: ``"rdp"`` or ``"pld"``.

    Privacy: the PLD discretization is pessimistic on any grid (every cut
    mass is accounted for), so a plan made for a longer run gives an upper
    bound for a shorter one; tested against dp_accounting and ``epsilon``.

    >>> c = epsilon_curve(1.1, 0.01, [500, 1000], 1e-5)
    >>> c[0] < c[1] == epsilon(dp_sgd_event(1.1, 0.01, 1000), 1e-5)
    True
    """
    _validate.positive("noise_multiplier", noise_multiplier)
    _validate.probability("sampling_rate", sampling_rate)
    _validate.open_unit("delta", delta)
    _validate.one_of("accountant", accountant, ACCOUNTANTS)
    counts = [_validate.non_negative_int("steps", t) for t in steps]
    out = []
    plan = None
    if accountant == "pld" and max(counts, default=0) > 0:
        from dpjax.accounting import pld, pld_plan  # jax: the RDP path stays numpy-only

        full = ev.dp_sgd_event(noise_multiplier, sampling_rate, max(counts))
        scale = rdp.epsilon(rdp.compose(rdp.init(), full), delta)  # as pld.epsilon_of_event
        plan = pld_plan.make_plan(full, scale, delta=delta)
    for t in counts:
        if t == 0:
            out.append(0.0)
            continue
        event = ev.dp_sgd_event(noise_multiplier, sampling_rate, t)
        e = rdp.epsilon(rdp.compose(rdp.init(), event), delta)
        if plan is not None:
            e = min(e, pld.epsilon_of_event(event, delta, plan=plan))
        out.append(float(e))
    return out


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
