"""The deployed server's run record: a JSON file and the model beside it, never overwritten.

``open_record(path)`` reserves ``path`` (owner-only, refused if it exists);
each ``write`` replaces the JSON and the ``.npz`` of the model atomically, so a
reader (a test, a dashboard) never sees half a record while the run goes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["RunRecord", "open_record", "read_record"]


class RunRecord:
    """A reserved record path; :meth:`write` replaces its contents atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.arrays = path.with_suffix(".npz")

    def write(self, record: dict[str, Any], params: Any, history: list | None = None) -> None:
        """Writes ``record`` as JSON and ``params`` (and each round's, if kept) as ``.npz``."""
        arrays = {f"final/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))}
        for r, leaves in enumerate(history or []):
            if leaves is not None:
                arrays.update({f"round{r}/{i}": np.asarray(x) for i, x in enumerate(leaves)})
        _replace(self.arrays, lambda f: np.savez(f, **arrays))
        text = json.dumps({**record, "arrays": self.arrays.name}, indent=2)
        _replace(self.path, lambda f: f.write(text.encode()))


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        write(f)
    os.replace(tmp, path)


def open_record(path: str | os.PathLike) -> RunRecord:
    """Reserves ``path`` for a run record (mode 0600).

    Raises:
      ValueError: ``path`` (or its ``.npz``) exists: records are never overwritten.
    """
    p = Path(path)
    for q in (p, p.with_suffix(".npz")):
        if q.exists():
            raise ValueError(f"record {q} already exists; run records are never overwritten")
    p.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return RunRecord(p)


def read_record(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON record and its arrays (``final/<i>``, ``round<r>/<i>``) as written last."""
    p = Path(path)
    record = json.loads(p.read_text())
    with np.load(p.with_name(record["arrays"])) as z:
        arrays = {k: z[k] for k in z.files}
    return record, arrays
