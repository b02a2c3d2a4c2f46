"""The research notebooks (notebooks/): stored without outputs, shaped alike, run end to end.

Each notebook is executed by ``notebooks/run.py`` (nbclient) at
``DPJAX_NOTEBOOK_SIZE=small`` on a kernel that is this interpreter; a failing
cell fails the test. ``make notebooks`` runs them at full size. The runs are
subprocesses: jupyter_client leaves zmq sockets to the garbage collector,
which pytest (warnings are errors) would report against the next test.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "notebooks" / "run.py"
_spec = importlib.util.spec_from_file_location("notebooks_run", RUN_PY)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

NOTEBOOKS = run.notebooks()
EXPECTED = [
    "01_quickstart.ipynb",
    "02_accounting.ipynb",
    "03_memory.ipynb",
    "04_auditing.ipynb",
    "05_data_privacy.ipynb",
    "06_federated_encrypted.ipynb",
    "07_finetune_canaries.ipynb",
]


def _ids(paths):
    return [p.stem for p in paths]


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_notebooks_are_all_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    carrying = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count)
    ]
    assert not carrying, (
        f"{path.name}: cells {carrying} carry outputs; strip them before committing"
    )
    attached = [
        i for i, c in enumerate(nb.cells) if c.get("attachments") or "execution" in c.metadata
    ]
    assert not attached, f"{path.name}: cells {attached} carry attachments or run times"


def test_strip_clears_what_a_run_leaves(tmp_path):
    path = _notebook(tmp_path, "print(1)", "2")
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"})]
    nb.cells[0].execution_count, nb.cells[1].execution_count = 1, 2
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    nbformat.write(nb, path)
    assert run.strip(path) is True
    clean = nbformat.read(path, as_version=4)
    assert [(c.outputs, c.execution_count, dict(c.metadata)) for c in clean.cells] == [
        ([], None, {}),
        ([], None, {}),
    ]
    assert [c.source for c in clean.cells] == ["print(1)", "2"]
    assert run.strip(path) is False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_opens_with_what_and_how_long_and_ends_with_what_next(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert "**What this shows.**" in first.source and "**How long.**" in first.source
    assert "DPJAX_NOTEBOOK_SIZE" in first.source
    size_cell = _code(nb)[0].source
    assert 'os.environ.get("DPJAX_NOTEBOOK_SIZE", "full")' in size_cell
    assert "raise ValueError" in size_cell  # a misspelt size is an error, not a full run
    last_md = [c for c in nb.cells if c.cell_type == "markdown"][-1]
    assert last_md.source.startswith("## What to try next")
    assert "Notebook run time" in nb.cells[-1].source  # the time the opening promises, measured


def _notebook(tmp_path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    return path


def _execute(tmp_path, path, timeout):
    """``run.py --size small``: (completed process, output folder = the kernel's cwd)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), "--size", "small", "--output", str(out), str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, out


def test_the_kernel_is_this_interpreter_with_the_size_set(tmp_path):
    path = _notebook(
        tmp_path,
        "import os, sys\nprint(sys.executable, os.environ['DPJAX_NOTEBOOK_SIZE'], os.getcwd())",
    )
    proc, out = _execute(tmp_path, path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    nb = nbformat.read(out / path.name, as_version=4)
    assert nb.cells[0].outputs[0].text.split() == [sys.executable, "small", str(out)]


def test_a_failing_cell_fails_the_run(tmp_path):
    path = _notebook(tmp_path, "x = 1", "raise RuntimeError('cell two fails')", "y = 2")
    proc, out = _execute(tmp_path, path, timeout=120)
    assert proc.returncode != 0
    assert "CellExecutionError" in proc.stderr and "cell two fails" in proc.stderr
    assert not (out / path.name).exists()


@pytest.mark.parametrize("size", ["tiny", "", "FULL"])
def test_an_unknown_size_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match="size must be one of"):
        run.execute(NOTEBOOKS[0], size, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_runs_end_to_end(path, tmp_path):
    proc, out = _execute(tmp_path, path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert sorted(out.iterdir()) == [out / path.name], "a notebook wrote files into its cwd"
    code = _code(nbformat.read(out / path.name, as_version=4))
    assert all(c.execution_count for c in code), "a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} drew no figure"
