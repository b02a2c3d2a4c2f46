"""Secure aggregation between real processes over ``multiprocessing.connection``.

The server and each client run in separate processes and exchange exactly
the bytes of :mod:`dpjax.crypto.secagg_wire` (``send_bytes``/``recv_bytes``;
no protocol object is pickled) over TCP on 127.0.0.1, with the standard
library's HMAC challenge on an ``authkey`` at connect time. The transport is
the Python standard library's, not a home-made one; it authenticates the
peers that hold ``authkey`` but does not encrypt: a deployment across
machines needs TLS or Flower's secure channels underneath (see
docs/crypto.md, "Between processes").

Every wait is bounded: the server gives each phase ``timeout`` seconds and
treats a client that closes its connection, times out or sends anything
malformed as dropped (the protocol's dropout handling then applies); a
client gives each reply ``timeout`` seconds and stops on anything
unexpected. A client's process ending (even by SIGKILL) closes its socket,
so the server sees a dropout at once rather than at the deadline.

Run a client with::

  python -m dpjax.crypto.secagg_loopback client --port P --authkey-file K \\
      --client ID --dim D --bits B --threshold T --round R --input X.npy

where ``K`` holds the shared authkey (a 0600 file) and ``X.npy`` the client's
input, integers in [0, 2^B) of shape [D]. Exit status: 0 the client answered
the unmasking request, 3 the round was aborted (or the server vanished), 2 bad
arguments.

Privacy: the same as :mod:`dpjax.crypto.secagg` against a semi-honest
server: it learns the survivors' sum and nothing else; when too few clients
remain it aborts before reconstructing any secret, holding only masked
inputs and fewer than ``threshold`` shares of each secret. An active server
could lie about who dropped (no signed keys or consistency round), and
``authkey`` is a shared secret: any holder can pose as a client.
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, wait
from pathlib import Path
from typing import Any

import numpy as np

from dpjax import _validate
from dpjax.crypto import secagg, secagg_wire
from dpjax.crypto.secagg import (
    AdvertiseMsg,
    KeysBroadcast,
    MaskedInputMsg,
    SecAggAbort,
    SecAggConfig,
    SecureSumResult,
    ShareKeysMsg,
    UnmaskMsg,
    UnmaskRequest,
)

__all__ = ["ABORTED", "main", "open_listener", "run_client", "run_server"]

ABORTED = 3  # a client's exit status when the round was aborted
HOST = "127.0.0.1"
_MIN_AUTHKEY = 16


def _check_authkey(authkey: bytes) -> bytes:
    if not isinstance(authkey, bytes) or len(authkey) < _MIN_AUTHKEY:
        raise ValueError(f"authkey must be at least {_MIN_AUTHKEY} bytes")
    return authkey


def _check_timeout(timeout: float, name: str = "timeout") -> float:
    timeout = float(_validate.positive(name, timeout))
    if timeout == float("inf"):
        raise ValueError(f"{name} must be finite (every wait is bounded)")
    return timeout


def _max_message(config: SecAggConfig, n_clients: int) -> int:
    """The largest message either side accepts: a masked input or n entries of keys/shares."""
    return 64 + 4 * config.dim + 256 * (n_clients + 1)


def open_listener(authkey: bytes, port: int = 0, *, handshake_timeout: float = 5.0) -> Listener:
    """A listener on 127.0.0.1 (``port`` 0: a free port the OS picks; see ``.address``).

    Args:
      authkey: the key every client must prove it holds (at least 16 bytes).
      port: the port, or 0 for a free one.
      handshake_timeout: seconds a connecting peer has to answer the authkey
        challenge (one round trip); a silent peer is then given up on.

    Close it when the round is over (it is a context manager).
    """
    port = _validate.non_negative_int("port", port)
    if port > 65535:
        raise ValueError(f"port must be in [0, 65535], got {port}")
    authkey = _check_authkey(authkey)
    handshake_timeout = _check_timeout(handshake_timeout, "handshake_timeout")
    listener = Listener((HOST, port), family="AF_INET", authkey=authkey)
    # Set before any peer can connect: a connection inherits it when the kernel queues it.
    _io_timeout(listener._listener._socket, handshake_timeout)
    return listener


def _io_timeout(sock: socket.socket, seconds: float) -> None:
    """Bounds every blocking read and write on ``sock`` (SO_RCVTIMEO / SO_SNDTIMEO).

    ``Connection.recv_bytes`` blocks until a whole message has arrived, even
    after ``poll`` saw its first byte; with these options a peer that stalls
    mid-message (or never reads) makes the call fail after ``seconds``
    instead of hanging. Sockets accepted from a listener inherit them, which
    bounds the library's authkey handshake inside ``Listener.accept`` too
    (:func:`open_listener` sets them on the listening socket).
    """
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _conn_io_timeout(conn: Connection, seconds: float) -> None:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
        _io_timeout(dup, seconds)  # a duplicate descriptor of the same socket


def _accept(listener: Listener, deadline: float) -> Connection | None:
    """One authenticated connection, or None when the deadline passes first."""
    sock = listener._listener._socket  # select and timeouts only: accept stays the library's
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            return None
        try:
            return listener.accept()
        except (OSError, EOFError, AuthenticationError):
            # a peer without the authkey, or one gone mid-handshake
            continue


class _Peers:
    """The server's open connections, by client id; a failing one is closed and dropped."""

    def __init__(self, max_bytes: int):
        self.conns: dict[int, Connection] = {}
        self.max_bytes = max_bytes

    def drop(self, client: int) -> None:
        conn = self.conns.pop(client, None)
        if conn is not None:
            conn.close()

    def send(self, client: int, msg: Any) -> None:
        try:
            self.conns[client].send_bytes(secagg_wire.encode(msg))
        except OSError:
            self.drop(client)

    def gather(self, kind: type, deadline: float, clients=None) -> dict[int, tuple[Any, int]]:
        """``kind`` messages from ``clients`` (default all) until each answered or the deadline."""
        pending = {c: self.conns[c] for c in (self.conns if clients is None else clients)}
        pending = {c: conn for c, conn in pending.items() if c in self.conns}
        got: dict[int, tuple[Any, int]] = {}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for conn in wait(list(pending.values()), timeout=remaining):
                client = next(c for c, k in pending.items() if k is conn)
                del pending[client]
                try:
                    data = conn.recv_bytes(self.max_bytes)
                    msg = secagg_wire.decode(data)
                except (EOFError, OSError, SecAggAbort):
                    self.drop(client)
                    continue
                if not isinstance(msg, kind) or msg.client != client:
                    self.drop(client)  # a protocol violation counts as a dropout
                    continue
                got[client] = (msg, len(data))
        for client in pending:  # timed out
            self.drop(client)
        return got

    def close(self) -> None:
        for client in list(self.conns):
            self.drop(client)


def run_server(
    listener: Listener,
    config: SecAggConfig,
    n_clients: int,
    *,
    degree: int | None = None,
    timeout: float = 30.0,
    on_phase: Callable[[str, tuple[int, ...]], None] | None = None,
) -> SecureSumResult:
    """Runs one round as the server over connections from ``listener``.

    Args:
      listener: from :func:`open_listener`; stays open (the caller closes it).
      config: the round's public parameters (the clients must use the same).
      n_clients: how many clients to wait for before round 0 ends.
      degree: None for the complete graph, or SecAgg+'s even k.
      timeout: seconds for each phase (accepting connections, then each of
        rounds 0-3); a client that has not answered by then is dropped.
      on_phase: called as ``on_phase(name, clients)`` after each collection
        the protocol accepted (``"keys"``, ``"shares"``, ``"masked"``), before
        the server answers, with the clients whose message arrived; for
        monitoring (the tests kill client processes here).

    Returns:
      ``SecureSumResult``: the sum mod 2^bits of the inputs of the clients in
      ``survivors`` (those whose masked input arrived), and the bytes each
      message kind carried from the clients (as sent, packed to ``bits``).

    Raises:
      SecAggAbort: fewer than ``threshold`` clients remained at some step
        (no unmasking has happened and no individual input is revealed), or
        the unmasking shares were inconsistent (a client sent wrong but
        well-formed shares: the round aborts, it cannot be misled into a
        partial sum). A malformed or misaddressed message only drops its
        sender.
      ValueError: a bad argument (before any connection is accepted).

    Privacy:
      The server sees only what :mod:`dpjax.crypto.secagg` lets it see:
      masked inputs, and at unmasking the self-mask shares of survivors and
      the key shares of dropped clients, never both for one client (each
      client refuses such a request). The sum is private only if the
      clients added noise (``dpjax.crypto.secagg_dp``).
    """
    secagg._check_config(config)
    n_clients = _validate.positive_int("n_clients", n_clients)
    if n_clients < config.threshold:
        raise ValueError(f"n_clients must be >= threshold = {config.threshold}, got {n_clients}")
    if degree is not None:
        degree = _validate.positive_int("degree", degree)
        if degree < n_clients - 1 and (degree % 2 or degree + 1 < config.threshold):
            raise ValueError(
                f"degree must be even and >= threshold - 1 = {config.threshold - 1} "
                f"(or >= n_clients - 1 = {n_clients - 1}), got {degree}"
            )
    timeout = _check_timeout(timeout)
    peers = _Peers(_max_message(config, n_clients))
    sent = {"advertise": 0, "share_keys": 0, "masked_input": 0, "unmask": 0}

    def phase(name: str, clients) -> None:
        if on_phase is not None:
            on_phase(name, tuple(sorted(clients)))

    try:
        deadline = time.monotonic() + timeout
        waiting: list[Connection] = []
        while len(waiting) < n_clients:
            conn = _accept(listener, deadline)
            if conn is None:
                break
            _conn_io_timeout(conn, timeout)
            waiting.append(conn)
        # Round 0: the first message on each connection names its client.
        deadline = time.monotonic() + timeout
        adverts: dict[int, AdvertiseMsg] = {}
        for conn in waiting:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 or not conn.poll(remaining):
                    raise EOFError
                data = conn.recv_bytes(peers.max_bytes)
                msg = secagg_wire.decode(data)
            except (EOFError, OSError, SecAggAbort):
                conn.close()
                continue
            if not isinstance(msg, AdvertiseMsg) or msg.client in adverts:
                conn.close()
                continue
            adverts[msg.client] = msg
            peers.conns[msg.client] = conn
            sent["advertise"] += len(data)
        state, broadcasts = secagg.server_collect_keys(config, adverts.values(), degree)
        phase("keys", adverts)
        for client, broadcast in broadcasts.items():
            peers.send(client, broadcast)
        # Round 1: forward the encrypted shares.
        got = peers.gather(ShareKeysMsg, time.monotonic() + timeout)
        sent["share_keys"] = sum(n for _, n in got.values())
        for client, (m, _) in list(got.items()):
            if set(m.ciphertexts) != set(state.graph[client]):  # would abort the whole round
                del got[client]
                peers.drop(client)
        state, inboxes = secagg.server_collect_shares(state, [m for m, _ in got.values()])
        phase("shares", got)
        for client in list(peers.conns):
            if client in inboxes:
                peers.send(client, secagg_wire.Inbox(inboxes[client]))
            else:
                peers.drop(client)  # did not share keys: not in U2
        # Round 2: sum the masked inputs.
        got = peers.gather(MaskedInputMsg, time.monotonic() + timeout)
        sent["masked_input"] = sum(n for _, n in got.values())
        for client, (m, _) in list(got.items()):
            if m.masked.shape != (config.dim,):  # would abort the whole round
                del got[client]
                peers.drop(client)
        state, request = secagg.server_collect_masked(state, [m for m, _ in got.values()])
        phase("masked", got)
        for client in list(peers.conns):
            if client in request.survivors:
                peers.send(client, request)
            else:
                peers.drop(client)
        # Round 3: unmask.
        got = peers.gather(UnmaskMsg, time.monotonic() + timeout, request.survivors)
        sent["unmask"] = sum(n for _, n in got.values())
        total = secagg.server_unmask(state, [m for m, _ in got.values()])
        return SecureSumResult(total, request.survivors, sent)
    finally:
        peers.close()


def _receive(conn: Connection, kind: type, deadline: float, max_bytes: int) -> Any:
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0 or not conn.poll(remaining):
            raise SecAggAbort("the server did not answer in time; the round is over")
        msg = secagg_wire.decode(conn.recv_bytes(max_bytes))
    except (EOFError, OSError):
        raise SecAggAbort("the server closed the connection; the round is over") from None
    if not isinstance(msg, kind):
        raise SecAggAbort(f"expected a {kind.__name__} from the server")
    return msg


def run_client(
    port: int,
    authkey: bytes,
    config: SecAggConfig,
    client: int,
    value: Any,
    *,
    n_clients: int,
    timeout: float = 30.0,
) -> None:
    """Runs one round as client ``client`` against the server on 127.0.0.1:``port``.

    Args:
      port: the server's port.
      authkey: the key shared with the server (at least 16 bytes).
      config: the round's public parameters (the server's).
      client: this client's id.
      value: its input, integers in [0, 2^bits) of shape [dim].
      n_clients: the largest cohort (bounds the size of messages accepted).
      timeout: seconds to wait for each reply of the server.

    Raises:
      SecAggAbort: the server aborted, vanished, timed out or sent anything
        unexpected; or the protocol refused a step.
      ValueError: a bad argument (before connecting).

    Privacy:
      The client's input leaves the process only masked (round 2); it
      answers one unmasking request and refuses one naming a client both
      survivor and dropped (:func:`dpjax.crypto.secagg.client_unmask`).
    """
    secagg._check_config(config)
    port = _validate.positive_int("port", port)
    if port > 65535:
        raise ValueError(f"port must be in [1, 65535], got {port}")
    authkey = _check_authkey(authkey)
    timeout = _check_timeout(timeout)
    n_clients = _validate.positive_int("n_clients", n_clients)
    x = np.asarray(value)
    if x.shape != (config.dim,) or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"value must be integers of shape ({config.dim},), got {x.dtype}{x.shape}")
    if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << config.bits):
        raise ValueError(f"value must be in [0, 2^{config.bits})")
    max_bytes = _max_message(config, n_clients)
    state, advert = secagg.client_advertise(config, client)
    try:
        conn = Client((HOST, port), family="AF_INET", authkey=authkey)
    except (OSError, EOFError, AuthenticationError) as e:
        raise SecAggAbort(f"cannot connect to the server on {HOST}:{port}: {e}") from None
    with conn:
        _conn_io_timeout(conn, timeout)
        try:
            conn.send_bytes(secagg_wire.encode(advert))
            broadcast = _receive(conn, KeysBroadcast, time.monotonic() + timeout, max_bytes)
            state, shares = secagg.client_share_keys(config, state, broadcast)
            conn.send_bytes(secagg_wire.encode(shares))
            inbox = _receive(conn, secagg_wire.Inbox, time.monotonic() + timeout, max_bytes)
            state, masked = secagg.client_masked_input(config, state, inbox.ciphertexts, x)
            conn.send_bytes(secagg_wire.encode(masked, bits=config.bits))
            request = _receive(conn, UnmaskRequest, time.monotonic() + timeout, max_bytes)
            state, answer = secagg.client_unmask(config, state, request)
            conn.send_bytes(secagg_wire.encode(answer))
        except OSError:
            raise SecAggAbort("the server closed the connection; the round is over") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dpjax.crypto.secagg_loopback")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("client", help="run one secure-aggregation client")
    c.add_argument("--port", type=int, required=True, help="the server's port on 127.0.0.1")
    c.add_argument("--authkey-file", type=Path, required=True, help="file holding the authkey")
    c.add_argument("--client", type=int, required=True, help="this client's id")
    c.add_argument("--dim", type=int, required=True)
    c.add_argument("--bits", type=int, required=True)
    c.add_argument("--threshold", type=int, required=True)
    c.add_argument("--round", type=int, default=0, help="round id (binds every derived key)")
    c.add_argument("--n-clients", type=int, required=True, help="the largest cohort")
    c.add_argument("--input", type=Path, required=True, help=".npy file of the input vector")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds per server reply")
    return p


def _on_alarm(signum, frame) -> None:
    raise SecAggAbort("the round took longer than its overall deadline")


def main(argv: list[str] | None = None) -> int:
    """The client entry point; returns the exit status (0 done, 3 aborted, 2 bad arguments)."""
    args = _parser().parse_args(argv)
    try:
        config = secagg._check_config(SecAggConfig(args.round, args.dim, args.bits, args.threshold))
        authkey = args.authkey_file.read_bytes()
        value = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        print(f"secagg client: {e}", file=sys.stderr)
        return 2
    # A backstop for the one wait the library does not bound (the connect handshake):
    # the whole round gets five phase timeouts.
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(5 * args.timeout) + 1))
    try:
        run_client(
            args.port, authkey, config, args.client, value,
            n_clients=args.n_clients, timeout=args.timeout,
        )  # fmt: skip
    except ValueError as e:
        print(f"secagg client: {e}", file=sys.stderr)
        return 2
    except SecAggAbort as e:
        print(f"secagg client {args.client}: aborted: {e}", file=sys.stderr)
        return ABORTED
    finally:
        signal.alarm(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
