"""The privacy guarantee recorded in an encrypted artifact's header.

``encrypt_file(..., metadata={"privacy": privacy_guarantee(...)})`` puts it in
the authenticated (public) header; signed with ``sign_with``, a receiver can
check with ``verify_file`` who produced the artifact under what guarantee.
"""

from __future__ import annotations

from typing import Any

from dpjax import _validate

__all__ = ["privacy_guarantee"]


def privacy_guarantee(epsilon: float, delta: float, accountant: str) -> dict[str, Any]:
    """Returns ``{"epsilon", "delta", "accountant"}`` after checking each value.

    Args:
      epsilon: the epsilon spent, finite and >= 0.
      delta: the delta, in [0, 1].
      accountant: the accountant's name (e.g. ``"rdp"``, ``"pld"``), non-empty.

    Privacy:
      Records a guarantee computed elsewhere; it does not compute or check it.

    Example:
      >>> privacy_guarantee(2.0, 1e-5, "pld")
      {'epsilon': 2.0, 'delta': 1e-05, 'accountant': 'pld'}
    """
    _validate.non_negative("epsilon", epsilon)
    _validate.in_range("delta", delta, 0.0, 1.0)
    if not isinstance(accountant, str) or not accountant:
        raise ValueError(f"accountant must be a non-empty str, got {accountant!r}")
    return {"epsilon": float(epsilon), "delta": float(delta), "accountant": accountant}
