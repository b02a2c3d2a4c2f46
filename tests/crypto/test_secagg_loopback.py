"""Secure aggregation between real processes: a server here, each client its own process.

The clients are ``python -m dpjax.crypto.secagg_loopback client`` processes
reading their input and the authkey from 0600 files this test writes
(test-only inputs; the keys of the protocol are drawn fresh in each client).
Dropouts are real: the test SIGKILLs client processes by PID at a chosen
point of the round. Every process is killed and reaped and the listener
closed by fixture finalizers; every wait is bounded.
"""

import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest

from dpjax.crypto import secagg, secagg_wire
from dpjax.crypto import secagg_loopback as lb
from dpjax.crypto.secagg import SecAggAbort, SecAggConfig

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30  # bound on any single wait (process start under load included)


def _write_0600(path: Path, write) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        write(f)
    return path


@pytest.fixture
def listener(request):
    """A listener on a free port of 127.0.0.1, closed when the test ends."""
    authkey = secrets.token_bytes(32)
    lst = lb.open_listener(authkey)
    request.addfinalizer(lst.close)
    return lst, authkey


@pytest.fixture
def spawn(request):
    """Starts a process; every process started is SIGKILLed by PID and reaped at the end."""
    started: list[subprocess.Popen] = []

    def start(cmd, **kwargs):
        proc = subprocess.Popen(cmd, **kwargs)
        started.append(proc)
        return proc

    def stop():
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=WAIT_S)

    request.addfinalizer(stop)
    return start


def _start_clients(tmp_path, spawn, port, authkey, cfg, x):
    key_file = _write_0600(tmp_path / "authkey", lambda f: f.write(authkey))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    procs = {}
    for i, row in enumerate(x):
        inp = _write_0600(tmp_path / f"x{i}.npy", lambda f, row=row: np.save(f, row))
        assert (inp.stat().st_mode & 0o777) == 0o600
        cmd = [sys.executable, "-m", "dpjax.crypto.secagg_loopback", "client"]
        cmd += ["--port", str(port), "--authkey-file", str(key_file), "--client", str(i)]
        cmd += ["--dim", str(cfg.dim), "--bits", str(cfg.bits), "--threshold", str(cfg.threshold)]
        cmd += ["--round", str(cfg.round_id), "--n-clients", str(len(x)), "--input", str(inp)]
        cmd += ["--timeout", str(WAIT_S)]
        with open(tmp_path / f"client{i}.err", "wb") as err:  # the child keeps its own copy
            procs[i] = spawn(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
    return procs


def _values(n, d, bits, seed):
    rng = np.random.default_rng(seed)  # test inputs only; masks come from the clients' keys
    return rng.integers(0, 2**bits, size=(n, d), dtype=np.uint64).astype(np.uint32)


def _plain_sum(x, ids, bits):
    return (x[list(ids)].astype(np.uint64).sum(axis=0) % 2**bits).astype(np.uint32)


def _run_round(tmp_path, listener, spawn, *, n, t, d, bits, kill_at=None, kill=(), degree=None):
    """One round; returns (result or the SecAggAbort, phases seen, exit codes, stderr, inputs)."""
    lst, authkey = listener
    cfg = SecAggConfig(7, d, bits, t)
    x = _values(n, d, bits, seed=n + d)
    procs = _start_clients(tmp_path, spawn, lst.address[1], authkey, cfg, x)
    phases = []

    def on_phase(name, clients):
        phases.append((name, clients))
        if name == kill_at:
            for c in kill:
                os.kill(procs[c].pid, signal.SIGKILL)
                procs[c].wait(timeout=WAIT_S)

    try:
        out = lb.run_server(lst, cfg, n, degree=degree, timeout=WAIT_S, on_phase=on_phase)
    except SecAggAbort as e:
        out = e
    codes = {i: p.wait(timeout=WAIT_S) for i, p in procs.items()}
    errs = {i: (tmp_path / f"client{i}.err").read_text() for i in procs}
    return out, phases, codes, errs, x


def test_every_client_survives_and_an_intruder_is_refused(tmp_path, listener, spawn):
    lst, _ = listener
    intruder = {}

    def connect_with_wrong_key():
        try:
            Client(lst.address, family="AF_INET", authkey=b"w" * 32).close()
            intruder["result"] = "accepted"
        except AuthenticationError:
            intruder["result"] = "refused"

    thread = threading.Thread(target=connect_with_wrong_key, daemon=True)
    thread.start()  # connects before the client processes have started
    n, t, d, bits = 5, 3, 37, 16
    out, phases, codes, errs, x = _run_round(tmp_path, listener, spawn, n=n, t=t, d=d, bits=bits)
    thread.join(timeout=WAIT_S)
    assert intruder == {"result": "refused"}
    assert not isinstance(out, Exception), (out, errs)
    assert codes == dict.fromkeys(range(n), 0), errs
    assert out.survivors == tuple(range(n))
    np.testing.assert_array_equal(out.total, _plain_sum(x, range(n), bits))
    assert [p for p, _ in phases] == ["keys", "shares", "masked"]
    # the masked inputs travelled packed to 16 bits: 14-byte header + 2 bytes a word
    assert out.bytes_sent["masked_input"] == n * (14 + -(-d * bits // 8))


@pytest.mark.slow  # 5-6 client processes a case (jax import each): ~3 s idle, ~10 s loaded
@pytest.mark.parametrize(
    "n, t, kill_at, kill, degree",
    [
        (6, 4, "shares", (1, 4), None),  # after sharing keys: their pair masks are rebuilt
        (6, 3, "masked", (0, 3), 4),  # after the masked input (SecAgg+, 4-regular graph)
    ],
)
def test_killed_clients_are_recovered(tmp_path, listener, spawn, n, t, kill_at, kill, degree):
    d, bits = 11, 20
    out, phases, codes, errs, x = _run_round(
        tmp_path, listener, spawn, n=n, t=t, d=d, bits=bits, kill_at=kill_at, kill=kill,
        degree=degree,
    )  # fmt: skip
    assert not isinstance(out, Exception), (out, errs)
    alive = tuple(i for i in range(n) if i not in kill)
    assert codes == {i: -signal.SIGKILL if i in kill else 0 for i in range(n)}, errs
    expected = alive if kill_at == "shares" else tuple(range(n))
    assert out.survivors == expected
    np.testing.assert_array_equal(out.total, _plain_sum(x, expected, bits))
    # and the sum of the live clients alone differs: the killed inputs were really dropped or kept
    assert not np.array_equal(_plain_sum(x, alive, bits), _plain_sum(x, range(n), bits))


@pytest.mark.slow  # 5-6 client processes a case (jax import each): ~3 s idle, ~10 s loaded
@pytest.mark.parametrize(
    "kill_at, kill, message",
    [
        ("shares", (0, 2, 4), "fewer survivors than the threshold"),
        ("masked", (1, 2, 3), "fewer than threshold survivors answered"),
    ],
)
def test_too_many_killed_aborts_without_unmasking(
    tmp_path, listener, spawn, kill_at, kill, message
):
    n, t, d, bits = 5, 3, 8, 12
    out, phases, codes, errs, _ = _run_round(
        tmp_path, listener, spawn, n=n, t=t, d=d, bits=bits, kill_at=kill_at, kill=kill
    )
    assert isinstance(out, SecAggAbort) and message in str(out), (out, errs)
    for i in range(n):
        if i in kill:
            assert codes[i] == -signal.SIGKILL
        elif kill_at == "shares":  # never asked to unmask: no share left the client
            assert codes[i] == lb.ABORTED and "aborted" in errs[i], errs[i]
        else:  # answered with b-shares only, fewer than t per secret; nothing was rebuilt
            assert codes[i] == 0, errs[i]
    seen = ["keys", "shares"] if kill_at == "shares" else ["keys", "shares", "masked"]
    assert [p for p, _ in phases] == seen  # an abort after "shares" sends no unmask request


def test_a_client_sending_malformed_bytes_is_dropped(tmp_path, listener, spawn):
    """A peer with the authkey that answers round 1 with junk counts as a dropout."""
    lst, authkey = listener
    n, t, d, bits = 4, 3, 6, 10
    cfg = SecAggConfig(7, d, bits, t)
    x = _values(n, d, bits, seed=1)
    seen = {}

    def bad_client():
        with Client(lst.address, family="AF_INET", authkey=authkey) as conn:
            _, advert = secagg.client_advertise(cfg, n)  # id n, beside the real 0..n-1
            conn.send_bytes(secagg_wire.encode(advert))
            if conn.poll(WAIT_S):
                seen["broadcast"] = type(secagg_wire.decode(conn.recv_bytes())).__name__
                conn.send_bytes(b"\x03" + b"\xff" * 40)  # a ShareKeysMsg tag, then junk
            seen["closed"] = conn.poll(WAIT_S) and _eof(conn)

    thread = threading.Thread(target=bad_client, daemon=True)
    thread.start()
    procs = _start_clients(tmp_path, spawn, lst.address[1], authkey, cfg, x)
    out = lb.run_server(lst, cfg, n + 1, timeout=WAIT_S)
    thread.join(timeout=WAIT_S)
    assert seen == {"broadcast": "KeysBroadcast", "closed": True}
    assert {i: p.wait(timeout=WAIT_S) for i, p in procs.items()} == dict.fromkeys(range(n), 0)
    assert out.survivors == tuple(range(n))
    np.testing.assert_array_equal(out.total, _plain_sum(x, range(n), bits))


def _eof(conn):
    try:
        conn.recv_bytes()
    except EOFError:
        return True
    return False


def _server_in_thread(lst, n_clients, timeout):
    """run_server in a thread: (thread, result box); the thread is a daemon, so a hang ends."""
    box = {}

    def serve():
        try:
            lb.run_server(lst, SecAggConfig(0, 4, 8, 2), n_clients, timeout=timeout)
        except SecAggAbort as e:
            box["abort"] = str(e)
        except Exception as e:  # noqa: BLE001 (reported in the assertion)
            box["error"] = repr(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, box


def test_a_silent_peer_cannot_stall_the_handshake(request):
    """A TCP peer that connects and never answers the authkey challenge is given up on."""
    lst = lb.open_listener(secrets.token_bytes(32), handshake_timeout=0.5)
    request.addfinalizer(lst.close)
    with socket.create_connection(lst.address, timeout=WAIT_S):
        start = time.monotonic()
        thread, box = _server_in_thread(lst, 2, timeout=1.0)
        thread.join(timeout=WAIT_S)
        assert not thread.is_alive(), "the server hangs on a silent peer"
    assert box == {"abort": "fewer clients than the threshold advertised keys"}
    assert time.monotonic() - start < WAIT_S


def test_a_peer_stalling_mid_message_cannot_stall_the_server(listener):
    """A peer that announces a 100-byte message and sends 4 bytes of it is dropped."""
    lst, authkey = listener
    done = threading.Event()

    def stalling_peer():
        with Client(lst.address, family="AF_INET", authkey=authkey) as conn:
            os.write(conn.fileno(), struct.pack("!i", 100) + b"\x01abc")  # a frame's first bytes
            done.wait(timeout=WAIT_S)

    peer = threading.Thread(target=stalling_peer, daemon=True)
    thread, box = _server_in_thread(lst, 2, timeout=1.0)
    peer.start()
    thread.join(timeout=WAIT_S)
    done.set()
    assert not thread.is_alive(), "the server hangs on a half-sent message"
    assert box == {"abort": "fewer clients than the threshold advertised keys"}
    peer.join(timeout=WAIT_S)


def test_server_with_no_clients_aborts_at_its_deadline(listener):
    lst, _ = listener
    with pytest.raises(SecAggAbort, match="fewer clients than the threshold"):
        lb.run_server(lst, SecAggConfig(0, 4, 8, 2), 3, timeout=0.2)


def test_client_without_a_server_aborts(listener):
    lst, authkey = listener
    port = lst.address[1]
    lst.close()  # nothing listens on the port any more
    with pytest.raises(SecAggAbort, match="cannot connect"):
        lb.run_client(port, authkey, SecAggConfig(0, 3, 8, 2), 0, np.zeros(3, np.uint32),
                      n_clients=3, timeout=1.0)  # fmt: skip


_CFG = SecAggConfig(0, 3, 8, 2)
_GOOD = dict(port=9, authkey=b"k" * 16, config=_CFG, client=0, value=np.zeros(3, np.uint32))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"authkey": b"short"}, "authkey"),
        ({"value": np.zeros(4, np.uint32)}, "value"),
        ({"value": np.full(3, 256)}, "value"),
        ({"config": SecAggConfig(0, 3, 8, 1)}, "threshold"),
    ],
)
def test_client_rejects_bad_arguments_before_connecting(change, match):
    with pytest.raises(ValueError, match=match):
        lb.run_client(**{**_GOOD, **change}, n_clients=3, timeout=1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"timeout": 0.0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"n_clients": 1}, "n_clients"),
        ({"n_clients": 8, "degree": 3}, "degree"),
        ({"n_clients": 8, "degree": 0}, "degree"),
        ({"config": SecAggConfig(0, 3, 8, 5), "n_clients": 8, "degree": 2}, "degree"),
    ],
)
def test_server_rejects_bad_arguments_before_accepting(listener, kwargs, match):
    lst, _ = listener
    args = {"config": _CFG, "n_clients": 3, "timeout": 1.0, **kwargs}
    with socket.create_connection(lst.address, timeout=0.3) as peer:  # queued, not accepted
        with pytest.raises(ValueError, match=match):
            lb.run_server(lst, **args)
        with pytest.raises(TimeoutError):  # no authkey challenge came: nothing was accepted
            peer.recv(1)


def test_message_size_cap_fits_every_message():
    """The cap on one message holds the largest of each kind for a cohort of 20."""
    n, d, bits = 20, 50, 16
    cfg = SecAggConfig(0, d, bits, 3)
    states, adverts = zip(*(secagg.client_advertise(cfg, i) for i in range(n)), strict=True)
    server, broadcasts = secagg.server_collect_keys(cfg, adverts)
    shares = [secagg.client_share_keys(cfg, states[i], broadcasts[i]) for i in range(n)]
    server, inboxes = secagg.server_collect_shares(server, [m for _, m in shares])
    states = [s for s, _ in shares]
    masked = [
        secagg.client_masked_input(cfg, states[i], inboxes[i], np.zeros(d, np.uint32))
        for i in range(n)
    ]
    server, request = secagg.server_collect_masked(server, [m for _, m in masked])
    answer = secagg.client_unmask(cfg, masked[0][0], request)[1]
    msgs = [adverts[0], broadcasts[0], shares[0][1], secagg_wire.Inbox(inboxes[0]), request]
    sizes = [len(secagg_wire.encode(m)) for m in [*msgs, masked[0][1], answer]]
    assert max(sizes) <= lb._max_message(cfg, n)
    assert max(sizes) > lb._max_message(cfg, n) // 4  # the cap is not absurdly loose


@pytest.mark.parametrize("port", [-1, 65536])
def test_open_listener_rejects_bad_ports(port):
    with pytest.raises(ValueError, match="port"):
        lb.open_listener(b"k" * 16, port)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"authkey": b"short"}, "authkey"),
        ({"handshake_timeout": float("inf")}, "handshake_timeout"),
    ],
)
def test_open_listener_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lb.open_listener(**{"authkey": b"k" * 16, **kwargs})


def test_client_entry_point_reports_a_missing_input(tmp_path, capsys):
    key = _write_0600(tmp_path / "k", lambda f: f.write(b"k" * 16))
    argv = ["client", "--port", "9", "--authkey-file", str(key), "--client", "0", "--dim", "3"]
    argv += ["--bits", "8", "--threshold", "2", "--n-clients", "3"]
    argv += ["--input", str(tmp_path / "missing.npy")]
    assert lb.main(argv) == 2
    assert "missing.npy" in capsys.readouterr().err
