"""Timing the vmapped simulation: rounds per second and clients per second of one workload.

The benchmarks (``benchmarks/federated.py``) and the comparison with Flower's
simulation engine call :func:`time_rounds` on the same algorithm, data and
cohort, so that both report the same quantities.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax

from dpjax import _validate

__all__ = ["RoundTiming", "time_rounds"]


class RoundTiming(NamedTuple):
    rounds: int  # timed rounds (after one warm-up round that compiles)
    compile_seconds: float  # the first round, compilation included
    seconds_per_round: float  # mean wall time of a timed round
    rounds_per_second: float
    clients_per_second: float  # sampled clients trained per second (realized cohorts)
    mean_cohort_size: float  # realized cohort size, averaged over the timed rounds


def time_rounds(alg: Any, state: Any, data: Any, rounds: int, key: jax.Array) -> RoundTiming:
    """Times ``rounds`` jitted rounds of ``alg`` (e.g. ``DPFedAvg``) on ``data``.

    One warm-up round compiles ``jax.jit(alg.round)`` (timed apart); each timed
    round blocks until its result is ready, so the figure is wall time of the
    whole round: sampling, local training of the cohort, clipping, aggregation,
    noise and the server step.

    Args:
      alg: anything with ``round(state, data, key) -> (state, metrics)`` whose
        metrics have a ``cohort_size``.
      state: the server state to start from.
      data: the population (``FederatedData``).
      rounds: timed rounds, >= 1.
      key: a PRNG key (split per round).

    Returns:
      :class:`RoundTiming`.
    """
    rounds = _validate.positive_int("rounds", rounds)
    key = _validate.prng_key("key", key)
    step = jax.jit(alg.round)
    keys = jax.random.split(key, rounds + 1)
    t0 = time.perf_counter()
    state, metrics = step(state, data, keys[0])
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    cohort = 0
    t0 = time.perf_counter()
    for k in keys[1:]:
        state, metrics = step(state, data, k)
        jax.block_until_ready((state, metrics))
        cohort += int(metrics.cohort_size)
    total = time.perf_counter() - t0
    return RoundTiming(
        rounds=rounds,
        compile_seconds=compile_s,
        seconds_per_round=total / rounds,
        rounds_per_second=rounds / total,
        clients_per_second=cohort / total,
        mean_cohort_size=cohort / rounds,
    )
