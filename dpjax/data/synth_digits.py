"""Synthetic handwritten digits in the format of scikit-learn's 8x8 digits (public data).

Each digit is drawn as pen strokes through a skeleton template (several
writing styles per class: a 7 with or without a bar, an open or closed 4, a 1
with or without a flag and a foot, a one-stroke 8 crossing at its waist, a 9
whose stem bends into a tail, ...), then distorted the way handwriting
varies: jitter of the control points, a smooth random (elastic) displacement
field, shear, rotation and aspect. It is then normalised the way the NIST
preprocessing of the real data normalised characters (Garris et al., NISTIR
5469, 1994; the data set's description): the ink spans the 32x32 box's full
height, the width keeps the aspect up to a cap (wider digits are squeezed),
the digit is centred, and the pen width is normalised so that about the same
fraction of the box is ink whatever the digit (a 1 gets a broad pen, an 8 a
fine one). The pen is rendered as a binary 32x32 bitmap (pixels whose centre
lies within the pen's radius of the trajectory are "on") and the on-pixels
are counted in non-overlapping 4x4 blocks: integer intensities 0-16 on an 8x8
grid, the process that made the real data set (UCI "optdigits", the
1,797-image test part that scikit-learn bundles).

The generator was designed from that public description of how the data were
made; no real digit enters it. Its few settings (:data:`_STYLE`, the
templates) were chosen by the zero-shot accuracy of a model pretrained on it
and by aggregate figures of the real digits' validation split (see
docs/pretraining.md for what that means for private data). It is pure numpy,
deterministic for a seed and fast (10,000 digits in 10-13 s on a loaded
2-core machine).

Privacy:
  The generated set contains no record of any private data set and depends on
  nothing but :data:`VERSION` and the seed, so a model trained on it is
  public: using it to initialise a private training run costs no privacy.
"""

from __future__ import annotations

import numpy as np

from dpjax import _validate

__all__ = ["VERSION", "TEMPLATES", "make_synth_digits", "render"]

VERSION = 2  # bump whenever the generator's output for a seed changes (keys caches)

_POINTS = 160  # points per digit trajectory (pen-down samples)
_SIZE = 32  # bitmap side; 4x4 blocks give the 8x8 image

# Distortion and normalisation settings (part of VERSION).
_STYLE = {
    "jitter": 0.035,  # control-point jitter (unit box)
    "elastic": 0.06,  # amplitude of the smooth displacement field
    "aspect": -0.2,  # mean log width/height before normalisation
    "shear": 0.2,  # sd of the slant
    "max_width": 24.0,  # pixels: wider digits are squeezed to it
    "x_jitter": 0.7,  # sd of the horizontal offset (pixels)
    "ink": 0.30,  # mean fraction of the box that is ink (stroke-width normalisation)
    "ink_sd": 0.15,  # its log-normal spread
    "r_min": 1.0,  # pen radius bounds (pixels)
    "r_max": 5.5,
}


def _arc(cx, cy, rx, ry, t0, t1, n=14):
    """Points of an elliptic arc, angles in degrees (0 = right, 90 = up; y grows down)."""
    t = np.radians(np.linspace(t0, t1, n))
    return np.stack([cx + rx * np.cos(t), cy - ry * np.sin(t)], axis=1)


def _line(*pts):
    return np.asarray(pts, dtype=np.float64)


def _cat(*parts):
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=0)


def _eight(half_width, waist, n=32):
    """A one-stroke 8 (a lemniscate of Gerono): loops above and below the crossing at
    height ``waist``, each ``half_width`` wide, starting and ending at the top right."""
    t = np.linspace(0.25 * np.pi, 2.25 * np.pi, n)
    x = 0.5 + half_width * np.sin(2 * t) * np.where(np.cos(t) >= 0, 1.0, 1.2)
    v = -np.cos(t)  # -1 at the top, +1 at the bottom
    y = np.where(v < 0, waist * (1 + v), waist + (1 - waist) * v)
    return np.stack([x, y], axis=1)


# Skeletons in a unit box: x right, y down. Each template is a list of strokes
# (pen-down polylines); several templates (writing styles) per class.
TEMPLATES: dict[int, list[list[np.ndarray]]] = {
    0: [
        [_arc(0.5, 0.5, 0.32, 0.48, 90, 450, 28)],
        [_arc(0.5, 0.5, 0.25, 0.48, 100, 470, 28)],  # narrow, start overlaps
        [_arc(0.5, 0.52, 0.38, 0.46, 80, 430, 28)],  # round
    ],
    1: [
        [_line((0.5, 0.0), (0.5, 1.0))],
        [_line((0.25, 0.25), (0.55, 0.0), (0.55, 1.0))],  # flag
        [_line((0.25, 0.25), (0.55, 0.0), (0.55, 1.0)), _line((0.25, 1.0), (0.85, 1.0))],
        [_line((0.62, 0.0), (0.40, 1.0))],  # slanted
        [_line((0.1, 0.3), (0.6, 0.0), (0.6, 1.0)), _line((0.15, 1.0), (0.95, 1.0))],  # big flag
    ],
    2: [
        [_cat(_arc(0.5, 0.3, 0.35, 0.3, 160, -30, 14), _line((0.05, 1.0), (0.95, 1.0)))],
        [
            _cat(
                _arc(0.5, 0.28, 0.33, 0.28, 170, -20, 12),
                _line((0.18, 0.85)),
                _arc(0.22, 0.9, 0.1, 0.1, 60, 300, 8),
                _line((0.6, 0.95), (0.95, 0.9)),
            )
        ],  # loop at the base
        [_cat(_arc(0.5, 0.3, 0.3, 0.3, 150, 0, 10), _line((0.1, 1.0), (0.9, 1.0)))],
    ],
    3: [
        [
            _cat(
                _arc(0.5, 0.26, 0.32, 0.26, 150, -90, 16), _arc(0.5, 0.74, 0.38, 0.26, 90, -150, 16)
            )
        ],
        [
            _cat(
                _line((0.1, 0.0), (0.85, 0.0), (0.4, 0.4)),
                _arc(0.5, 0.7, 0.38, 0.3, 90, -150, 16),
            )
        ],  # flat top
        [
            _cat(
                _arc(0.45, 0.25, 0.35, 0.25, 160, -80, 14),
                _arc(0.45, 0.73, 0.42, 0.27, 80, -160, 16),
            )
        ],
    ],
    4: [
        [_line((0.55, 0.0), (0.05, 0.65), (0.95, 0.65)), _line((0.7, 0.3), (0.7, 1.0))],  # closed
        [_line((0.15, 0.0), (0.1, 0.6), (0.95, 0.6)), _line((0.7, 0.0), (0.7, 1.0))],  # open
        [_line((0.7, 0.0), (0.05, 0.7), (0.95, 0.7)), _line((0.7, 0.0), (0.7, 1.0))],  # triangle
    ],
    5: [
        [
            _line((0.85, 0.0), (0.2, 0.0)),
            _cat(_line((0.2, 0.0), (0.15, 0.45)), _arc(0.45, 0.7, 0.37, 0.3, 140, -140, 16)),
        ],
        [
            _cat(_line((0.2, 0.0), (0.15, 0.45)), _arc(0.45, 0.7, 0.37, 0.3, 140, -140, 16)),
            _line((0.2, 0.02), (0.9, 0.0)),
        ],
    ],
    6: [
        [_cat(_arc(0.9, 0.55, 0.6, 0.55, 100, 180, 10), _arc(0.5, 0.72, 0.3, 0.28, 180, 540, 20))],
        [_cat(_line((0.7, 0.0), (0.2, 0.6)), _arc(0.5, 0.72, 0.32, 0.28, 190, 540, 20))],
    ],
    7: [
        [_line((0.05, 0.0), (0.95, 0.0), (0.45, 1.0))],
        [_line((0.05, 0.0), (0.95, 0.0), (0.5, 1.0)), _line((0.45, 0.5), (0.95, 0.5))],  # bar
        [_line((0.1, 0.0), (0.9, 0.0), (0.6, 1.0)), _line((0.4, 0.45), (0.95, 0.45))],
        [_cat(_line((0.05, 0.05), (0.95, 0.0)), _arc(-0.1, 0.0, 1.05, 1.0, 0, -60, 8))],
    ],
    8: [
        [_arc(0.5, 0.25, 0.28, 0.25, -90, 270, 18), _arc(0.5, 0.73, 0.35, 0.27, 90, 450, 20)],
        [
            _cat(
                _arc(0.5, 0.25, 0.3, 0.25, 20, 270, 14),
                _arc(0.5, 0.73, 0.33, 0.27, 90, -270, 18),
                _line((0.8, 0.1)),
            )
        ],  # one stroke, S and back
        [_eight(0.22, 0.45)],  # narrow, one stroke crossing at the waist
        [_eight(0.3, 0.5)],
    ],
    9: [
        [_arc(0.5, 0.3, 0.33, 0.3, 0, 360, 20), _line((0.83, 0.3), (0.8, 1.0))],
        [_cat(_arc(0.5, 0.3, 0.33, 0.3, -10, 360, 20), _line((0.8, 0.6), (0.45, 1.0)))],
        [
            _arc(0.5, 0.28, 0.35, 0.28, 0, 360, 20),
            _cat(_line((0.85, 0.28), (0.85, 0.7)), _arc(0.5, 0.7, 0.35, 0.3, 0, -150, 10)),
        ],  # hooked stem
        [
            _arc(0.45, 0.3, 0.35, 0.3, 0, 360, 20),
            _cat(_line((0.8, 0.3)), _arc(0.3, 0.35, 0.5, 0.65, 0, -70, 8)),
        ],
        [  # small loop on top, the stem bends left into a tail at the base
            _cat(
                _arc(0.5, 0.22, 0.3, 0.22, 10, 370, 18),
                _line((0.8, 0.65)),
                _arc(0.45, 0.65, 0.35, 0.35, 0, -120, 10),
            )
        ],
        [
            _arc(0.45, 0.25, 0.32, 0.25, 0, 360, 18),
            _cat(_line((0.77, 0.25), (0.72, 0.75)), _arc(0.42, 0.75, 0.3, 0.25, 0, -170, 10)),
        ],
    ],
}


def _resample(
    strokes: list[np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` parameter positions along the strokes, by arc length.

    Returns ``(idx0, idx1, w, pen_up)``: each sample lies at ``(1-w) * P[idx0] + w * P[idx1]``
    of the concatenated control points ``P`` (so jittered control points move it);
    ``pen_up[i]`` is true where sample ``i`` starts a new stroke (no ink from ``i-1``).
    """
    lens = [np.sum(np.linalg.norm(np.diff(s, axis=0), axis=1)) for s in strokes]
    counts = np.maximum(2, np.round(n * np.asarray(lens) / sum(lens)).astype(int))
    counts[-1] += n - counts.sum()
    i0, i1, ws, ups, offset = [], [], [], [], 0
    for s, c in zip(strokes, counts, strict=True):
        seg = np.linalg.norm(np.diff(s, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        u = np.linspace(0.0, cum[-1], c)
        k = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(s) - 2)
        w = (u - cum[k]) / np.maximum(seg[k], 1e-12)
        i0.append(offset + k)
        i1.append(offset + k + 1)
        ws.append(np.clip(w, 0.0, 1.0))
        ups.append(np.arange(c) == 0)
        offset += len(s)
    return np.concatenate(i0), np.concatenate(i1), np.concatenate(ws), np.concatenate(ups)


def _smooth_field(rng, n, pts, amp, freq):
    """A random smooth displacement at ``pts`` (n, m, 2): a few low-frequency waves."""
    out = np.zeros_like(pts)
    for _ in range(3):
        k = rng.normal(0.0, freq, size=(n, 2, 2))  # k[:, :, e]: wave vector of axis e
        ph = rng.uniform(0, 2 * np.pi, size=(n, 1, 2))
        a = rng.normal(0.0, amp, size=(n, 1, 2)) / np.sqrt(3.0)
        arg = np.einsum("nmd,nde->nme", pts, k) + ph
        out += a * np.sin(arg)
    return out


def _trajectories(
    rng: np.random.Generator, template: list[np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distorted pen trajectories of one template: ``(f[n, _POINTS, 2], pen_up)``."""
    ctrl = np.concatenate(template, axis=0)  # (c, 2)
    i0, i1, w, pen_up = _resample(template, _POINTS)
    # Control-point jitter: independent per control point, small.
    c = ctrl[None] + rng.normal(0.0, _STYLE["jitter"], size=(n, *ctrl.shape))
    # Stroke-level offsets: strokes of one digit never line up exactly.
    sizes = [len(s) for s in template]
    shift = rng.normal(0.0, 0.04, size=(n, len(template), 2))
    c = c + np.repeat(shift, sizes, axis=1)
    p = (1.0 - w)[None, :, None] * c[:, i0] + w[None, :, None] * c[:, i1]
    # Elastic distortion: a smooth random displacement field.
    p = p + _smooth_field(rng, n, p, amp=_STYLE["elastic"], freq=3.0)
    # Affine: aspect, shear, rotation (about the centre).
    p = p - 0.5
    aspect = np.exp(rng.normal(_STYLE["aspect"], 0.15, size=(n, 1)))
    shear = rng.normal(0.0, _STYLE["shear"], size=(n, 1))
    rot = np.radians(rng.normal(0.0, 8.0, size=(n, 1)))
    x, y = p[..., 0] * aspect, p[..., 1]
    x = x - shear * y  # slant: the top leans right for positive shear
    cr, sr = np.cos(rot), np.sin(rot)
    return np.stack([cr * x - sr * y, sr * x + cr * y], axis=-1), pen_up


def _fit(points: np.ndarray, radius: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel coordinates of trajectories normalised into the 32x32 box.

    Like the NIST normalisation of the real data: the ink (trajectory plus pen)
    spans the box's full height; the width keeps the aspect up to
    ``_STYLE["max_width"]`` pixels and is squeezed to it beyond; centred
    horizontally with a small random offset.
    """
    n = points.shape[0]
    lo, hi = points.min(axis=1), points.max(axis=1)  # (n, 2)
    extent = np.maximum(hi - lo, 1e-6)
    r = radius[:, None]
    sy = (_SIZE - 2.0 * r[:, 0]) / extent[:, 1]
    max_w = _STYLE["max_width"] - 2.0 * r[:, 0]
    sx = np.minimum(sy, np.maximum(max_w, 1.0) / extent[:, 0])
    width = extent[:, 0] * sx
    x0 = (_SIZE - width) / 2.0 + rng.normal(0.0, _STYLE["x_jitter"], size=n)
    x = (points[..., 0] - lo[:, 0:1]) * sx[:, None] + x0[:, None]
    y = (points[..., 1] - lo[:, 1:2]) * sy[:, None] + r
    return np.stack([x, y], axis=-1)


def _pen_radius(points: np.ndarray, pen_up: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pen radii (pixels) normalising the amount of ink, like stroke-width normalisation.

    The ink of a stroke of length ``L`` drawn with radius ``r`` is about ``2 r L``;
    ``r`` is chosen so that it is a random fraction (around ``_STYLE["ink"]``) of the
    box, within ``[_STYLE["r_min"], _STYLE["r_max"]]``. Two fixed-point rounds: the
    fit into the box depends on ``r``.
    """
    n = points.shape[0]
    target = _STYLE["ink"] * _SIZE * _SIZE * np.exp(rng.normal(0.0, _STYLE["ink_sd"], size=n))
    r = np.full(n, 2.5)
    noise = np.random.default_rng(0)  # _fit's offsets do not change lengths
    for _ in range(2):
        pix = _fit(points, r, noise)
        seg = np.linalg.norm(np.diff(pix, axis=1), axis=-1)  # (n, m-1)
        length = np.sum(np.where(pen_up[None, 1:], 0.0, seg), axis=1)
        r = np.clip(target / (2.0 * np.maximum(length, 1.0)), _STYLE["r_min"], _STYLE["r_max"])
    return r


def render(points: np.ndarray, radius: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Binary 32x32 bitmaps of pen trajectories, normalised into the box (:func:`_fit`).

    Args:
      points: f[n, m, 2] pen positions (any units; x right, y down).
      radius: f[n] pen radius in pixels.
      rng: for the random horizontal offset within the box.

    Returns:
      bool[n, 32, 32].
    """
    n = points.shape[0]
    pix = _fit(points, radius, rng).astype(np.float32)
    r = int(np.ceil(radius.max()))
    off = np.arange(-r - 1, r + 1, dtype=np.int32)  # pixels whose centre can be within r
    ox, oy = np.meshgrid(off, off, indexing="xy")
    ox, oy = ox.ravel(), oy.ravel()  # (k,)
    base = np.floor(pix).astype(np.int32)  # (n, m, 2)
    px = base[..., 0:1] + ox  # (n, m, k)
    py = base[..., 1:2] + oy
    d2 = (px + 0.5 - pix[..., 0:1]) ** 2 + (py + 0.5 - pix[..., 1:2]) ** 2
    on = (
        (d2 <= (radius[:, None, None].astype(np.float32)) ** 2)
        & (px >= 0)
        & (px < _SIZE)
        & (py >= 0)
    )
    on &= py < _SIZE
    img = np.zeros((n, _SIZE * _SIZE), dtype=bool)
    rows = np.broadcast_to(np.arange(n)[:, None, None], on.shape)
    img[rows[on], (py * _SIZE + px)[on]] = True
    return img.reshape(n, _SIZE, _SIZE)


def make_synth_digits(num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``num`` synthetic digits, balanced over the 10 classes, shuffled.

    Args:
      num: how many digits; a positive int (classes differ in size by at most one).
      seed: the generator's seed, an int in [0, 2**32); the output is a
        deterministic function of ``(VERSION, num, seed)``.

    Returns:
      ``(images, labels)``: ``images`` int32[num, 8, 8] with values 0-16 (the
      number of on-pixels in each 4x4 block of the 32x32 bitmap, as in the real
      data), ``labels`` int32[num] in 0-9.

    Privacy:
      Public data: a function of the seed only; see the module docstring.
    """
    _validate.positive_int("num", num)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int in [0, 2**32), got {seed!r}")
    _validate.in_range("seed", seed, 0, 2**32, hi_closed=False)
    rng = np.random.default_rng([VERSION, int(seed)])
    labels = np.arange(num, dtype=np.int32) % 10
    rng.shuffle(labels)
    images = np.zeros((num, 8, 8), dtype=np.int32)
    for digit in range(10):
        where = np.flatnonzero(labels == digit)
        styles = TEMPLATES[digit]
        choice = rng.integers(0, len(styles), size=len(where))
        for s, template in enumerate(styles):
            idx = where[choice == s]
            for chunk in np.array_split(idx, max(1, len(idx) // 512)):
                if len(chunk) == 0:
                    continue
                pts, pen_up = _trajectories(rng, template, len(chunk))
                radius = _pen_radius(pts, pen_up, rng)
                bits = render(pts, radius, rng)
                blocks = bits.reshape(len(chunk), 8, 4, 8, 4).sum(axis=(2, 4))
                images[chunk] = blocks
    return images, labels
