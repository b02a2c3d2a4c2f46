"""Padded client data and the Dirichlet (non-IID) partitioner."""

import jax
import numpy as np
import pytest

from dpjax import federated as F


def test_federated_data_pads_and_masks():
    xs = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((1, 2), np.float32)]
    ys = [np.array([0, 1, 2]), np.array([5])]
    d = F.federated_data(xs, ys, max_examples=4)
    assert d.x.shape == (2, 4, 2) and d.y.shape == (2, 4) and d.mask.dtype == bool
    assert d.mask.sum(axis=1).tolist() == [3, 1]
    np.testing.assert_array_equal(np.asarray(d.x[0, :3]), xs[0])
    assert float(np.abs(np.asarray(d.x[1, 1:])).sum()) == 0.0
    assert d.num_clients == 2 and d.max_examples == 4
    c = d.client(1)
    assert c.x.shape == (4, 2) and int(c.y[0]) == 5


@pytest.mark.parametrize(
    "xs, ys, kw, match",
    [
        ([np.ones((2, 1)), np.ones((0, 1))], [np.ones(2), np.ones(0)], {}, "client 1 has no data"),
        ([], [], {}, "at least one client"),
        (
            [np.ones((2, 1))],
            [np.ones(3)],
            {},
            "client 0: xs and ys hold different numbers of examples",
        ),
        ([np.ones((2, 1)), np.ones((2, 2))], [np.ones(2)] * 2, {}, "example shapes"),
        (
            [np.ones((3, 1))],
            [np.ones(3)],
            {"max_examples": 2},
            "max_examples must be >= every client's number of examples, got 2",
        ),
        ([np.ones((3, 1))], [np.ones(3), np.ones(1)], {}, "one array per client"),
    ],
)
def test_bad_client_data_is_refused(xs, ys, kw, match):
    with pytest.raises(ValueError, match=match):
        F.federated_data(xs, ys, **kw)


def _label_entropy(labels, parts):
    h = []
    for p in parts:
        c = np.bincount(labels[p], minlength=10) / len(p)
        c = c[c > 0]
        h.append(-(c * np.log(c)).sum())
    return float(np.mean(h))


@pytest.mark.parametrize("clients", [1, 7, 200])
def test_dirichlet_split_is_a_partition_with_no_empty_client(clients):
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    parts = F.dirichlet_split(labels, clients, 0.3, jax.random.key(0))
    assert len(parts) == clients and min(len(p) for p in parts) >= 1
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(1000))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    labels = np.repeat(np.arange(10), 100)
    skewed = F.dirichlet_split(labels, 20, 0.1, jax.random.key(1))
    iid = F.dirichlet_split(labels, 20, 1000.0, jax.random.key(1))
    assert _label_entropy(labels, skewed) < 0.6 * _label_entropy(labels, iid)
    assert _label_entropy(labels, iid) > 0.9 * np.log(10)


def test_dirichlet_split_is_a_function_of_the_key():
    labels = np.arange(300) % 10
    a = F.dirichlet_split(labels, 30, 0.5, jax.random.key(2))
    b = F.dirichlet_split(labels, 30, 0.5, jax.random.key(2))
    c = F.dirichlet_split(labels, 30, 0.5, jax.random.key(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((np.arange(5), 6, 0.5), ValueError, r"clients must be in \[1, 5\]"),
        ((np.arange(5), 0, 0.5), ValueError, "clients must be >= 1"),
        ((np.arange(5), 2, 0.0), ValueError, "alpha must be > 0"),
        ((np.ones(5), 2, 0.5), TypeError, "labels must be integers"),
        ((np.zeros((2, 2), int), 2, 0.5), ValueError, "labels must be a non-empty 1-D"),
    ],
)
def test_dirichlet_split_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        F.dirichlet_split(*args, jax.random.key(0))
