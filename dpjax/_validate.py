"""Argument checks shared by every public entry point.

Each check names the parameter and its allowed range, so a user sees at once
what to change: ``ValueError("noise_multiplier must be >= 0, got -1.0")``.
Checks run on concrete Python values at the point a parameter is first given;
traced values (under ``jax.jit``) are passed through unchecked.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import jax

__all__ = [
    "finite",
    "positive",
    "non_negative",
    "probability",
    "open_unit",
    "in_range",
    "positive_int",
    "non_negative_int",
    "prng_key",
    "one_of",
    "ACCOUNTANTS",
    "CLIP_METHODS",
    "MODELS",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "FINETUNE",
    "AUDIT_VARIANTS",
    "MASK_RULE_NAMES",
    "MISSING_POLICIES",
    "QUERY_STATISTICS",
    "QUERY_EPSILON_RANGE",
    "QUERY_RHO_RANGE",
]

# The allowed choices, one tuple each (checks, CLI ``choices`` and messages use these).
ACCOUNTANTS = ("rdp", "pld")  # privacy accountants (dpjax.accounting)
CLIP_METHODS = ("vmap", "ghost", "auto")  # per-example gradient norms (dpjax.clipped_grad)
MODELS = ("cnn", "mlp")  # the digits demo's models (dpjax.digits.models)
OPTIMIZERS = ("sgd", "adam")  # the digits demo's optimizers (dpjax.dp_sgd, dpjax.dp_adam)
LR_SCHEDULES = ("constant", "cosine", "linear")  # the digits demo's learning-rate schedules
# Which layers the digits demo trains privately: all, or only the dense head (dpjax.digits.job).
FINETUNE = ("all", "head")
# dpjax.audit.mechanism.VARIANTS: "correct" and deliberately broken DP-SGD releases.
AUDIT_VARIANTS = ("correct", "no_clip", "half_noise", "mean_noise_on_sum")
# dpjax.anonymize.masking.MASK_RULES, the names (the rules need pandas).
MASK_RULE_NAMES = ("last4", "last2", "all", "email", "phone", "card", "suppress")
# dpjax.mechanisms._table.MISSING: what to do with missing values in a table.
MISSING_POLICIES = ("error", "drop")
# dpjax.mechanisms.queries: the statistics and the privacy parameters the exact
# samplers support for every statistic (noise scales within the int32 discrete
# samplers' ranges after the budget is split).
QUERY_STATISTICS = ("count", "sum", "mean", "variance", "histogram", "quantiles")
QUERY_EPSILON_RANGE = (1e-6, 1e6)
QUERY_RHO_RANGE = (1e-5, 1e6)
# This module imports no jax (the CLI builds its parser from these constants
# without loading jax); a traced value exists only once jax is imported.


def _is_tracer(value: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.core.Tracer)


def _concrete(value: Any) -> float | None:
    """Returns ``value`` as a float, or None when it is traced (not checkable)."""
    if _is_tracer(value):
        return None
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got bool {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    arr = np.asarray(value)
    if arr.shape != ():
        raise TypeError(f"expected a scalar, got an array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"expected a number, got {value!r}")
    return float(arr)


def _num(name: str, value: Any) -> float | None:
    try:
        return _concrete(value)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None


def finite(name: str, value: Any) -> Any:
    v = _num(name, value)
    if v is not None and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return value


def positive(name: str, value: Any, *, allow_inf: bool = False) -> Any:
    """Checks ``0 < value`` (and finite unless ``allow_inf``)."""
    v = _num(name, value)
    if v is None:
        return value
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        rng = "> 0" if allow_inf else "> 0 and finite"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return value


def non_negative(name: str, value: Any) -> Any:
    """Checks ``0 <= value < inf``."""
    v = _num(name, value)
    if v is not None and (math.isnan(v) or v < 0 or math.isinf(v)):
        raise ValueError(f"{name} must be >= 0 and finite, got {v}")
    return value


def probability(name: str, value: Any) -> Any:
    """Checks a sampling rate: ``0 < value <= 1``."""
    v = _num(name, value)
    if v is not None and not (0.0 < v <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {v}")
    return value


def open_unit(name: str, value: Any) -> Any:
    """Checks ``0 < value < 1`` (e.g. delta)."""
    v = _num(name, value)
    if v is not None and not (0.0 < v < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {v}")
    return value


def in_range(
    name: str,
    value: Any,
    lo: float,
    hi: float,
    *,
    lo_closed: bool = True,
    hi_closed: bool = True,
) -> Any:
    v = _num(name, value)
    if v is None:
        return value
    ok_lo = v >= lo if lo_closed else v > lo
    ok_hi = v <= hi if hi_closed else v < hi
    if not (ok_lo and ok_hi) or math.isnan(v):
        left = "[" if lo_closed else "("
        right = "]" if hi_closed else ")"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {v}")
    return value


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | np.integer):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    v = _int(name, value)
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def non_negative_int(name: str, value: Any) -> int:
    v = _int(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def prng_key(name: str, key: Any) -> jax.Array:
    """Checks an explicit PRNG key: typed (``jax.random.key``) or raw uint32[2]."""
    if key is None:
        raise ValueError(
            f"{name} must be a PRNG key from jax.random.key(seed); got None "
            "(dpjax has no default seed)"
        )
    import jax  # keeps `import dpjax._validate` (the CLI's parser) free of jax

    if isinstance(key, jax.Array | jax.core.Tracer):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.dtype == np.uint32 and key.shape[-1:] == (2,):
            return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a PRNG key from jax.random.key(seed), got {key!r}")


def one_of(name: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
