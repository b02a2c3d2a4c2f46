"""Keyed pseudonyms: stable per key, different across keys, revealing nothing."""

import hashlib
import hmac
import unicodedata

import numpy as np
import pandas as pd
import pytest

from dpjax.anonymize import MIN_KEY_BYTES, generate_key, load_key, pseudonymize
from dpjax.data.census import census_table


@pytest.fixture(scope="module")
def ids():
    df = census_table(2000, np.random.default_rng(7))
    return pd.concat([df["email"], df["name"], df["phone"]], ignore_index=True)


def test_stable_under_the_same_key(ids):
    key = generate_key()
    a, b = pseudonymize(ids, key), pseudonymize(ids.sample(frac=1.0, random_state=1), key)
    pd.testing.assert_series_equal(a, b.loc[a.index])
    # Equal identifiers map to equal pseudonyms, distinct ones to distinct ones (joins work).
    assert a.groupby(ids).nunique().max() == 1
    assert a.nunique() == ids.nunique()


def test_differs_under_another_key(ids):
    a, b = pseudonymize(ids, generate_key()), pseudonymize(ids, generate_key())
    assert (a != b).all()


def test_matches_stdlib_hmac_and_not_a_plain_hash(ids):
    key = generate_key()
    p = pseudonymize(ids, key, length=64)
    for v, out in zip(ids[:50], p[:50], strict=True):
        msg = b"\x00" + unicodedata.normalize("NFC", v).strip().encode()
        assert out == hmac.new(key, msg, hashlib.sha256).hexdigest()
        assert out != hashlib.sha256(v.encode()).hexdigest()


def test_does_not_reveal_the_identifier(ids):
    p = pseudonymize(ids, generate_key())
    assert p.str.fullmatch(r"[0-9a-f]{16}").all()
    for v, out in zip(ids, p, strict=True):
        tokens = [t for t in v.replace("@", " ").replace(".", " ").split() if len(t) >= 4]
        assert not any(t.lower() in out for t in tokens)
    # Near-identical inputs give unrelated pseudonyms (no shared prefix structure).
    near = pd.Series([f"user{i}@example.com" for i in range(200)])
    q = pseudonymize(near, generate_key())
    assert q.str[:3].nunique() > 150


def test_missing_unicode_context_and_normalization():
    key = generate_key()
    s = pd.Series(["José", unicodedata.normalize("NFD", "José"), None, np.nan, "", "Ann@X.org"])
    p = pseudonymize(s, key, prefix="pid_")
    assert p[0] == p[1] and p[0].startswith("pid_")
    assert p[2] is None and p[3] is None
    assert isinstance(p[4], str) and p[4] != p[0]
    assert pseudonymize(s, key, context="email")[0] != p[0].removeprefix("pid_")
    folded = pseudonymize(pd.Series(["ann@x.org", "Ann@X.org"]), key, normalize=True)
    assert folded[0] == folded[1]


def test_key_checks(tmp_path):
    # Key files are owner-only (0600); a looser one warns (test_anonymize_keys.py).
    short = tmp_path / "short.bin"
    short.write_bytes(b"x" * (MIN_KEY_BYTES - 1))
    short.chmod(0o600)
    with pytest.raises(ValueError, match=r"key file .*short.bin.* at least 32 bytes, got 31"):
        load_key(short)
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\x00" * 64)
    flat.chmod(0o600)
    with pytest.raises(ValueError, match="one byte repeated"):
        load_key(flat)
    good = tmp_path / "good.bin"
    good.write_bytes(generate_key())
    good.chmod(0o600)
    assert load_key(good) == good.read_bytes()
    with pytest.raises(TypeError, match="key must be bytes"):
        pseudonymize(pd.Series(["a"]), "secret-but-a-string")
    with pytest.raises(ValueError, match="key must hold at least 32 bytes"):
        pseudonymize(pd.Series(["a"]), b"short")
    with pytest.raises(ValueError, match="length must be in"):
        pseudonymize(pd.Series(["a"]), generate_key(), length=4)
    assert len(generate_key()) == MIN_KEY_BYTES and generate_key() != generate_key()
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 17)
    big.chmod(0o600)
    with pytest.raises(ValueError, match=r"at most 4096 bytes"):
        load_key(big)
