"""A synthetic census-style table for tests, docs and notebooks; nothing is downloaded.

Every value is drawn from small built-in lists and parametric distributions with a
caller-supplied :class:`numpy.random.Generator`, so a table is reproducible from its
seed and holds no real person. The correlations are the ones anonymization has to
cope with: ZIP codes cluster by region with very unequal populations, income depends
on age and region, and the diagnosis depends on age and sex (some diagnoses occur
for one sex only, some mostly in old age), so a naive grouping leaks it.

Example:
    >>> import numpy as np
    >>> from dpjax.data.census import census_table
    >>> df = census_table(1000, np.random.default_rng(0))
    >>> list(df.columns)
    ['name', 'email', 'phone', 'card', 'age', 'sex', 'zip', 'birth_date', 'income', 'diagnosis']
    >>> len(df)
    1000
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpjax import _validate

__all__ = ["census_table", "DIAGNOSES", "FIRST_NAMES_F", "FIRST_NAMES_M", "LAST_NAMES"]

# fmt: off
FIRST_NAMES_F = (
    "Mary", "Anna", "Emma", "Olivia", "Sophia", "Zoë", "Chloé", "Maria", "Léa", "Hannah",
    "Aisha", "Fatima", "Mei", "Yuki", "Priya", "Ingrid", "Sara", "Elena", "Lucía", "Grace",
    "Nora", "Amélie", "Julia", "Laura", "Ava", "Mia", "Isabella", "Charlotte", "Ana", "Björk",
)
FIRST_NAMES_M = (
    "James", "John", "Robert", "Michael", "David", "José", "Luis", "Mohammed", "Ali", "Wei",
    "Hiroshi", "Raj", "Lars", "Søren", "Jürgen", "François", "Pierre", "Liam", "Noah", "Oliver",
    "Lucas", "Mateo", "Ethan", "Daniel", "Samuel", "Ömer", "Ivan", "Dmitri", "Kwame", "Arjun",
)
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "García", "Miller", "Davis", "Rodríguez",
    "Martínez", "Müller", "Schmidt", "Schneider", "Dubois", "Lefèvre", "Rossi", "Russo", "Nowak",
    "Kowalski", "Novák", "Ivanov", "Petrov", "Kim", "Lee", "Park", "Wang", "Li", "Zhang", "Chen",
    "Tanaka", "Suzuki", "Sato", "Patel", "Singh", "Kumar", "O'Brien", "Murphy", "Kelly", "Nguyen",
    "Tran", "Silva", "Santos", "Pereira", "Andersson", "Johansson", "Hansen", "Jensen", "Öztürk",
    "Yılmaz", "Mensah",
)
# fmt: on
_DOMAINS = ("example.com", "mail.example.org", "inbox.example.net", "post.example.de")

# (name, base weight, sex restriction, preferred age centre, age spread)
_DIAG_SPEC = (
    ("none", 30.0, None, 40.0, 60.0),
    ("influenza", 6.0, None, 35.0, 40.0),
    ("asthma", 4.0, None, 20.0, 20.0),
    ("diabetes", 5.0, None, 62.0, 15.0),
    ("hypertension", 8.0, None, 65.0, 15.0),
    ("heart disease", 4.0, None, 72.0, 12.0),
    ("depression", 4.0, None, 35.0, 20.0),
    ("back pain", 5.0, None, 45.0, 18.0),
    ("migraine", 3.0, "F", 35.0, 15.0),
    ("pregnancy", 3.0, "F", 30.0, 6.0),
    ("breast cancer", 1.5, "F", 60.0, 12.0),
    ("prostate cancer", 1.5, "M", 70.0, 10.0),
    ("dementia", 2.0, None, 82.0, 8.0),
    ("fracture", 3.0, None, 25.0, 30.0),
)
DIAGNOSES = tuple(d[0] for d in _DIAG_SPEC)


def _zip_codes(rng: np.random.Generator, n_regions: int = 40, per_region: int = 12):
    """Synthetic 5-digit ZIPs: regions share a 3-digit prefix; some start with 0."""
    prefixes = rng.choice(1000, size=n_regions, replace=False)
    zips, region = [], []
    for r, p in enumerate(prefixes):
        tails = rng.choice(100, size=per_region, replace=False)
        zips += [f"{p:03d}{t:02d}" for t in tails]
        region += [r] * per_region
    # Zipf-like region sizes, and uneven ZIP sizes inside a region.
    region_w = 1.0 / np.arange(1, n_regions + 1) ** 1.1
    zip_w = region_w[np.array(region)] * rng.gamma(2.0, 1.0, size=len(zips))
    return np.array(zips), np.array(region), zip_w / zip_w.sum()


def census_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draws ``n`` synthetic people.

    Columns: ``name``, ``email``, ``phone``, ``card`` (direct identifiers);
    ``age``, ``sex``, ``zip``, ``birth_date`` (quasi-identifiers); ``income`` and
    ``diagnosis`` (sensitive). ZIPs are 5-character strings (leading zeros kept).

    Args:
      n: number of rows, >= 1.
      rng: a seeded ``numpy.random.Generator`` (no default: pass
        ``np.random.default_rng(seed)``).

    Returns:
      A DataFrame with ``n`` rows and a RangeIndex.

    Raises:
      TypeError: if ``rng`` is not a ``numpy.random.Generator``.
      ValueError: if ``n < 1``.
    """
    n = _validate.positive_int("n", n)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, e.g. np.random.default_rng(0); got {rng!r}"
        )
    # Age: a population pyramid (adults heavier, a thinning old tail), 0..99.
    age = np.clip(
        np.where(rng.random(n) < 0.2, rng.uniform(0, 18, n), rng.gamma(6.0, 7.5, n) + 5), 0, 99
    ).astype(np.int64)
    sex = np.where(rng.random(n) < 0.505, "F", "M")
    zips, region, zip_p = _zip_codes(rng)
    zi = rng.choice(len(zips), size=n, p=zip_p)
    zip_code = zips[zi]

    first = np.where(
        sex == "F",
        np.array(FIRST_NAMES_F)[rng.integers(len(FIRST_NAMES_F), size=n)],
        np.array(FIRST_NAMES_M)[rng.integers(len(FIRST_NAMES_M), size=n)],
    )
    last = np.array(LAST_NAMES)[rng.integers(len(LAST_NAMES), size=n)]
    name = np.char.add(np.char.add(first, " "), last)
    num = rng.integers(1, 1000, size=n)
    dom = np.array(_DOMAINS)[rng.integers(len(_DOMAINS), size=n)]
    local = [
        f"{f.lower()}.{s.lower().replace(chr(39), '')}{m}"
        for f, s, m in zip(first, last, num, strict=True)
    ]
    email = [f"{lc}@{d}" for lc, d in zip(local, dom, strict=True)]
    area = rng.integers(200, 1000, size=n)
    mid = rng.integers(200, 1000, size=n)
    end = rng.integers(0, 10000, size=n)
    phone = [f"+1 ({a}) {b}-{c:04d}" for a, b, c in zip(area, mid, end, strict=True)]
    card = _luhn_cards(rng, n)

    year = 2024 - age
    day_of_year = rng.integers(0, 365, size=n)
    birth = pd.to_datetime(year.astype(str), format="%Y") + pd.to_timedelta(day_of_year, "D")

    # Income: log-normal, rising to a plateau in middle age, scaled by region.
    region_scale = np.exp(rng.normal(0.0, 0.25, size=region.max() + 1))[region[zi]]
    age_curve = np.clip((age - 16) / 30.0, 0.0, 1.0) * np.where(age > 67, 0.6, 1.0)
    income = np.where(
        age < 16, 0.0, 52000 * region_scale * (0.3 + age_curve) * rng.lognormal(0, 0.5, n)
    )
    income = np.round(income, -2).astype(np.int64)

    # Diagnosis: weights depend on age (Gaussian bump) and sex restrictions.
    w = np.empty((n, len(_DIAG_SPEC)))
    for j, (_, base, only, centre, spread) in enumerate(_DIAG_SPEC):
        w[:, j] = base * np.exp(-0.5 * ((age - centre) / spread) ** 2)
        if only is not None:
            w[:, j] *= sex == only
        if _DIAG_SPEC[j][0] == "pregnancy":
            w[:, j] *= (age >= 16) & (age <= 46)
    w /= w.sum(axis=1, keepdims=True)
    u = rng.random(n)[:, None]
    diag_idx = (w.cumsum(axis=1) < u).sum(axis=1).clip(max=len(_DIAG_SPEC) - 1)
    diagnosis = np.array(DIAGNOSES)[diag_idx]

    return pd.DataFrame(
        {
            "name": name.astype(object),
            "email": email,
            "phone": phone,
            "card": card,
            "age": age,
            "sex": sex.astype(object),
            "zip": zip_code.astype(object),
            "birth_date": birth,
            "income": income,
            "diagnosis": diagnosis.astype(object),
        }
    )


def _luhn_cards(rng: np.random.Generator, n: int) -> list[str]:
    """16-digit test card numbers starting 4000 with valid Luhn check digits."""
    d = np.concatenate([np.tile([4, 0, 0, 0], (n, 1)), rng.integers(0, 10, size=(n, 11))], axis=1)
    # Luhn: double every second digit from the right of the final 16-digit number,
    # i.e. positions 0, 2, ..., 14 of the 15 payload digits.
    dbl = d.copy()
    dbl[:, 0::2] *= 2
    dbl = np.where(dbl > 9, dbl - 9, dbl)
    check = (10 - dbl.sum(axis=1) % 10) % 10
    full = np.concatenate([d, check[:, None]], axis=1).astype(np.uint8) + ord("0")
    s = full.view("S16").ravel().astype(str)
    return [f"{x[:4]} {x[4:8]} {x[8:12]} {x[12:]}" for x in s]
