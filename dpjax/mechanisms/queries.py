"""Differentially private aggregates on tables: count, sum, mean, variance, histogram, quantiles.

Each query: (1) bounds contributions (at most ``max_groups_per_unit`` groups and
``max_rows_per_unit`` rows per group for each privacy unit, values clamped to
public ``bounds``; Wilson et al. 2020, *DP SQL with Bounded User
Contribution*); (2) selects which groups to release with DP partition
selection unless the caller lists public ``groups`` (Laplace / Gaussian
thresholding of the per-group count of units; Korolova et al. 2009, Wilson et
al. 2020 Sec. 4, Desfontaines et al. 2022); (3) releases each statistic with
float-safe grid noise (:func:`dpjax.mechanisms.grid_laplace` /
``grid_gaussian``: exact discrete noise, Canonne, Kamath, Steinke 2020) and a
confidence interval derived from the noise distribution.

Privacy: neighbouring tables differ by all rows of one privacy unit
(add/remove; one row when ``privacy_unit`` is None). With ``epsilon`` a query
is (epsilon, delta)-DP (delta > 0 only for partition selection); with ``rho``
it is rho-zCDP plus delta. Confidence intervals cover the statistic of the
*bounded* table (after contribution bounding and clamping), which is the
estimand; they are post-processing and cost nothing. Quantiles use the
exponential mechanism over a public grid of candidates and have no interval.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import special

from dpjax import _validate as V
from dpjax.mechanisms import _exact, _quantile
from dpjax.mechanisms._table import (
    MISSING,
    TableLike,
    as_columns,
    bound_contributions,
    check_bounds,
    check_columns,
    handle_missing,
    load_table,
)
from dpjax.mechanisms.filter import PrivacyCost, PrivacyFilter
from dpjax.mechanisms.ledger import Ledger, dataset_id
from dpjax.mechanisms.noise import grid_for

__all__ = ["Release", "PreparedQuery", "QuerySession", "aggregate", "prepare", "STATISTICS"]

STATISTICS = V.QUERY_STATISTICS
# Privacy parameters the exact samplers support for every statistic (noise scales
# within the int32 discrete samplers' ranges after the budget is split).
EPSILON_RANGE = V.QUERY_EPSILON_RANGE
RHO_RANGE = V.QUERY_RHO_RANGE
_dlap = _exact.discrete_laplace_noise  # jitted inside
_dgauss = _exact.discrete_gaussian_noise


@dataclasses.dataclass(frozen=True)
class Release:
    """A released table: group columns, ``value``, ``ci_low``, ``ci_high``; and its cost."""

    table: pd.DataFrame
    cost: PrivacyCost
    confidence: float

    def __str__(self) -> str:
        return self.table.to_string(index=False)


@dataclasses.dataclass(frozen=True)
class _Noise:
    """One noisy statistic's calibration: pure (epsilon) or zCDP (rho)."""

    epsilon: float | None
    rho: float | None

    def split(self, parts: int) -> _Noise:
        e = None if self.epsilon is None else self.epsilon / parts
        return _Noise(e, None if self.rho is None else self.rho / parts)


def _pad(n: int) -> int:
    return max(8, 1 << (n - 1).bit_length())  # few distinct shapes, few compilations


_MAX_LAPLACE_SCALE = 2.0**24  # the discrete Laplace sampler's cap (2**24 or above)


def _calibrate(l1: float, l2: float, nz: _Noise, integer: bool):
    """Grid and exact-sampler parameters of one release; a function of public settings only.

    Raises the samplers' ValueError when a noise scale is outside their range;
    :func:`_plan` calls it for every release of a query before anything runs.
    """
    if nz.epsilon is not None:
        integer = integer and 2.0**-30 < l1 / nz.epsilon <= _MAX_LAPLACE_SCALE  # else the grid
        g = 1.0 if integer else grid_for(l1 / nz.epsilon)
        sens_g = round(l1) if integer else math.ceil(l1 / g) + 1
        return g, integer, _exact.rational_scale(sens_g, nz.epsilon)
    sigma = l2 / math.sqrt(2.0 * nz.rho)
    integer = integer and 2.0**-15 < sigma <= _exact.MAX_SIGMA / 2
    g = 1.0 if integer else grid_for(2.0 * sigma)
    sens_g = l2 if integer else math.ceil(l2 / g) + 1
    return g, integer, _exact.gaussian_params(np.asarray(sens_g**2 / (2.0 * nz.rho)))


def _release(key, x, l1, l2, nz: _Noise, alpha: float, integer: bool = False):
    """Grid release of float64 ``x`` with L1 (pure) / L2 (zCDP) sensitivity.

    Counts (``integer``: exact integer values and sensitivities) use the integer
    grid directly, so the noise is the plain discrete Laplace / Gaussian.
    Returns (noisy values, CI half-widths) in float64; the interval
    [value - h, value + h] holds the exact x with probability >= 1 - alpha.
    """
    n = len(x)
    g, integer, params = _calibrate(l1, l2, nz, integer)
    if nz.epsilon is not None:
        t, s = params
        z = np.asarray(_dlap(key, t, s, (_pad(n),)))[:n]
        p = math.exp(-float(s) / float(t))  # P[|Z| >= k] = 2 p^k / (1 + p)
        if p == 0.0:  # scale below ~1/745: the noise is 0 in float64
            k = 0
        else:
            k = max(0, math.ceil(math.log(alpha * (1.0 + p) / 2.0) / math.log(p)) - 1)
    else:
        t, m, d = params
        z = np.asarray(_dgauss(key, t, m, d, (_pad(n),)))[:n]
        sig2 = float(t) * float(m) / float(d)
        ys = np.arange(0, int(40 * math.sqrt(sig2)) + 2)
        w = np.exp(-(ys.astype(np.float64) ** 2) / (2.0 * sig2))
        w[1:] *= 2.0  # +y and -y
        tail = np.cumsum(w[::-1])[::-1] / w.sum()  # tail[k] = P[|Z| >= k]
        k = int(np.argmax(np.append(tail[1:], 0.0) <= alpha))  # smallest k: P[|Z| > k] <= alpha
    base = np.round(x / g)  # exact: g is a power of two
    return (base + z) * g, (k + (0.0 if integer else 0.5)) * g


def _check_noise(statistic, bounds, nz: _Noise, l_inf: int, l0: int) -> None:
    """Calibrates every noisy sum of a query up front: unsupported scales fail before any work.

    Mirrors :func:`_moments`: a count is one integer sum; a sum one sum of
    clamped values; a mean two sums (count, centred values); a variance three.
    """
    if statistic == "quantiles":
        return
    if statistic in ("count", "histogram"):
        sums = [(1.0, True)]
    else:
        lo, hi = bounds
        r = (hi - lo) / 2.0
        sums = {"sum": [(max(abs(lo), abs(hi)), False)], "mean": [(1.0, True), (r, False)],
                "variance": [(1.0, True), (r, False), (r * r, False)]}[statistic]  # fmt: skip
    part = nz.split(len(sums))
    for c, integer in sums:
        try:
            _calibrate(l0 * l_inf * c, math.sqrt(l0) * l_inf * c, part, integer)
        except ValueError:
            name = "epsilon" if nz.epsilon is not None else "rho"
            value = nz.epsilon if nz.epsilon is not None else nz.rho
            raise ValueError(
                f"{name} is out of range for this query: each of its {len(sums)} noisy sum(s) "
                f"gets {name}={value / len(sums):g} after partition selection's share, and "
                "its noise scale (sensitivity from bounds, max_rows_per_unit and "
                "max_groups_per_unit) is outside what the exact samplers draw; raise "
                f"{name}, lower selection_fraction, or narrow those settings"
            ) from None


def _uniform64(key: jax.Array, n: int) -> np.ndarray:
    """Uniform float64 on (0, 1) with 53 random bits (float32 would cut the noise's tails)."""
    w = np.asarray(jax.random.bits(key, (2, _pad(n)), jnp.uint32))[:, :n].astype(np.uint64)
    return (((w[0] >> np.uint64(6)) << np.uint64(27)) + (w[1] >> np.uint64(5)) + 0.5) / 2.0**53


def _select_groups(key, counts: pd.Series, l0: int, nz: _Noise, delta: float) -> pd.Index:
    """DP partition selection: keep groups whose noisy count of units clears a threshold.

    Laplace (pure): noise Lap(L0/eps), threshold 1 + (L0/eps) ln(L0 / (2 delta)),
    so a group with one unit appears with probability delta / L0 (Wilson et al.
    2020, Sec. 4; Korolova et al. 2009). Gaussian (zCDP): sigma = sqrt(L0) /
    sqrt(2 rho), threshold 1 + sigma Phi^-1(1 - delta / L0).
    """
    V.open_unit("delta (needed for partition selection without public groups)", delta)
    u = _uniform64(key, len(counts))
    if nz.epsilon is not None:
        b = l0 / nz.epsilon
        noise = -b * np.sign(u - 0.5) * np.log1p(-2.0 * np.abs(u - 0.5))
        tau = 1.0 + b * math.log(l0 / (2.0 * delta))
    else:
        sigma = math.sqrt(l0) / math.sqrt(2.0 * nz.rho)
        noise = sigma * special.ndtri(u)
        tau = 1.0 + sigma * float(special.ndtri(1.0 - delta / l0))
    return counts.index[counts.to_numpy(np.float64) + noise > tau]


@dataclasses.dataclass(frozen=True)
class _Query:
    statistic: str
    column: str | None
    bounds: tuple[float, float] | None
    by: list[str]
    groups: list[Any] | None
    quantiles: tuple[float, ...]
    bins: Any


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedQuery:
    """A query checked against its table and priced; :meth:`run` releases it.

    Everything checkable (parameters, columns, missing values) is checked when
    the query is prepared, before any budget is charged, so a refused query
    costs nothing; the cost depends on the parameters only, never on the data.
    """

    data: pd.DataFrame
    query: _Query
    noise: _Noise
    cost: PrivacyCost
    options: dict[str, Any]

    @property
    def columns(self) -> list[str]:
        """The columns the query reads (value, group-by, privacy unit)."""
        q, unit = self.query, self.options["unit"]
        return list(dict.fromkeys([*([q.column] if q.column else []), *q.by,
                                   *([unit] if unit else [])]))  # fmt: skip

    def run(self, key: jax.Array) -> Release:
        """Draws the noise with ``key`` and returns the :class:`Release`."""
        key = V.prng_key("key", key)
        return _run(self.data, key, self.query, self.noise, self.cost, **self.options)


def prepare(
    data: TableLike,
    statistic: str,
    column: str | None = None,
    *,
    epsilon: float | None = None,
    rho: float | None = None,
    delta: float = 0.0,
    bounds: tuple[float, float] | None = None,
    by: str | Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    quantiles: Sequence[float] = (0.5,),
    bins: Any = None,
    privacy_unit: str | None = None,
    max_rows_per_unit: int = 1,
    max_groups_per_unit: int = 1,
    selection_fraction: float = 0.5,
    confidence: float = 0.95,
    missing: str = "error",
) -> PreparedQuery:
    """Checks a query against its table and prices it; see :func:`aggregate` for the arguments.

    Privacy: preparing releases nothing. Its errors name parameters and columns
    (the public schema) and say at most *that* a column has missing values,
    never how many.

    >>> import numpy as np
    >>> p = prepare({"x": np.arange(4.0)}, "sum", "x", epsilon=0.5, bounds=(0, 4))
    >>> p.cost.epsilon, p.columns
    (0.5, ['x'])
    """
    q, nz, cost, opts = _plan(
        statistic, column, epsilon, rho, delta, bounds, by, groups, quantiles, bins,
        privacy_unit, max_rows_per_unit, max_groups_per_unit, selection_fraction, confidence,
    )  # fmt: skip
    V.one_of("missing", missing, MISSING)
    df = load_table(data)
    unit = opts["unit"]
    need = ([q.column] if q.column else []) + q.by + ([unit] if unit else [])
    numeric = [q.column] if q.statistic != "count" and q.column else []
    if q.statistic == "histogram" and q.bins is None:
        numeric = []
    check_columns(df, need, numeric=numeric)
    df = handle_missing(df, need, missing)
    return PreparedQuery(df, q, nz, cost, opts)


def aggregate(
    data: TableLike,
    statistic: str,
    column: str | None = None,
    *,
    key: jax.Array,
    epsilon: float | None = None,
    rho: float | None = None,
    delta: float = 0.0,
    bounds: tuple[float, float] | None = None,
    by: str | Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    quantiles: Sequence[float] = (0.5,),
    bins: Any = None,
    privacy_unit: str | None = None,
    max_rows_per_unit: int = 1,
    max_groups_per_unit: int = 1,
    selection_fraction: float = 0.5,
    confidence: float = 0.95,
    missing: str = "error",
) -> Release:
    """One DP aggregate of a table; see the module docstring for the guarantee.

    Args:
      data: DataFrame, mapping of column arrays, or CSV path.
      statistic: one of ``count, sum, mean, variance, histogram, quantiles``.
      column: the value column (all but ``count``).
      key: a ``jax.random.key``; required (no default seed). Where the noise
        protects data use :func:`dpjax.secure_key`.
      epsilon / rho: the query's privacy parameter (exactly one), epsilon in
        ``EPSILON_RANGE`` = [1e-6, 1e6], rho in ``RHO_RANGE`` = [1e-5, 1e6].
      delta: partition selection's delta, needed when ``by`` is given without
        ``groups``.
      bounds: public (lower, upper) clamping bounds (sum, mean, variance,
        quantiles), within [-1e30, 1e30]; infinite values are clamped too.
      by: group-by column(s); ``groups``: public list of group keys (then no
        selection); with several ``by`` columns each key is a tuple.
      quantiles: quantile levels in [0, 1]; ``bins``: histogram bin edges
        (numeric; values below the first or at/above the last edge are counted
        in two extra bins, ``(-inf, first)`` and ``[last, inf)``, always
        released) or, if None, the column's values are categories released via
        selection unless ``groups`` lists them.
      privacy_unit: column identifying a unit (person); None means one row.
      max_rows_per_unit: L-inf bound (rows per unit per group).
      max_groups_per_unit: L0 bound (groups per unit).
      selection_fraction: share of the budget spent on partition selection.
      confidence: confidence level of the intervals.
      missing: ``"error"`` (default) refuses a table with missing values in a
        column the query reads; ``"drop"`` drops those rows (a per-row rule).

    Returns:
      A :class:`Release`.

    Raises:
      ValueError: a parameter out of range, a missing column, missing values ...

    >>> import jax, numpy as np
    >>> data = {"region": np.array(["a"] * 50 + ["b"] * 50), "income": np.arange(100.0)}
    >>> r = aggregate(data, "sum", "income", key=jax.random.key(0), epsilon=1.0,
    ...               bounds=(0, 100), by="region", groups=["a", "b"])
    >>> list(r.table.columns)
    ['region', 'value', 'ci_low', 'ci_high']
    """
    key = V.prng_key("key", key)
    return prepare(
        data, statistic, column, epsilon=epsilon, rho=rho, delta=delta, bounds=bounds, by=by,
        groups=groups, quantiles=quantiles, bins=bins, privacy_unit=privacy_unit,
        max_rows_per_unit=max_rows_per_unit, max_groups_per_unit=max_groups_per_unit,
        selection_fraction=selection_fraction, confidence=confidence, missing=missing,
    ).run(key)  # fmt: skip


def _check_groups(groups: Any, cols: list[str], statistic: str) -> list[Any] | None:
    """Public group keys: scalars for one group-by column, tuples of len(by) for several."""
    if groups is None:
        return None
    if not cols and statistic != "histogram":
        raise ValueError("groups needs by= (the group-by columns the keys belong to)")
    if isinstance(groups, str | bytes | dict) or not hasattr(groups, "__iter__"):
        raise ValueError(f"groups must be a list of group keys, got {groups!r}")
    out = list(groups)
    if not out:
        raise ValueError("groups must list at least one key (or be None for partition selection)")
    if len(cols) > 1:
        for g in out:
            if isinstance(g, str | bytes) or not isinstance(g, Sequence) or len(g) != len(cols):
                raise ValueError(
                    f"groups: with by={cols} each key must be a tuple of {len(cols)} values, "
                    f"got {g!r}"
                )
        out = [tuple(g) for g in out]
    else:
        for g in out:
            if isinstance(g, tuple | list | np.ndarray):
                raise ValueError(
                    f"groups: with one group-by column each key is one value, got {g!r}"
                )
    try:
        repeated = len(set(out)) != len(out)
    except TypeError:
        raise ValueError(f"groups: keys must be hashable values, got {out!r}") from None
    if repeated:
        raise ValueError("groups must not list a key twice")
    return out


def _plan(statistic, column, epsilon, rho, delta, bounds, by, groups, quantiles, bins,
          privacy_unit, max_rows, max_groups, selection_fraction, confidence):  # fmt: skip
    """Validates a query's parameters and prices it (the cost never depends on the data)."""
    V.one_of("statistic", statistic, STATISTICS)
    if (epsilon is None) == (rho is None):
        raise ValueError("give exactly one of epsilon (pure DP) or rho (zCDP)")
    if epsilon is not None:
        V.positive("epsilon", epsilon)
        V.in_range("epsilon", epsilon, *EPSILON_RANGE)
    else:
        V.positive("rho", rho)
        V.in_range("rho", rho, *RHO_RANGE)
    V.in_range("delta", delta, 0.0, 1.0, hi_closed=False)
    V.open_unit("confidence", confidence)
    V.open_unit("selection_fraction", selection_fraction)
    l_inf = V.positive_int("max_rows_per_unit", max_rows)
    l0 = V.positive_int("max_groups_per_unit", max_groups)
    cols = as_columns(by)
    if statistic != "count" and column is None:
        raise ValueError(f"column must be given for statistic {statistic!r}")
    if statistic in ("sum", "mean", "variance", "quantiles"):
        bounds = check_bounds(bounds)
    qs = tuple(float(x) for x in quantiles)
    if statistic == "quantiles":
        if not qs:
            raise ValueError("quantiles must list at least one level")
        for x in qs:
            V.in_range("quantiles", x, 0.0, 1.0)
    if statistic == "histogram":
        if cols:
            raise ValueError("histogram takes no 'by'; its bins are the groups")
        if bins is not None:
            edges = np.asarray(bins, np.float64)
            if edges.ndim != 1 or len(edges) < 2 or np.any(~np.isfinite(edges)):
                raise ValueError(f"bins must be >= 2 finite edges, got {bins!r}")
            if np.any(np.diff(edges) <= 0):
                raise ValueError("bins must be strictly increasing")
            if groups is not None:
                raise ValueError("give bins or groups for a histogram, not both")
            bins = edges
    groups = _check_groups(groups, cols, statistic)
    selecting = (bool(cols) or (statistic == "histogram" and bins is None)) and groups is None
    if selecting and not 0.0 < delta < 1.0:
        raise ValueError(
            "delta must be in (0, 1) for partition selection (group-by without public groups), "
            f"got {delta}; or pass the public list of groups"
        )
    nz = _Noise(epsilon, rho)
    total = PrivacyCost(epsilon=epsilon or 0.0, rho=rho or 0.0, delta=delta if selecting else 0.0)
    sel = None
    if selecting:
        sel = _Noise(None if epsilon is None else epsilon * selection_fraction,
                     None if rho is None else rho * selection_fraction)  # fmt: skip
        nz = _Noise(None if epsilon is None else epsilon - sel.epsilon,
                    None if rho is None else rho - sel.rho)  # fmt: skip
    l0_eff = l0 if cols or statistic == "histogram" else 1  # as in _run
    _check_noise(statistic, bounds, nz, l_inf if privacy_unit else 1, l0_eff)
    q = _Query(statistic, column, bounds, cols, groups, qs, bins)
    opts = dict(sel=sel, delta=delta, unit=privacy_unit, l_inf=l_inf, l0=l0, conf=confidence)
    return q, nz, total, opts


def _histogram_bins(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Bin labels of ``values``: the edges' bins plus an underflow and an overflow bin.

    The two extra bins are always released (noised like the others), whatever
    the data, so out-of-range values are counted openly instead of being moved
    into the edge bins.
    """
    idx = np.searchsorted(edges, values, "right")  # 0: below edges[0]; len(e): >= edges[-1]
    labels = [f"(-inf, {edges[0]:g})"]
    labels += [f"[{edges[i]:g}, {edges[i + 1]:g})" for i in range(len(edges) - 1)]
    labels += [f"[{edges[-1]:g}, inf)"]
    return np.asarray(labels, dtype=object)[idx], labels


def _run(df, key, q: _Query, nz: _Noise, cost, *, sel, delta, unit, l_inf, l0, conf) -> Release:
    by = list(q.by)
    if q.statistic == "histogram":
        df = df.copy()
        if q.bins is not None:
            df["bin"], groups = _histogram_bins(df[q.column].to_numpy(np.float64), q.bins)
        else:
            df["bin"] = df[q.column]
            groups = q.groups
        by, q = ["bin"], dataclasses.replace(q, statistic="count", groups=groups)
    k_bound, k_sel, k_stat = jax.random.split(key, 3)
    if not by:
        l0 = 1
    bounded = bound_contributions(df, k_bound, unit, by, l_inf, l0)
    if unit is None:
        l_inf = 1
    # Groups to release.
    if not by:
        index = None
    elif q.groups is not None:
        index = (pd.MultiIndex.from_tuples(q.groups, names=by) if len(by) > 1
                 else pd.Index(q.groups, name=by[0]))  # fmt: skip
        bounded = bounded[pd.MultiIndex.from_frame(bounded[by]).isin(index) if len(by) > 1
                          else bounded[by[0]].isin(index)]  # fmt: skip
    else:
        gb = bounded.groupby(by, sort=True)
        units = gb[unit].nunique() if unit else gb.size()
        index = _select_groups(k_sel, units, l0, sel, delta)
    alpha = 1.0 - conf
    if q.statistic == "quantiles":
        table = _quantiles(bounded, k_stat, q, by, index, nz, l_inf, l0)
        return Release(table, cost, conf)
    table = _moments(bounded, k_stat, q, by, index, nz, l_inf, l0, alpha)
    return Release(table, cost, conf)


def _grouped(df: pd.DataFrame, by: list[str], index, values: pd.Series) -> np.ndarray:
    if not by:
        return np.asarray([values.sum()], np.float64)
    return (
        values.groupby([df[c] for c in by]).sum().reindex(index, fill_value=0).to_numpy(np.float64)
    )


def _frame(by, index, value, lo, hi) -> pd.DataFrame:
    out = pd.DataFrame({"value": value, "ci_low": lo, "ci_high": hi})
    if by:
        keys = index.to_frame(index=False) if index is not None else pd.DataFrame(columns=by)
        out = pd.concat([keys.reset_index(drop=True), out], axis=1)
    return out


def _moments(df, key, q: _Query, by, index, nz: _Noise, l_inf, l0, alpha) -> pd.DataFrame:
    """count / sum / mean / variance from noisy sums, with interval arithmetic for ratios."""
    n_groups = 1 if not by else len(index)
    if n_groups == 0:
        return _frame(by, index, [], [], [])
    ones = pd.Series(np.ones(len(df)), index=df.index)
    keys = jax.random.split(key, 3)

    def noisy(i, series, linf_value, parts, a, integer=False):
        # L0 groups each change by <= linf_value: L1 = L0 linf, L2 = sqrt(L0) linf.
        x = _grouped(df, by, index, series)
        return _release(keys[i], x, l0 * linf_value, math.sqrt(l0) * linf_value,
                        nz.split(parts), a, integer)  # fmt: skip

    if q.statistic == "count":
        v, h = noisy(0, ones, l_inf, 1, alpha, integer=True)
        return _frame(by, index, v, v - h, v + h)
    lo, hi = q.bounds
    x = df[q.column].astype(np.float64).clip(lo, hi)
    if q.statistic == "sum":
        v, h = noisy(0, x, l_inf * max(abs(lo), abs(hi)), 1, alpha)
        return _frame(by, index, v, v - h, v + h)
    mid, r = (lo + hi) / 2.0, (hi - lo) / 2.0
    parts = 2 if q.statistic == "mean" else 3
    a = alpha / parts  # union bound over the noisy sums
    n, hn = noisy(0, ones, l_inf, parts, a, integer=True)
    s, hs = noisy(1, x - mid, l_inf * r, parts, a)
    n_lo, n_hi = np.maximum(n - hn, 0.0), n + hn
    n_pt = np.maximum(n, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        corners = np.stack([(s - hs) / n_lo, (s - hs) / n_hi, (s + hs) / n_lo, (s + hs) / n_hi])
    m_lo = np.where(n_lo > 0, np.nanmin(corners, axis=0), -r).clip(-r, r)
    m_hi = np.where(n_lo > 0, np.nanmax(corners, axis=0), r).clip(-r, r)
    m_pt = np.clip(s / n_pt, -r, r)
    if q.statistic == "mean":
        return _frame(by, index, mid + m_pt, mid + m_lo, mid + m_hi)
    qq, hq = noisy(2, (x - mid) ** 2, l_inf * r * r, parts, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        e2_lo = np.where(n_lo > 0, np.maximum(qq - hq, 0.0) / n_hi, 0.0)
        e2_hi = np.where(n_lo > 0, (qq + hq) / np.where(n_lo > 0, n_lo, 1.0), r * r)
    sq_lo = np.where((m_lo < 0) & (m_hi > 0), 0.0, np.minimum(m_lo**2, m_hi**2))
    sq_hi = np.maximum(m_lo**2, m_hi**2)
    var = np.clip(np.maximum(qq, 0.0) / n_pt - m_pt**2, 0.0, r * r)
    v_lo, v_hi = np.clip(e2_lo - sq_hi, 0, r * r), np.clip(e2_hi - sq_lo, 0, r * r)
    return _frame(by, index, var, v_lo, v_hi)


def _quantiles(df, key, q: _Query, by, index, nz: _Noise, l_inf, l0) -> pd.DataFrame:
    """Exponential mechanism over a public grid of candidates (:mod:`._quantile`).

    Rank utility with sensitivity L-inf; each quantile gets eps / (L0 * len(qs))
    (rho likewise, via the exponential mechanism's eps^2/8-zCDP bound, Cesar,
    Rogers 2021, Lemma 3.2). Outputs are grid points, the same set for any data.
    """
    lo, hi = q.bounds
    per = nz.split(l0 * len(q.quantiles))
    eps = per.epsilon if per.epsilon is not None else math.sqrt(8.0 * per.rho)
    groups = [()] if not by else list(index)
    rows = []
    keys = jax.random.split(key, max(1, len(groups)))
    for gk, key_g in zip(groups, keys, strict=False):
        if by:
            sel = np.ones(len(df), bool)
            for c, val in zip(by, gk if isinstance(gk, tuple) else (gk,), strict=True):
                sel &= (df[c] == val).to_numpy()
            vals = df.loc[sel, q.column]
        else:
            vals = df[q.column]
        out = _quantile.release(key_g, vals.to_numpy(np.float64), lo, hi, q.quantiles, eps, l_inf)
        for level, value in zip(q.quantiles, out, strict=True):
            rows.append([*((gk if isinstance(gk, tuple) else (gk,)) if by else ()), level,
                         value, np.nan, np.nan])  # fmt: skip
    return pd.DataFrame(rows, columns=[*by, "quantile", "value", "ci_low", "ci_high"])


class QuerySession:
    """A sequence of DP queries on one table sharing one :class:`PrivacyFilter`.

    Each query is checked against the table and priced before anything is
    charged; a query refused for its parameters or data, or one that would
    exceed the budget, raises and leaves the filter (and the ledger) exactly as
    it was. The session splits its key for every query.

    With ``ledger`` (a :class:`dpjax.mechanisms.ledger.Ledger` or its location),
    every query is also charged to the table's account in that persistent
    ledger, in one transaction, before its noise is drawn; the session's budget
    is the account's total when the table is first registered.

    Privacy: the whole session is (epsilon, delta)-DP (or rho-zCDP plus delta)
    for the budget given, under add/remove of one privacy unit; with a ledger,
    every session and CLI query on the same table together stay within the
    account's total.

    >>> import jax, numpy as np
    >>> s = QuerySession({"x": np.arange(10.0)}, key=jax.random.key(0), epsilon=1.0)
    >>> r = s.count(epsilon=0.5)
    >>> round(s.filter.remaining().epsilon, 6)
    0.5
    """

    def __init__(
        self,
        data: TableLike,
        *,
        key: jax.Array,
        epsilon: float | None = None,
        rho: float | None = None,
        delta: float = 0.0,
        privacy_unit: str | None = None,
        max_rows_per_unit: int = 1,
        max_groups_per_unit: int = 1,
        confidence: float = 0.95,
        missing: str = "error",
        ledger: Any = None,
    ):
        self._key = V.prng_key("key", key)
        self.filter = PrivacyFilter(epsilon=epsilon, rho=rho, delta=delta)
        self._defaults = dict(
            privacy_unit=privacy_unit,
            max_rows_per_unit=V.positive_int("max_rows_per_unit", max_rows_per_unit),
            max_groups_per_unit=V.positive_int("max_groups_per_unit", max_groups_per_unit),
            confidence=V.open_unit("confidence", confidence),
            missing=V.one_of("missing", missing, MISSING),
        )
        self.data = load_table(data)
        self.ledger, self.dataset = None, None
        if ledger is not None:
            self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
            self.dataset = dataset_id(self.data)

    def query(self, statistic: str, column: str | None = None, **kwargs: Any) -> Release:
        """Runs :func:`aggregate` after charging its cost to the session's filter (and ledger)."""
        opts = {**self._defaults, **kwargs}
        if opts.get("epsilon") is None and opts.get("rho") is None:
            raise ValueError("each query needs its own epsilon= (or rho=) out of the budget")
        unknown = set(opts) - set(inspect.signature(prepare).parameters) | (
            set(opts) & {"data", "statistic", "column"}
        )
        if unknown:
            raise TypeError(f"unknown query options {sorted(unknown)}")
        prepared = prepare(self.data, statistic, column, **opts)  # all checks, nothing spent
        charged = self.filter.charge(prepared.cost)  # raises before anything is spent
        if self.ledger is not None:
            budget = dataclasses.replace(self.filter, spent=PrivacyCost())
            self.ledger.charge(self.dataset, prepared.cost, budget=budget,
                               statistic=statistic, columns=prepared.columns)  # fmt: skip
        self.filter = charged  # spent from here on, even if the release below failed
        self._key, sub = jax.random.split(self._key)
        return prepared.run(sub)

    def count(self, **kw: Any) -> Release:
        return self.query("count", None, **kw)

    def sum(self, column: str, **kw: Any) -> Release:
        return self.query("sum", column, **kw)

    def mean(self, column: str, **kw: Any) -> Release:
        return self.query("mean", column, **kw)

    def variance(self, column: str, **kw: Any) -> Release:
        return self.query("variance", column, **kw)

    def histogram(self, column: str, **kw: Any) -> Release:
        return self.query("histogram", column, **kw)

    def quantiles(self, column: str, **kw: Any) -> Release:
        return self.query("quantiles", column, **kw)
