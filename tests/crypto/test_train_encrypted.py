"""``dpjax train --encrypt-to --sign-with --identity``: checkpoints never in plaintext."""

import pytest

import dpjax
from dpjax import cli
from dpjax.crypto import checkpoints as ck
from dpjax.crypto import keygen
from dpjax.digits import load_trained


@pytest.fixture
def keyfiles(tmp_path):
    keygen("x25519", tmp_path / "me")
    keygen("ed25519", tmp_path / "signer")
    keygen("x25519", tmp_path / "other")
    return tmp_path


def _argv(tmp, d, out, *extra):
    return ["train", "--model", "mlp", "--epochs", "1", "--seed", "3", "--no-progress",
            "--checkpoint-dir", str(d), "--checkpoint-every", "4", "--output", str(out),
            *extra]  # fmt: skip


def test_encrypted_signed_run_resumes_only_with_its_keys(tmp_path, keyfiles, capsys):
    k, d = keyfiles, tmp_path / "ck"
    keys = ["--encrypt-to", str(k / "me.pub"), "--sign-with", str(k / "signer")]
    assert cli.main(_argv(tmp_path, d, tmp_path / "r1.json", *keys)) == 0
    names = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert names and all(n.endswith((".dpjax-enc", ".dpjax-enc.sig")) for n in names)
    last = ck.steps(d)[-1]

    # a finished run: --resume decrypts, verifies and then refuses to run further
    capsys.readouterr()
    rc = cli.main(_argv(tmp_path, d, tmp_path / "r2.json", *keys, "--resume", "--identity",
                        str(k / "me")))  # fmt: skip
    assert rc == 2 and "holds a finished run" in capsys.readouterr().err
    # without the identity, or with another one: refused, exit 2, nothing written
    for extra in ([], ["--identity", str(k / "other")]):
        rc = cli.main(_argv(tmp_path, d, tmp_path / "r3.json", *keys, "--resume", *extra))
        err = capsys.readouterr().err
        assert rc == 2 and "dpjax train: error:" in err and "PRIVATE KEY" not in err
        assert not (tmp_path / "r3.json").exists()
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == names

    from dpjax.crypto import load_private_key

    out = load_trained(d, identity=load_private_key(k / "me"),
                       verify_with=(k / "signer.pub").read_text())  # fmt: skip
    assert out["metadata"]["step"] == last
    assert dpjax.privacy_spent(out["optimizer"].opt_state, 1e-5).steps == last


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--sign-with", "SIGNER"], "sign_with needs encrypt_to"),
        (["--identity", "ME"], "identity needs encrypt_to"),
        (["--encrypt-to", "dpjax-x25519:AAAA"], "encrypt_to: public key"),
        (["--encrypt-to", "ME.pub", "--sign-with", "ME"], "sign_with must be an Ed25519"),
        (["--encrypt-to", "missing.pub"], "encrypt_to: public key must be a line"),
    ],
)
def test_bad_keys_are_refused_before_any_work(tmp_path, keyfiles, capsys, extra, match):
    extra = [str(keyfiles / "signer") if a == "SIGNER" else a for a in extra]
    extra = [str(keyfiles / a.lower()) if a.startswith("ME") else a for a in extra]
    d = tmp_path / "ck"
    assert cli.main(_argv(tmp_path, d, tmp_path / "r.json", *extra)) == 2
    assert match in capsys.readouterr().err
    assert not d.exists() and not (tmp_path / "r.json").exists()


def test_passphrase_protected_keys_need_the_key_passphrase_file(tmp_path, capsys):
    """`dpjax train` signs and resumes with passphrase-protected key files; the passphrase
    comes from a file, is never printed and never lands in the run record."""
    secret = "correct horse battery staple"
    keygen("x25519", tmp_path / "me", passphrase=secret, scrypt_log_n=10)
    keygen("ed25519", tmp_path / "signer", passphrase=secret, scrypt_log_n=10)
    (tmp_path / "pw").write_text(secret + "\n")
    (tmp_path / "bad").write_text("wrong\n")
    d = tmp_path / "ck"
    keys = ["--encrypt-to", str(tmp_path / "me.pub"), "--sign-with", str(tmp_path / "signer")]

    rc = cli.main(_argv(tmp_path, d, tmp_path / "r0.json", *keys))
    err = capsys.readouterr().err
    assert rc == 2 and "passphrase-protected" in err and "--key-passphrase-file" in err
    rc = cli.main(_argv(tmp_path, d, tmp_path / "r0.json", *keys,
                        "--key-passphrase-file", str(tmp_path / "bad")))  # fmt: skip
    assert rc == 2 and "wrong passphrase" in capsys.readouterr().err
    assert not d.exists() and not (tmp_path / "r0.json").exists()

    assert cli.main(_argv(tmp_path, d, tmp_path / "r1.json", *keys,
                          "--key-passphrase-file", str(tmp_path / "pw"))) == 0  # fmt: skip
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    assert secret not in (tmp_path / "r1.json").read_text()
    assert ck.steps(d) and (d / f"{ck.steps(d)[-1]}.dpjax-enc.sig").exists()
    resume = ["--resume", "--identity", str(tmp_path / "me"),
              "--key-passphrase-file", str(tmp_path / "pw")]  # fmt: skip
    rc = cli.main(_argv(tmp_path, d, tmp_path / "r2.json", *keys, *resume))
    assert rc == 2 and "holds a finished run" in capsys.readouterr().err  # decrypted, verified


def test_key_passphrase_file_needs_a_key(tmp_path, capsys):
    (tmp_path / "pw").write_text("x\n")
    rc = cli.main(_argv(tmp_path, tmp_path / "ck", tmp_path / "r.json",
                        "--key-passphrase-file", str(tmp_path / "pw")))  # fmt: skip
    assert rc == 2 and "key_passphrase_file needs sign_with or identity" in capsys.readouterr().err


@pytest.mark.slow  # ~20 s: trains a 12-step model, then attacks its encrypted checkpoint
def test_audit_mia_reads_an_encrypted_signed_run(tmp_path, keyfiles, capsys):
    import json

    k, d = keyfiles, tmp_path / "ck"
    keys = ["--encrypt-to", str(k / "me.pub"), "--sign-with", str(k / "signer")]
    assert cli.main(_argv(tmp_path, d, tmp_path / "r.json", *keys)) == 0
    base = ["audit", "mia", "--checkpoint-dir", str(d), "--output-dir", str(tmp_path / "a")]
    capsys.readouterr()
    assert cli.main(base) == 2 and "needs identity" in capsys.readouterr().err
    keygen("ed25519", k / "stranger")
    rc = cli.main([*base, "--identity", str(k / "me"), "--verify-with", str(k / "stranger.pub")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not verify" in err
    assert not (tmp_path / "a" / "mia_report.json").exists()
    rc = cli.main([*base, "--identity", str(k / "me"), "--verify-with", str(k / "signer.pub"),
                   "--json"])  # fmt: skip
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["checkpoint_step"] == ck.steps(d)[-1] and 0.0 <= rep["loss threshold"]["auc"] <= 1
