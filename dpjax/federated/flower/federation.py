"""A Flower federation on this machine: one SuperLink and N SuperNodes as separate processes.

For tests, demos and benchmarks of a deployment without other machines. Every
process listens on 127.0.0.1 only, on ports picked free, in insecure mode
(plain HTTP on loopback; a real deployment uses TLS and node authentication,
see docs/federated_flower.md), with Flower's telemetry off and runtime
dependency installation disabled (the apps run in the environment that holds
``bin_dir``). Each process starts in its own session; :meth:`close` stops
every process this object started, and every process those started, by PID.
Nothing here imports Flower: the executables come from ``bin_dir`` (e.g.
``.venv-flower/bin``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpjax import _validate

__all__ = ["LocalFederation", "free_port", "write_app"]

_APP_MODULE = "dpjax_flower_app"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    raise TypeError(f"run config values must be bool, int, float or str, got {type(v).__name__}")


def _toml_table(values: Mapping[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in values.items())


def write_app(directory: str | os.PathLike, source: str, config: Mapping[str, Any]) -> Path:
    """Writes a Flower app (``pyproject.toml`` + one module) that ``flwr run`` can submit.

    Args:
      directory: where to write (created if needed).
      source: the Python source of the app module; it must define
        ``client_app`` and ``server_app`` (e.g. from ``make_client_app`` and
        ``make_server_app``).
      config: the run config's keys and default values (``flwr run
        --run-config`` may override only these).

    Returns:
      The app directory.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{_APP_MODULE}.py").write_text(source)
    (d / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["hatchling"]\n'
        'build-backend = "hatchling.build"\n\n'
        "[project]\n"
        'name = "dpjax-flower-app"\n'
        'version = "1.0.0"\n'
        'description = "dpjax DP-FedAvg on Flower"\n'
        'license = "Apache-2.0"\n'
        "dependencies = []\n\n"
        "[tool.flwr.app]\n"
        'publisher = "dpjax"\n\n'
        "[tool.flwr.app.components]\n"
        f'serverapp = "{_APP_MODULE}:server_app"\n'
        f'clientapp = "{_APP_MODULE}:client_app"\n\n'
        "[tool.flwr.app.config]\n" + _toml_table(config)
    )
    return d


def _stat(pid: int) -> list[str] | None:
    # Fields after the command name: state, ppid, ..., starttime (index 19).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            out.setdefault(int(st[1]), []).append(int(entry))
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (Linux /proc)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _identity(pid: int) -> tuple[int, str] | None:
    st = _stat(pid)
    return None if st is None else (pid, st[19])


def _alive(ident: tuple[int, str]) -> bool:
    st = _stat(ident[0])
    return st is not None and st[19] == ident[1] and st[0] != "Z"


def _signal(idents: Sequence[tuple[int, str]], sig: int) -> None:
    # Only a process whose start time is the one recorded: a reused PID is left alone.
    for ident in idents:
        if _alive(ident):
            try:
                os.kill(ident[0], sig)
            except (ProcessLookupError, PermissionError):
                pass


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1 (use as a context manager).

    Args:
      bin_dir: the ``bin`` directory holding ``flower-superlink``,
        ``flower-supernode`` and ``flwr`` (Flower 1.42).
      node_configs: one ``--node-config`` mapping per SuperNode (e.g.
        ``{"client-id": 3}``).
      workdir: where logs and Flower's home go (a fresh temporary directory by default).
      env: extra environment variables for every process.
      start_timeout: seconds to wait for the SuperLink's port, > 0.

    Example (not run here: it needs Flower and starts processes)::

        with LocalFederation(".venv-flower/bin", [{"client-id": i} for i in range(3)]) as fed:
            fed.run(app_dir, {"num-rounds": 2}, timeout=300)
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike,
        node_configs: Sequence[Mapping[str, Any]],
        *,
        workdir: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ):
        self.bin = Path(bin_dir).resolve()
        for exe in ("flower-superlink", "flower-supernode", "flwr"):
            if not (self.bin / exe).exists():
                raise FileNotFoundError(
                    f"bin_dir {self.bin} has no {exe}: install dpjax[flower] there "
                    "(`make flower` builds .venv-flower)"
                )
        if not node_configs:
            raise ValueError("node_configs must list at least one SuperNode, got none")
        _validate.positive("start_timeout", start_timeout)
        self.node_configs = [dict(c) for c in node_configs]
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="flwr-")
        self.workdir = Path(workdir if workdir is not None else self._tmp.name)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
            **(env or {}),
        }
        self.start_timeout = float(start_timeout)
        self.superlink: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen | None] = []
        self._started: dict[tuple[int, str], None] = {}  # (pid, start time): ours
        self._runs = 0
        self._popens: list[subprocess.Popen] = []

    # -- processes ----------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        try:
            p = subprocess.Popen(
                args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )
        finally:
            log.close()
        ident = _identity(p.pid)
        if ident is not None:
            self._started[ident] = None
        self._popens.append(p)
        return p

    def start(self) -> LocalFederation:
        """Starts the SuperLink, waits for its port, then starts the SuperNodes."""
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.superlink = self._spawn(
            "superlink",
            [
                str(self.bin / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.superlink.poll() is not None:
                raise RuntimeError(
                    f"flower-superlink exited with {self.superlink.returncode}; see "
                    f"{self.workdir / 'superlink.log'}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the SuperLink did not listen within {self.start_timeout:g} s"
                    ) from None
                time.sleep(0.2)
        for i, cfg in enumerate(self.node_configs):
            node_cfg = " ".join(f"{k}={_toml_value(v)}" for k, v in cfg.items())
            self.nodes.append(
                self._spawn(
                    f"supernode{i}",
                    [
                        str(self.bin / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{self.port}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        node_cfg,
                    ],
                )
            )
        return self

    def _remember_trees(self) -> list[tuple[int, str]]:
        # Every live process under one of ours is ours (started by Flower for us).
        for ident in [i for i in self._started if _alive(i)]:
            for pid in _tree(ident[0]):
                if (found := _identity(pid)) is not None:
                    self._started[found] = None
        return [i for i in self._started if _alive(i)]

    def kill_node(self, i: int) -> None:
        """SIGKILLs SuperNode ``i`` and everything it started (a crash, mid-round if busy)."""
        node = self.nodes[i]
        if node is None:
            raise ValueError(f"SuperNode {i} was already killed")
        self._remember_trees()
        _signal([x for p in _tree(node.pid) if (x := _identity(p)) is not None], signal.SIGKILL)
        node.wait(timeout=30)
        self.nodes[i] = None

    def submit(self, app_dir: str | os.PathLike, run_config: Mapping[str, Any]) -> subprocess.Popen:
        """Submits a run with ``flwr run --stream`` (returns at once; the run streams its log)."""
        self._runs += 1
        overrides = self.workdir / f"run-config-{self._runs}.toml"
        overrides.write_text(_toml_table(run_config))
        return self._spawn(
            f"flwr-run-{self._runs}",
            [
                str(self.bin / "flwr"),
                "run",
                str(Path(app_dir).resolve()),
                "local",
                "--run-config",
                str(overrides),
                "--stream",
            ],
        )

    def close(self) -> None:
        """Stops every process started here and their descendants: SIGTERM, then SIGKILL."""
        idents = self._remember_trees()
        _signal(idents, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(_alive(i) for i in idents):
            time.sleep(0.2)
        _signal(self._remember_trees() + idents, signal.SIGKILL)
        for p in self._popens:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._tmp is not None:
            self._tmp.cleanup()

    def alive(self) -> list[int]:
        """PIDs started here (or under them) that still run."""
        return [i[0] for i in self._remember_trees()]

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
