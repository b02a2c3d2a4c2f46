"""The wheel ships `kernels/` as `dpjax.kernels`: build it, install it apart, import it."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_and_imports_dpjax_kernels(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("dpjax-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.endswith(".py")}
    expected = {f"dpjax/{p.relative_to(ROOT / 'dpjax')}" for p in (ROOT / "dpjax").rglob("*.py")}
    expected |= {
        f"dpjax/kernels/{p.relative_to(ROOT / 'kernels')}" for p in (ROOT / "kernels").rglob("*.py")
    }
    assert expected <= shipped, f"missing from the wheel: {sorted(expected - shipped)}"
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    code = (
        "import dpjax, dpjax.kernels.clip, dpjax.kernels.per_example, dpjax.kernels.noise;"
        "print(dpjax.__file__); print(dpjax.kernels.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    dpjax_file, kernels_file = out.split()
    assert dpjax_file.startswith(str(target)) and kernels_file.startswith(str(target))
    assert Path(kernels_file) == target / "dpjax" / "kernels" / "__init__.py"


def test_kernels_import_only_jax_and_numpy():
    for path in (ROOT / "kernels").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                mod = s.split()[1]
                assert mod.split(".")[0] in {
                    "jax",
                    "numpy",
                    "__future__",
                    "typing",
                    "collections",
                    "functools",
                    "itertools",
                    "math",
                    "dataclasses",
                    "",
                } or mod.startswith("."), f"{path.name}: {s}"


def test_lower_bounds_are_the_oldest_tested_stack():
    """pyproject's lower bounds name exactly the stack `make test-oldest` installs."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = dict(d.split(">=") for d in deps)
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints" / "oldest.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert lower == pins


def test_no_exact_pins_in_the_environment_under_test():
    """Exact pins of test oracles stay in their own virtualenv (tests/oracles)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    test_deps = project["optional-dependencies"]["test"]
    assert not [d for d in project["dependencies"] + test_deps if "==" in d]


def test_a_source_tree_uses_the_kernels_beside_its_dpjax(tmp_path):
    """dpjax and dpjax.kernels come from one tree, whatever else is installed.

    A copy of the source tree put first on ``sys.path`` must load its own
    ``kernels/``, even where an editable install maps ``dpjax.kernels`` to
    another checkout (as the test environment's does).
    """
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "dpjax", src / "dpjax", ignore=skip)
    shutil.copytree(ROOT / "kernels", src / "kernels", ignore=skip)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        f"import sys; sys.path.insert(0, {str(src)!r}); import dpjax, dpjax.kernels.clip;"
        "print(dpjax.__file__); print(dpjax.kernels.__file__); print(dpjax.kernels.clip.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    dpjax_file, kernels_file, clip_file = out.split()
    assert Path(dpjax_file) == src / "dpjax" / "__init__.py"
    assert Path(kernels_file) == src / "kernels" / "__init__.py"
    assert Path(clip_file) == src / "kernels" / "clip.py"


def test_the_audit_library_does_not_depend_on_the_digits_demo():
    for path in (ROOT / "dpjax" / "audit").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                assert not s.startswith(
                    ("from dpjax.digits", "import dpjax.digits", "from dpjax.train",
                     "import dpjax.train", "from dpjax import digits", "from dpjax import train")
                ), f"{path.name}: {s}"  # fmt: skip
