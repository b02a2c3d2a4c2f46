"""One call that anonymizes a pandas table and reports what it did and what it achieved.

Direct identifiers are handled first (pseudonymized, masked, substituted,
suppressed or dropped), then quasi-identifiers are generalized by Mondrian to reach
k-anonymity (and l-diversity / t-closeness on a sensitive column), and the released
table is measured: k, l, t and information loss, so settings can be compared.

Example:
    >>> import numpy as np
    >>> from dpjax.data.census import census_table
    >>> from dpjax.anonymize import anonymize, generate_key
    >>> df = census_table(3000, np.random.default_rng(0))
    >>> res = anonymize(df, quasi=["age", "zip", "sex"], sensitive="diagnosis", k=5, l=2,
    ...                 pseudonymize=["name", "email"], key=generate_key(),
    ...                 mask={"phone": "phone", "card": "card"}, drop=["birth_date"])
    >>> res.report.metrics["k"] >= 5 and res.report.metrics["l_distinct"] >= 2
    True
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dpjax.anonymize import masking
from dpjax.anonymize.metrics import measure
from dpjax.anonymize.mondrian import check_columns, mondrian
from dpjax.anonymize.pseudonym import pseudonymize as _pseudonymize

__all__ = ["AnonymizationResult", "Report", "anonymize"]


@dataclass(frozen=True)
class Report:
    """What :func:`anonymize` did (``actions``), with what settings, and the measured result."""

    actions: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"actions": list(self.actions), "settings": self.settings, "metrics": self.metrics}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_text(self) -> str:
        lines = ["Anonymization report", "  actions:"]
        lines += [f"    - {a}" for a in self.actions] or ["    (none)"]
        if self.metrics:
            m = self.metrics
            lines.append("  measured on the released table:")
            lines.append(
                f"    rows in {m['rows_in']}, rows out {m['rows_out']}, "
                f"suppressed {m['suppressed']}"
            )
            lines.append(
                f"    equivalence classes {m['classes']}, mean size {m['mean_class_size']:.2f}"
            )
            lines.append(f"    k = {m['k']}")
            if "l_distinct" in m:
                lines.append(f"    l (distinct) = {m['l_distinct']}")
                lines.append(f"    l (entropy)  = {m['l_entropy']:.3f}")
                lines.append(f"    t (EMD)      = {m['t']:.4f}")
            lines.append(f"    information loss: NCP = {m['ncp']:.4f} (0 none, 1 all)")
            lines.append(f"    discernibility = {m['discernibility']:.6g}")
        return "\n".join(lines)


@dataclass(frozen=True)
class AnonymizationResult:
    """The released table, its report, and each released row's equivalence class."""

    table: pd.DataFrame
    report: Report
    classes: np.ndarray | None = None


def _cols(name: str, cols: Any) -> list[str]:
    if cols is None:
        return []
    if isinstance(cols, str):
        return [cols]
    return [str(c) for c in cols]


def anonymize(
    df: pd.DataFrame,
    *,
    quasi: Sequence[str] = (),
    sensitive: str | None = None,
    k: int | None = None,
    l: float | None = None,  # noqa: E741
    l_kind: str = "distinct",
    t: float | None = None,
    max_suppression: float = 0.0,
    hierarchies: Mapping[str, Any] | None = None,
    pseudonymize: Sequence[str] = (),
    key: bytes | None = None,
    mask: Mapping[str, str | Callable[[pd.Series], pd.Series]] | None = None,
    substitute: Mapping[str, Any] | None = None,
    suppress: Sequence[str] = (),
    drop: Sequence[str] = (),
) -> AnonymizationResult:
    """Anonymizes ``df``: direct identifiers, then Mondrian on quasi-identifiers, then measures.

    Privacy: the guarantees are syntactic (k-anonymity, l-diversity, t-closeness on
    the named quasi-identifiers), not differential privacy. Pseudonyms are personal
    data for whoever holds ``key``.

    Args:
      df: the table, with unique index labels.
      quasi: quasi-identifier columns to generalize (needs ``k``).
      sensitive: the sensitive column for ``l`` and ``t`` (also measured when given).
      k: minimum class size, >= 2.
      l, l_kind, t, max_suppression, hierarchies: see :func:`mondrian`.
      pseudonymize: columns replaced by keyed HMAC-SHA256 pseudonyms (needs ``key``).
      key: at least 32 secret bytes for pseudonyms and substitution.
      mask: column -> rule name from :data:`MASK_RULES` (``"email"``, ``"phone"``,
        ``"card"``, ``"last4"`` ...) or a function of a Series.
      substitute: column -> kind for :func:`substitute` (``"name"``, ``"email"`` ...).
      suppress: columns whose values are all replaced by missing values.
      drop: columns removed.

    Returns:
      An :class:`AnonymizationResult`.

    Raises:
      ValueError: on an unknown column, a column given two roles, k < 2, a missing
        key, or any error of :func:`mondrian`.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    quasi = _cols("quasi", quasi)
    mask = dict(mask or {})
    substitute = dict(substitute or {})
    roles = {
        "pseudonymize": _cols("pseudonymize", pseudonymize),
        "mask": list(mask),
        "substitute": list(substitute),
        "suppress": _cols("suppress", suppress),
        "drop": _cols("drop", drop),
        "quasi": quasi,
        "sensitive": [sensitive] if sensitive is not None else [],
    }
    seen: dict[str, str] = {}
    for role, cols in roles.items():
        for c in cols:
            if c not in df.columns:
                raise ValueError(f"{role}: unknown column {c!r}; columns are {list(df.columns)}")
            if c in seen:
                if seen[c] == role:
                    raise ValueError(f"{role} names {c!r} twice; name each column once")
                if {seen[c], role} == {"quasi", "sensitive"}:
                    raise ValueError(
                        f"sensitive column {c!r} is also a quasi-identifier; "
                        "a column is one or the other"
                    )
                raise ValueError(f"column {c!r} is given to both {seen[c]} and {role}")
            seen[c] = role
    if (roles["pseudonymize"] or roles["substitute"]) and key is None:
        raise ValueError("key is required to pseudonymize or substitute (see generate_key())")
    if quasi and k is None:
        raise ValueError("k is required when quasi-identifiers are given")
    if k is not None and not quasi:
        raise ValueError("quasi must name at least one column when k is given")
    if not df.index.is_unique:
        raise ValueError("df must have unique index labels (try df.reset_index(drop=True))")

    out = df.copy()
    actions: list[str] = []
    for c in roles["pseudonymize"]:
        out[c] = _pseudonymize(out[c], key)  # type: ignore[arg-type]
        actions.append(f"pseudonymized {c!r} with HMAC-SHA256 (keyed)")
    for c, rule in mask.items():
        if callable(rule):
            out[c] = rule(out[c])
            actions.append(f"masked {c!r} with {getattr(rule, '__name__', 'a function')}")
        else:
            out[c] = masking.mask(out[c], rule)
            actions.append(f"masked {c!r} by rule {rule!r}")
    for c, kind in substitute.items():
        out[c] = masking.substitute(out[c], key, kind)  # type: ignore[arg-type]
        shown = kind if isinstance(kind, str) else "a pool"
        actions.append(f"substituted {c!r} with consistent fake values ({shown})")
    for c in roles["suppress"]:
        out[c] = masking.suppress(out[c])
        actions.append(f"suppressed {c!r}")
    if roles["drop"]:
        out = out.drop(columns=roles["drop"])
        actions.append(f"dropped {roles['drop']}")

    settings: dict[str, Any] = {"quasi": quasi, "sensitive": sensitive}
    metrics: dict[str, float] = {}
    classes = None
    if quasi:
        res = mondrian(
            out,
            quasi,
            k,  # type: ignore[arg-type]
            sensitive=sensitive,
            l=l,
            l_kind=l_kind,
            t=t,
            max_suppression=max_suppression,
            hierarchies=hierarchies,
        )
        out, classes = res.table, res.classes
        settings.update(k=k, l=l, l_kind=l_kind, t=t, max_suppression=max_suppression)
        what = f"k={k}" + (f", l={l} ({l_kind})" if l is not None else "")
        what += f", t={t}" if t is not None else ""
        actions.append(f"generalized {quasi} by Mondrian ({what})")
        if len(res.suppressed):
            actions.append(f"suppressed {len(res.suppressed)} outlier rows")
        metrics = measure(df, out, quasi, sensitive, hierarchies=hierarchies)
    elif sensitive is not None:
        check_columns(df, [sensitive])
    return AnonymizationResult(out, Report(tuple(actions), settings, metrics), classes)
