"""The tabular task of ``dpjax federated --dataset census``: the synthetic census table,
one client per ZIP code.

The table is :func:`dpjax.data.census.census_table` drawn from a fixed public
seed (it holds no real person). Task: predict whether a person's income is
above 50,000 from their age, sex and region (a one-hot of the first ZIP
digit). A fixed public fraction of the people is held out as the test set;
the others are grouped by ZIP code into clients (a natural non-IID split with
very unequal sizes). A ZIP with more than ``max_examples`` people becomes
several clients of near-equal size, so every training row is in exactly one
client and no client is truncated.

Privacy:
  The features are scaled by public constants (never by statistics of the
  data), the label threshold and the ZIP-digit encoding are public, and the
  split is drawn from a fixed public seed: nothing about the people is fitted
  before the DP training. The number of clients and their padded size are
  shapes and therefore public, as for every simulated population. Each person
  is in exactly one client, so the user-level guarantee of the job (add or
  remove one client with all of its data) covers every person. The test set
  is not covered: the reported accuracy is evaluated on held-out people, as
  for the digits.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dpjax import _validate
from dpjax.federated.config import MAX_ROWS, MIN_ROWS

__all__ = [
    "CENSUS_SEED",
    "INCOME_THRESHOLD",
    "MAX_EXAMPLES",
    "MAX_ROWS",
    "MIN_ROWS",
    "CensusTask",
    "census_task",
    "features",
    "zip_clients",
]

CENSUS_SEED = 0  # the public seed of the synthetic table
SPLIT_SEED = 1  # the public seed of the train/test split
TEST_FRACTION = 0.2
INCOME_THRESHOLD = 50_000  # label: income above this (about the generator's median)
MAX_EXAMPLES = 256  # the most rows one client holds (a larger ZIP is several clients)
NUM_FEATURES = 12  # age, sex, 10 first-ZIP-digit indicators


class CensusTask(NamedTuple):
    """The census task's clients (index arrays into the training rows) and its test set."""

    x_train: np.ndarray  # f32[n_train, NUM_FEATURES]
    y_train: np.ndarray  # int32[n_train]: 1 if income > INCOME_THRESHOLD
    zip_train: np.ndarray  # str[n_train]: the ZIP code of each training row
    clients: list[np.ndarray]  # int64 index arrays into the training rows, one per client
    x_test: np.ndarray
    y_test: np.ndarray


def features(df) -> tuple[np.ndarray, np.ndarray]:
    """``(x f32[n, 12], y int32[n])`` of a census table (public scaling only).

    ``x``: ``(age - 40) / 25``, sex as +1 (F) / -1 (M), a one-hot of the first
    ZIP digit; ``y``: income above :data:`INCOME_THRESHOLD`.
    """
    age = (df["age"].to_numpy(np.float32) - 40.0) / 25.0
    sex = np.where(df["sex"].to_numpy(str) == "F", 1.0, -1.0).astype(np.float32)
    digit = np.asarray([int(z[0]) for z in df["zip"].to_numpy(str)], np.int64)
    onehot = np.eye(10, dtype=np.float32)[digit]
    x = np.concatenate([age[:, None], sex[:, None], onehot], axis=1)
    y = (df["income"].to_numpy(np.int64) > INCOME_THRESHOLD).astype(np.int32)
    return x, y


def zip_clients(zips, max_examples: int = MAX_EXAMPLES) -> list[np.ndarray]:
    """Groups rows by ZIP code: one client per ZIP, split into near-equal parts above
    ``max_examples`` rows.

    Args:
      zips: the ZIP code of every row (strings).
      max_examples: the most rows of one client, >= 1.

    Returns:
      Sorted int64 index arrays, one per client, in ZIP order; every row is in
      exactly one of them and none is empty.

    Example:
      >>> [c.tolist() for c in zip_clients(["02134", "10001", "02134", "02134"], 2)]
      [[0, 2], [3], [1]]
    """
    m = _validate.positive_int("max_examples", max_examples)
    zips = np.asarray(zips, dtype=str)
    if zips.ndim != 1 or zips.size == 0:
        raise ValueError(f"zips must be a non-empty 1-D array, got shape {zips.shape}")
    order = np.argsort(zips, kind="stable")
    _, starts = np.unique(zips[order], return_index=True)
    out = []
    for group in np.split(order, starts[1:]):
        parts = -(-len(group) // m)  # ceil
        out += [np.sort(p).astype(np.int64) for p in np.array_split(group, parts)]
    return out


def census_task(rows: int, max_examples: int = MAX_EXAMPLES) -> CensusTask:
    """The census table of ``rows`` people, split into test people and ZIP clients.

    Args:
      rows: people in the table, in [MIN_ROWS, MAX_ROWS].
      max_examples: the most rows of one client.

    Returns:
      A :class:`CensusTask` (the same for the same arguments).
    """
    from dpjax.data.census import census_table

    rows = _validate.positive_int("rows", rows)
    _validate.in_range("rows", rows, MIN_ROWS, MAX_ROWS)
    df = census_table(rows, np.random.default_rng(CENSUS_SEED))
    x, y = features(df)
    test = np.random.default_rng(SPLIT_SEED).random(rows) < TEST_FRACTION
    train = np.flatnonzero(~test)
    zips = df["zip"].to_numpy(str)[train]
    return CensusTask(x[train], y[train], zips, zip_clients(zips, max_examples), x[test], y[test])
