"""Measured anonymity and information loss of a released table.

An equivalence class is a set of released rows with equal quasi-identifiers.

* k (Sweeney 2002): the size of the smallest class.
* distinct l and entropy l (Machanavajjhala et al. 2007, Def. 4.1 and 4.2): the
  fewest distinct sensitive values in a class, and ``exp`` of the smallest
  entropy of a class's sensitive distribution.
* t (Li, Li, Venkatasubramanian 2007, Sec. 4): the largest earth mover's distance
  between a class's sensitive distribution and the whole table's; ordered distance
  for numbers, equal distance for categories.
* Normalized certainty penalty (Xu et al. 2006, Utility-Based Anonymization Using
  Local Recoding, Sec. 3): per row and quasi-identifier, the part of the domain its
  class spans (range / domain range for numbers and dates; for categories the span
  in sorted order, or in a tree's leaf order, / (domain size - 1)), averaged over
  quasi-identifiers and rows; a suppressed row costs 1. 0 is no loss, 1 is all.
* Discernibility (Bayardo, Agrawal 2005, Data Privacy through Optimal
  k-Anonymization, Sec. 2): sum of squared class sizes plus ``n`` per suppressed row.

Example:
    >>> import pandas as pd
    >>> from dpjax.anonymize import k_anonymity, l_diversity
    >>> df = pd.DataFrame({"age": ["2*", "2*", "3*", "3*"], "dx": ["a", "b", "a", "a"]})
    >>> k_anonymity(df, ["age"]), l_diversity(df, ["age"], "dx")
    (2, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dpjax.anonymize.hierarchy import CategoryTree
from dpjax.anonymize.mondrian import check_columns, emd

__all__ = [
    "equivalence_classes",
    "k_anonymity",
    "l_diversity",
    "entropy_l_diversity",
    "t_closeness",
    "normalized_certainty_penalty",
    "discernibility",
    "measure",
]


def equivalence_classes(df: pd.DataFrame, quasi: Sequence[str]) -> np.ndarray:
    """Class id of each row (rows with equal quasi-identifiers share one), int64[n]."""
    quasi = check_columns(df, quasi)
    if len(df) == 0:
        return np.zeros(0, dtype=np.int64)
    return df.groupby(quasi, sort=False, dropna=False).ngroup().to_numpy(np.int64)


def _counts(df: pd.DataFrame, quasi: Sequence[str], sensitive: str) -> np.ndarray:
    """Sensitive-value counts per class, int64[n_classes, n_values]."""
    check_columns(df, quasi, sensitive)
    cls = equivalence_classes(df, quasi)
    codes, uniq = pd.factorize(df[sensitive], use_na_sentinel=False)
    if _is_num(df[sensitive]):
        order = np.argsort(np.asarray(uniq, dtype=float), kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        codes = rank[codes]
    s = len(uniq)
    return np.bincount(cls * s + codes, minlength=(cls.max() + 1) * s).reshape(-1, s)


def _is_num(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def _nonempty(df: pd.DataFrame) -> None:
    if len(df) == 0:
        raise ValueError("df has no rows; anonymity of an empty table is undefined")


def k_anonymity(df: pd.DataFrame, quasi: Sequence[str]) -> int:
    """The k for which ``df`` is k-anonymous on ``quasi`` (smallest class size)."""
    _nonempty(df)
    return int(np.bincount(equivalence_classes(df, quasi)).min())


def l_diversity(df: pd.DataFrame, quasi: Sequence[str], sensitive: str) -> int:
    """Distinct l: the fewest distinct values of ``sensitive`` in a class."""
    _nonempty(df)
    return int((_counts(df, quasi, sensitive) > 0).sum(axis=1).min())


def entropy_l_diversity(df: pd.DataFrame, quasi: Sequence[str], sensitive: str) -> float:
    """Entropy l: ``exp(min over classes of the entropy of sensitive values)``."""
    _nonempty(df)
    c = _counts(df, quasi, sensitive)
    q = c / c.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)
    return float(math.exp(h.min()))


def t_closeness(df: pd.DataFrame, quasi: Sequence[str], sensitive: str) -> float:
    """Largest EMD between a class's and the table's distribution of ``sensitive``."""
    _nonempty(df)
    c = _counts(df, quasi, sensitive)
    p = c.sum(axis=0) / c.sum()
    q = c / c.sum(axis=1, keepdims=True)
    return float(emd(q, p, ordered=_is_num(df[sensitive])).max())


def _positions(col: pd.Series, tree: CategoryTree | None) -> tuple[np.ndarray, str]:
    """Each value's normalized position in its domain, and the kind of domain."""
    if tree is not None:
        tree.check_values(col, str(col.name))
        return col.astype(str).map(tree.index).to_numpy(np.int64), "tree"
    if pd.api.types.is_datetime64_any_dtype(col):
        x = col.to_numpy().astype("datetime64[ns]").astype(np.int64).astype(float)
    elif _is_num(col):
        x = col.to_numpy(dtype=float)
    else:
        codes, uniq = pd.factorize(col.astype(str))
        order = np.argsort(np.asarray(uniq, dtype=object), kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        x = rank[codes].astype(float)
    span = x.max() - x.min() if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x), "ordered"


def normalized_certainty_penalty(
    original: pd.DataFrame,
    anonymized: pd.DataFrame,
    quasi: Sequence[str],
    *,
    hierarchies: Mapping[str, Any] | None = None,
) -> float:
    """Global certainty penalty in [0, 1] (Xu et al. 2006), suppressed rows cost 1.

    ``anonymized`` rows are matched to ``original`` rows by index label; rows of
    ``original`` missing from ``anonymized`` count as suppressed. Domains are those of
    ``original``.

    Args:
      original: the table before anonymization (quasi-identifiers without missing values).
      anonymized: the released table (same index labels for the kept rows).
      quasi: quasi-identifier columns.
      hierarchies: optional :class:`CategoryTree` per column; a class spanning
        leaves ``a..b`` costs ``(leaves under their common ancestor - 1) / (leaves - 1)``.
    """
    quasi = check_columns(original, quasi)
    check_columns(anonymized, quasi)
    if len(original) == 0:
        raise ValueError("original has no rows")
    missing = anonymized.index.difference(original.index)
    if len(missing):
        # No labels in the message: an index can itself be data (names, IDs).
        raise ValueError(
            "anonymized has index labels that are not in original; keep the original's "
            "index labels on the released rows"
        )
    hierarchies = hierarchies or {}
    cls = equivalence_classes(anonymized, quasi)
    at = original.index.get_indexer(anonymized.index)
    n_cls = int(cls.max()) + 1 if cls.size else 0
    total = np.zeros(len(anonymized))
    for q in quasi:
        tree = hierarchies.get(q) if isinstance(hierarchies.get(q), CategoryTree) else None
        pos, kind = _positions(original[q], tree)
        v = pos[at]
        lo = np.full(n_cls, np.inf)
        hi = np.full(n_cls, -np.inf)
        np.minimum.at(lo, cls, v)
        np.maximum.at(hi, cls, v)
        if kind == "tree":
            n_leaf = len(tree.leaves)  # type: ignore[union-attr]
            cost = np.array(
                [
                    tree.n_leaves(tree.lca_of_range(int(a), int(b))) - 1
                    for a, b in zip(lo, hi, strict=True)
                ],
                dtype=float,
            ) / max(n_leaf - 1, 1)
        else:
            cost = hi - lo
        total += cost[cls]
    n_sup = len(original) - len(anonymized)
    return float((total.sum() / len(quasi) + n_sup) / len(original))


def discernibility(anonymized: pd.DataFrame, quasi: Sequence[str], n_suppressed: int = 0) -> float:
    """Discernibility metric: sum of squared class sizes + n_total per suppressed row."""
    cls = equivalence_classes(anonymized, quasi)
    sizes = np.bincount(cls).astype(float)
    n_total = len(anonymized) + int(n_suppressed)
    return float((sizes**2).sum() + n_suppressed * n_total)


def measure(
    original: pd.DataFrame,
    anonymized: pd.DataFrame,
    quasi: Sequence[str],
    sensitive: str | None = None,
    *,
    hierarchies: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """All of the above for one release, as a flat dict of numbers.

    Keys: ``rows_in``, ``rows_out``, ``suppressed``, ``classes``, ``k``,
    ``mean_class_size``, ``ncp``, ``discernibility``, and with ``sensitive``:
    ``l_distinct``, ``l_entropy``, ``t``.
    """
    n_sup = len(original) - len(anonymized)
    cls = equivalence_classes(anonymized, quasi)
    out: dict[str, float] = {
        "rows_in": len(original),
        "rows_out": len(anonymized),
        "suppressed": n_sup,
        "classes": int(cls.max()) + 1 if cls.size else 0,
        "k": k_anonymity(anonymized, quasi),
        "mean_class_size": float(len(anonymized) / max(int(cls.max()) + 1, 1)),
        "ncp": normalized_certainty_penalty(original, anonymized, quasi, hierarchies=hierarchies),
        "discernibility": discernibility(anonymized, quasi, n_sup),
    }
    if sensitive is not None:
        out["l_distinct"] = l_diversity(anonymized, quasi, sensitive)
        out["l_entropy"] = entropy_l_diversity(anonymized, quasi, sensitive)
        out["t"] = t_closeness(anonymized, quasi, sensitive)
    return out
