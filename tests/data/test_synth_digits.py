"""``dpjax.data.synth_digits``: the public synthetic digits (shapes, range, balance, seeds)."""

import functools
import subprocess
import sys

import numpy as np
import pytest

from dpjax.data.synth_digits import (
    _STYLE,
    TEMPLATES,
    _eight,
    _pen_radius,
    _trajectories,
    make_synth_digits,
)


@pytest.mark.parametrize("num", [1, 7, 10, 253])
def test_shapes_dtypes_and_balanced_classes(num):
    x, y = make_synth_digits(num, seed=1)
    assert x.shape == (num, 8, 8) and x.dtype == np.int32
    assert y.shape == (num,) and y.dtype == np.int32
    counts = np.bincount(y, minlength=10)
    assert counts.sum() == num and counts.max() - counts.min() <= 1


def test_values_are_on_pixel_counts_of_4x4_blocks():
    x, y = make_synth_digits(500, seed=2)
    assert x.min() == 0 and x.max() == 16  # integers 0-16, both ends reached
    assert set(np.unique(y)) == set(range(10))
    assert (x.reshape(len(x), -1).sum(axis=1) > 0).all()  # every digit has ink
    # Not a blob: a fair part of each image is empty, as in handwriting.
    frac_empty = (x == 0).mean(axis=(1, 2))
    assert (frac_empty > 0.1).all() and (frac_empty < 0.9).all()


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = make_synth_digits(300, seed=5)
    b = make_synth_digits(300, seed=5)
    c = make_synth_digits(300, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_every_class_has_several_writing_styles():
    assert sorted(TEMPLATES) == list(range(10))
    assert all(len(styles) >= 2 for styles in TEMPLATES.values())


def test_classes_differ_on_average():
    """Each class's mean image is closer to its own class's fresh samples than to the others'."""
    x, y = make_synth_digits(2000, seed=3)
    xt, yt = make_synth_digits(1000, seed=4)
    means = np.stack([x[y == c].mean(axis=0).ravel() for c in range(10)])
    d = ((xt.reshape(len(xt), 1, -1) - means[None]) ** 2).sum(axis=-1)
    assert (d.argmin(axis=1) == yt).mean() > 0.5  # nearest class mean; chance is 0.1


def test_no_real_digits_enter_the_generator():
    """Generating imports neither scikit-learn (the real digits) nor the demo's data loader."""
    code = (
        "import sys; from dpjax.data.synth_digits import make_synth_digits; "
        "make_synth_digits(50, 0); "
        "bad = [m for m in sys.modules if m.startswith('sklearn') or m == 'dpjax.digits.data']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"num": 0}, ValueError, "num must be >= 1"),
        ({"num": -3}, ValueError, "num must be >= 1"),
        ({"num": 2.5}, TypeError, "num"),
        ({"num": 10, "seed": -1}, ValueError, r"seed must be in \[0"),
        ({"num": 10, "seed": 2**32}, ValueError, r"seed must be in \[0"),
        ({"num": 10, "seed": 1.5}, TypeError, "seed must be an int"),
        ({"num": 10, "seed": True}, TypeError, "seed must be an int"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        make_synth_digits(**kwargs)


def test_digits_fill_the_box_height_like_the_nist_normalisation():
    """Every digit's ink reaches the top and the bottom block rows; the width is capped."""
    x, _ = make_synth_digits(400, seed=7)
    assert (x[:, 0, :].sum(axis=1) > 0).all() and (x[:, 7, :].sum(axis=1) > 0).all()
    cap = int(np.ceil(_STYLE["max_width"] / 4 + 1))  # blocks a capped width can touch
    touched = (x.sum(axis=1) > 0).sum(axis=1)
    assert touched.max() <= cap


@functools.cache
def _sample():
    return make_synth_digits(600, seed=8)


@pytest.mark.parametrize("digit", range(10))
def test_stroke_width_normalises_the_ink_of_every_class(digit):
    """The ink of each class is near the target fraction of the box (not, e.g., 1s thin)."""
    x, y = _sample()
    ink = x[y == digit].sum(axis=(1, 2)).mean() / 1024
    assert abs(ink - _STYLE["ink"]) < 0.25 * _STYLE["ink"]


def test_the_one_stroke_eight_crosses_at_its_waist():
    pts = _eight(0.3, 0.45)
    assert pts[:, 1].min() == pytest.approx(0.0, abs=0.02)
    assert pts[:, 1].max() == pytest.approx(1.0, abs=0.02)
    # It passes the centre line at the waist (the crossing) and nowhere else in between.
    near = np.abs(pts[:, 0] - 0.5) < 0.05
    assert np.any(near & (np.abs(pts[:, 1] - 0.45) < 0.05))


def test_pen_radius_is_within_its_bounds():
    rng = np.random.default_rng(0)
    pts, pen_up = _trajectories(rng, TEMPLATES[1][0], 50)
    r = _pen_radius(pts, pen_up, rng)
    assert r.shape == (50,)
    assert (r >= _STYLE["r_min"]).all() and (r <= _STYLE["r_max"]).all()
    pts, pen_up = _trajectories(rng, TEMPLATES[8][0], 50)
    assert _pen_radius(pts, pen_up, rng).mean() < r.mean()  # a long 8 gets a finer pen than a 1
