"""Rule-based masking, consistent fake substitution and suppression of direct identifiers.

Masking keeps a little of a value so that people can still recognize their own
record or tell values apart (the last digits of a card, the domain of an e-mail);
every rule keeps the layout (length, separators) unless asked not to. Text is
NFC-normalized first, so an accented letter is one character whether it arrived
composed or not. Missing values stay missing; numbers are masked as their text
(``1234.0`` as ``1234``). A value too short to keep anything without revealing it
whole is masked entirely.

``format_preserving`` and ``substitute`` are keyed (HMAC-SHA256, see
:mod:`dpjax.anonymize.pseudonym`): the same input gives the same output under one
key, so columns stay joinable, and the outputs look like real data (digits for
digits, letters for letters, names for names) without revealing the input. They are
not encryption: there is no way back, even with the key, except by enumeration.

Example:
    >>> import pandas as pd
    >>> from dpjax.anonymize import mask_card, mask_email, mask_keep_last, mask_phone
    >>> mask_email(pd.Series(["jane.doe@example.com"]))[0]
    'j*******@example.com'
    >>> mask_phone(pd.Series(["+1 (555) 123-4567"]))[0]
    '+* (***) ***-**67'
    >>> mask_card(pd.Series(["4000 1234 5678 9010"]))[0]
    '**** **** **** 9010'
    >>> mask_keep_last(pd.Series(["Zoë", "ab"]), keep=2).tolist()
    ['*oë', '**']
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dpjax import _validate
from dpjax.anonymize.keys import _check_key
from dpjax.anonymize.pseudonym import keyed_digest
from dpjax.data.census import FIRST_NAMES_F, FIRST_NAMES_M, LAST_NAMES

__all__ = [
    "mask_keep_last",
    "mask_email",
    "mask_phone",
    "mask_card",
    "format_preserving",
    "substitute",
    "suppress",
    "mask",
    "MASK_RULES",
]


def _text(v: Any) -> str | None:
    """NFC text of a value, or None when missing."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    if isinstance(v, float | np.floating) and float(v).is_integer():
        v = int(v)
    return unicodedata.normalize("NFC", str(v))


def _apply(values: pd.Series, fn: Callable[[str], str]) -> pd.Series:
    if not isinstance(values, pd.Series):
        values = pd.Series(values, dtype=object)
    out = [None if (t := _text(v)) is None else fn(t) for v in values]
    return pd.Series(out, index=values.index, dtype=object)


def _check_char(char: str) -> str:
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"char must be a single character, got {char!r}")
    return char


def mask_keep_last(
    values: pd.Series, keep: int = 4, *, char: str = "*", preserve_length: bool = True
) -> pd.Series:
    """Masks all but the last ``keep`` characters.

    Strings of ``keep`` characters or fewer are masked entirely. With
    ``preserve_length=False`` the masked part is always three ``char``, hiding the
    length too.
    """
    keep = _validate.non_negative_int("keep", keep)
    char = _check_char(char)

    def one(s: str) -> str:
        if len(s) <= keep:
            return char * len(s) if preserve_length else char * 3
        head = char * (len(s) - keep) if preserve_length else char * 3
        return head + (s[-keep:] if keep else "")

    return _apply(values, one)


def mask_email(
    values: pd.Series, keep_first: int = 1, *, char: str = "*", mask_domain: bool = False
) -> pd.Series:
    """Masks the local part of e-mail addresses except its first ``keep_first`` characters.

    The domain is kept (or, with ``mask_domain``, all but its last label). A value
    without a single ``@`` and non-empty parts is not an address and is masked
    entirely; a local part no longer than ``keep_first`` is masked entirely.
    """
    keep_first = _validate.non_negative_int("keep_first", keep_first)
    char = _check_char(char)

    def one(s: str) -> str:
        local, at, domain = s.rpartition("@")
        if not at or not local or not domain or "@" in local:
            return char * len(s)
        if len(local) <= keep_first:
            local = char * len(local)
        else:
            local = local[:keep_first] + char * (len(local) - keep_first)
        if mask_domain:
            name, dot, tld = domain.rpartition(".")
            domain = char * len(name) + dot + tld if dot else char * len(domain)
        return f"{local}@{domain}"

    return _apply(values, one)


def _mask_digits(s: str, keep_first: int, keep_last: int, char: str) -> str:
    idx = [i for i, c in enumerate(s) if c.isdigit()]
    if keep_first + keep_last >= len(idx):
        keep_first = keep_last = 0
    hide = set(idx[keep_first : len(idx) - keep_last])
    return "".join(char if i in hide else c for i, c in enumerate(s))


def mask_phone(values: pd.Series, keep_last: int = 2, *, char: str = "*") -> pd.Series:
    """Masks the digits of phone numbers but the last ``keep_last``; layout is kept.

    ``+``, spaces, brackets and dashes stay where they are. A number with no more
    than ``keep_last`` digits has all its digits masked.
    """
    keep_last = _validate.non_negative_int("keep_last", keep_last)
    char = _check_char(char)
    return _apply(values, lambda s: _mask_digits(s, 0, keep_last, char))


def mask_card(
    values: pd.Series, keep_last: int = 4, *, keep_first: int = 0, char: str = "*"
) -> pd.Series:
    """Masks payment card numbers, showing at most the first 6 and last 4 digits (PCI DSS).

    Separators are kept. A value whose digit count is outside 12..19 is not a card
    number and has all its digits masked.
    """
    keep_last = _validate.non_negative_int("keep_last", keep_last)
    keep_first = _validate.non_negative_int("keep_first", keep_first)
    if keep_last > 4:
        raise ValueError(f"keep_last must be <= 4 for card numbers (PCI DSS), got {keep_last}")
    if keep_first > 6:
        raise ValueError(f"keep_first must be <= 6 for card numbers (PCI DSS), got {keep_first}")
    char = _check_char(char)

    def one(s: str) -> str:
        n = sum(c.isdigit() for c in s)
        if not 12 <= n <= 19:
            return _mask_digits(s, 0, 0, char)
        return _mask_digits(s, keep_first, keep_last, char)

    return _apply(values, one)


def _stream(key: bytes, s: str, n_bytes: int) -> bytes:
    out = b""
    block = 0
    while len(out) < n_bytes:
        out += keyed_digest(s, key, context=f"dpjax.format_preserving.{block}")
        block += 1
    return out


_LOWER = "abcdefghijklmnopqrstuvwxyz"


def format_preserving(
    values: pd.Series, key: bytes, *, keep_last: int = 0, luhn: bool = False
) -> pd.Series:
    """Keyed replacement that keeps the format: digits by digits, letters by letters.

    Case, length, separators and the last ``keep_last`` digits/letters are kept; each
    other digit or letter is drawn from an HMAC-SHA256 stream of the whole value, so
    equal inputs give equal outputs under one key. Non-ASCII letters become ASCII
    letters of the same case. With ``luhn`` the last digit is set so that the result
    passes the Luhn check, as card numbers do.

    Example:
        >>> import pandas as pd
        >>> key = bytes(range(32))
        >>> out = format_preserving(pd.Series(["+1 (555) 123-4567"]), key)[0]
        >>> [c.isdigit() for c in out] == [c.isdigit() for c in "+1 (555) 123-4567"]
        True
        >>> out[0] + out[2:4] + out[7:9] + out[12]
        '+ () -'
    """
    key = _check_key(key)
    keep_last = _validate.non_negative_int("keep_last", keep_last)

    def one(s: str) -> str:
        pos = [i for i, c in enumerate(s) if c.isdigit() or c.isalpha()]
        change = pos[: max(len(pos) - keep_last, 0)]
        r = _stream(key, s, 2 * len(change) + 2)
        chars = list(s)
        for j, i in enumerate(change):
            u = int.from_bytes(r[2 * j : 2 * j + 2], "big")  # bias < 1e-3
            c = chars[i]
            if c.isdigit():
                chars[i] = str(u % 10)
            else:
                new = _LOWER[u % 26]
                chars[i] = new.upper() if c.isupper() else new
        if luhn:
            digits = [i for i, c in enumerate(chars) if c.isdigit()]
            if len(digits) >= 2:
                chars[digits[-1]] = str(_luhn_check([int(chars[i]) for i in digits[:-1]]))
        return "".join(chars)

    return _apply(values, one)


def _luhn_check(payload: Sequence[int]) -> int:
    total = 0
    for i, d in enumerate(reversed(payload)):
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10


def _ascii(s: str) -> str:
    return "".join(
        c for c in unicodedata.normalize("NFKD", s) if c.isascii() and (c.isalnum())
    ).lower()


def substitute(values: pd.Series, key: bytes, kind: str | Sequence[str] = "name") -> pd.Series:
    """Consistent fake values: each distinct input maps to one fake under a key.

    Args:
      values: identifiers to replace.
      key: at least 32 secret bytes.
      kind: ``"name"`` (first and last name), ``"email"`` (``first.last123@example.org``),
        ``"phone"`` (``+1 (555) 01x-xxxx``, a fictional range), or a sequence of
        strings to draw from. Distinct inputs can share a fake (a pool of size m
        collides often beyond sqrt(m) inputs): use :func:`pseudonymize` when
        uniqueness matters.

    Returns:
      A Series of strings, same index; missing values stay missing.
    """
    key = _check_key(key)
    if isinstance(kind, str):
        _validate.one_of("kind", kind, ("name", "email", "phone"))
    else:
        pool = [str(x) for x in kind]
        if not pool:
            raise ValueError("kind: the pool of fake values is empty")
    firsts = FIRST_NAMES_F + FIRST_NAMES_M
    cache: dict[str, str] = {}

    def one(s: str) -> str:
        if s in cache:
            return cache[s]
        h = keyed_digest(s, key, context="dpjax.substitute")
        a, b, c = (int.from_bytes(h[i : i + 8], "big") for i in (0, 8, 16))
        if kind == "name":
            out = f"{firsts[a % len(firsts)]} {LAST_NAMES[b % len(LAST_NAMES)]}"
        elif kind == "email":
            f, l_ = _ascii(firsts[a % len(firsts)]), _ascii(LAST_NAMES[b % len(LAST_NAMES)])
            out = f"{f}.{l_}{c % 1000}@example.org"
        elif kind == "phone":
            out = f"+1 (555) 01{a % 10}-{b % 10000:04d}"
        else:
            out = pool[a % len(pool)]
        cache[s] = out
        return out

    return _apply(values, one)


def suppress(values: pd.Series, token: str | None = None) -> pd.Series:
    """Replaces every value by ``token`` (missing by default)."""
    return pd.Series([token] * len(values), index=values.index, dtype=object)


MASK_RULES: dict[str, Callable[[pd.Series], pd.Series]] = {
    "last4": lambda s: mask_keep_last(s, 4),
    "last2": lambda s: mask_keep_last(s, 2),
    "all": lambda s: mask_keep_last(s, 0),
    "email": mask_email,
    "phone": mask_phone,
    "card": mask_card,
    "suppress": suppress,
}


def mask(values: pd.Series, rule: str) -> pd.Series:
    """Applies a named rule from :data:`MASK_RULES` (used by the command line)."""
    _validate.one_of("rule", rule, tuple(MASK_RULES))
    return MASK_RULES[rule](values)
