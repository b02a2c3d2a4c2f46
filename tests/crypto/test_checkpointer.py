"""``Checkpointer(encrypt_to=, sign_with=, identity=, verify_with=)``: encrypted, signed steps.

The adversary holds the checkpoint files (the header is public by design),
knows the code and the recipients' public keys, and may write the directory.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError, config_hash
from dpjax.crypto import Passphrase, envelope, generate_private_key, public_key_line
from dpjax.crypto import checkpoints as ck

PRIVACY = {"noise_multiplier": 1.1, "l2_clip": 1.0}
PLAIN = r"holds plaintext \(unencrypted, unsigned\) steps"
LOSS = 0.7182818284590452  # a data-dependent training statistic


def _state(seed=0):
    params = {"w": jnp.arange(12.0).reshape(3, 4) + seed, "b": jnp.zeros(4, jnp.bfloat16)}
    return {"params": params, "opt": optax.adam(1e-3).init(params), "key": jax.random.key(seed)}


def _extra():
    return {"history": [{"step": 4, "loss": LOSS}], "run": {"model": "mlp"}}


@pytest.fixture
def keys(x25519_key, ed25519_key):
    return {"encrypt_to": [x25519_key.public_key()], "sign_with": ed25519_key,
            "identity": x25519_key}  # fmt: skip


def _leaves_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.dtype == y.dtype
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_max_to_keep_and_owner_only(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, max_to_keep=2, **keys) as c:
        for step in (1, 2, 3):
            c.save(step, _state(step), privacy=PRIVACY, extra=_extra())
        assert c.steps() == [2, 3] and c.latest_step() == 3
        restored, meta = c.restore(_state(), privacy=PRIVACY)
    _leaves_equal(restored, _state(3))
    assert meta["step"] == 3 and meta["extra"] == _extra()
    assert sorted(p.name for p in d.iterdir()) == [
        "2.dpjax-enc", "2.dpjax-enc.sig", "3.dpjax-enc", "3.dpjax-enc.sig"]  # fmt: skip
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in [d, *d.iterdir()])


def test_header_carries_no_training_statistics_or_state_hash(tmp_path, keys):
    """Attack: read the public header of an encrypted step (no key) for data-dependent values.

    The training history (batch loss) and the SHA-256 of the state are data-dependent: with
    the seed known (``--seed``), a hash of the weights confirms a guess of the training set.
    """
    d = tmp_path / "ck"
    state = _state()
    with Checkpointer(d, **keys) as c:
        c.save(4, state, privacy=PRIVACY, extra=_extra())
        digest = c.read_metadata(4)["sha256"]
    raw = b"".join(p.read_bytes() for p in d.iterdir() if p.is_file())
    assert repr(LOSS).encode() not in raw and b"history" not in raw
    assert digest.encode() not in raw
    public = envelope.read_header(ck.step_path(d, 4)).metadata["checkpoint"]
    assert set(public) == {"format", "step", "structure", "key_impls", "privacy",
                           "privacy_hash", "sealed"}  # fmt: skip
    assert public["privacy_hash"] == config_hash(PRIVACY)


def test_sealed_metadata_length_is_padded(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(1, _state(), privacy=PRIVACY, extra={"history": [{"loss": 0.5}]})
        c.save(2, _state(), privacy=PRIVACY, extra={"history": [{"loss": 0.123456789}]})
    sealed = [envelope.read_header(ck.step_path(d, s)).metadata["checkpoint"]["sealed"]
              for s in (1, 2)]  # fmt: skip
    assert len(sealed[0]) == len(sealed[1])


def test_forged_step_from_public_key_is_refused_by_a_signing_run(tmp_path, keys, x25519_key):
    """Attack: with only the recipients' PUBLIC key, write a step whose privacy state is reset.

    Encryption alone authenticates nothing (anyone can encrypt to a public key); a run that
    signs its steps verifies them on restore by default.
    """
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(8, _state(8), privacy=PRIVACY, extra=_extra())
    # The forger writes step 9 (fresh state) elsewhere and drops it into the directory (a
    # Checkpointer without sign_with refuses to write into a signed directory itself).
    with Checkpointer(tmp_path / "forge", encrypt_to=[public_key_line(x25519_key)]) as forger:
        forger.save(9, _state(0), privacy=PRIVACY, extra=_extra())
    shutil.copy(tmp_path / "forge" / "9.dpjax-enc", d / "9.dpjax-enc")
    with Checkpointer(d, **keys) as c:
        assert c.steps() == [8, 9]
        with pytest.raises(CheckpointError, match="no signature file"):
            c.restore(_state(), step=9, privacy=PRIVACY)
        restored, meta = c.restore(_state(), step=8, privacy=PRIVACY)
    assert meta["step"] == 8


def test_step_signed_by_another_key_is_refused(tmp_path, keys, x25519_key):
    d = tmp_path / "ck"
    other = generate_private_key("ed25519")
    with Checkpointer(d, encrypt_to=[x25519_key.public_key()], sign_with=other) as c:
        c.save(3, _state(), privacy=PRIVACY)
    with Checkpointer(d, **keys) as c, pytest.raises(CheckpointError, match="does not verify"):
        c.read_metadata(3)


@pytest.mark.parametrize("where", ["header", "payload", "end"])
def test_tampered_step_is_refused(tmp_path, keys, where):
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(2, _state(), privacy=PRIVACY)
    path = ck.step_path(d, 2)
    data = bytearray(path.read_bytes())
    i = {"header": 40, "payload": len(data) - 40, "end": len(data) - 1}[where]
    data[i] ^= 1
    path.write_bytes(bytes(data))
    with Checkpointer(d, **keys) as c, pytest.raises(CheckpointError, match=" is refused: "):
        c.restore(_state(), privacy=PRIVACY)
    # without signature checks, decryption itself refuses it
    unsigned = {"identity": keys["identity"], "verify_with": None}
    with Checkpointer(d, **unsigned) as c, pytest.raises(CheckpointError):
        c.restore(_state(), privacy=PRIVACY)


def test_wrong_identity_and_no_identity_are_refused(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(1, _state(), privacy=PRIVACY)
    with Checkpointer(d, identity=generate_private_key("x25519")) as c:
        with pytest.raises(CheckpointError, match="cannot decrypt its metadata"):
            c.restore(_state(), privacy=PRIVACY)
    with Checkpointer(d) as c, pytest.raises(CheckpointError, match="needs identity="):
        c.restore(_state(), privacy=PRIVACY)


def test_renamed_step_is_refused(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, **{**keys, "sign_with": None}) as c:
        c.save(1, _state(), privacy=PRIVACY)
    os.rename(ck.step_path(d, 1), ck.step_path(d, 7))
    with Checkpointer(d, identity=keys["identity"]) as c, pytest.raises(CheckpointError):
        c.restore(_state(), privacy=PRIVACY)


def test_structure_and_privacy_checks_still_apply(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(1, _state(), privacy=PRIVACY)
        with pytest.raises(CheckpointMismatchError, match="another privacy"):
            c.restore(_state(), privacy={**PRIVACY, "noise_multiplier": 0.5})
        with pytest.raises(CheckpointMismatchError, match="another model/optimizer structure"):
            c.restore({"w": jnp.ones(3)}, privacy=PRIVACY)


def test_plaintext_and_encrypted_steps_are_never_mixed(tmp_path, keys):
    """Attack (downgrade): put plaintext steps, unsigned, where encrypted ones are expected."""
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    with Checkpointer(plain) as c:
        c.save(5, _state(), privacy=PRIVACY)
    with Checkpointer(plain, **keys) as c:
        with pytest.raises(CheckpointError, match=PLAIN):
            c.restore(_state(), privacy=PRIVACY)
        with pytest.raises(CheckpointError, match=PLAIN):
            c.save(6, _state(), privacy=PRIVACY)
    assert sorted(p.name for p in plain.iterdir() if not p.name.startswith(".")) == ["5"]
    with Checkpointer(enc, **keys) as c:
        c.save(1, _state(), privacy=PRIVACY)
    with Checkpointer(enc) as c, pytest.raises(CheckpointError, match="encrypted steps"):
        c.save(2, _state(), privacy=PRIVACY)
    assert ck.steps(enc) == [1] and not (enc / "2").exists()
    shutil.copytree(plain / "5", enc / "5")
    with Checkpointer(enc, **keys) as c, pytest.raises(CheckpointError, match="mixes"):
        c.steps()


def test_set_aside_moves_the_step_and_its_signature(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(1, _state(), privacy=PRIVACY)
        c.save(2, _state(), privacy=PRIVACY)
        dst = c.set_aside(2)
        assert c.steps() == [1]
    assert dst.name == "2.corrupted" and (d / "2.corrupted.sig").exists()


def test_passphrase_recipient(tmp_path):
    d = tmp_path / "ck"
    pw = Passphrase("correct horse", log_n=10)
    with Checkpointer(d, encrypt_to=[pw], identity=Passphrase("correct horse")) as c:
        c.save(1, _state(), privacy=PRIVACY, extra=_extra())
        _, meta = c.restore(_state(), privacy=PRIVACY)
    assert meta["extra"] == _extra()


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"sign_with": "ed"}, ValueError, "sign_with needs encrypt_to"),
        ({"encrypt_to": ["x"], "sign_with": "x"}, TypeError, "sign_with must be an Ed25519"),
        ({"encrypt_to": ["dpjax-x25519:AAAA"]}, ValueError, "Checkpointer keys"),
        ({"encrypt_to": []}, ValueError, "recipients"),
        ({"identity": "me.key"}, TypeError, "identities must be"),
    ],
)
def test_bad_keys_fail_at_construction_creating_nothing(tmp_path, x25519_key, ed25519_key, kw,
                                                        err, match):  # fmt: skip
    kw = {k: ([x25519_key.public_key()] if v == ["x"] else v) for k, v in kw.items()}
    kw = {k: (ed25519_key if v == "ed" else x25519_key if v == "x" else v) for k, v in kw.items()}
    with pytest.raises(err, match=match):
        Checkpointer(tmp_path / "ck", exclusive=True, **kw)
    assert not (tmp_path / "ck").exists()


def test_reader_without_encrypt_to_cannot_save(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(1, _state(), privacy=PRIVACY)
    before = sorted(p.name for p in d.iterdir())
    with (
        Checkpointer(d, identity=keys["identity"]) as c,
        pytest.raises(ValueError, match="save needs encrypt_to"),
    ):
        c.save(2, _state(), privacy=PRIVACY)
    assert sorted(p.name for p in d.iterdir()) == before


def test_metadata_of_signed_step_is_json_only(tmp_path, keys):
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(1, _state(), privacy=PRIVACY, extra=_extra())
        meta = c.read_metadata()
    assert json.loads(json.dumps(meta)) == meta


def test_unsigned_writer_cannot_add_steps_to_a_signed_directory(tmp_path, keys, x25519_key):
    """Failure: a run resumed without its signing key added unsigned steps beside signed ones.

    A later signing run then refused them, but only after the unsigned run had trained (and
    spent privacy budget) on them. Now the unsigned writer is refused before restoring or
    saving, and the directory is left as it was.
    """
    d = tmp_path / "ck"
    with Checkpointer(d, **keys) as c:
        c.save(4, _state(4), privacy=PRIVACY, extra=_extra())
    before = sorted((p.name, p.read_bytes()) for p in d.iterdir() if p.name != ".lock")
    with Checkpointer(d, encrypt_to=[x25519_key.public_key()], identity=x25519_key) as c:
        with pytest.raises(CheckpointError, match="signed steps.*sign_with"):
            c.restore(_state(), privacy=PRIVACY)
        with pytest.raises(CheckpointError, match="signed steps.*sign_with"):
            c.save(5, _state(5), privacy=PRIVACY, extra=_extra())
    assert sorted((p.name, p.read_bytes()) for p in d.iterdir() if p.name != ".lock") == before
    with Checkpointer(d, identity=x25519_key) as reader:  # reading only: allowed, as before
        assert reader.restore(_state(), privacy=PRIVACY)[1]["step"] == 4
