"""Encrypted, signed checkpoint steps (what Checkpointer(encrypt_to=, sign_with=) calls)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax.crypto import DecryptionError, KeyFileError, SignatureError, generate_private_key
from dpjax.crypto import checkpoints as ck


def _state(seed=0):
    params = {"w": jnp.arange(12.0).reshape(3, 4) + seed, "b": jnp.zeros(4, jnp.bfloat16)}
    return {"params": params, "opt": optax.adam(1e-3).init(params), "key": jax.random.key(seed)}


def _meta(step, eps=1.0):
    return {"step": step, "privacy": {"epsilon": eps, "delta": 1e-5}, "extra": {}}


@pytest.fixture
def ckdir(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir(mode=0o700)
    return d


def test_save_restore_signed(ckdir, x25519_key, ed25519_key):
    state = _state()
    path = ck.save_step(
        ckdir, 5, state, meta=_meta(5), encrypt_to=[x25519_key.public_key()], sign_with=ed25519_key
    )
    assert sorted(p.name for p in ckdir.iterdir()) == ["5.dpjax-enc", "5.dpjax-enc.sig"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert ck.steps(ckdir) == [5]
    assert ck.read_metadata(ckdir, 5, verify_with=ed25519_key.public_key()) == _meta(5)
    restored, meta = ck.restore_step(
        ckdir, 5, _state(1), x25519_key, verify_with=ed25519_key.public_key()
    )
    assert meta == _meta(5)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True
    ):
        assert type(a) is type(b) and a.dtype == b.dtype
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_plaintext_on_disk(ckdir, x25519_key):
    """The step file holds no leaf's bytes in the clear (an orbax directory would)."""
    state = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(4096), jnp.float32)}
    ck.save_step(ckdir, 1, state, meta=_meta(1), encrypt_to=[x25519_key.public_key()])
    raw = b"".join(p.read_bytes() for p in ckdir.iterdir())
    assert np.asarray(state["w"]).tobytes()[:64] not in raw


def test_renamed_step_is_refused(ckdir, x25519_key):
    """Rename an old step's file to a newer step number (to reset the privacy spent)."""
    ck.save_step(ckdir, 3, _state(), meta=_meta(3), encrypt_to=[x25519_key.public_key()])
    os.rename(ck.step_path(ckdir, 3), ck.step_path(ckdir, 9))
    assert ck.steps(ckdir) == [9]
    with pytest.raises(DecryptionError, match="does not hold checkpoint step 9"):
        ck.restore_step(ckdir, 9, _state(), x25519_key)


def test_step_signed_by_someone_else_is_refused(ckdir, x25519_key, ed25519_key):
    """An adversary who can write the directory replaces a step with their own, signed by them."""
    attacker = generate_private_key("ed25519")
    ck.save_step(
        ckdir,
        2,
        _state(7),
        meta=_meta(2, eps=0.1),
        encrypt_to=[x25519_key.public_key()],
        sign_with=attacker,
    )
    with pytest.raises(SignatureError):
        ck.restore_step(ckdir, 2, _state(), x25519_key, verify_with=ed25519_key.public_key())
    with pytest.raises(SignatureError):
        ck.read_metadata(ckdir, 2, verify_with=ed25519_key.public_key())


def test_tampered_step_and_wrong_template_are_refused(ckdir, x25519_key):
    ck.save_step(ckdir, 4, _state(), meta=_meta(4), encrypt_to=[x25519_key.public_key()])
    with pytest.raises(ValueError, match="like= does not match the file"):
        ck.restore_step(ckdir, 4, {"params": _state()["params"]}, x25519_key)
    path = ck.step_path(ckdir, 4)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(DecryptionError):
        ck.restore_step(ckdir, 4, _state(), x25519_key)


def test_remove_and_bad_step(ckdir, x25519_key, ed25519_key):
    ck.save_step(
        ckdir,
        0,
        _state(),
        meta=_meta(0),
        encrypt_to=[x25519_key.public_key()],
        sign_with=ed25519_key,
    )
    ck.remove_step(ckdir, 0)
    assert list(ckdir.iterdir()) == [] and ck.steps(ckdir) == []
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -1"):
        ck.step_path(ckdir, -1)
    with pytest.raises(ValueError, match=r"meta\['step'\] must equal step 1"):
        ck.save_step(ckdir, 1, _state(), meta=_meta(2), encrypt_to=[x25519_key.public_key()])
    assert list(ckdir.iterdir()) == []


def test_file_swapped_after_signature_check_is_refused(ckdir, x25519_key, ed25519_key, monkeypatch):
    """Race: the step file is replaced after verify_file passed on the genuine one."""
    genuine = ck.save_step(
        ckdir,
        6,
        _state(),
        meta=_meta(6),
        encrypt_to=[x25519_key.public_key()],
        sign_with=ed25519_key,
    )
    sig = (ckdir / "6.dpjax-enc.sig").read_bytes()
    real_verify = ck.sign.verify_file

    def verify_then_swap(path, trusted):
        header = real_verify(path, trusted)
        ck.save_step(
            ckdir, 6, _state(3), meta=_meta(6, eps=0.01), encrypt_to=[x25519_key.public_key()]
        )
        (ckdir / "6.dpjax-enc.sig").write_bytes(sig)
        return header

    monkeypatch.setattr(ck.sign, "verify_file", verify_then_swap)
    with pytest.raises(SignatureError, match="does not verify"):
        ck.restore_step(ckdir, 6, _state(), x25519_key, verify_with=ed25519_key.public_key())
    assert genuine.exists()


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"encrypt_to": []}, ValueError, "recipients must hold at least 1"),
        ({"encrypt_to": ["dpjax-x25519:AAAA"]}, KeyFileError, "not a valid x25519 key"),
        ({"sign_with": "key.pem"}, TypeError, "sign_with must be an Ed25519 private key"),
        ({"identities": "key.pem"}, TypeError, "identities must be"),
        ({"verify_with": []}, ValueError, "trusted must be one or more Ed25519"),
    ],
)
def test_check_options_refuses_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        ck.check_options(**kwargs)


def test_check_options_normalizes(x25519_key, ed25519_key):
    from dpjax.crypto import public_key_line

    opts = ck.check_options(
        encrypt_to=[public_key_line(x25519_key)],
        sign_with=ed25519_key,
        identities=x25519_key,
        verify_with=public_key_line(ed25519_key),
    )
    assert opts["encrypt_to"][0] == x25519_key.public_key()
    assert opts["identities"] == [x25519_key]
    assert opts["verify_with"] == [ed25519_key.public_key()]
    assert ck.check_options() == dict.fromkeys(
        ("encrypt_to", "sign_with", "identities", "verify_with")
    )
