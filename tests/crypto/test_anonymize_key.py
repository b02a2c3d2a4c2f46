"""``dpjax anonymize`` with a pseudonymization key file encrypted by ``dpjax encrypt``.

Attack: the encrypted key file is the copy people keep less carefully (that is what
encrypting it is for). Used as a raw key file, its public ciphertext becomes the HMAC
key, and whoever holds the encrypted file can recompute every pseudonym.
"""

import pytest

from dpjax import cli
from dpjax.anonymize.keys import load_key, write_key
from dpjax.crypto import Passphrase, encrypt_file, generate_private_key, write_private_key

CSV = "name,age\nalice,34\nbob,51\n"


@pytest.fixture
def files(tmp_path):
    write_key(tmp_path / "key.bin")
    me = generate_private_key("x25519")
    write_private_key(me, tmp_path / "me")
    encrypt_file(tmp_path / "key.bin", tmp_path / "key.enc", [me.public_key()])
    (tmp_path / "in.csv").write_text(CSV)
    return tmp_path


def _pseudonyms(path):
    return [line.split(",")[0] for line in path.read_text().splitlines()[1:]]


def test_encrypted_key_file_is_never_used_as_raw_key_bytes(files):
    ciphertext = (files / "key.enc").read_bytes()
    with pytest.raises(ValueError, match=r"is encrypted \(dpjax encrypt\); give the identity"):
        load_key(files / "key.enc")
    rc = cli.main(["anonymize", str(files / "in.csv"), str(files / "out.csv"),
                   "--pseudonymize", "name", "--key-file", str(files / "key.enc")])  # fmt: skip
    assert rc == 2 and not (files / "out.csv").exists()
    with pytest.raises(ValueError, match="cannot be decrypted"):  # nor raw bytes on a bad key
        load_key(files / "key.enc", identity=Passphrase("wrong"))
    assert len(ciphertext) > 32  # it would pass the raw key checks


def test_encrypted_key_file_with_identity_gives_the_same_pseudonyms(files, capsys):
    base = ["anonymize", str(files / "in.csv"), "--pseudonymize", "name"]
    assert cli.main([base[0], base[1], str(files / "plain.csv"), *base[2:],
                     "--key-file", str(files / "key.bin")]) == 0  # fmt: skip
    assert cli.main([base[0], base[1], str(files / "enc.csv"), *base[2:],
                     "--key-file", str(files / "key.enc"),
                     "--key-identity", str(files / "me")]) == 0  # fmt: skip
    assert _pseudonyms(files / "plain.csv") == _pseudonyms(files / "enc.csv")
    assert _pseudonyms(files / "enc.csv") != ["alice", "bob"]
    capsys.readouterr()
    other = generate_private_key("x25519")
    write_private_key(other, files / "other")
    rc = cli.main([base[0], base[1], str(files / "bad.csv"), *base[2:],
                   "--key-file", str(files / "key.enc"),
                   "--key-identity", str(files / "other")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--key-file" in err and not (files / "bad.csv").exists()


def test_passphrase_encrypted_key_file(files, capsys):
    encrypt_file(files / "key.bin", files / "key.pw.enc", [Passphrase("pw pw pw", log_n=10)])
    (files / "pw").write_text("pw pw pw\n")
    key = load_key(files / "key.pw.enc", identity=Passphrase("pw pw pw"))
    assert key == (files / "key.bin").read_bytes()
    rc = cli.main(["anonymize", str(files / "in.csv"), str(files / "o.csv"), "--pseudonymize",
                   "name", "--key-file", str(files / "key.pw.enc"),
                   "--key-passphrase-file", str(files / "pw")])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
