"""Mondrian multidimensional partitioning for k-anonymity, l-diversity and t-closeness.

LeFevre, DeWitt, Ramakrishnan 2006, Mondrian Multidimensional k-Anonymity (ICDE),
Sec. 4: recursively cut the table at the median of one quasi-identifier, chosen as
the widest normalized range among the allowable cuts, until no partition can be cut
without a side breaking the constraint; then generalize each partition's
quasi-identifiers to the range (or set, or tree node) it spans. Strict partitioning:
a cut sends values ``<= v`` left and ``> v`` right. Extra constraints on a sensitive
column are checked on both sides of every cut, as in the extension of the paper's
Sec. 6 to l-diversity (Machanavajjhala et al. 2007, Def. 4.1 distinct and Def. 4.2
entropy l-diversity) and t-closeness (Li, Li, Venkatasubramanian 2007, EMD of
Sec. 4.2/4.3). All three are monotone (a union of classes that satisfy them
satisfies them), which is what makes top-down partitioning correct.

Vectorization: partitions are cut level by level. In each round, for every
quasi-identifier, one sort of ``(partition, code)`` yields every partition's range,
median and both candidate cut sizes (``<= median`` and ``< median``, for ties) with
``searchsorted``; sensitive-value counts of both sides come from one ``bincount``.
A round costs O(n log n) and there are about log2(n / k) rounds.

Example:
    >>> import numpy as np
    >>> from dpjax.data.census import census_table
    >>> from dpjax.anonymize import mondrian
    >>> df = census_table(2000, np.random.default_rng(0))
    >>> res = mondrian(df, ["age", "zip", "sex"], k=5, sensitive="diagnosis", l=2)
    >>> int(res.table.groupby(["age", "zip", "sex"]).size().min()) >= 5
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpjax import _validate
from dpjax.anonymize.hierarchy import CategoryTree

__all__ = ["MondrianResult", "mondrian", "check_columns"]

_KINDS = ("range", "prefix", "set")


@dataclass(frozen=True)
class MondrianResult:
    """Output of :func:`mondrian`.

    Attributes:
      table: the released rows (suppressed rows removed), quasi-identifiers replaced
        by their partition's generalization, every other column unchanged.
      classes: partition id of each released row, int64[len(table)].
      suppressed: index labels of the rows removed as outliers.
    """

    table: pd.DataFrame
    classes: np.ndarray
    suppressed: pd.Index


@dataclass(frozen=True)
class _Dim:
    name: str
    kind: str  # "numeric", "datetime", "prefix", "set", "tree"
    codes: np.ndarray  # int64[n], position of each value in `domain`
    domain: np.ndarray  # sorted distinct values (leaves in DFS order for a tree)
    pos: np.ndarray  # float64[len(domain)], normalized position in [0, 1]
    tree: CategoryTree | None


def check_columns(
    df: pd.DataFrame, quasi: Sequence[str], sensitive: str | None = None
) -> list[str]:
    """Checks that the quasi-identifiers and the sensitive column exist and are disjoint."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    if isinstance(quasi, str):
        quasi = [quasi]
    quasi = [str(q) for q in quasi]
    if not quasi:
        raise ValueError("quasi must name at least one column, got none")
    if len(set(quasi)) != len(quasi):
        raise ValueError(f"quasi names a column twice: {quasi}")
    unknown = [q for q in quasi if q not in df.columns]
    if unknown:
        raise ValueError(f"quasi: unknown column(s) {unknown}; columns are {list(df.columns)}")
    if sensitive is not None:
        if sensitive not in df.columns:
            raise ValueError(f"sensitive: unknown column {sensitive!r}")
        if sensitive in quasi:
            raise ValueError(
                f"sensitive column {sensitive!r} is also a quasi-identifier; "
                "a column is one or the other"
            )
    return quasi


def _encode(col: pd.Series, how: Any) -> _Dim:
    name = str(col.name)
    if col.isna().any():
        raise ValueError(
            f"quasi-identifier {name!r} has missing values; fill or drop them before anonymizing"
        )
    if isinstance(how, CategoryTree):
        how.check_values(col, name)
        codes = col.astype(str).map(how.index).to_numpy(np.int64)
        domain = np.array(how.leaves, dtype=object)
        return _Dim(name, "tree", codes, domain, _unit(len(domain)), how)
    if how is not None:
        _validate.one_of(f"hierarchies[{name!r}]", how, _KINDS)
    if pd.api.types.is_datetime64_any_dtype(col):
        domain, codes = np.unique(col.to_numpy(), return_inverse=True)
        pos = domain.astype("datetime64[ns]").astype(np.int64).astype(np.float64)
        return _Dim(name, "datetime", codes.astype(np.int64), domain, _norm(pos), None)
    is_num = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    if is_num and how in (None, "range"):
        domain, codes = np.unique(col.to_numpy(), return_inverse=True)
        return _Dim(name, "numeric", codes.astype(np.int64), domain, _norm(domain), None)
    if how == "range":
        raise ValueError(f"hierarchies[{name!r}] = 'range' needs a numeric or date column")
    codes, domain = _factorize_sorted(col.astype(str))
    if how is None:
        u = pd.Series(domain, dtype=object)
        how = "prefix" if u.str.fullmatch(r"\d+").all() and u.str.len().nunique() == 1 else "set"
    return _Dim(name, how, codes.astype(np.int64), domain, _unit(len(domain)), None)


def _factorize_sorted(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes into the sorted distinct values (hashing first: sorting 1M strings is slow)."""
    codes, uniq = pd.factorize(col)
    order = np.argsort(np.asarray(uniq, dtype=object), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[codes].astype(np.int64), np.asarray(uniq, dtype=object)[order]


def _unit(m: int) -> np.ndarray:
    return np.arange(m, dtype=np.float64) / max(m - 1, 1)


def _norm(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    span = v[-1] - v[0]
    return (v - v[0]) / span if span > 0 else np.zeros_like(v)


class _Constraint:
    """l-diversity / t-closeness on a sensitive column, checked on count matrices."""

    def __init__(self, l: float | None, l_kind: str, t: float | None, ordered: bool):  # noqa: E741
        self.l, self.l_kind, self.t, self.ordered = l, l_kind, t, ordered
        self.p: np.ndarray | None = None  # global distribution, set per table

    def ok(self, counts: np.ndarray) -> np.ndarray:
        """counts: int64[P, S] -> bool[P]."""
        size = counts.sum(axis=1, keepdims=True)
        q = counts / np.maximum(size, 1)
        ok = np.ones(counts.shape[0], dtype=bool)
        if self.l is not None:
            if self.l_kind == "distinct":
                ok &= (counts > 0).sum(axis=1) >= self.l
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)
                ok &= h >= math.log(self.l) - 1e-12
        if self.t is not None:
            ok &= emd(q, self.p, self.ordered) <= self.t + 1e-12
        return ok


def emd(q: np.ndarray, p: np.ndarray, ordered: bool) -> np.ndarray:
    """Earth mover's distance of each row of ``q`` to ``p`` (Li et al. 2007, Sec. 4.2).

    Ordered distance ``sum_i |cumsum(q - p)_i| / (m - 1)`` for numeric values,
    equal distance ``sum_i |q_i - p_i| / 2`` for categories.
    """
    if ordered:
        m = p.shape[-1]
        return np.abs(np.cumsum(q - p, axis=-1)).sum(axis=-1) / max(m - 1, 1)
    return 0.5 * np.abs(q - p).sum(axis=-1)


def _partition(
    X: np.ndarray,
    M: np.ndarray,
    pos: list[np.ndarray],
    k: int,
    sens: np.ndarray | None,
    n_sens: int,
    constraint: _Constraint | None,
) -> np.ndarray:
    """Strict Mondrian on integer codes ``X[n, D]`` -> partition id of each row.

    ``perm[d]`` lists the rows so that every partition is one contiguous segment
    (the same segment in every ``d``) sorted by the codes of dimension ``d``. A cut
    is a stable partition of each segment into left then right rows, done for all
    segments at once with cumulative sums, so only the first ordering sorts.
    """
    n, D = X.shape
    perm = np.stack([np.argsort(X[:, d], kind="stable") for d in range(D)])
    C = np.stack([X[perm[d], d] for d in range(D)])  # C[d, i] = X[perm[d, i], d]
    go_right = np.zeros(n, dtype=bool)
    start = np.zeros(1, dtype=np.int64)
    size = np.full(1, n, dtype=np.int64)
    active = np.array([0], dtype=np.int64)
    while active.size:
        a_start, a_size = start[active], size[active]
        m = int(a_size.sum())
        off = np.r_[0, np.cumsum(a_size)[:-1]]  # segment starts in the gathered arrays
        seg = np.repeat(np.arange(active.size), a_size)
        idx = np.arange(m) - off[seg] + a_start[seg]  # positions in perm
        best_w = np.full(active.size, -1.0)
        best_d = np.zeros(active.size, dtype=np.int64)
        best_cut = np.zeros(active.size, dtype=np.int64)
        s_rows = None
        for d in range(D):
            md = int(M[d])
            if md < 2:
                continue
            cs = C[d, idx]
            ks = seg * md + cs  # sorted: segments in order, codes sorted inside
            width = pos[d][cs[off + a_size - 1]] - pos[d][cs[off]]
            med = cs[off + (a_size - 1) // 2]
            base = np.arange(active.size) * md + med
            n_le = np.searchsorted(ks, base, side="right") - off
            n_lt = np.searchsorted(ks, base, side="left") - off
            ok_le = (n_le >= k) & (a_size - n_le >= k)
            ok_lt = (n_lt >= k) & (a_size - n_lt >= k)
            if constraint is not None and (ok_le.any() or ok_lt.any()):
                s_rows = sens[perm[d, idx]]  # type: ignore[index]
                cell = seg * n_sens + s_rows
                tot = np.bincount(cell, minlength=active.size * n_sens).reshape(-1, n_sens)
                for ok, left in ((ok_le, cs <= med[seg]), (ok_lt, cs < med[seg])):
                    lc = np.bincount(cell[left], minlength=active.size * n_sens)
                    lc = lc.reshape(-1, n_sens)
                    ok &= constraint.ok(lc) & constraint.ok(tot - lc)
            use_le = ok_le & (~ok_lt | (np.abs(n_le - a_size / 2) <= np.abs(n_lt - a_size / 2)))
            w = np.where(ok_le | ok_lt, width, -1.0)
            better = w > best_w
            best_w[better] = w[better]
            best_d[better] = d
            best_cut[better] = np.where(use_le, med, med - 1)[better]
        do = best_w >= 0
        if not do.any():
            break
        # Rows of the segments being cut, and whether each goes right.
        sel = do[seg]
        g_seg = seg[sel]
        g_idx = idx[sel]
        g_off = np.r_[0, np.cumsum(a_size[do])[:-1]]
        g_rank = np.cumsum(do) - 1  # segment -> rank among the cut ones
        g_rank = g_rank[g_seg]
        g_dim, g_cut = best_d[g_seg], best_cut[g_seg]
        right = np.zeros(g_idx.size, dtype=bool)
        for d in range(D):  # decide in each cut dimension's own layout
            here = g_dim == d
            if here.any():
                right[here] = C[d, g_idx[here]] > g_cut[here]
                go_right[perm[d, g_idx[here]]] = right[here]
        n_left = np.bincount(g_rank, minlength=int(do.sum())) - np.bincount(
            g_rank, weights=right, minlength=int(do.sum())
        ).astype(np.int64)
        g_pos0 = a_start[g_seg]
        for d in range(D):
            rows = perm[d, g_idx]
            vals = C[d, g_idx]
            rt = go_right[rows]
            cum_r = np.cumsum(rt) - rt
            cum_l = np.cumsum(~rt) - ~rt
            local = np.where(
                rt, n_left[g_rank] + cum_r - cum_r[g_off][g_rank], cum_l - cum_l[g_off][g_rank]
            )
            perm[d, g_pos0 + local] = rows
            C[d, g_pos0 + local] = vals
        cut_ids = active[do]
        new_ids = start.size + np.arange(cut_ids.size)
        start = np.r_[start, start[cut_ids] + n_left]
        size = np.r_[size, size[cut_ids] - n_left]
        size[cut_ids] = n_left
        active = np.r_[cut_ids, new_ids]
    part = np.empty(n, dtype=np.int64)
    part[perm[0]] = np.repeat(np.argsort(start), size[np.argsort(start)])
    return part


def _labels(dim: _Dim, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Generalized value of each partition from its lowest and highest code."""
    m = len(dim.domain)
    pair, inv = np.unique(lo * m + hi, return_inverse=True)
    out = np.empty(pair.size, dtype=object)
    for i, (a, b) in enumerate(zip(pair // m, pair % m, strict=True)):
        out[i] = _label(dim, int(a), int(b))
    return out[inv]


def _label(dim: _Dim, a: int, b: int) -> str:
    dom = dim.domain
    if dim.kind == "tree":
        return dim.tree.lca_of_range(a, b)  # type: ignore[union-attr]
    if dim.kind == "numeric":
        return _num(dom[a]) if a == b else f"[{_num(dom[a])}, {_num(dom[b])}]"
    if dim.kind == "datetime":
        return _date(dom[a]) if a == b else f"[{_date(dom[a])}, {_date(dom[b])}]"
    if a == b:
        return str(dom[a])
    if dim.kind == "prefix":
        x, y = str(dom[a]), str(dom[b])
        j = 0
        while j < min(len(x), len(y)) and x[j] == y[j]:
            j += 1
        return x[:j] + "*" * (max(len(x), len(y)) - j)
    if b - a + 1 == len(dom):
        return "*"
    return "{" + "|".join(str(v) for v in dom[a : b + 1]) + "}"


def _num(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else f"{f:g}"


def _date(v: Any) -> str:
    ts = pd.Timestamp(v)
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat()


def _check_params(k: Any, l: Any, l_kind: str, t: Any, max_suppression: Any) -> int:  # noqa: E741
    k = _validate.positive_int("k", k)
    if k < 2:
        raise ValueError(f"k must be >= 2 (k = 1 is no anonymity), got {k}")
    _validate.one_of("l_kind", l_kind, ("distinct", "entropy"))
    if l is not None:
        _validate.in_range("l", l, 1.0, math.inf, hi_closed=False)
        if l_kind == "distinct" and not float(l).is_integer():
            raise ValueError(f"l must be an integer for distinct l-diversity, got {l}")
    if t is not None:
        _validate.in_range("t", t, 0.0, 1.0, lo_closed=False)
    _validate.in_range("max_suppression", max_suppression, 0.0, 1.0, hi_closed=False)
    return k


def mondrian(
    df: pd.DataFrame,
    quasi: Sequence[str],
    k: int,
    *,
    sensitive: str | None = None,
    l: float | None = None,  # noqa: E741
    l_kind: str = "distinct",
    t: float | None = None,
    max_suppression: float = 0.0,
    hierarchies: Mapping[str, Any] | None = None,
) -> MondrianResult:
    """k-anonymizes ``df`` on ``quasi`` by Mondrian partitioning (LeFevre et al. 2006).

    Each quasi-identifier is generalized to what its partition spans: numbers and
    dates to ``[lo, hi]``, equal-length digit strings (ZIP codes) to a common prefix
    padded with ``*``, other strings to the set ``{a|b}`` of values in the range
    (``*`` for all), and columns given a :class:`CategoryTree` to the lowest common
    ancestor. Every partition holds >= k rows and, when asked, satisfies l-diversity
    and t-closeness on ``sensitive``.

    Outlier suppression: with ``max_suppression > 0``, the rows at the extremes of
    a partition whose removal narrows its ranges most are removed, largest gain in
    certainty penalty per removed row first, up to ``floor(max_suppression * n)``
    rows; partitions keep >= k rows and their sensitive-column constraints (t is
    rechecked against the released table's distribution, halving the budget until
    it holds). Measured information loss counts a suppressed row as total loss.

    Privacy: k-anonymity is a syntactic property of the released table, not
    differential privacy; it bounds re-identification by linkage on ``quasi`` only.

    Args:
      df: the table; quasi-identifiers must have no missing values.
      quasi: quasi-identifier column names.
      k: minimum class size, >= 2.
      sensitive: sensitive column for ``l`` and ``t`` (not a quasi-identifier).
      l: minimum diversity of ``sensitive`` in each class, >= 1.
      l_kind: ``"distinct"`` (count of values) or ``"entropy"`` (exp of entropy).
      t: maximum earth mover's distance of a class's ``sensitive`` distribution to
        the table's, in (0, 1]. Ordered distance for numeric ``sensitive``.
      max_suppression: fraction of rows that may be removed as outliers, in [0, 1).
      hierarchies: per column, a :class:`CategoryTree` or one of ``"range"``,
        ``"prefix"``, ``"set"`` to override the automatic choice.

    Returns:
      A :class:`MondrianResult`.

    Raises:
      ValueError: on k < 2, unknown or overlapping columns, missing quasi-identifier
        values, fewer than k rows, or a table that as a whole breaks ``l``.
    """
    k = _check_params(k, l, l_kind, t, max_suppression)
    quasi = check_columns(df, quasi, sensitive)
    if (l is not None or t is not None) and sensitive is None:
        raise ValueError("sensitive must name a column when l or t is given")
    hierarchies = dict(hierarchies or {})
    unknown = sorted(set(hierarchies) - set(quasi))
    if unknown:
        raise ValueError(f"hierarchies: {unknown} are not quasi-identifiers")
    n = len(df)
    if n < k:
        # No row count in the message: with every other record known, it tells membership.
        raise ValueError(f"k must be <= the number of rows, got {k}")
    dims = [_encode(df[q], hierarchies.get(q)) for q in quasi]
    constraint, sens, n_sens, s_num = None, None, 0, False
    if sensitive is not None and (l is not None or t is not None):
        col = df[sensitive]
        s_num = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if s_num:
            _, sens = np.unique(col.to_numpy(dtype=np.float64), return_inverse=True)
        else:
            sens, _ = _factorize_sorted(col.astype(str).where(col.notna(), "<NA>"))
        sens = sens.astype(np.int64)
        n_sens = int(sens.max()) + 1
        constraint = _Constraint(l, l_kind, t, ordered=bool(s_num))

    if constraint is not None:
        counts = np.bincount(sens, minlength=n_sens)  # type: ignore[arg-type]
        constraint.p = counts / counts.sum()
        if not constraint.ok(counts[None, :])[0]:
            raise ValueError(
                f"the table as a whole is not {l}-diverse ({l_kind}) on {sensitive!r}; "
                "no partitioning can be: lower l"
            )
    X = np.stack([dm.codes for dm in dims], axis=1)
    M = np.array([len(dm.domain) for dm in dims])
    part = _partition(X, M, [dm.pos for dm in dims], k, sens, n_sens, constraint)
    budget = int(math.floor(max_suppression * n))
    while budget > 0:
        kept = _trim(X, [dm.pos for dm in dims], part, k, budget, sens, n_sens, constraint)
        if constraint is None or constraint.t is None:
            break
        # Suppression moves the table's distribution; t must still hold against it.
        counts = np.bincount(part[kept] * n_sens + sens[kept], minlength=(part.max() + 1) * n_sens)
        counts = counts.reshape(-1, n_sens)
        constraint.p = counts.sum(axis=0) / counts.sum()
        if constraint.ok(counts[counts.sum(axis=1) > 0]).all():
            break
        budget //= 2
    else:
        kept = np.arange(n)
    keep, part = kept, part[kept]
    suppressed = df.index[np.setdiff1d(np.arange(n), keep)]
    out = df.iloc[keep].copy()
    order = np.argsort(part, kind="stable")
    ps = part[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    for dm in dims:
        codes = dm.codes[keep][order]
        lo = np.minimum.reduceat(codes, starts)
        hi = np.maximum.reduceat(codes, starts)
        lab_sorted = np.repeat(_labels(dm, lo, hi), np.diff(np.r_[starts, ps.size]))
        lab = np.empty(len(keep), dtype=object)
        lab[order] = lab_sorted
        out[dm.name] = pd.Series(lab, index=out.index, dtype=object)
    _, classes = np.unique(part, return_inverse=True)
    return MondrianResult(out, classes.astype(np.int64), suppressed)


def _trim(
    X: np.ndarray,
    pos: list[np.ndarray],
    part: np.ndarray,
    k: int,
    budget: int,
    sens: np.ndarray | None,
    n_sens: int,
    constraint: _Constraint | None,
) -> np.ndarray:
    """Outlier suppression: the rows kept after trimming partitions' extremes.

    For every partition of ``m > k`` rows and every quasi-identifier ``d``,
    removing the ``j <= m - k`` lowest (or highest) rows narrows that range from
    ``w_d`` to ``w_d'``, lowering the certainty penalty of the rows that stay by at
    least ``(m - j) * (w_d - w_d')`` (other ranges can only shrink). Each partition
    takes its best trim, if the trimmed partition still meets the sensitive-column
    constraint; trims are then taken by gain per removed row, best first, up to
    ``budget`` rows. The removed rows are the outliers that stretch their class.
    """
    n, D = X.shape
    n_p = int(part.max()) + 1
    size = np.bincount(part, minlength=n_p)
    start = np.r_[0, np.cumsum(size)[:-1]]
    orders = [np.lexsort((X[:, d], part)) for d in range(D)]
    cs = [X[orders[d], d] for d in range(D)]
    W = np.stack([pos[d][cs[d][start + size - 1]] - pos[d][cs[d][start]] for d in range(D)], 1)
    extra = size - k
    pp = np.repeat(np.arange(n_p), extra)
    jj = np.arange(pp.size) - np.repeat(np.cumsum(extra) - extra, extra) + 1
    if pp.size == 0:
        return np.arange(n)
    m, st = size[pp], start[pp]
    best_gain = np.zeros(n_p)
    best_j = np.zeros(n_p, dtype=np.int64)
    best_d = np.zeros(n_p, dtype=np.int64)
    best_high = np.zeros(n_p, dtype=bool)
    for d in range(D):
        c, w = cs[d], W[pp, d]
        for high in (False, True):
            if high:
                new_w = pos[d][c[st + m - 1 - jj]] - pos[d][c[st]]
            else:
                new_w = pos[d][c[st + m - 1]] - pos[d][c[st + jj]]
            gain = (m - jj) * (w - new_w)
            top = np.full(n_p, -np.inf)
            np.maximum.at(top, pp, gain)
            hit = (gain == top[pp]) & (gain > best_gain[pp])
            q = pp[hit]
            best_gain[q], best_j[q], best_d[q], best_high[q] = gain[hit], jj[hit], d, high
    cand = np.flatnonzero(best_gain > 1e-12)
    if cand.size == 0:
        return np.arange(n)
    # Rows each candidate would remove, in its dimension's sorted order.
    cj = best_j[cand]
    owner = np.repeat(np.arange(cand.size), cj)
    k_in = np.arange(owner.size) - np.repeat(np.cumsum(cj) - cj, cj)
    first = np.where(best_high[cand], start[cand] + size[cand] - cj, start[cand])
    at = first[owner] + k_in
    stacked = np.stack(orders)  # [D, n]
    rows = stacked[best_d[cand][owner], at]
    if constraint is not None:
        tot = np.bincount(part * n_sens + sens, minlength=n_p * n_sens).reshape(-1, n_sens)
        gone = np.bincount(owner * n_sens + sens[rows], minlength=cand.size * n_sens)
        ok = constraint.ok(tot[cand] - gone.reshape(-1, n_sens))
    else:
        ok = np.ones(cand.size, dtype=bool)
    rank = np.argsort(-(best_gain[cand] / cj) + np.where(ok, 0.0, np.inf), kind="stable")
    rank = rank[ok[rank]]
    take = rank[np.cumsum(cj[rank]) <= budget]
    drop = np.zeros(n, dtype=bool)
    drop[rows[np.isin(owner, take)]] = True
    return np.flatnonzero(~drop)
