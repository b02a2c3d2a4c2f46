"""Detached Ed25519 signatures: who produced an encrypted artifact, with what guarantee."""

import json
import os

import pytest

from dpjax.crypto import SignatureError, encrypt_file, generate_private_key, public_key_line
from dpjax.crypto.sign import sign_file, signature_path, verify_file

META = {"privacy": {"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp"}}


@pytest.fixture
def signed(tmp_path, x25519_key, ed25519_key):
    (tmp_path / "plain").write_bytes(os.urandom(40000))
    encrypt_file(
        tmp_path / "plain",
        tmp_path / "enc",
        [x25519_key.public_key()],
        metadata=META,
        sign_with=ed25519_key,
    )
    return tmp_path / "enc"


@pytest.mark.parametrize("trusted_form", ["object", "line", "list"])
def test_verify_returns_signed_metadata(signed, ed25519_key, trusted_form):
    pub = ed25519_key.public_key()
    trusted = {
        "object": pub,
        "line": public_key_line(pub),
        "list": [generate_private_key("ed25519").public_key(), pub],
    }[trusted_form]
    assert verify_file(signed, trusted).metadata == META


def test_signature_by_untrusted_key_is_refused(signed):
    other = generate_private_key("ed25519")
    with pytest.raises(SignatureError, match="does not verify under any trusted key"):
        verify_file(signed, other.public_key())


def test_signer_field_in_sig_file_is_not_trusted(signed, ed25519_key):
    """An attacker re-signs the file with their key and names themselves: still refused."""
    attacker = generate_private_key("ed25519")
    sign_file(signed, attacker, overwrite=True)
    assert json.loads(signature_path(signed).read_text())["signer"] == public_key_line(attacker)
    with pytest.raises(SignatureError):
        verify_file(signed, ed25519_key.public_key())


def test_any_flipped_byte_breaks_the_signature(signed, ed25519_key):
    blob = signed.read_bytes()
    for p in list(range(0, 300, 7)) + list(range(300, len(blob), 997)) + [len(blob) - 1]:
        bad = bytearray(blob)
        bad[p] ^= 0x04
        signed.write_bytes(bytes(bad))
        with pytest.raises(SignatureError):
            verify_file(signed, ed25519_key.public_key())
    signed.write_bytes(blob)
    verify_file(signed, ed25519_key.public_key())


def test_signature_moved_to_another_file_is_refused(tmp_path, signed, ed25519_key, x25519_key):
    (tmp_path / "plain2").write_bytes(os.urandom(100))
    encrypt_file(tmp_path / "plain2", tmp_path / "enc2", [x25519_key.public_key()], metadata=META)
    signature_path(tmp_path / "enc2").write_bytes(signature_path(signed).read_bytes())
    with pytest.raises(SignatureError):
        verify_file(tmp_path / "enc2", ed25519_key.public_key())


@pytest.mark.parametrize(
    "content",
    [
        None,
        b"",
        b"not json",
        b'{"format": "x"}',
        b'{"format": "dpjax-signature-v1", "signature": "!!"}',
    ],
)
def test_missing_or_malformed_signature(signed, ed25519_key, content):
    sig = signature_path(signed)
    if content is None:
        sig.unlink()
    else:
        sig.write_bytes(content)
    with pytest.raises(SignatureError, match="no signature file|malformed"):
        verify_file(signed, ed25519_key.public_key())


def test_sign_with_must_be_ed25519(tmp_path, x25519_key):
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(TypeError, match="sign_with must be an Ed25519 private key"):
        encrypt_file(
            tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()], sign_with=x25519_key
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_trusted_must_be_ed25519(signed, x25519_key):
    with pytest.raises(ValueError, match="trusted must be one or more Ed25519 public keys"):
        verify_file(signed, x25519_key.public_key())


def test_decrypt_file_verify_with(tmp_path, signed, x25519_key, ed25519_key):
    from dpjax.crypto import decrypt_file

    header = decrypt_file(
        signed, tmp_path / "out", x25519_key, verify_with=ed25519_key.public_key()
    )
    assert header.metadata == META
    assert (tmp_path / "out").read_bytes() == (tmp_path / "plain").read_bytes()
    other = generate_private_key("ed25519")
    with pytest.raises(SignatureError):
        decrypt_file(signed, tmp_path / "out2", x25519_key, verify_with=other.public_key())
    assert not (tmp_path / "out2").exists()


def test_decrypt_file_verify_with_checks_the_bytes_decrypted(
    tmp_path, signed, x25519_key, ed25519_key, monkeypatch
):
    """Race: the file is replaced (by a recipient, with a valid envelope) after verify_file."""
    from dpjax.crypto import decrypt_file, encrypt_file
    from dpjax.crypto import sign as sign_mod

    (tmp_path / "evil").write_bytes(b"other weights")
    encrypt_file(tmp_path / "evil", tmp_path / "evil.enc", [x25519_key.public_key()], metadata=META)
    real = sign_mod.verify_file

    def verify_then_swap(path, trusted):
        header = real(path, trusted)
        os.replace(tmp_path / "evil.enc", signed)
        return header

    monkeypatch.setattr(sign_mod, "verify_file", verify_then_swap)
    with pytest.raises(SignatureError):
        decrypt_file(signed, tmp_path / "out", x25519_key, verify_with=ed25519_key.public_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "enc.sig", "evil", "plain"]


def test_restore_step_verify_with_checks_the_bytes_decrypted(
    tmp_path, x25519_key, ed25519_key, monkeypatch
):
    """The signature covers the payload decrypted (hashed in the decryption pass), not only
    the file verify_file read first: a checkpoint swapped in between is refused."""
    import numpy as np

    from dpjax.crypto import checkpoints
    from dpjax.crypto import sign as sign_mod

    r = [x25519_key.public_key()]
    state = {"w": np.arange(6, dtype=np.float32)}
    path = checkpoints.save_step(
        tmp_path, 3, state, meta={"step": 3}, encrypt_to=r, sign_with=ed25519_key
    )
    restored, _ = checkpoints.restore_step(
        tmp_path, 3, state, x25519_key, verify_with=ed25519_key.public_key()
    )
    assert np.array_equal(restored["w"], state["w"])
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil = checkpoints.save_step(evil_dir, 3, {"w": -state["w"]}, meta={"step": 3}, encrypt_to=r)
    real = sign_mod.verify_file

    def verify_then_swap(p, trusted):
        header = real(p, trusted)
        os.replace(evil, path)
        return header

    monkeypatch.setattr(sign_mod, "verify_file", verify_then_swap)
    with pytest.raises(SignatureError):
        checkpoints.restore_step(
            tmp_path, 3, state, x25519_key, verify_with=ed25519_key.public_key()
        )


@pytest.mark.parametrize("writer", ["encrypt_file", "encrypt_tree"])
def test_one_pass_signature_equals_sign_file(tmp_path, x25519_key, ed25519_key, writer):
    """sign_with hashes the ciphertext as it is written; Ed25519 is deterministic, so the
    signature must be byte-identical to signing the finished file in a second pass."""
    import numpy as np

    from dpjax.crypto.tree import encrypt_tree

    r = [x25519_key.public_key()]
    data = os.urandom(3 * (1 << 18) + 1234)  # several streaming blocks
    path = tmp_path / "enc"
    if writer == "encrypt_file":
        (tmp_path / "plain").write_bytes(data)
        encrypt_file(tmp_path / "plain", path, r, metadata=META, sign_with=ed25519_key)
    else:
        tree = {"w": np.frombuffer(data, np.uint8), "b": np.ones(3, np.float32)}
        encrypt_tree(tree, path, r, metadata=META, sign_with=ed25519_key)
    one_pass = signature_path(path).read_bytes()
    sign_file(path, ed25519_key, sig_path=tmp_path / "again.sig")
    assert (tmp_path / "again.sig").read_bytes() == one_pass
    assert verify_file(path, ed25519_key.public_key()).metadata["privacy"] == META["privacy"]
    bad = bytearray(path.read_bytes())
    bad[-5] ^= 1  # the payload is covered
    path.write_bytes(bytes(bad))
    with pytest.raises(SignatureError):
        verify_file(path, ed25519_key.public_key())
