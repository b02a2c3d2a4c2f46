"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "hold_out", "load_digits"]


class Split(NamedTuple):
    x_train: np.ndarray  # f32[n_train, 8, 8, 1] in [0, 1]
    y_train: np.ndarray  # int32[n_train]
    x_test: np.ndarray  # f32[n_test, 8, 8, 1]
    y_test: np.ndarray  # int32[n_test]


def load_digits(test_fraction: float = 0.2) -> Split:
    """The digits data with a fixed stratified split (same for every seed).

    Loaded from the copy that ships inside scikit-learn; nothing is downloaded.
    """
    from sklearn import datasets, model_selection  # scikit-learn: only to load the digits

    d = datasets.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    xtr, xte, ytr, yte = model_selection.train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=0
    )
    return Split(xtr, ytr, xte, yte)


def hold_out(x: np.ndarray, y: np.ndarray, fraction: float):
    """A fixed stratified ``(x_fit, y_fit, x_val, y_val)`` split of a training split."""
    from sklearn import model_selection

    x_fit, x_val, y_fit, y_val = model_selection.train_test_split(
        x, y, test_size=fraction, stratify=y, random_state=1
    )
    return x_fit, y_fit, x_val, y_val
