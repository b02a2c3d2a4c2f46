"""The public corpus and the private corpus with canaries: deterministic, as many as stated."""

import dataclasses

import numpy as np
import pytest

from dpjax.finetune import canaries as cm
from dpjax.finetune import corpus


def test_public_text_is_the_standard_library_and_deterministic():
    a, b = corpus.public_text(50_000), corpus.public_text(50_000)
    assert a == b and len(a) == 50_000
    assert b"Text wrapping and filling" in a  # textwrap's docstring comes first
    assert corpus.public_text(10**8).count(b"def ") > 100  # sources follow


@pytest.mark.parametrize(("kw", "match"), [({"max_bytes": 0}, "max_bytes must be >= 1")])
def test_public_text_refuses_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        corpus.public_text(**kw)


def test_windows_are_slices_of_the_text():
    text = corpus.public_text(5000)
    w = corpus.windows(text, 32, 7, np.random.default_rng(0))
    assert w.shape == (7, 32) and w.dtype == np.int32
    for row in w:
        assert bytes(row.astype(np.uint8)) in text
    with pytest.raises(ValueError, match=r"length must be in \[1, 5000\]"):
        corpus.windows(text, 5001, 1, np.random.default_rng(0))


SPEC = (("id", 1), ("id", 4), ("card", 7), ("id", 16))


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1])
def test_private_corpus_is_deterministic_for_a_seed(seed):
    a = cm.private_corpus(seed, num_records=300, canaries=SPEC, num_references=3)
    b = cm.private_corpus(seed, num_records=300, canaries=SPEC, num_references=3)
    assert a == b
    c = cm.private_corpus(seed ^ 1, num_records=300, canaries=SPEC, num_references=3)
    assert [x.secret for x in a.canaries] != [x.secret for x in c.canaries]


@pytest.mark.parametrize("id_digits", [3, 5])
def test_canaries_occur_the_stated_number_of_times(id_digits):
    pc = cm.private_corpus(7, num_records=500, canaries=SPEC, num_references=4, id_digits=id_digits)
    assert len(pc.train) == 500 + sum(r for _, r in SPEC)
    for c, (kind, repeats) in zip(pc.canaries, SPEC, strict=True):
        assert (c.kind, c.repeats) == (kind, repeats)
        assert sum(r == c.text for r in pc.train) == repeats  # whole records
        assert sum(c.text in r for r in pc.train) == repeats  # nowhere else
        assert not any(c.text in r for r in pc.held_out)
        assert len(c.secret) == (id_digits if kind == "id" else cm.CARD_DIGITS)
    assert len(pc.references) == 4 * 2  # per kind present
    for ref in pc.references:
        assert ref.repeats == 0
        assert not any(ref.prefix in r or ref.text in r for r in pc.train)
    prefixes = [c.prefix for c in pc.canaries + pc.references]
    assert len(set(prefixes)) == len(prefixes)  # one person per secret


def test_secrets_are_uniform_digits():
    pc = cm.private_corpus(3, num_records=10, canaries=(("card", 1),) * 60, num_references=0)
    digits = np.array([int(d) for c in pc.canaries for d in c.secret])
    counts = np.bincount(digits, minlength=10)
    # 900 digits; chi-square with 9 df, 99.9th percentile 27.9 (false-positive rate 1e-3).
    chi2 = float(np.sum((counts - 90) ** 2 / 90))
    assert chi2 < 27.9, counts


@pytest.mark.parametrize(
    ("kind", "digits", "text"),
    [("id", "04821", "04821"), ("card", "123456789012345", "4123 4567 8901 2345")],
)
def test_format_secret(kind, digits, text):
    assert cm.format_secret(kind, digits) == text
    assert text.endswith(digits[-1])  # exact enumeration reads the last digit last


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seed": -1}, "seed must be >= 0"),
        ({"seed": 2**32}, r"seed must be in \[0, 4294967295\]"),
        ({"num_records": 0}, "num_records must be >= 1"),
        ({"canaries": ()}, "canaries must be a non-empty"),
        ({"canaries": (("ssn", 1),)}, "canary kind must be one of"),
        ({"canaries": (("id", 0),)}, "canary repeats must be >= 1"),
        ({"id_digits": 10}, r"id_digits must be in \[1, 9\]"),
        ({"num_references": 400}, "canaries and references must number at most"),
    ],
)
def test_private_corpus_refuses_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        cm.private_corpus(**{"seed": 0, **kw})


def test_canary_is_a_namedtuple():
    c = cm.Canary("A's customer id is ", "123", "id", 2)
    assert c.text == "A's customer id is 123"
    assert dataclasses.is_dataclass(c) is False
