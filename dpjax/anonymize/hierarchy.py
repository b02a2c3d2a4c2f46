"""Generalization hierarchies for quasi-identifiers.

Full-domain generalization replaces each value by a coarser one at a fixed level:
numbers by ranges, dates by year or month, ZIP codes by prefixes, categories by an
ancestor in a user-given tree (Sweeney 2002, k-anonymity; Samarati 2001). The same
:class:`CategoryTree` also drives Mondrian on categorical columns, where a class is
labelled by the lowest common ancestor of its values.

Example:
    >>> import pandas as pd
    >>> from dpjax.anonymize import numeric_range, zip_prefix, CategoryTree
    >>> numeric_range(pd.Series([23, 37, 40]), width=10).tolist()
    ['[20, 30)', '[30, 40)', '[40, 50)']
    >>> zip_prefix(pd.Series(["02139", "10001"]), digits=3).tolist()
    ['021**', '100**']
    >>> tree = CategoryTree({"*": {"respiratory": ["asthma", "influenza"], "other": ["fracture"]}})
    >>> tree.generalize(pd.Series(["asthma", "fracture"]), level=1).tolist()
    ['respiratory', 'other']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dpjax import _validate

__all__ = ["CategoryTree", "numeric_range", "truncate_date", "zip_prefix"]


def numeric_range(values: pd.Series, width: float, *, start: float = 0.0) -> pd.Series:
    """Replaces numbers by half-open ranges ``[lo, lo + width)`` aligned at ``start``.

    Missing values stay missing. Integers print without a decimal point.

    Args:
      values: numeric Series.
      width: bin width, > 0.
      start: any bin edge.

    Returns:
      A Series of strings (object dtype) with the same index.
    """
    _validate.positive("width", width)
    x = pd.to_numeric(values, errors="raise").astype(float)
    lo = np.floor((x - start) / width) * width + start
    out = pd.Series(np.full(len(x), None, dtype=object), index=values.index)
    ok = x.notna().to_numpy()
    lo_ok, hi_ok = lo[ok].to_numpy(), lo[ok].to_numpy() + width
    out[ok] = [f"[{_fmt(a)}, {_fmt(b)})" for a, b in zip(lo_ok, hi_ok, strict=True)]
    return out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


_DATE_UNITS = ("year", "month", "day", "decade")


def truncate_date(values: pd.Series, unit: str = "year") -> pd.Series:
    """Truncates dates to ``"decade"``, ``"year"``, ``"month"`` or ``"day"``.

    Returns strings (``"1980s"``, ``"1984"``, ``"1984-07"``, ``"1984-07-19"``);
    missing values stay missing.
    """
    _validate.one_of("unit", unit, _DATE_UNITS)
    d = pd.to_datetime(values, errors="raise")
    if unit == "decade":
        s = ((d.dt.year // 10) * 10).astype("Int64").astype(str) + "s"
    else:
        fmt = {"year": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d"}[unit]
        s = d.dt.strftime(fmt)
    s = s.astype(object)
    s[d.isna()] = None
    return s


def zip_prefix(values: pd.Series, digits: int = 3, *, fill: str = "*") -> pd.Series:
    """Keeps the first ``digits`` characters of each code and masks the rest with ``fill``.

    Codes shorter than ``digits`` are masked entirely (they would otherwise be kept
    whole); missing values stay missing.
    """
    digits = _validate.non_negative_int("digits", digits)

    def one(z: Any) -> Any:
        if z is None or (not isinstance(z, str) and pd.isna(z)):  # NaN, NaT, pd.NA
            return None
        z = str(z)
        if len(z) <= digits:
            return fill * len(z)
        return z[:digits] + fill * (len(z) - digits)

    return values.map(one).astype(object)


class CategoryTree:
    """A user-given generalization tree over categories.

    Built from nested mappings whose leaves are sequences of category values, e.g.
    ``{"*": {"respiratory": ["asthma", "influenza"], "other": ["fracture"]}}``. The
    root is level 0. Leaves are numbered in depth-first order, so every subtree is a
    contiguous run of leaf numbers, and the lowest common ancestor of a set of leaves
    is that of its first and last leaf in this order.

    Args:
      spec: a mapping with exactly one root key.

    Raises:
      ValueError: if the spec has several roots, repeats a name, or has an empty node.
    """

    def __init__(self, spec: Mapping[str, Any]):
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ValueError("hierarchy must be a mapping with exactly one root key")
        self.leaves: list[str] = []
        self._parent: dict[str, str | None] = {}
        self._depth: dict[str, int] = {}
        self._span: dict[str, tuple[int, int]] = {}  # node -> [first, last] leaf index
        ((root, children),) = spec.items()
        self.root = str(root)
        self._add(self.root, children, None, 0)
        self.index = {leaf: i for i, leaf in enumerate(self.leaves)}

    def _add(self, name: str, children: Any, parent: str | None, depth: int) -> None:
        if name in self._parent:
            raise ValueError(f"hierarchy repeats the name {name!r}")
        self._parent[name] = parent
        self._depth[name] = depth
        first = len(self.leaves)
        if isinstance(children, Mapping):
            if not children:
                raise ValueError(f"hierarchy node {name!r} has no children")
            for child, sub in children.items():
                self._add(str(child), sub, name, depth + 1)
        elif isinstance(children, Sequence) and not isinstance(children, str):
            if not children:
                raise ValueError(f"hierarchy node {name!r} has no children")
            for leaf in children:
                leaf = str(leaf)
                if leaf in self._parent:
                    raise ValueError(f"hierarchy repeats the name {leaf!r}")
                self._parent[leaf] = name
                self._depth[leaf] = depth + 1
                self._span[leaf] = (len(self.leaves), len(self.leaves))
                self.leaves.append(leaf)
        else:
            raise ValueError(f"hierarchy node {name!r}: children must be a mapping or a list")
        self._span[name] = (first, len(self.leaves) - 1)

    @property
    def height(self) -> int:
        """Depth of the deepest leaf (the root is at depth 0)."""
        return max(self._depth[leaf] for leaf in self.leaves)

    def n_leaves(self, node: str) -> int:
        """Number of leaves under ``node`` (1 for a leaf)."""
        a, b = self._span[node]
        return b - a + 1

    def ancestor(self, value: str, level: int) -> str:
        """The ancestor of ``value`` at depth ``level`` (itself if it is shallower)."""
        node = value
        while self._depth[node] > level:
            node = self._parent[node]  # type: ignore[assignment]
        return node

    def lca_of_range(self, first: int, last: int) -> str:
        """Lowest common ancestor of the leaves numbered ``first..last`` (DFS order)."""
        node = self.leaves[first]
        while True:
            a, b = self._span[node]
            if a <= first and last <= b:
                return node
            node = self._parent[node]  # type: ignore[assignment]

    def check_values(self, values: pd.Series, name: str) -> None:
        """Raises if a non-missing value of column ``name`` is not a leaf.

        The message does not quote the values (they are data); list them with
        ``set(df[name].dropna().astype(str)) - set(tree.leaves)``.
        """
        unknown = set(values.dropna().astype(str).unique()) - set(self.index)
        if unknown:
            raise ValueError(
                f"hierarchies[{name!r}] has no leaf for values of column {name!r}; "
                "every value must be a leaf of the tree"
            )

    def generalize(self, values: pd.Series, level: int) -> pd.Series:
        """Replaces each leaf by its ancestor at depth ``level``; missing stays missing."""
        level = _validate.non_negative_int("level", level)
        self.check_values(values, str(values.name))
        cache = {leaf: self.ancestor(leaf, level) for leaf in self.leaves}
        return values.map(lambda v: cache[str(v)] if pd.notna(v) else None).astype(object)
