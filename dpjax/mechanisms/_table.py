"""Tables for the aggregate queries: loading, validation and contribution bounding.

Contribution bounding (Wilson et al. 2020, *Differentially Private SQL with
Bounded User Contribution*, Sec. 3): each privacy unit keeps at most
``max_groups_per_unit`` groups (L0 bound) and, in each, at most
``max_rows_per_unit`` rows (L-infinity bound), chosen uniformly at random;
values are clamped to public bounds. Afterwards adding or removing one unit
changes at most L0 groups, each by at most L-inf rows of bounded values, which
is what the sensitivities of :mod:`dpjax.mechanisms.queries` assume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd

from dpjax import _validate as V

TableLike = pd.DataFrame | Mapping[str, Any] | str | os.PathLike

# pandas < 3 parses floats approximately unless asked; pandas 3 parses them
# exactly by default and deprecates the option.
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def load_table(data: TableLike) -> pd.DataFrame:
    """A pandas DataFrame from a DataFrame, a mapping of column arrays, or a CSV path."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, str | os.PathLike):
        if not os.path.isfile(data):
            raise ValueError(f"data: no such CSV file {os.fspath(data)!r}")
        try:
            return pd.read_csv(data, **_EXACT_FLOATS)  # the exact float64 written
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            # pandas' own message names the offending line, field counts or byte
            # position: data-dependent numbers, so they are not passed on.
            raise ValueError(
                f"data: {os.fspath(data)!r} is not a readable CSV file (UTF-8 text, a header "
                "row, the same number of fields on every row); check it with the data's owner"
            ) from None
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame({k: np.asarray(v) for k, v in data.items()})
        except ValueError as e:
            raise ValueError(f"data: columns must be 1-D arrays of one length ({e})") from None
    raise TypeError(
        f"data must be a pandas DataFrame, a mapping of numpy arrays or a CSV path, "
        f"got {type(data).__name__}"
    )


def as_columns(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


MISSING = V.MISSING_POLICIES  # ("error", "drop")


def check_columns(df: pd.DataFrame, columns: Sequence[str], *, numeric: Sequence[str] = ()) -> None:
    """Raises a ValueError naming a column that is not in the table or is not numeric.

    The table's schema (column names) is public; messages about values carry no
    data-dependent numbers and no values (not even the dtype, which a single
    stray string in a CSV column decides). Infinite values are not refused:
    they are clamped to the public bounds like every other value.
    """
    for c in columns:
        if c not in df.columns:
            raise ValueError(f"column {c!r} is not in the table; columns are {list(df.columns)}")
    for c in numeric:
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            raise ValueError(f"column {c!r} must be numeric (some value is not a number)")


def handle_missing(df: pd.DataFrame, columns: Sequence[str], missing: str) -> pd.DataFrame:
    """Applies the declared handling of missing (NaN / empty) values in ``columns``.

    ``missing="drop"`` drops every row with a missing value in one of the
    columns the query reads: a per-row rule, so neighbouring tables stay
    neighbouring and the guarantee holds unchanged. ``"error"`` refuses the
    query, saying only *that* there are missing values (one bit, never a count).
    """
    V.one_of("missing", missing, MISSING)
    cols = list(dict.fromkeys(columns))
    if not cols:
        return df
    has = df[cols].isna().any(axis=1)
    if missing == "drop":
        return df[~has.to_numpy()]
    for c in cols:
        if df[c].isna().any():
            raise ValueError(
                f"column {c!r} has missing (NaN or empty) values; declare their handling: "
                "missing='drop' (CLI: --missing drop) drops the rows that have one, a per-row "
                "rule that keeps the guarantee, or impute them before the query"
            )
    return df


MAX_BOUND = 1e30  # squares and sums of clamped values stay far from float64 overflow


def check_bounds(bounds: Any) -> tuple[float, float]:
    """Public clamping bounds ``(lower, upper)``: in [-1e30, 1e30], lower < upper."""
    if bounds is None:
        raise ValueError("bounds must be given as (lower, upper); they are never read from data")
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lower, upper), got {bounds!r}") from None
    V.in_range("bounds[0]", lo, -MAX_BOUND, MAX_BOUND)
    V.in_range("bounds[1]", hi, -MAX_BOUND, MAX_BOUND)
    if not float(lo) < float(hi):
        raise ValueError(f"bounds must satisfy lower < upper, got ({lo}, {hi})")
    return float(lo), float(hi)


def bound_contributions(
    df: pd.DataFrame,
    key: jax.Array,
    privacy_unit: str | None,
    by: Sequence[str],
    max_rows_per_unit: int,
    max_groups_per_unit: int,
) -> pd.DataFrame:
    """Keeps at most L0 random groups per unit and L-inf random rows per (unit, group).

    Without ``privacy_unit`` every row is its own unit and nothing is dropped.
    """
    if privacy_unit is None or len(df) == 0:
        return df
    prio = np.asarray(jax.random.uniform(key, (len(df),)))
    work = df.assign(_prio=prio).sort_values("_prio", kind="stable")
    cell = [privacy_unit, *by]
    work = work[work.groupby(cell, sort=False).cumcount() < max_rows_per_unit]
    if by:
        first = work.drop_duplicates(cell)  # one row per (unit, group), random order kept
        keep = first[first.groupby(privacy_unit, sort=False).cumcount() < max_groups_per_unit]
        work = work.merge(keep[cell], on=cell, how="inner")
    return work.drop(columns="_prio")
