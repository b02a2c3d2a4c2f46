"""Key generation, key files (0600, passphrase, loose-permission warning), one-line public keys."""

import os
import stat

import pytest

from dpjax.crypto import (
    KeyFileError,
    KeyPermissionWarning,
    generate_private_key,
    keygen,
    load_private_key,
    load_public_key,
    public_key_line,
    write_private_key,
)
from dpjax.crypto.keys import KEY_KINDS, key_kind

from .conftest import TEST_LOG_N


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("kind", ["x25519", "ed25519"])
@pytest.mark.parametrize("passphrase", [None, "s3cret pass"])
def test_keygen_writes_0600_and_loads_back(tmp_path, kind, passphrase):
    old = os.umask(0)  # even with a permissive umask, the key file is 0600
    try:
        line = keygen(kind, tmp_path / "id", passphrase=passphrase, scrypt_log_n=TEST_LOG_N)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "id") == 0o600
    assert line.startswith(f"dpjax-{kind}:") and "\n" not in line
    assert (tmp_path / "id.pub").read_text().strip() == line
    key = load_private_key(tmp_path / "id", passphrase=passphrase)
    assert key_kind(key) == kind
    assert public_key_line(key) == line


def test_rsa3072_key_file_round_trip(tmp_path, rsa_key):
    write_private_key(rsa_key, tmp_path / "rsa")
    assert _mode(tmp_path / "rsa") == 0o600
    key = load_private_key(tmp_path / "rsa")
    assert key.key_size == 3072
    line = public_key_line(key)
    assert line.startswith("dpjax-rsa3072:") and "\n" not in line
    assert load_public_key(line).public_numbers() == rsa_key.public_key().public_numbers()


def test_passphrase_key_file_is_not_plaintext_pem(tmp_path, x25519_key):
    write_private_key(x25519_key, tmp_path / "id", passphrase="pw", scrypt_log_n=TEST_LOG_N)
    raw = (tmp_path / "id").read_bytes()
    assert b"PRIVATE KEY" not in raw
    with pytest.raises(KeyFileError, match="passphrase-protected"):
        load_private_key(tmp_path / "id")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(tmp_path / "id", passphrase="not it")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_permissions_warn(tmp_path, x25519_key, mode):
    write_private_key(x25519_key, tmp_path / "id")
    os.chmod(tmp_path / "id", mode)
    with pytest.warns(KeyPermissionWarning, match="chmod 600"):
        load_private_key(tmp_path / "id")


def test_keygen_never_overwrites(tmp_path):
    keygen("x25519", tmp_path / "id")
    before = (tmp_path / "id").read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        keygen("x25519", tmp_path / "id")
    assert (tmp_path / "id").read_bytes() == before


def test_keygen_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'rsa1024'"):
        keygen("rsa1024", tmp_path / "id")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "line",
    [
        "",
        "ssh-ed25519 AAAA",
        "dpjax-x25519:",
        "dpjax-x25519:AAAA",
        "dpjax-dsa:AAAA",
        "dpjax-rsa3072:!!",
    ],
)
def test_bad_public_key_lines_are_refused(line):
    with pytest.raises(KeyFileError):
        load_public_key(line)


def test_not_a_key_file(tmp_path):
    (tmp_path / "f").write_text("hello")
    os.chmod(tmp_path / "f", 0o600)
    with pytest.raises(KeyFileError, match="not a dpjax private key file"):
        load_private_key(tmp_path / "f")


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_reprs_and_errors_hold_no_private_key_bytes(tmp_path, kind, rsa_key):
    key = rsa_key if kind == "rsa3072" else generate_private_key(kind)
    write_private_key(key, tmp_path / "id", passphrase="pw", scrypt_log_n=TEST_LOG_N)
    from cryptography.hazmat.primitives import serialization

    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError) as e:
        load_private_key(tmp_path / "id", passphrase="wrong")
    text = str(e.value) + repr(e.value)
    assert der.hex() not in text and der[-32:].hex() not in text and "pw" not in text.split()


def test_no_function_prints(tmp_path, capsys, x25519_key, ed25519_key):
    """keygen/encrypt/decrypt/sign/verify write nothing to stdout or stderr (no key material)."""
    from dpjax.crypto import decrypt_file, encrypt_file
    from dpjax.crypto.sign import verify_file

    keygen("x25519", tmp_path / "id", passphrase="pw", scrypt_log_n=TEST_LOG_N)
    load_private_key(tmp_path / "id", passphrase="pw")
    (tmp_path / "plain").write_bytes(b"data")
    encrypt_file(
        tmp_path / "plain", tmp_path / "enc", [x25519_key.public_key()], sign_with=ed25519_key
    )
    verify_file(tmp_path / "enc", ed25519_key.public_key())
    decrypt_file(tmp_path / "enc", tmp_path / "out", x25519_key)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
