"""Atomic, durable, owner-only writes of the files ``dpjax anonymize`` releases.

Each file is written to a temporary file in its own folder (so the final rename
never crosses file systems), flushed and ``fsync``-ed, renamed over the target
with :func:`os.replace` (atomic on POSIX and Windows), and then the folder is
``fsync``-ed so that the rename itself survives a crash. All files of one call
are written before any is renamed, so a failure while writing (a full disk, an
exception, Ctrl-C, SIGTERM or SIGHUP) leaves every target as it was and removes
every temporary file. Only SIGKILL or a power cut can leave a temporary file
behind; it is named ``.<target>.dpjax-tmp-*`` beside its target.

The files are created with mode 0600 (owner only) whatever the umask and the
mode of a file they replace: pseudonymized data is personal data (GDPR Art.
4(5)), and widening access is the owner's decision (``chmod``).

References: the ``rename``/``fsync`` protocol of Pillai et al. 2014, All File
Systems Are Not Created Equal (OSDI); Python's :func:`os.replace`.

Example:
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> from dpjax.anonymize.files import write_atomically
    >>> path = Path(tempfile.mkdtemp()) / "out.txt"
    >>> write_atomically([(path, lambda f: f.write("hello\\n"))])
    >>> path.read_text(), oct(os.stat(path).st_mode & 0o777)
    ('hello\\n', '0o600')
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import IO

__all__ = ["FILE_MODE", "fsync_dir", "signals_raise", "write_atomically"]

FILE_MODE = 0o600

Writer = Callable[[IO[str]], object]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flushes a folder's entries (a rename in it) to disk; a no-op off POSIX."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP while files are being written."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turns SIGTERM and SIGHUP into an exception for the duration, so cleanup runs.

    On leaving by such a signal, the previous handlers are restored and the signal
    is raised again, so the process ends as the sender meant (exit status 128 + n).
    Outside the main thread (where handlers cannot be set) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGHUP")
    sigs = [getattr(signal, n) for n in names if hasattr(signal, n)]

    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:  # a second signal must not interrupt the cleanup the first started
            fired.append(signum)
            raise _Terminated(signum)

    old = {s: signal.signal(s, handler) or signal.SIG_DFL for s in sigs}  # None: set in C
    try:
        yield
    except _Terminated as e:
        for s, h in old.items():
            signal.signal(s, h)
        old = {}
        signal.raise_signal(e.signum)
        raise SystemExit(128 + e.signum) from None  # if the old handler returned
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _temp_for(target: str) -> tuple[int, str]:
    folder, name = os.path.split(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.dpjax-tmp-", dir=folder)
    if os.name == "posix":
        os.fchmod(fd, FILE_MODE)
    return fd, tmp


def write_atomically(targets: Sequence[tuple[str | os.PathLike[str], Writer]]) -> None:
    """Writes each ``(path, writer)``: ``writer(f)`` fills a text file that replaces ``path``.

    All temporary files are written and ``fsync``-ed first, then each is renamed
    over its target, then the targets' folders are ``fsync``-ed. On any exception
    (or SIGTERM/SIGHUP) before the renames, every temporary file is removed and
    the targets are untouched.
    """
    temps: list[tuple[str, str]] = []
    with signals_raise():  # outermost: the temporary files go before the signal is re-raised
        try:
            for path, writer in targets:
                fd, tmp = _temp_for(os.fspath(path))
                temps.append((tmp, os.fspath(path)))
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                    writer(f)
                    f.flush()
                    os.fsync(f.fileno())
            for tmp, path in temps:
                os.replace(tmp, path)
        except BaseException:
            for tmp, _ in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for _, p in temps}):
        fsync_dir(folder)
