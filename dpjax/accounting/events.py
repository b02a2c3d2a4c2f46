"""Privacy events: what a mechanism did, as frozen dataclasses.

An event describes one run of a mechanism; accountants turn events into
privacy guarantees. Once released, the meaning of a field never changes
(the rule of Google's dp_accounting). Parameters are validated where they
are first given; traced values (under ``jax.jit`` / ``jax.vmap``) pass
through unchecked so that PLD accounting can be vectorized over them.

Neighbouring relations:
  * ``GaussianEvent``, ``LaplaceEvent``: the noise multiplier is the noise
    scale divided by the L2 (resp. L1) sensitivity under whatever relation
    the caller uses; the accountants treat the pair symmetrically.
  * ``PoissonSampledGaussian``: add/remove one example (Abadi et al. 2016).
  * ``SampledWithoutReplacementGaussian``: replace one example in a public
    dataset of fixed size; ``noise_multiplier`` is the noise std divided by the
    replace-one sensitivity (2C for per-example clip norm C).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dpjax import _validate

__all__ = [
    "Event",
    "GaussianEvent",
    "LaplaceEvent",
    "PoissonSampledGaussian",
    "SampledWithoutReplacementGaussian",
    "Composed",
    "SelfComposed",
    "dp_sgd_event",
]


class Event:
    """Base class of all privacy events."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class GaussianEvent(Event):
    """The Gaussian mechanism: N(0, (noise_multiplier * sensitivity)^2) noise.

    >>> GaussianEvent(noise_multiplier=2.0)
    GaussianEvent(noise_multiplier=2.0)
    """

    noise_multiplier: Any

    def __post_init__(self) -> None:
        _validate.positive("noise_multiplier", self.noise_multiplier)


@dataclasses.dataclass(frozen=True)
class LaplaceEvent(Event):
    """The Laplace mechanism: Laplace(0, noise_multiplier * L1-sensitivity) noise."""

    noise_multiplier: Any

    def __post_init__(self) -> None:
        _validate.positive("noise_multiplier", self.noise_multiplier)


@dataclasses.dataclass(frozen=True)
class PoissonSampledGaussian(Event):
    """One DP-SGD step: Poisson sampling at rate q, then the Gaussian mechanism.

    Relation: add/remove one example. ``noise_multiplier`` = noise std / clip norm.

    >>> PoissonSampledGaussian(noise_multiplier=1.1, sampling_rate=0.01).sampling_rate
    0.01
    """

    noise_multiplier: Any
    sampling_rate: Any

    def __post_init__(self) -> None:
        _validate.positive("noise_multiplier", self.noise_multiplier)
        _validate.probability("sampling_rate", self.sampling_rate)


@dataclasses.dataclass(frozen=True)
class SampledWithoutReplacementGaussian(Event):
    """A fixed-size batch drawn without replacement, then the Gaussian mechanism.

    Relation: replace one example (dataset size public). ``noise_multiplier``
    is the noise std over the replace-one L2 sensitivity (2C for clip norm C).
    """

    noise_multiplier: Any
    sample_size: int
    dataset_size: int

    def __post_init__(self) -> None:
        _validate.positive("noise_multiplier", self.noise_multiplier)
        m = _validate.positive_int("sample_size", self.sample_size)
        n = _validate.positive_int("dataset_size", self.dataset_size)
        if m > n:
            raise ValueError(f"sample_size must be <= dataset_size={n}, got {m}")

    @property
    def sampling_rate(self) -> float:
        return self.sample_size / self.dataset_size


@dataclasses.dataclass(frozen=True)
class Composed(Event):
    """Sequential composition of (possibly different) events, e.g. training phases."""

    events: tuple[Event, ...]

    def __post_init__(self) -> None:
        events = tuple(self.events)
        for i, e in enumerate(events):
            if not isinstance(e, Event):
                raise TypeError(f"events[{i}] must be an Event, got {e!r}")
        object.__setattr__(self, "events", events)


@dataclasses.dataclass(frozen=True)
class SelfComposed(Event):
    """``event`` run ``count`` times (count >= 0; 0 means no privacy cost)."""

    event: Event
    count: Any

    def __post_init__(self) -> None:
        if not isinstance(self.event, Event):
            raise TypeError(f"event must be an Event, got {self.event!r}")
        if not _is_traced(self.count):
            _validate.non_negative_int("count", self.count)


def dp_sgd_event(noise_multiplier: Any, sampling_rate: Any, steps: Any) -> SelfComposed:
    """The event of a DP-SGD run: ``steps`` Poisson-sampled Gaussian steps.

    The one place dpjax builds it (training, budgets, calibration, audits), so
    that every epsilon of a DP-SGD run comes from the same event.

    Args:
      noise_multiplier: sigma > 0, the noise std over the clip norm.
      sampling_rate: q in (0, 1], each example's inclusion probability per step.
      steps: the number of steps, >= 0 (0 costs nothing).

    Returns:
      ``SelfComposed(PoissonSampledGaussian(noise_multiplier, sampling_rate), steps)``.

    Privacy:
      Add/remove one example (Abadi et al. 2016, *Deep Learning with
      Differential Privacy*); the caller passes sigma rounded down and q
      rounded up when they come from lower-precision arithmetic.

    >>> dp_sgd_event(1.1, 0.01, 1000)
    SelfComposed(event=PoissonSampledGaussian(noise_multiplier=1.1, sampling_rate=0.01), count=1000)
    """
    return SelfComposed(PoissonSampledGaussian(noise_multiplier, sampling_rate), count=steps)


def _is_traced(x: Any) -> bool:
    import jax  # events are plain data: no jax unless a value is checked

    return isinstance(x, jax.core.Tracer)


def leaves(event: Event, count: int = 1) -> list[tuple[Event, Any]]:
    """Flattens ``event`` into (elementary event, multiplicity) pairs."""
    if isinstance(event, SelfComposed):
        return leaves(event.event, count * event.count)
    if isinstance(event, Composed):
        out: list[tuple[Event, Any]] = []
        for e in event.events:
            out.extend(leaves(e, count))
        return out
    if isinstance(event, Event):
        return [(event, count)]
    raise TypeError(f"expected a dpjax.accounting Event, got {event!r}")
