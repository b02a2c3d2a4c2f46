"""Keyed pseudonyms for direct identifiers: HMAC-SHA256 under a user-held key.

Why not a plain hash: names, e-mail addresses, phone and card numbers come from
small, guessable sets. Anyone can hash every candidate (all 10^10 phone numbers of a
country, a voter roll, a leaked mailing list) and look the pseudonyms up, so
``sha256(email)`` is a lookup table away from the e-mail. A salt shared by the whole
table changes nothing (the attacker hashes with it). A keyed MAC does: without the
key, pseudonyms are unpredictable (HMAC is a pseudorandom function, Bellare,
Canetti, Krawczyk 1996, Keying Hash Functions for Message Authentication), and with
it they are deterministic, so joins across tables pseudonymized under the same key
still work. Keep the key apart from the data; whoever holds it can re-identify by
enumeration, so destroy it when linkage is no longer needed. Pseudonymized data is
still personal data under the GDPR (Art. 4(5)).

Example:
    >>> import pandas as pd
    >>> from dpjax.anonymize import pseudonymize
    >>> key = bytes(range(32))  # use generate_key() or write_key()/load_key() in practice
    >>> p = pseudonymize(pd.Series(["ann@example.com", "ann@example.com", None]), key)
    >>> p[0] == p[1], len(p[0]), p[2] is None
    (True, 16, True)
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Any

import numpy as np
import pandas as pd

from dpjax import _validate
from dpjax.anonymize.keys import MIN_KEY_BYTES, _check_key, generate_key, load_key

__all__ = ["MIN_KEY_BYTES", "generate_key", "load_key", "pseudonymize", "keyed_digest"]


def _canon(value: Any) -> bytes:
    """Text form of one identifier: NFC-normalized, stripped; numbers without '.0'."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    return unicodedata.normalize("NFC", str(value)).strip().encode("utf-8")


def keyed_digest(value: Any, key: bytes, *, context: str = "") -> bytes:
    """HMAC-SHA256(key, context || 0x00 || value), 32 bytes."""
    msg = context.encode("utf-8") + b"\x00" + _canon(value)
    return hmac.new(key, msg, hashlib.sha256).digest()


def pseudonymize(
    values: pd.Series,
    key: bytes,
    *,
    length: int = 16,
    prefix: str = "",
    context: str = "",
    normalize: bool = False,
) -> pd.Series:
    """Replaces each identifier by ``prefix + hex(HMAC-SHA256(key, value))[:length]``.

    Deterministic for a key (equal inputs give equal pseudonyms, so joins work),
    unlinkable across keys, and not invertible without the key. Missing values stay
    missing. ``length`` hex characters carry ``4 * length`` bits; at 16 (64 bits) a
    collision among a billion values has probability about 3%: raise it for bigger
    tables.

    Args:
      values: the identifiers.
      key: at least 32 secret bytes (:func:`generate_key`, :func:`load_key`).
      length: hex characters kept, 8 to 64.
      prefix: prepended to every pseudonym, e.g. ``"pid_"``.
      context: domain separation: the same value under different contexts gives
        unrelated pseudonyms (use the column name to stop linking across columns).
      normalize: also case-fold before hashing (e-mail addresses).

    Returns:
      A Series of strings (object dtype), same index.
    """
    key = _check_key(key)
    length = _validate.positive_int("length", length)
    _validate.in_range("length", length, 8, 64)
    cache: dict[Any, str] = {}

    def one(v: Any) -> Any:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return None
        if normalize:
            v = str(v).casefold()
        out = cache.get(v)
        if out is None:
            out = prefix + keyed_digest(v, key, context=context).hex()[:length]
            cache[v] = out
        return out

    return pd.Series([one(v) for v in values], index=values.index, dtype=object)
