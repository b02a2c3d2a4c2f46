"""Masking rules on tricky inputs: unicode, empty, short strings, NaN, numbers."""

import unicodedata

import numpy as np
import pandas as pd
import pytest

from dpjax.anonymize import (
    format_preserving,
    generate_key,
    mask,
    mask_card,
    mask_email,
    mask_keep_last,
    mask_phone,
    substitute,
    suppress,
)

TRICKY = pd.Series(
    ["", "a", "ab", "Zoë", unicodedata.normalize("NFD", "Zoë"), "王小明", "😀x😀y", "  ", 12345.0,
     None, np.nan, pd.NA, "very-long-value-1234"],
    dtype=object,
)  # fmt: skip


def _nfc(v):
    return unicodedata.normalize("NFC", str(int(v) if isinstance(v, float) else v))


@pytest.mark.parametrize("keep", [0, 1, 2, 4])
def test_keep_last(keep):
    out = mask_keep_last(TRICKY, keep)
    for v, o in zip(TRICKY, out, strict=True):
        if pd.isna(v):
            assert o is None
            continue
        s = _nfc(v)
        assert len(o) == len(s)  # NFC: decomposed 'ë' counts once
        if len(s) <= keep:
            assert o == "*" * len(s)
        else:
            assert o[len(s) - keep :] == s[len(s) - keep :]
            assert set(o[: len(s) - keep]) == {"*"}
    hidden = mask_keep_last(pd.Series(["secret123"]), 3, preserve_length=False)
    assert hidden[0] == "***123"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("jane.doe@example.com", "j*******@example.com"),
        ("ü@example.com", "*@example.com"),
        ("Zoë.Müller@exämple.de", "Z*********@exämple.de"),
        ("not-an-email", "************"),
        ("@example.com", "************"),
        ("a@b@c", "*****"),
        ("", ""),
    ],
)
def test_email(value, expected):
    assert mask_email(pd.Series([value]))[0] == expected


def test_email_domain_and_missing():
    out = mask_email(pd.Series(["jo@mail.example.org", None, np.nan]), mask_domain=True)
    assert out[0] == "j*@************.org"
    assert out[1] is None and out[2] is None


@pytest.mark.parametrize(
    "value, expected",
    [
        ("+1 (555) 123-4567", "+* (***) ***-**67"),
        ("0044 20 7946 0958", "**** ** **** **58"),
        ("12", "**"),
        ("ext.", "ext."),
        ("", ""),
        ("＋４４ ２０", "＋** ２０"),  # fullwidth digits are digits too
    ],
)
def test_phone(value, expected):
    assert mask_phone(pd.Series([value]))[0] == expected


def test_card():
    cards = pd.Series(["4000 1234 5678 9010", "4000123456789010", "1234", None, 4000123456789010])
    out = mask_card(cards)
    assert out[0] == "**** **** **** 9010"
    assert out[1] == "************9010"
    assert out[2] == "****"  # too short for a card: nothing shown
    assert out[3] is None
    assert out[4] == "************9010"
    assert mask_card(cards, keep_first=6)[0] == "4000 12** **** 9010"
    with pytest.raises(ValueError, match="keep_last must be <= 4"):
        mask_card(cards, keep_last=5)
    with pytest.raises(ValueError, match="keep_first must be <= 6"):
        mask_card(cards, keep_first=8)
    with pytest.raises(ValueError, match="char must be a single character"):
        mask_card(cards, char="##")


def _luhn_ok(s):
    digits = [int(c) for c in s if c.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits))
    return total % 10 == 0


def test_format_preserving_keeps_classes_and_is_keyed():
    key = generate_key()
    vals = pd.Series(["+1 (555) 123-4567", "AB-12cd", "Zoë 7", "", None, "4000 1234 5678 9010"])
    a, b = format_preserving(vals, key), format_preserving(vals, key)
    pd.testing.assert_series_equal(a, b)
    for v, o in zip(vals, a, strict=True):
        if pd.isna(v):  # None, or NaN in a pandas 3 string column
            assert pd.isna(o)
            continue
        assert len(o) == len(v)
        for c, d in zip(v, o, strict=True):
            assert c.isdigit() == d.isdigit()
            assert c.isalpha() == d.isalpha()
            if c.isalpha():
                assert c.isupper() == d.isupper()
            if not c.isalnum():
                assert c == d
    assert (format_preserving(vals, generate_key())[[0, 1, 5]] != a[[0, 1, 5]]).all()
    cards = pd.Series([f"4000 {i:04d} 5678 9010" for i in range(50)])
    fake = format_preserving(cards, key, luhn=True)
    assert all(_luhn_ok(c) for c in fake)
    kept = format_preserving(cards, key, keep_last=4)
    assert (kept.str[-4:] == "9010").all()


def test_substitute_is_consistent_and_keyed():
    key = generate_key()
    names = pd.Series(["Ann Lee", "Bob Park", "Ann Lee", None, "王小明"])
    a = substitute(names, key, "name")
    assert a[0] == a[2] and a[3] is None
    assert all(len(x.split(" ")) == 2 for x in a.dropna())
    assert "Ann Lee" not in set(a.dropna()) or a[0] != "Ann Lee"
    emails = substitute(pd.Series([f"u{i}@corp.com" for i in range(100)]), key, "email")
    assert emails.str.fullmatch(r"[a-z]+\.[a-z]+\d{1,3}@example\.org").all()
    assert emails.nunique() > 90
    phones = substitute(pd.Series(["+1 555 0100"]), key, "phone")
    assert phones[0].startswith("+1 (555) 01")
    pool = substitute(pd.Series(["x", "y", "x"]), key, ["P", "Q", "R"])
    assert pool[0] == pool[2] and set(pool) <= {"P", "Q", "R"}
    other = substitute(pd.Series([f"u{i}@corp.com" for i in range(100)]), generate_key(), "email")
    assert (other != emails).mean() > 0.9
    with pytest.raises(ValueError, match="kind must be one of"):
        substitute(names, key, "address")
    with pytest.raises(ValueError, match="pool of fake values is empty"):
        substitute(names, key, [])


def test_suppress_and_named_rules():
    s = pd.Series(["a", None, "c"], index=[5, 6, 7])
    out = suppress(s)
    assert out.isna().all() and list(out.index) == [5, 6, 7]
    assert suppress(s, token="[removed]").eq("[removed]").all()
    assert mask(pd.Series(["123456"]), "last4")[0] == "**3456"
    with pytest.raises(ValueError, match="rule must be one of"):
        mask(s, "rot13")
