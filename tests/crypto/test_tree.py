"""encrypt_tree / decrypt_tree: structure, shapes and dtypes restored exactly; tampering refused."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax.crypto import DecryptionError, read_header
from dpjax.crypto.sign import verify_file
from dpjax.crypto.tree import decrypt_tree, encrypt_tree

DTYPES = [
    np.float32,
    np.float64,
    np.float16,
    jnp.bfloat16,
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.uint32,
    np.bool_,
    np.complex64,
]
SHAPES = [(), (0,), (3,), (2, 0, 4), (5, 7)]


class Pair(NamedTuple):
    a: jax.Array
    b: np.ndarray


def _same(x, y):
    assert type(x) is type(y), (type(x), type(y))
    if isinstance(x, np.ndarray | np.generic | jax.Array):
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
        assert x == y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_array_round_trip_exact(tmp_path, x25519_key, dtype, shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 100).astype(dtype)
    tree = {"x": x}
    encrypt_tree(tree, tmp_path / "t", [x25519_key.public_key()])
    out = decrypt_tree(tmp_path / "t", [x25519_key])
    _same(out["x"], x)


def test_nested_structure_round_trip_without_template(tmp_path, pair):
    recipient, identity = pair
    tree = {
        "params": {"w": jnp.ones((2, 3), jnp.bfloat16), "b": np.arange(3.0)},
        "list": [np.int8(3), (None, 2.5), True, 7],
        "noise_key": jax.random.key(42),
        "empty": {},
    }
    encrypt_tree(tree, tmp_path / "t", [recipient])
    out = decrypt_tree(tmp_path / "t", identity)
    assert jax.tree_util.tree_structure(out, is_leaf=lambda x: x is None) == (
        jax.tree_util.tree_structure(tree, is_leaf=lambda x: x is None)
    )
    assert out["params"]["w"].dtype == jnp.bfloat16 and isinstance(out["params"]["w"], np.ndarray)
    _same(out["params"]["b"], tree["params"]["b"])
    _same(out["list"][0], np.int8(3))
    assert out["list"][1] == (None, 2.5) and out["list"][2] is True and out["list"][3] == 7
    _same(out["noise_key"], tree["noise_key"])
    assert out["empty"] == {}


def test_optax_state_needs_and_uses_a_template(tmp_path, x25519_key):
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    state = (params, optax.adam(1e-3).init(params), Pair(jnp.ones(2), np.zeros(1, np.int64)))
    encrypt_tree(state, tmp_path / "t", [x25519_key.public_key()])
    with pytest.raises(ValueError, match="pass like="):
        decrypt_tree(tmp_path / "t", x25519_key)
    out = decrypt_tree(tmp_path / "t", x25519_key, like=state)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(state), strict=True):
        _same(a, b)


def test_template_mismatch_is_refused(tmp_path, x25519_key):
    tree = {"w": np.ones((2, 3), np.float32)}
    encrypt_tree(tree, tmp_path / "t", [x25519_key.public_key()])
    for like in (
        {"w": np.ones((3, 2), np.float32)},
        {"w": np.ones((2, 3), np.float64)},
        {"v": np.ones((2, 3), np.float32)},
        {"w": tree["w"], "x": tree["w"]},
    ):
        with pytest.raises(ValueError, match="like= does not match the file"):
            decrypt_tree(tmp_path / "t", x25519_key, like=like)


def test_header_describes_tree_and_privacy(tmp_path, x25519_key, ed25519_key):
    meta = {"privacy": {"epsilon": 2.0, "delta": 1e-5, "accountant": "pld"}}
    encrypt_tree(
        {"w": jnp.zeros((4, 2), jnp.bfloat16)},
        tmp_path / "t",
        [x25519_key.public_key()],
        metadata=meta,
        sign_with=ed25519_key,
    )
    header = verify_file(tmp_path / "t", ed25519_key.public_key())
    assert header.metadata["privacy"] == meta["privacy"]
    (leaf,) = header.metadata["pytree"]["leaves"]
    assert leaf == {"kind": "array", "path": "['w']", "shape": [4, 2], "dtype": "bfloat16"}
    assert read_header(tmp_path / "t").metadata == header.metadata


def test_tampered_tree_file_returns_nothing(tmp_path, x25519_key):
    tree = {"w": np.arange(20000, dtype=np.float32)}
    encrypt_tree(tree, tmp_path / "t", [x25519_key.public_key()])
    blob = (tmp_path / "t").read_bytes()
    for p in (10, 60, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[p] ^= 1
        (tmp_path / "t").write_bytes(bytes(bad))
        with pytest.raises(DecryptionError):
            decrypt_tree(tmp_path / "t", x25519_key)
    (tmp_path / "t").write_bytes(blob[:-100])
    with pytest.raises(DecryptionError):
        decrypt_tree(tmp_path / "t", x25519_key)


@pytest.mark.parametrize(
    "tree, err, match",
    [
        ({"s": "text"}, TypeError, r"leaf \['s'\]: expected an array"),
        ({"o": np.array([object()])}, TypeError, "cannot be stored"),
        ({"i": 2**70}, ValueError, r"Python int must be in \[-2\*\*63, 2\*\*63\)"),
    ],
)
def test_bad_leaves_refused_before_writing(tmp_path, x25519_key, tree, err, match):
    with pytest.raises(err, match=match):
        encrypt_tree(tree, tmp_path / "t", [x25519_key.public_key()])
    assert not (tmp_path / "t").exists()


def test_reserved_metadata_and_existing_file(tmp_path, x25519_key):
    r = [x25519_key.public_key()]
    with pytest.raises(ValueError, match="must not have a 'pytree' field"):
        encrypt_tree({"w": np.ones(1)}, tmp_path / "t", r, metadata={"pytree": 1})
    (tmp_path / "t").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        encrypt_tree({"w": np.ones(1)}, tmp_path / "t", r)
    assert (tmp_path / "t").read_bytes() == b"keep"


def test_leaves_crossing_read_blocks_round_trip_as_independent_arrays(tmp_path, x25519_key):
    """Leaves of odd sizes straddle the streaming blocks; each comes back its own writable array."""
    from dpjax.crypto.envelope import READ_SIZE

    rng = np.random.default_rng(0)
    tree = {
        "a": rng.integers(0, 255, 3, dtype=np.uint8),
        "b": rng.standard_normal(READ_SIZE // 8 + 5),  # float64, past one block
        "c": np.zeros((0, 3), np.float32),
        "d": rng.standard_normal((7, READ_SIZE // 16 + 1)).astype(np.float32),
        "e": np.int64(-5),
        "f": 2.5,
    }
    encrypt_tree(tree, tmp_path / "t", [x25519_key.public_key()])
    back = decrypt_tree(tmp_path / "t", x25519_key)
    for k in tree:
        _same(back[k], tree[k])
    back["b"][0] = 123.0
    back["d"][0, 0] = 7.0
    assert back["b"].flags.writeable and back["b"][0] == 123.0
    again = decrypt_tree(tmp_path / "t", x25519_key)
    assert np.array_equal(again["b"], tree["b"]) and np.array_equal(again["d"], tree["d"])


def test_tree_streaming_memory_is_bounded(tmp_path, x25519_key):
    """encrypt_tree copies no NumPy leaf; decrypt_tree holds the tree once, plus a small buffer."""
    import tracemalloc

    size = 8 * 1024 * 1024
    tree = {f"l{i}": np.ones(size // 32, np.float32) for i in range(8)}
    tracemalloc.start()
    try:
        encrypt_tree(tree, tmp_path / "t", [x25519_key.public_key()])
        _, peak_enc = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        back = decrypt_tree(tmp_path / "t", x25519_key)
        _, peak_dec = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_enc < size // 8, f"encrypt_tree peak {peak_enc} bytes for a {size}-byte tree"
    assert peak_dec - before < size + size // 8, f"decrypt_tree peak {peak_dec - before} bytes"
    assert all(np.array_equal(back[k], tree[k]) for k in tree)


def _forged_tree_file(path, key, payload: bytes, shape):
    """A file whose authenticated header (written by a key holder) misdescribes its payload."""
    from dpjax.crypto import encrypt_bytes

    leaf = {"kind": "array", "path": "['w']", "shape": shape, "dtype": "float64"}
    md = {"pytree": {"format": 1, "leaves": [leaf], "structure": {"d": [["w", {"a": 0}]]}}}
    path.write_bytes(encrypt_bytes(payload, [key.public_key()], metadata=md))


@pytest.mark.parametrize(
    "n_bytes, shape",
    [(80, [9]), (80, [11]), (80, [2**40]), (0, [1]), (8, [0])],
    ids=["payload-longer", "payload-shorter", "huge-declared", "empty-payload", "extra-bytes"],
)
def test_payload_length_must_match_the_header(tmp_path, x25519_key, n_bytes, shape):
    """Refused with a clear error; a huge declared size is refused before any allocation."""
    _forged_tree_file(tmp_path / "t", x25519_key, bytes(n_bytes), shape)
    with pytest.raises(DecryptionError, match="payload length does not match"):
        decrypt_tree(tmp_path / "t", x25519_key)
    _forged_tree_file(tmp_path / "ok", x25519_key, bytes(80), [10])
    assert np.array_equal(decrypt_tree(tmp_path / "ok", x25519_key)["w"], np.zeros(10))
