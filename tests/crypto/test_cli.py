"""``dpjax keygen | encrypt | decrypt | sign | verify`` through the command line.

Refusals (wrong key, tampered file, untrusted signer) exit 2 with a clear
message and leave no output; no command prints a private key.
"""

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives import serialization

from dpjax import cli
from dpjax.crypto import load_private_key

SECRET = b"patient 17: diagnosis C34.1\n" * 2000  # several Cobblestone chunks


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _raw_private_b64(path):
    key = load_private_key(path)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), base64.b64encode(raw).decode()


@pytest.fixture
def env(tmp_path, capsys):
    for name, kind in (("me", "x25519"), ("other", "x25519"), ("signer", "ed25519")):
        rc, out, err = _run(capsys, "keygen", kind, tmp_path / name)
        assert rc == 0, err
    (tmp_path / "data.txt").write_bytes(SECRET)
    return tmp_path


def _no_secrets(text, *keyfiles):
    assert "PRIVATE KEY" not in text
    for k in keyfiles:
        for form in _raw_private_b64(k):
            assert form not in text


@pytest.mark.parametrize("kind", ["x25519", "ed25519"])
def test_keygen_writes_0600_and_prints_only_the_public_line(tmp_path, capsys, kind):
    rc, out, err = _run(capsys, "keygen", kind, tmp_path / "k")
    assert rc == 0
    assert os.stat(tmp_path / "k").st_mode & 0o777 == 0o600
    line = (tmp_path / "k.pub").read_text().strip()
    assert out.strip() == line and line.startswith(f"dpjax-{kind}:") and "\n" not in line
    _no_secrets(out + err, tmp_path / "k")


def test_keygen_refuses_to_overwrite(env, capsys):
    before = (env / "me").read_bytes()
    rc, out, err = _run(capsys, "keygen", "x25519", env / "me")
    assert rc == 2 and "refusing to overwrite" in err and out == ""
    assert (env / "me").read_bytes() == before


def test_keygen_with_passphrase_file_and_its_use(env, capsys):
    (env / "pw").write_text("correct horse battery staple\n")
    rc, out, err = _run(capsys, "keygen", "x25519", env / "locked", "--passphrase-file", env / "pw")
    assert rc == 0 and b"PRIVATE KEY" not in (env / "locked").read_bytes()
    assert os.stat(env / "locked").st_mode & 0o777 == 0o600
    assert "correct horse" not in out + err
    rc, _, _ = _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc",
                    "--to", env / "locked.pub")  # fmt: skip
    assert rc == 0
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back", "-i", env / "locked")
    assert rc == 2 and "give --key-passphrase-file" in err and not (env / "back").exists()
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back", "-i", env / "locked",
                        "--key-passphrase-file", env / "pw")  # fmt: skip
    assert rc == 0 and (env / "back").read_bytes() == SECRET
    assert "correct horse" not in out + err


def test_round_trip_signed_with_privacy_guarantee(env, capsys):
    rc, out, err = _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc", "--to",
                        env / "me.pub", "--to", (env / "other.pub").read_text().strip(),
                        "--sign-with", env / "signer", "--epsilon", "2", "--delta", "1e-5",
                        "--accountant", "pld")  # fmt: skip
    assert rc == 0, err
    assert os.stat(env / "d.enc").st_mode & 0o777 == 0o600
    assert b"C34.1" not in (env / "d.enc").read_bytes()
    rc, out, err = _run(capsys, "verify", env / "d.enc", "--trusted", env / "signer.pub", "--json")
    rec = json.loads(out)
    assert rc == 0 and rec["verified"] and rec["recipients"] == ["x25519", "x25519"]
    assert rec["metadata"]["privacy"] == {"epsilon": 2.0, "delta": 1e-05, "accountant": "pld"}
    for who in ("me", "other"):
        rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / f"{who}.txt", "-i",
                            env / who, "--verify-with", env / "signer.pub")  # fmt: skip
        assert rc == 0, err
        assert (env / f"{who}.txt").read_bytes() == SECRET
        assert os.stat(env / f"{who}.txt").st_mode & 0o777 == 0o600
        _no_secrets(out + err, env / "me", env / "other", env / "signer")


def test_wrong_key_exits_2_and_writes_nothing(env, capsys):
    _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc", "--to", env / "me.pub")
    (env / "existing").write_text("keep me")
    for out_name, force in (("new", []), ("existing", ["--force"])):
        rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / out_name, "-i",
                            env / "other", *force)  # fmt: skip
        assert rc == 2 and err.startswith("dpjax decrypt: error: no identity given can open")
        assert out == ""
    assert not (env / "new").exists() and (env / "existing").read_text() == "keep me"
    assert [p.name for p in env.iterdir() if p.name.endswith(".part")] == []


@pytest.mark.parametrize("where", [20, 200, -100, -1])
def test_tampered_file_exits_2_with_no_partial_output(env, capsys, where):
    _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc", "--to", env / "me.pub",
         "--sign-with", env / "signer")  # fmt: skip
    data = bytearray((env / "d.enc").read_bytes())
    data[where] ^= 0x01
    (env / "d.enc").write_bytes(bytes(data))
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back", "-i", env / "me")
    assert rc == 2 and "dpjax decrypt: error:" in err and "modified" in err
    assert not (env / "back").exists()
    assert [p.name for p in env.iterdir() if p.name.endswith(".part")] == []
    rc, out, err = _run(capsys, "verify", env / "d.enc", "--trusted", env / "signer.pub")
    assert rc == 2 and "dpjax verify: error:" in err and out == ""


def test_truncated_file_exits_2(env, capsys):
    _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc", "--to", env / "me.pub")
    data = (env / "d.enc").read_bytes()
    (env / "d.enc").write_bytes(data[: len(data) - 17000])  # one chunk less
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back", "-i", env / "me")
    assert rc == 2 and not (env / "back").exists()


def test_untrusted_or_missing_signature_is_refused(env, capsys):
    _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc", "--to", env / "me.pub",
         "--sign-with", env / "signer")  # fmt: skip
    # the signature names its signer, but only --trusted keys count
    rc, out, err = _run(capsys, "verify", env / "d.enc", "--trusted", env / "other.pub")
    assert rc == 2 and "Ed25519" in err  # an X25519 key is not a signing key
    _run(capsys, "keygen", "ed25519", env / "mallory")
    rc, out, err = _run(capsys, "verify", env / "d.enc", "--trusted", env / "mallory.pub")
    assert rc == 2 and "does not verify under any trusted key" in err
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back", "-i", env / "me",
                        "--verify-with", env / "mallory.pub")  # fmt: skip
    assert rc == 2 and not (env / "back").exists()
    # mallory re-signs: still not trusted by the producer's key
    rc, _, _ = _run(capsys, "sign", env / "d.enc", "--key", env / "mallory", "--force")
    assert rc == 0
    rc, out, err = _run(capsys, "verify", env / "d.enc", "--trusted", env / "signer.pub")
    assert rc == 2 and "does not verify" in err
    os.unlink(env / "d.enc.sig")
    rc, out, err = _run(capsys, "verify", env / "d.enc", "--trusted", env / "signer.pub")
    assert rc == 2 and "no signature file" in err


def test_passphrase_round_trip_and_wrong_passphrase(env, capsys):
    (env / "pw").write_text("hunter2 hunter2\n")
    (env / "bad").write_text("hunter3\n")
    rc, _, err = _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc",
                      "--passphrase-file", env / "pw")  # fmt: skip
    assert rc == 0, err
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back",
                        "--passphrase-file", env / "bad")  # fmt: skip
    assert rc == 2 and not (env / "back").exists() and "hunter" not in out + err
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back",
                        "--passphrase-file", env / "pw")  # fmt: skip
    assert rc == 0 and (env / "back").read_bytes() == SECRET


def test_loose_key_file_warns_on_stderr(env, capsys):
    _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc", "--to", env / "me.pub")
    os.chmod(env / "me", 0o644)
    rc, out, err = _run(capsys, "decrypt", env / "d.enc", "-o", env / "back", "-i", env / "me")
    assert rc == 0 and "dpjax decrypt: warning:" in err and "chmod 600" in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["encrypt", "IN", "-o", "OUT"], "give recipients"),
        (["encrypt", "IN", "-o", "OUT", "--to", "dpjax-x25519:AAAA"], "public key"),
        (["encrypt", "IN", "-o", "OUT", "--to", "nope.pub"], "public key must be a line"),
        (["encrypt", "IN", "-o", "OUT", "--to", "ME.pub", "--epsilon", "1"], "go together"),
        (
            [*"encrypt IN -o OUT --to ME.pub --epsilon -1 --delta 0 --accountant rdp".split()],
            "epsilon must be >= 0",
        ),
        (["encrypt", "IN", "-o", "OUT", "--to", "ME.pub", "--sign-with", "ME"], "Ed25519"),
        (["encrypt", "missing", "-o", "OUT", "--to", "ME.pub"], "does not exist"),
        (["decrypt", "IN", "-o", "OUT"], "give key files"),
        (["decrypt", "IN", "-o", "OUT", "-i", "ME.pub"], "not a dpjax private key"),
    ],
)
def test_bad_input_exits_2_writing_nothing(env, capsys, argv, match):
    sub = {"IN": env / "data.txt", "OUT": env / "out", "ME.pub": env / "me.pub", "ME": env / "me"}
    rc, out, err = _run(capsys, *[sub.get(a, a) for a in argv])
    assert rc == 2 and match in err, err
    assert not (env / "out").exists()


def test_script_exit_status_and_streams(env, capsys):
    """The real ``python -m dpjax`` process: exit 2, message on stderr, nothing on stdout."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pp = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    _run(capsys, "encrypt", env / "data.txt", "-o", env / "d.enc", "--to", env / "me.pub")
    cmd = [sys.executable, "-m", "dpjax", "decrypt", str(env / "d.enc"), "-o",
           str(env / "back"), "-i", str(env / "other")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": pp},
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("dpjax decrypt: error: no identity given can open this file")
    assert not (env / "back").exists()
