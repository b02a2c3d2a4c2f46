"""Checkpoints: round trip with typed keys; mismatched or corrupted ones refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError

PRIVACY = {"noise_multiplier": 1.1, "sampling_rate": 0.01, "l2_clip": 1.0}


def _state(seed=0, width=3):
    k = jax.random.key(seed)
    return {
        "params": {"w": jax.random.normal(k, (width, 2)), "b": jnp.zeros(2)},
        "count": jnp.asarray(7, jnp.int32),
        "key": jax.random.fold_in(k, 1),
        "rbg_key": jax.random.key(seed, impl="rbg"),
    }


def test_round_trip_restores_arrays_and_typed_keys(tmp_path):
    s = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(3, s, privacy=PRIVACY, extra={"note": "x"})
        got, meta = ck.restore(_state(seed=9), privacy=PRIVACY)
    assert meta["step"] == 3 and meta["extra"] == {"note": "x"}
    np.testing.assert_array_equal(got["params"]["w"], s["params"]["w"])
    assert int(got["count"]) == 7
    for k in ("key", "rbg_key"):
        assert jax.random.key_impl(got[k]) == jax.random.key_impl(s[k])
        np.testing.assert_array_equal(jax.random.key_data(got[k]), jax.random.key_data(s[k]))
    # The restored key draws the same numbers.
    np.testing.assert_array_equal(
        jax.random.normal(got["key"], (4,)), jax.random.normal(s["key"], (4,))
    )


def test_latest_and_max_to_keep(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ck:
        for t in (1, 2, 3):
            ck.save(t, _state(seed=t), privacy=PRIVACY)
        assert ck.steps() == [2, 3]
        got, _ = ck.restore(_state())
    np.testing.assert_array_equal(got["params"]["w"], _state(seed=3)["params"]["w"])


def test_another_model_is_refused(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(width=3), privacy=PRIVACY)
        with pytest.raises(CheckpointMismatchError, match="another model.*params/w"):
            ck.restore(_state(width=4), privacy=PRIVACY)


def test_another_privacy_config_is_refused(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(), privacy=PRIVACY)
        other = {**PRIVACY, "noise_multiplier": 0.5}
        with pytest.raises(CheckpointMismatchError, match=r"noise_multiplier.*\(1.1, 0.5\)"):
            ck.restore(_state(), privacy=other)


def _data_files(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file() and "state" in p.parts]
    return sorted(files, key=lambda p: p.stat().st_size)


def test_corrupted_data_is_refused(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(), privacy=PRIVACY)
    big = _data_files(tmp_path / "1")[-1]
    raw = bytearray(big.read_bytes())
    for i in range(len(raw) // 2, len(raw)):
        raw[i] ^= 0xFF
    big.write_bytes(bytes(raw))
    with Checkpointer(tmp_path) as ck, pytest.raises(CheckpointError, match="corrupted"):
        ck.restore(_state(), privacy=PRIVACY)


def test_truncated_checkpoint_is_refused(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(), privacy=PRIVACY)
    for f in _data_files(tmp_path / "1"):
        f.write_bytes(b"")
    with Checkpointer(tmp_path) as ck, pytest.raises(CheckpointError, match="corrupted"):
        ck.restore(_state(), privacy=PRIVACY)


def test_unfinished_save_is_not_a_checkpoint(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(), privacy=PRIVACY)
    # What a kill during orbax's write leaves: a temporary directory.
    (tmp_path / "2.orbax-checkpoint-tmp-1234").mkdir()
    (tmp_path / "2.orbax-checkpoint-tmp-1234" / "junk").write_text("partial")
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 1
        got, meta = ck.restore(_state(), privacy=PRIVACY)
    assert meta["step"] == 1


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with (
        Checkpointer(tmp_path) as ck,
        pytest.raises(CheckpointError, match="no complete checkpoint"),
    ):
        ck.restore(_state())


def test_checksum_mismatch_is_refused(tmp_path):
    import json

    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(), privacy=PRIVACY)
    meta_file = tmp_path / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["sha256"] = "0" * 64  # as if an array had silently changed on disk
    meta_file.write_text(json.dumps(meta))
    with Checkpointer(tmp_path) as ck, pytest.raises(CheckpointError, match="checksum mismatch"):
        ck.restore(_state(), privacy=PRIVACY)
