"""The `dpjax anonymize` subcommand, run through an argparse parser on temporary files."""

import argparse
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from dpjax.anonymize import write_key
from dpjax.cli.anonymize import register
from dpjax.data.census import census_table
from tests import oracles


def _parser():
    parser = argparse.ArgumentParser(prog="dpjax")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


@pytest.fixture
def files(tmp_path):
    df = census_table(10_000, np.random.default_rng(11))
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    key = tmp_path / "key.bin"
    write_key(key)
    return src, tmp_path / "out.csv", key


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_anonymize_end_to_end(files, capsys, tmp_path):
    src, dst, key = files
    before = _digest(src)
    report = tmp_path / "report.json"
    argv = ["anonymize", str(src), str(dst), "--quasi", "age,zip,sex", "--sensitive",
            "diagnosis", "--k", "5", "--l", "2", "--pseudonymize", "name,email",
            "--key-file", str(key), "--mask", "phone:phone,card:card", "--drop", "birth_date",
            "--report", str(report)]  # fmt: skip
    assert _run(argv) == 0
    out = capsys.readouterr().out
    assert "k = " in out and "l (distinct) = " in out and "NCP = " in out and "t (EMD)" in out
    assert _digest(src) == before
    orig = pd.read_csv(src, dtype=str)
    rel = pd.read_csv(dst, dtype=str)
    q = ["age", "zip", "sex"]
    k, l_ = oracles.pycanon(rel, [("k_anonymity", q, None), ("l_diversity", q, ["diagnosis"])])
    assert k >= 5 and l_ >= 2
    assert "birth_date" not in rel.columns
    assert rel["name"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert not set(rel["email"]) & set(orig["email"])
    assert rel["card"].str.fullmatch(r"\*{4} \*{4} \*{4} \d{4}").all()
    # ZIP codes were read as text: leading zeros survive in generalized labels.
    assert rel["zip"].str.len().eq(5).all()
    rep = json.loads(report.read_text())
    assert rep["metrics"]["k"] >= 5 and rep["metrics"]["l_distinct"] >= 2
    assert rep["settings"]["quasi"] == ["age", "zip", "sex"]
    # Same key, same pseudonyms: a second run joins with the first. (Its report goes to a
    # new file: an existing report, like an existing output, is replaced only with --force.)
    dst2 = dst.with_name("out2.csv")
    assert _run([*argv[:2], str(dst2), *argv[3:-1], str(tmp_path / "report2.json")]) == 0
    assert sorted(pd.read_csv(dst2, dtype=str)["name"]) == sorted(rel["name"])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--k", "1"], r"--k must be >= 2"),
        (["--k", "5", "--quasi", "age,postcode"], r"--quasi: unknown column.*postcode"),
        (["--k", "5", "--sensitive", "zip", "--l", "2"], r"--sensitive 'zip' is also in --quasi"),
        (["--k", "5", "--l", "2"], r"--sensitive is required"),
        (["--k", "5", "--pseudonymize", "name"], r"--key-file is required"),
        (["--k", "5", "--pseudonymize", "nom", "--key-file", "KEY"], r"--pseudonymize: unknown"),
        (["--k", "5", "--mask", "phone"], r"--mask takes column:value pairs"),
        (["--k", "5", "--mask", "phone:rot13"], r"rule must be one of"),
    ],
)
def test_bad_input_gives_a_clear_error_and_leaves_the_input(files, extra, match):
    src, dst, key = files
    before = _digest(src)
    argv = ["anonymize", str(src), str(dst)]
    if "--quasi" not in extra:
        argv += ["--quasi", "age,zip,sex"]
    argv += [str(key) if a == "KEY" else a for a in extra]
    with pytest.raises(ValueError, match=match):
        _run(argv)
    assert _digest(src) == before and not dst.exists()


def test_short_key_file(files, tmp_path):
    src, dst, _ = files
    short = tmp_path / "short.bin"
    short.write_bytes(b"0123456789abcdef")
    with pytest.raises(ValueError, match=r"--key-file: .*at least 32 bytes, got 16"):
        _run(["anonymize", str(src), str(dst), "--pseudonymize", "name", "--key-file", str(short)])
    assert not dst.exists()


def test_never_overwrites_the_input(files, tmp_path, monkeypatch):
    src, dst, key = files
    before = _digest(src)
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.csv"
    link.symlink_to(src)
    for target in (str(src), "in.csv", "./sub/../in.csv", str(link)):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="is the input file; refusing to overwrite"):
            _run(["anonymize", str(src), target, "--quasi", "age", "--k", "5", "--force"])
        assert _digest(src) == before
    with pytest.raises(ValueError, match="--report .* is the input file"):
        _run(["anonymize", str(src), str(dst), "--quasi", "age", "--k", "5", "--report", "in.csv"])
    assert _digest(src) == before


def test_existing_output_needs_force(files):
    src, dst, _ = files
    dst.write_text("keep me\n")
    with pytest.raises(ValueError, match="exists; pass --force"):
        _run(["anonymize", str(src), str(dst), "--quasi", "age,sex", "--k", "5"])
    assert dst.read_text() == "keep me\n"
    assert _run(["anonymize", str(src), str(dst), "--quasi", "age,sex", "--k", "5", "--force"]) == 0
    (k,) = oracles.pycanon(pd.read_csv(dst, dtype=str), [("k_anonymity", ["age", "sex"], None)])
    assert k >= 5


def test_hierarchy_options(files, tmp_path, capsys):
    src, dst, _ = files
    tree = tmp_path / "sex.json"
    tree.write_text('{"*": {"female": ["F"], "male": ["M"]}}')
    argv = ["anonymize", str(src), str(dst), "--quasi", "age,zip,sex", "--k", "20",
            "--hierarchy", f"zip:prefix,sex:{tree}"]  # fmt: skip
    assert _run(argv) == 0
    rel = pd.read_csv(dst, dtype=str)
    assert set(rel["sex"]) <= {"F", "M", "*"}
    assert rel["zip"].str.fullmatch(r"\d*\**").all() and rel["zip"].str.len().eq(5).all()
    (k,) = oracles.pycanon(rel, [("k_anonymity", ["age", "zip", "sex"], None)])
    assert k >= 20
    with pytest.raises(ValueError, match="--hierarchy: 'income' is not in --quasi"):
        _run([*argv[:3], "--quasi", "age", "--k", "5", "--hierarchy", "income:range", "--force"])
    with pytest.raises(ValueError, match="cannot read a category tree"):
        _run([*argv[:3], "--quasi", "sex", "--k", "5", "--hierarchy", "sex:nope.json", "--force"])


def test_through_the_dpjax_dispatcher(files, monkeypatch, capsys):
    import dpjax.cli

    src, dst, _ = files
    monkeypatch.setattr(dpjax.cli, "_SUBCOMMANDS", ("dpjax.cli.anonymize",))
    rc = dpjax.cli.main(["anonymize", str(src), str(dst), "--quasi", "age,sex", "--k", "1"])
    assert rc == 2 and "--k must be >= 2" in capsys.readouterr().err
    assert dpjax.cli.main(["anonymize", str(src), str(dst), "--quasi", "age,sex", "--k", "3"]) == 0
    assert "k = " in capsys.readouterr().out
