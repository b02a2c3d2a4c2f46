"""Executes the research notebooks with nbclient (``make notebooks``; tests/test_notebooks.py).

The kernel is always this interpreter: a kernelspec written to a temporary
directory points at ``sys.executable``, so the notebooks run on the virtualenv
that runs this script whatever kernels Jupyter has installed elsewhere. The
size knob ``DPJAX_NOTEBOOK_SIZE`` (``small`` or ``full``) is set in the
kernel's environment and read by each notebook's first code cell.

    python notebooks/run.py                      # all, full size, into notebooks/_build/
    python notebooks/run.py --size small 01_quickstart.ipynb
    python notebooks/run.py --strip              # clear outputs of the committed notebooks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SIZES = ("small", "full")
KERNEL_NAME = "dpjax-notebooks"


def notebooks() -> list[Path]:
    """The committed notebooks, in reading order (``NN_name.ipynb``)."""
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def _kernel_manager(kernels_dir: Path, size: str) -> KernelManager:
    spec_dir = kernels_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"dpjax ({Path(sys.executable).parent.parent.name})",
        "language": "python",
        "env": {"DPJAX_NOTEBOOK_SIZE": size},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    # Local IPC sockets in the private temporary directory, not TCP on localhost.
    return KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=ksm,
        transport="ipc",
        ip=str(kernels_dir.parent / "kernel-ipc"),
    )


def execute(path: Path, size: str, *, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Runs every cell of ``path`` top to bottom; raises ``CellExecutionError`` on a failing cell.

    Args:
      path: the notebook.
      size: ``"small"`` (a quick run: the tests) or ``"full"``.
      cwd: the kernel's working directory (files a notebook writes land there).
      timeout: seconds allowed per cell.

    Returns:
      The executed notebook, outputs included.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="dpjax-kernels-") as tmp:
        km = _kernel_manager(Path(tmp) / "kernels", size)
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute()
    return nb


def strip(path: Path) -> bool:
    """Removes outputs, execution counts and run metadata from ``path``; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after)
    return after != before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help="notebooks: paths, or names in notebooks/ (default: all)"
    )
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--output", type=Path, default=HERE / "_build")
    parser.add_argument("--strip", action="store_true", help="clear outputs in place, run nothing")
    args = parser.parse_args(argv)
    paths = [Path(n) if Path(n).is_file() else HERE / n for n in args.names] or notebooks()
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if args.strip:
        for path in paths:
            print(f"{path.name}: {'stripped' if strip(path) else 'already clean'}")
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    for path in paths:
        t0 = time.perf_counter()
        print(f"{path.name} ({args.size}) ...", flush=True)
        nb = execute(path, args.size, cwd=args.output)
        nbformat.write(nb, args.output / path.name)
        print(f"  {time.perf_counter() - t0:.0f} s -> {args.output / path.name}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
