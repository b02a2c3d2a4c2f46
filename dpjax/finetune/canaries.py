"""The private corpus: generated support chats and notes with planted canaries.

Records come from templates (support tickets, chats, agent notes) filled with
names, products and problems drawn from a seeded generator. Among them,
**canaries** (Carlini et al. 2019, "The Secret Sharer"): records
``"<name>'s customer id is 48213"`` or ``"<name>'s card number is
4123 4567 8901 2345"`` whose secret is uniformly random, each inserted
``repeats`` times. **References** are canaries of the same formats with fresh
secrets that are never inserted: their exposure is the distribution of a
random candidate, the baseline a private model should stay near.

The same ``seed`` gives the same records, canaries and references. The
corpus is synthetic (a stand-in for real private text): its seed chooses the
secrets and is part of the experiment's configuration, not a privacy key.
The privacy unit of the fine-tuning is one record; a canary repeated k times
is k records, which differential privacy protects as a group of k.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dpjax import _validate

__all__ = [
    "KINDS",
    "Canary",
    "PrivateCorpus",
    "candidate_count",
    "format_secret",
    "private_corpus",
]

KINDS = ("id", "card")  # "id": id_digits random digits; "card": "4" + 15 random digits
_LABEL = {"id": "customer id", "card": "card number"}
CARD_DIGITS = 15  # random digits of a card number (the leading 4 is fixed)

_FIRST = (
    "Ada", "Bruno", "Chen", "Dana", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal",
    "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar",
    "Vera", "Wen", "Xavi", "Yara", "Zoe",
)  # fmt: skip
_LAST = (
    "Abbott", "Berger", "Costa", "Dumont", "Eriksen", "Fischer", "Garcia", "Hansen", "Ito",
    "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quist", "Rossi",
    "Silva", "Tanaka", "Ulrich", "Varga", "Weber", "Young", "Zhang",
)  # fmt: skip
_AGENTS = ("Sam", "Alex", "Robin", "Kim", "Jo", "Max")
_PRODUCTS = ("router", "laptop", "phone", "printer", "headset", "monitor", "tablet", "camera")
_ISSUES = (
    "my {p} will not turn on",
    "the {p} I ordered arrived broken",
    "I was charged twice for the {p}",
    "my {p} keeps restarting",
    "I want to return the {p}",
    "the {p} is slower than promised",
    "my refund for the {p} has not arrived",
)
_REPLIES = (
    "sorry about that, I have opened a case.",
    "a replacement {p} ships today.",
    "the refund is on its way.",
    "please restart it and tell me what you see.",
    "I have escalated this to our team.",
    "thanks, the charge is reversed.",
)
_TEMPLATES = (
    "Ticket {t}: {name} wrote: {issue}. {agent}: {reply}",
    "Chat {t}. {name}: hi, {issue}. {agent}: {reply}",
    "Note by {agent}: {name} called, {issue}. Said: {reply}",
)


class Canary(NamedTuple):
    """A planted secret: the record is ``prefix + format_secret(kind, secret)``.

    Attributes:
      prefix: the known context (``"Dana Novak's customer id is "``).
      secret: the random digits (the card's leading 4 excluded).
      kind: one of ``KINDS``.
      repeats: how many records hold it (0 for a reference, never inserted).
    """

    prefix: str
    secret: str
    kind: str
    repeats: int

    @property
    def text(self) -> str:
        return self.prefix + format_secret(self.kind, self.secret)


class PrivateCorpus(NamedTuple):
    train: tuple[str, ...]  # the fine-tuning records, canary records included, shuffled
    held_out: tuple[str, ...]  # records of the same generator, no canaries (bits per byte)
    canaries: tuple[Canary, ...]  # inserted
    references: tuple[Canary, ...]  # never inserted: the random-candidate baseline


def format_secret(kind: str, digits: str) -> str:
    """The secret as written in a record: ``"48213"`` or ``"4123 4567 8901 2345"``."""
    _validate.one_of("kind", kind, KINDS)
    if kind == "id":
        return digits
    if len(digits) != CARD_DIGITS:
        raise ValueError(f"a card secret has {CARD_DIGITS} digits, got {len(digits)}")
    full = "4" + digits
    return " ".join(full[i : i + 4] for i in range(0, 16, 4))


def candidate_count(kind: str, id_digits: int) -> int:
    """|R|: the number of possible secrets of a kind."""
    return 10 ** (id_digits if _validate.one_of("kind", kind, KINDS) == "id" else CARD_DIGITS)


def _record(rng: np.random.Generator) -> str:
    p = str(rng.choice(_PRODUCTS))
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    return str(rng.choice(_TEMPLATES)).format(
        t=int(rng.integers(1000, 10000)),
        name=name,
        agent=str(rng.choice(_AGENTS)),
        issue=str(rng.choice(_ISSUES)).format(p=p),
        reply=str(rng.choice(_REPLIES)).format(p=p),
    )


def private_corpus(
    seed: int,
    *,
    num_records: int = 1000,
    num_held_out: int = 200,
    canaries: tuple[tuple[str, int], ...] = (("id", 1), ("id", 4), ("id", 16), ("card", 16)),
    num_references: int = 4,
    id_digits: int = 5,
) -> PrivateCorpus:
    """Generates the private corpus, deterministically for ``seed``.

    Args:
      seed: chooses records and secrets (in ``[0, 2**32)``).
      num_records: the ordinary (non-canary) training records.
      num_held_out: held-out records (no canaries) for bits per byte.
      canaries: ``(kind, repeats)`` per canary, ``repeats >= 1``.
      num_references: never-inserted canaries per kind that occurs in ``canaries``.
      id_digits: digits of an ``"id"`` secret, in [1, 9].

    Returns:
      A ``PrivateCorpus``; ``train`` holds ``num_records + sum(repeats)`` records.
    """
    _validate.in_range("seed", _validate.non_negative_int("seed", seed), 0, 2**32 - 1)
    _validate.positive_int("num_records", num_records)
    _validate.positive_int("num_held_out", num_held_out)
    _validate.non_negative_int("num_references", num_references)
    _validate.in_range("id_digits", _validate.positive_int("id_digits", id_digits), 1, 9)
    if not isinstance(canaries, tuple | list) or not canaries:
        raise ValueError(f"canaries must be a non-empty tuple of (kind, repeats), got {canaries!r}")
    for kind, repeats in canaries:
        _validate.one_of("canary kind", kind, KINDS)
        _validate.positive_int("canary repeats", repeats)
    kinds = sorted({k for k, _ in canaries}, key=KINDS.index)
    n_names = len(canaries) + num_references * len(kinds)
    if n_names > len(_FIRST) * len(_LAST):
        raise ValueError(
            f"canaries and references must number at most {len(_FIRST) * len(_LAST)} "
            f"(distinct names), got {n_names}"
        )
    rng = np.random.default_rng(seed)
    # Distinct names: one canary's prefix never primes another's secret.
    pick = rng.choice(len(_FIRST) * len(_LAST), size=n_names, replace=False)
    names = [f"{_FIRST[i // len(_LAST)]} {_LAST[i % len(_LAST)]}" for i in pick]

    def secret(kind: str) -> str:
        n = id_digits if kind == "id" else CARD_DIGITS
        return "".join(str(d) for d in rng.integers(0, 10, size=n))

    planted = tuple(
        Canary(f"{names[i]}'s {_LABEL[k]} is ", secret(k), k, r)
        for i, (k, r) in enumerate(canaries)
    )
    refs = []
    for kind in kinds:
        for _ in range(num_references):
            refs.append(Canary(f"{names[len(planted) + len(refs)]}'s {_LABEL[kind]} is ",
                               secret(kind), kind, 0))  # fmt: skip
    records = [_record(rng) for _ in range(num_records)]
    held_out = tuple(_record(rng) for _ in range(num_held_out))
    records += [c.text for c in planted for _ in range(c.repeats)]
    order = rng.permutation(len(records))
    return PrivateCorpus(tuple(records[i] for i in order), held_out, planted, tuple(refs))
