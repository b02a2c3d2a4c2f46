"""``dpjax anonymize`` and its files: no collisions, no lost data, no half files, no late crashes.

Every run goes through ``dpjax.cli.main`` (the real dispatcher: a ValueError becomes
``dpjax anonymize: error: ...`` and exit code 2); one goes through a real subprocess
that is sent SIGTERM in the middle of writing its output.
"""

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dpjax.anonymize.table as anon_table
import dpjax.cli
import dpjax.cli.anonymize as anon_cli
from dpjax.anonymize import pseudonymize
from dpjax.data.census import census_table

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(0x40, 0x60))


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _read(path):
    """A CSV exactly as written: every cell text, an empty cell ''."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setattr(dpjax.cli, "_SUBCOMMANDS", ("dpjax.cli.anonymize",))

    def run(argv):
        rc = dpjax.cli.main(["anonymize", *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture
def work(monkeypatch):
    """Records every call of the anonymization itself (the work pre-flight checks precede)."""
    calls = []
    real = anon_cli.anonymize

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(anon_cli, "anonymize", spy)
    return calls


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "in.csv"
    census_table(400, np.random.default_rng(5)).to_csv(src, index=False)
    key = tmp_path / "key.bin"
    key.write_bytes(KEY)
    key.chmod(0o600)
    return src, tmp_path / "out.csv", key


def _listing(d):
    return sorted(p.name for p in Path(d).iterdir())


# --- item 10a: --report and the output ---------------------------------------------------------


@pytest.mark.parametrize("exists", [False, True])
@pytest.mark.parametrize("spelling", ["same", "relative", "dotdot", "symlink"])
def test_report_may_not_be_the_output(files, cli, work, monkeypatch, tmp_path, spelling, exists):
    src, dst, _ = files
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(dst)
    if exists:
        dst.write_text("keep me\n")
    report = {"same": str(dst), "relative": "out.csv", "dotdot": "sub/../out.csv",
              "symlink": "link.csv"}[spelling]  # fmt: skip
    rc, _, err = cli([src, dst, "--quasi", "age,sex", "--k", "5", "--report", report, "--force"])
    assert rc == 2 and "--report" in err and "is the output" in err, err
    assert not work
    assert (dst.read_text() == "keep me\n") if exists else not dst.exists()


def test_existing_report_needs_force(files, cli, work, tmp_path):
    src, dst, _ = files
    report = tmp_path / "report.json"
    report.write_text("old report\n")
    argv = [src, dst, "--quasi", "age,sex", "--k", "5", "--report", report]
    rc, _, err = cli(argv)
    assert rc == 2 and "--report" in err and "exists; pass --force" in err, err
    assert report.read_text() == "old report\n" and not dst.exists() and not work
    rc, _, err = cli([*argv, "--force"])
    assert rc == 0, err
    assert '"metrics"' in report.read_text() and _read(dst)["age"].ne("").all()


# --- item 10b: literal NA-like cells ----------------------------------------------------------

LITERALS = ["NA", "null", "N/A", "None", "nan", "NaN", "NULL", "n/a", "#N/A", "<NA>", "-nan",
            "1.#QNAN", "na", "Nan"]  # fmt: skip


def test_na_like_literals_are_values(tmp_path, cli):
    """'NA' (Namibia), 'Null' (a surname) ... are pseudonymized like any value; '' stays missing."""
    n = len(LITERALS)
    df = pd.DataFrame({"id": [str(i) for i in range(n + 1)],
                       "surname": [*LITERALS, ""], "country": [*LITERALS, ""]})  # fmt: skip
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    key = tmp_path / "key.bin"
    key.write_bytes(KEY)
    key.chmod(0o600)
    rc, _, err = cli([src, tmp_path / "out.csv", "--pseudonymize", "surname", "--key-file", key])
    assert rc == 0, err
    out = _read(tmp_path / "out.csv")
    expected = pseudonymize(pd.Series(LITERALS), KEY).tolist()
    assert out["surname"].tolist() == [*expected, ""]
    assert out["country"].tolist() == [*LITERALS, ""]
    assert len(set(expected)) == n


def test_na_country_code_is_a_quasi_identifier_value(tmp_path, cli):
    rows = [("NA", "F"), ("NA", "F"), ("NA", "M"), ("NA", "M"), ("ZA", "F"), ("ZA", "F"),
            ("ZA", "M"), ("ZA", "M"), ("BW", "F"), ("BW", "M")]  # fmt: skip
    src = tmp_path / "in.csv"
    pd.DataFrame(rows, columns=["country", "sex"]).to_csv(src, index=False)
    rc, out, err = cli([src, tmp_path / "out.csv", "--quasi", "country,sex", "--k", "2"])
    assert rc == 0, err
    rel = _read(tmp_path / "out.csv")
    assert rel["country"].ne("").all() and rel.groupby(["country", "sex"]).size().min() >= 2
    # The Namibian rows keep "NA" in their (possibly generalized, "{BW|NA}") label.
    src_country = _read(src)["country"]
    for got, was in zip(rel["country"], src_country, strict=True):
        assert was in re.split(r"[{|}]", got), (was, got)


def test_na_values_option_lists_what_is_missing(tmp_path, cli):
    src = tmp_path / "in.csv"
    pd.DataFrame({"name": ["?", "NA", "unknown", "Ann", ""],
                  "note": ["?", "NA", "unknown", "x", ""]}).to_csv(src, index=False)  # fmt: skip
    key = tmp_path / "key.bin"
    key.write_bytes(KEY)
    key.chmod(0o600)
    argv = [src, tmp_path / "out.csv", "--pseudonymize", "name", "--key-file", key,
            "--na-values", "?,unknown"]  # fmt: skip
    rc, _, err = cli(argv)
    assert rc == 0, err
    out = _read(tmp_path / "out.csv")
    na_ann = pseudonymize(pd.Series(["NA", "Ann"]), KEY).tolist()
    assert out["name"].tolist() == ["", na_ann[0], "", na_ann[1], ""]
    assert out["note"].tolist() == ["", "NA", "", "x", ""]


# --- item 10c: everything checkable is checked before the work ---------------------------------

# fmt: off
PREFLIGHT = [
    (["--quasi", "age,age", "--k", "5"], r"--quasi names 'age' twice"),
    (["--quasi", "age,sex", "--k", "5", "--sensitive", "diagnosis", "--l", "2",
      "--pseudonymize", "name,name", "--key-file", "KEY"], r"--pseudonymize names 'name' twice"),
    (["--suppress", "income,income"], r"--suppress names 'income' twice"),
    (["--drop", "card,card"], r"--drop names 'card' twice"),
    (["--mask", "email:email,email:card"], r"--mask names 'email' twice"),
    (["--substitute", "phone:phone,phone:name", "--key-file", "KEY"],
     r"--substitute names 'phone' twice"),
    (["--quasi", "zip", "--k", "5", "--hierarchy", "zip:prefix,zip:set"],
     r"--hierarchy names 'zip' twice"),
    (["--mask", "mail:email"], r"--mask: unknown column"),
    (["--substitute", "tel:phone", "--key-file", "KEY"], r"--substitute: unknown column"),
    (["--substitute", "phone:fax", "--key-file", "KEY"], r"--substitute.*kind must be one of"),
    (["--mask", "phone:rot13"], r"--mask.*rule must be one of"),
    (["--pseudonymize", "name", "--drop", "name", "--key-file", "KEY"],
     r"'name' is given to both --pseudonymize and --drop"),
    (["--pseudonymize", "name", "--key-file", "nokey.bin"], r"--key-file: .*nokey.bin"),
    (["--k", "5"], r"--quasi must name at least one column when --k is given"),
    (["--quasi", "age", "--k", "5", "--max-suppression", "1.5"], r"max-suppression must be in"),
    (["--quasi", "age", "--k", "5", "--sensitive", "diagnosis", "--t", "2"], r"--t must be in"),
    (["--quasi", "age", "--k", "5", "--sensitive", "diagnosis", "--l", "0.5"], r"--l must be in"),
    (["--quasi", "age", "--k", "5", "--sensitive", "diagnosis", "--l", "2.5"],
     r"--l must be an integer"),
    (["--quasi", "age", "--k", "5", "--report", "nodir/r.json"], r"--report: folder .* not"),
    (["--quasi", "age", "--k", "5", "--report", "in.csv/r.json"], r"--report: .*not a folder"),
    (["--quasi", "age", "--k", "5", "--report", "."], r"--report .* is a folder"),
    (["--quasi", "age", "--k", "5", "OUT=nodir/out.csv"], r"output: folder .* not"),
    (["--quasi", "age", "--k", "5", "OUT=."], r"output .* is a folder"),
    (["--quasi", "age", "--k", "5", "--na-values", "NA,NA"], r"--na-values names 'NA' twice"),
]
# fmt: on


@pytest.mark.parametrize("extra, match", PREFLIGHT)
def test_bad_settings_are_refused_before_any_work(files, cli, work, tmp_path, monkeypatch,
                                                  extra, match):  # fmt: skip
    src, dst, key = files
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    argv = [src, dst]
    for a in extra:
        if a.startswith("OUT="):
            argv[1] = a[4:]
        else:
            argv.append(str(key) if a == "KEY" else a)
    rc, out, err = cli(argv)
    assert rc == 2, (out, err)
    assert re.search(match, err), err
    assert not work, "the table was anonymized before the error"
    assert _listing(tmp_path) == before


def _sysfs_refuses_new_files():
    try:
        fd, path = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(fd)
    os.unlink(path)
    return False


@pytest.mark.skipif(
    not Path("/sys").is_dir() or not _sysfs_refuses_new_files(),
    reason="needs a folder no one may create files in (Linux sysfs)",
)
@pytest.mark.parametrize("which", ["output", "--report"])
def test_an_unwritable_folder_is_refused_before_any_work(files, cli, work, tmp_path, which):
    """sysfs refuses new files even to root: the real 'permission denied' of a folder."""
    src, dst, _ = files
    before = _listing(tmp_path)
    out, report = (
        ("/sys/out.csv", tmp_path / "r.json") if which == "output" else (dst, "/sys/r.json")
    )
    rc, _, err = cli([src, out, "--quasi", "age,sex", "--k", "5", "--report", report])
    assert rc == 2 and f"{which}: cannot write in folder '/sys'" in err, err
    assert not work and _listing(tmp_path) == before


# --- item 10d: atomic, durable, owner-only writes ----------------------------------------------


@pytest.mark.parametrize("fail", ["output", "report"])
@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 KeyboardInterrupt()])  # fmt: skip
def test_a_failed_write_leaves_everything_as_it_was(files, cli, monkeypatch, tmp_path, fail, exc):
    src, dst, _ = files
    report = tmp_path / "report.json"
    dst.write_text("old output\n")
    report.write_text("old report\n")
    before = _listing(tmp_path)
    real_to_csv = pd.DataFrame.to_csv

    def broken_csv(self, f, *a, **kw):
        real_to_csv(self.head(10), f, *a, **kw)  # half a file, then the disk fills up
        raise exc

    def broken_json(self):
        raise exc

    if fail == "output":
        monkeypatch.setattr(pd.DataFrame, "to_csv", broken_csv)
    else:
        monkeypatch.setattr(anon_table.Report, "to_json", broken_json)
    argv = [src, dst, "--quasi", "age,sex", "--k", "5", "--report", report, "--force"]
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            cli(argv)
    else:
        rc, _, err = cli(argv)
        assert rc == 2 and "No space left" in err, err
    assert _listing(tmp_path) == before
    assert dst.read_text() == "old output\n" and report.read_text() == "old report\n"


_SLOW_WRITER = """
import sys, time
import pandas as pd
import dpjax.cli
real = pd.DataFrame.to_csv
def slow(self, f, *a, **kw):
    real(self.head(5), f, *a, **kw)
    f.flush()
    time.sleep(60)
pd.DataFrame.to_csv = slow
sys.exit(dpjax.cli.main(sys.argv[1:]))
"""


def _terminate_mid_write(cmd, folder):
    """Runs ``cmd``, sends SIGTERM once a temporary output holds data; returns (rc, stderr)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, ("finished before it could be stopped", proc.communicate())
            temps = [p for p in Path(folder).glob(".*") if p.stat().st_size]  # hidden, filled
            if temps:
                break
            time.sleep(0.005)
        assert temps, "no temporary output appeared"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err.decode()


def test_sigterm_mid_write_leaves_no_temp_file(files, tmp_path):
    """A real ``dpjax anonymize`` process, stopped by SIGTERM while its output is half written."""
    src, dst, _ = files
    before = _listing(tmp_path)
    cmd = [sys.executable, "-c", _SLOW_WRITER, "anonymize", str(src), str(dst), "--quasi", "age",
           "--k", "5"]  # fmt: skip
    rc, err = _terminate_mid_write(cmd, tmp_path)
    assert rc == -signal.SIGTERM, err
    assert _listing(tmp_path) == before, err


@pytest.mark.slow
def test_sigterm_while_writing_a_large_table_leaves_no_temp_file(tmp_path):
    """The same with the real writer: a 600k-row table takes about two seconds to write."""
    n = 600_000
    rng = np.random.default_rng(9)
    src = tmp_path / "in.csv"
    pd.DataFrame(
        {"id": np.arange(n).astype(str), "name": rng.integers(0, 10**9, n).astype(str)}
    ).to_csv(src, index=False)
    before = _listing(tmp_path)
    cmd = [sys.executable, "-m", "dpjax.cli", "anonymize", str(src), str(tmp_path / "out.csv"),
           "--mask", "name:last2"]  # fmt: skip
    rc, err = _terminate_mid_write(cmd, tmp_path)
    assert rc == -signal.SIGTERM, err
    assert _listing(tmp_path) == before, err


def test_outputs_are_fsynced_before_the_rename_and_the_folder_after(files, cli, monkeypatch,
                                                                     tmp_path):  # fmt: skip
    src, dst, _ = files
    report = tmp_path / "report.json"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append((kind, os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.stat(a).st_ino, Path(b).name))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rc, _, err = cli([src, dst, "--quasi", "age,sex", "--k", "5", "--report", report])
    assert rc == 0, err
    replaced = [e for e in events if e[0] == "replace"]
    assert sorted(e[2] for e in replaced) == ["out.csv", "report.json"]
    for ev in replaced:
        i = events.index(ev)
        assert ("file", ev[1]) in events[:i], f"{ev[2]} renamed before it was fsynced"
    last = max(events.index(e) for e in replaced)
    assert ("dir", os.stat(tmp_path).st_ino) in events[last:], "folder not fsynced after rename"


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=oct)
def test_outputs_are_owner_only(files, cli, tmp_path, umask):
    src, dst, _ = files
    report = tmp_path / "report.json"
    dst.write_text("old\n")
    dst.chmod(0o644)
    old = os.umask(umask)
    try:
        rc, _, err = cli([src, dst, "--quasi", "age,sex", "--k", "5", "--report", report,
                          "--force"])  # fmt: skip
    finally:
        os.umask(old)
    assert rc == 0, err
    assert _mode(dst) == 0o600 and _mode(report) == 0o600
