"""Import structure: a light ``import dpjax``, a jax-free ``dpjax --help``, the CLI's compile cache.

Timings are measured in ``benchmarks/cli.py``, not here: these tests check
which modules load and which files the command writes.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import dpjax
from dpjax import _validate

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "jaxlib", "optax", "flax", "orbax", "pandas", "scipy", "sklearn")
EPSILON = ["epsilon", "--q", "0.01", "--sigma", "1.0", "--steps", "20", "--delta", "1e-5"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "DPJAX_NO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


def _python(code: str, **extra: str) -> set[str]:
    """Runs ``code`` in a fresh interpreter; returns the top-level packages it loaded."""
    probe = f"{code}\nimport sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=_env(**extra), capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return set(out.stdout.split())


def _imported_by_command(args: list[str]) -> set[str]:
    """Top-level packages ``python -X importtime -m dpjax ARGS`` imports (from its import log)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dpjax", *args], env=_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    names = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "dpjax" in names  # the log was read (a parser that finds nothing cannot pass)
    return names


def test_import_dpjax_loads_no_jax_flax_pandas_or_orbax():
    loaded = _python("import dpjax")
    assert "dpjax" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_building_the_cli_parser_imports_no_jax():
    loaded = _python("import dpjax.cli; dpjax.cli.build_parser()")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    "args",
    [["--help"], ["epsilon", "--help"], ["calibrate", "--help"], ["train", "--help"],
     ["query", "--help"], ["anonymize", "--help"], ["audit", "step", "--help"]],
)  # fmt: skip
def test_help_imports_no_jax(args):
    assert not _imported_by_command(args) & set(HEAVY)


@pytest.mark.parametrize(
    ("name", "loads", "stays_out"),
    [
        ("clipped_grad", {"jax"}, {"flax", "pandas", "orbax"}),
        ("dp_sgd", {"jax", "optax"}, {"flax", "pandas", "orbax"}),
        ("nnx", {"flax"}, {"pandas", "orbax"}),
        ("anonymize", {"pandas"}, {"flax", "orbax"}),
        ("mechanisms", {"jax"}, {"flax", "orbax"}),
    ],
)
def test_public_names_load_their_area_on_first_access(name, loads, stays_out):
    loaded = _python(f"import dpjax; dpjax.{name}")
    assert loads <= loaded, sorted(loads - loaded)
    assert not loaded & stays_out, sorted(loaded & stays_out)


def test_every_public_name_resolves_to_its_source_object():
    import dpjax.grad
    import dpjax.privacy

    for name in dpjax.__all__:
        assert getattr(dpjax, name) is not None, name
    assert set(dpjax.__all__) <= set(dir(dpjax))
    assert dpjax.clipped_grad is dpjax.grad.clipped_grad
    assert dpjax.PrivacyBudget is dpjax.privacy.PrivacyBudget
    from dpjax import secure_key  # from-import goes through the lazy face too

    assert secure_key is dpjax.random.secure_key


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        dpjax.not_a_name  # noqa: B018
    from dpjax import digits

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        digits.nope  # noqa: B018


def test_the_cli_choice_constants_match_the_library():
    from dpjax.anonymize.masking import MASK_RULES
    from dpjax.audit.mechanism import VARIANTS
    from dpjax.mechanisms import _table, queries

    assert tuple(MASK_RULES) == _validate.MASK_RULE_NAMES
    assert VARIANTS == _validate.AUDIT_VARIANTS
    assert _table.MISSING == _validate.MISSING_POLICIES
    assert queries.STATISTICS == _validate.QUERY_STATISTICS


def _cache_entries(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.name.endswith("-cache")} if path.exists() else set()


def _epsilon(cache_home: Path, **extra: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "dpjax", *EPSILON, "--accountant", "pld", "--json"],
        env=_env(XDG_CACHE_HOME=str(cache_home), **extra), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)["results"][0]["epsilon"]


def test_the_command_caches_compiled_programs_and_reuses_them(tmp_path):
    cache = tmp_path / "dpjax" / "jax-cache"
    first = _epsilon(tmp_path)
    entries = _cache_entries(cache)
    assert entries, "the first run wrote no compilation cache entries"
    for d in (cache, cache.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    second = _epsilon(tmp_path)
    assert second == first
    assert _cache_entries(cache) == entries  # every program came from the cache


def test_the_compile_cache_can_be_turned_off(tmp_path):
    _epsilon(tmp_path, DPJAX_NO_COMPILE_CACHE="1")
    assert not (tmp_path / "dpjax").exists()


def test_the_library_and_in_process_main_set_no_global_jax_config(monkeypatch, capsys):
    import jax

    from dpjax import cli

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    before = jax.config.jax_compilation_cache_dir
    assert cli.main([*EPSILON, "--accountant", "rdp"]) == 0
    assert "rdp" in capsys.readouterr().out
    assert jax.config.jax_compilation_cache_dir == before
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
