"""Key files: made owner-only and never overwritten; loose ones warned about; never echoed.

The adversary sees every output and error message of the command and can read any
file that its permissions let other users read; only the key is secret.
"""

import base64
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import dpjax.anonymize as anon
import dpjax.cli
from dpjax.data.census import census_table

ROOT = Path(__file__).resolve().parents[2]
# A fixed key that is not UTF-8: a decoder error on it would quote one of its bytes.
KEY = bytes(range(0xC8, 0xE8))


def leaks(text, key=KEY):
    """The forms of ``key`` (whole, any 4-byte run, any single byte) that ``text`` shows."""
    forms = {key.hex(), key.hex().upper(), repr(key), base64.b64encode(key).decode()}
    forms |= {key[i : i + 4].hex() for i in range(len(key) - 3)}
    forms |= {key[i : i + 4].decode("latin-1") for i in range(len(key) - 3)}
    forms |= {f"0x{b:02x}" for b in key} | {f"\\x{b:02x}" for b in key}
    return sorted(f for f in forms if f in text)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _key_file(path, mode=0o600, key=KEY):
    path.write_bytes(key)
    path.chmod(mode)
    return path


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setattr(dpjax.cli, "_SUBCOMMANDS", ("dpjax.anonymize.cli",))

    def run(argv):
        rc = dpjax.cli.main(["anonymize", *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=oct)
def test_write_key_is_owner_only_and_never_overwrites(tmp_path, umask):
    old = os.umask(umask)
    try:
        key = anon.write_key(tmp_path / "key.bin")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "key.bin") == 0o600
    assert (tmp_path / "key.bin").read_bytes() == key and len(key) == 32
    assert anon.load_key(tmp_path / "key.bin") == key  # 0600: no warning (warnings are errors)
    with pytest.raises(FileExistsError, match="key.bin"):
        anon.write_key(tmp_path / "key.bin")
    assert (tmp_path / "key.bin").read_bytes() == key
    # A dangling link is not followed: the key would land wherever it points.
    (tmp_path / "link.bin").symlink_to(tmp_path / "elsewhere.bin")
    with pytest.raises(FileExistsError):
        anon.write_key(tmp_path / "link.bin")
    assert not (tmp_path / "elsewhere.bin").exists()


def test_new_key_file_command(tmp_path):
    """``dpjax anonymize --new-key-file`` (a real subprocess) makes a 0600 key and prints none."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    path = tmp_path / "key.bin"
    cmd = [sys.executable, "-m", "dpjax.cli", "anonymize", "--new-key-file", str(path)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    key = path.read_bytes()
    assert len(key) == 32 and _mode(path) == 0o600
    assert "0600" in first.stdout and not leaks(first.stdout + first.stderr, key)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr
    assert path.read_bytes() == key and not leaks(again.stdout + again.stderr, key)


@pytest.mark.parametrize(
    "extra", [["in.csv", "out.csv"], ["--key-file", "k.bin"], ["--quasi", "age"], ["--force"]]
)
def test_new_key_file_does_nothing_else(tmp_path, cli, extra):
    rc, out, err = cli(["--new-key-file", tmp_path / "key.bin", *extra])
    assert rc == 2 and "run it alone" in err
    assert not (tmp_path / "key.bin").exists()


@pytest.mark.parametrize(
    "mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o620, 0o602, 0o666, 0o700], ids=oct
)
def test_loose_key_file_warns_without_the_key(tmp_path, mode):
    path = _key_file(tmp_path / "key.bin", mode)
    loose = bool(mode & 0o077)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert anon.load_key(path) == KEY
    shown = [w for w in caught if issubclass(w.category, anon.KeyFilePermissionWarning)]
    assert len(shown) == int(loose) and len(caught) == len(shown)
    if loose:
        text = str(shown[0].message)
        assert "key.bin" in text and "chmod 600" in text and oct(mode)[2:] in text
        assert not leaks(text)


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
def test_tight_key_file_is_silent(tmp_path, mode):
    path = _key_file(tmp_path / "key.bin", mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert anon.load_key(path) == KEY


@pytest.fixture
def table(tmp_path):
    src = tmp_path / "in.csv"
    census_table(300, np.random.default_rng(3)).to_csv(src, index=False)
    return src


def test_cli_warns_on_a_loose_key_and_never_prints_it(tmp_path, table, cli):
    key = _key_file(tmp_path / "key.bin", 0o666)
    rc, out, err = cli([table, tmp_path / "out.csv", "--pseudonymize", "name", "--key-file", key])
    assert rc == 0, err
    assert "warning" in err and "chmod 600" in err and not leaks(out + err)


@pytest.mark.parametrize("role", ["input", "output", "report", "hierarchy", "input-link"])
def test_key_file_given_as_another_file_is_refused_without_leaking(tmp_path, table, cli, role):
    key = _key_file(tmp_path / "key.bin")
    (tmp_path / "link.csv").symlink_to(key)
    src, dst, report = table, tmp_path / "out.csv", tmp_path / "report.json"
    extra = ["--quasi", "age,sex", "--k", "5", "--force"]
    if role == "input":
        src = key
    elif role == "input-link":
        src = tmp_path / "link.csv"
    elif role == "output":
        dst = key
    elif role == "report":
        report = tmp_path / "link.csv"
    elif role == "hierarchy":
        extra += ["--hierarchy", f"sex:{key}"]
    argv = [src, dst, *extra, "--pseudonymize", "name", "--key-file", key, "--report", report]
    rc, out, err = cli(argv)
    assert rc == 2 and "key file" in err, err
    assert not leaks(out + err)
    assert key.read_bytes() == KEY and _mode(key) == 0o600
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "report.json").exists()


def test_unreadable_inputs_never_quote_key_bytes(tmp_path, cli):
    """A non-UTF-8 input or tree file is refused without quoting its bytes (here: a key copy)."""
    copy = tmp_path / "copy.bin"
    copy.write_bytes(KEY)
    rc, out, err = cli([copy, tmp_path / "out.csv", "--quasi", "a", "--k", "2"])
    assert rc == 2 and "input" in err and "UTF-8" in err and not leaks(out + err)
    src = tmp_path / "in.csv"
    src.write_text("a,b\nx,y\nx,z\n")
    rc, out, err = cli([src, tmp_path / "out.csv", "--quasi", "a", "--k", "2",
                        "--hierarchy", f"a:{copy}"])  # fmt: skip
    assert rc == 2 and "--hierarchy" in err and not leaks(out + err)
    assert not (tmp_path / "out.csv").exists()
