"""A persistent privacy ledger: what each data set has spent, across processes and runs.

One account per data set, keyed by :func:`dataset_id` (SHA-256 over a
canonical form of the table), with the total budget fixed when the data set is
first registered; one row per release (time, statistic, columns, cost).
:meth:`Ledger.charge` checks and charges in one transaction: the account row is
locked (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``SELECT ... FOR UPDATE``), the
spent budget is summed from the release rows, the cost goes through
:meth:`PrivacyFilter.charge <dpjax.mechanisms.filter.PrivacyFilter.charge>`
(the same composition rule as a query session: basic composition for epsilon
and delta, rho adds up for zCDP), and the release row is committed before the
caller draws any noise. Two queries started at the same moment therefore
cannot both pass, and a crash between the charge and the release never refunds.

Storage: SQLite by default (``$DPJAX_LEDGER``, else
``$XDG_DATA_HOME/dpjax/ledger.sqlite``, else
``~/.local/share/dpjax/ledger.sqlite``; directory 0700, file 0600). A
``postgresql://`` URL uses PostgreSQL through the same SQL (needs ``psycopg``);
the dialect differences (connection, paramstyle, the row lock) live in
``_SQLite`` and ``_Postgres`` only.

Privacy: the ledger makes the guarantee of each data set hold across every
query charged to it: all releases together are (total_epsilon, total_delta)-DP
(or total_rho-zCDP plus total_delta). It keys the *content*: re-ordering rows
or columns, or re-saving the CSV, keeps the account; a changed table (one row
added, removed or edited) is a different data set with a fresh budget, so only
the data's custodian, who controls which table is queried, can rely on it
(or key versions of one data set by a declared name, ``dataset=``).
``reset`` voids the guarantee. The ledger holds no data, only hashes and
query metadata, but whoever can write it can reset budgets: keep it private.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dpjax.mechanisms.filter import PrivacyCost, PrivacyFilter

__all__ = ["Account", "Ledger", "dataset_id", "default_location"]

ENV = "DPJAX_LEDGER"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS dpjax_datasets (
        dataset TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        total_epsilon DOUBLE PRECISION,
        total_rho DOUBLE PRECISION,
        total_delta DOUBLE PRECISION NOT NULL,
        created TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS dpjax_releases (
        dataset TEXT NOT NULL REFERENCES dpjax_datasets (dataset),
        seq INTEGER NOT NULL,
        released_at TEXT NOT NULL,
        statistic TEXT NOT NULL,
        columns_read TEXT NOT NULL,
        epsilon DOUBLE PRECISION NOT NULL,
        delta DOUBLE PRECISION NOT NULL,
        rho DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (dataset, seq)
    )""",
)


def default_location() -> str:
    """``$DPJAX_LEDGER``, else ``$XDG_DATA_HOME/dpjax/ledger.sqlite`` or ``~/.local/share/...``."""
    env = os.environ.get(ENV)
    if env:
        return env
    home = os.path.join(os.path.expanduser("~"), ".local", "share")
    base = os.environ.get("XDG_DATA_HOME") or home
    return os.path.join(base, "dpjax", "ledger.sqlite")


def _cell(v: Any) -> str:
    """Canonical text of one value: numbers by their float64 value, so 1, 1.0 and 1.00 agree."""
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return "N"
    if isinstance(v, bool | np.bool_ | int | np.integer):
        f = float(v)
        return "F" + f.hex() if math.isfinite(f) and int(f) == int(v) else "I" + str(int(v))
    if isinstance(v, float | np.floating):
        f = float(v)
        return "N" if math.isnan(f) else "F" + (0.0 if f == 0.0 else f).hex()
    return "S" + json.dumps(str(v))


def dataset_id(data: pd.DataFrame) -> str:
    """SHA-256 (hex) of a canonical form of a table: independent of row and column order.

    Each row is encoded as its cells in column-name order (numbers by their
    float64 value, text JSON-escaped, missing values as one token); the sorted
    rows, under the sorted column names, are hashed. Re-saving a CSV (quoting,
    ``1`` vs ``1.0``) or shuffling rows or columns gives the same id; any change
    of content (a row added, removed or edited, a column renamed) gives another.

    >>> import pandas as pd
    >>> a = pd.DataFrame({"x": [1, 2], "y": ["u", "v"]})
    >>> b = pd.DataFrame({"y": ["v", "u"], "x": [2.0, 1.0]})
    >>> dataset_id(a) == dataset_id(b), dataset_id(a) == dataset_id(a.iloc[:1])
    (True, False)
    """
    cols = sorted(map(str, data.columns))
    if len(set(cols)) != len(cols):
        raise ValueError("data: column names must be unique to identify the data set")
    frame = data.set_axis(list(map(str, data.columns)), axis=1)
    h = hashlib.sha256(json.dumps(cols).encode())
    if len(frame):
        cells = [frame[c].map(_cell).astype(str) for c in cols]
        rows = cells[0].str.cat(cells[1:], sep="\x1f") if len(cells) > 1 else cells[0]
        h.update(b"\n")
        h.update("\n".join(sorted(rows.tolist())).encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Account:
    """One data set's account: its budget (a :class:`PrivacyFilter` with ``spent``) and history."""

    dataset: str
    name: str
    filter: PrivacyFilter
    releases: int
    created: str


class _SQLite:
    """sqlite3: one file, ``BEGIN IMMEDIATE`` takes the write lock before the check."""

    name = "sqlite"

    def __init__(self, path: str):
        self.location = os.path.abspath(os.path.expanduser(path))

    def connect(self) -> Any:
        try:
            directory = os.path.dirname(self.location)
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
            if not os.path.exists(self.location):
                os.close(os.open(self.location, os.O_CREAT | os.O_WRONLY, 0o600))
            # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE).
            return sqlite3.connect(self.location, timeout=60.0, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise ValueError(f"ledger: cannot open {self.location!r} ({e})") from None

    def sql(self, text: str) -> str:
        return text

    def errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)

    begin = "BEGIN IMMEDIATE"
    lock = ""


class _Postgres:
    """PostgreSQL through psycopg (``pip install psycopg``); untested here, same SQL as SQLite."""

    name = "postgresql"

    def __init__(self, url: str):
        self.location = url

    def connect(self) -> Any:
        try:
            import psycopg  # optional dependency: only for postgresql:// ledgers
        except ImportError:
            raise ValueError(
                "ledger: a postgresql:// URL needs the psycopg package (pip install psycopg)"
            ) from None
        return psycopg.connect(self.location, autocommit=True)

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def errors(self) -> tuple[type[Exception], ...]:
        import psycopg  # optional dependency (see connect)

        return (psycopg.Error,)

    begin = "BEGIN"
    lock = " FOR UPDATE"


def _dialect(location: str | os.PathLike | None) -> _SQLite | _Postgres:
    loc = default_location() if location is None else os.fspath(location)
    if not loc:
        raise ValueError("ledger must be a file path or a postgresql:// URL, got ''")
    if loc.startswith(("postgresql://", "postgres://")):
        return _Postgres(loc)
    if "://" in loc:
        raise ValueError(f"ledger URL scheme must be postgresql://, got {loc.split('://')[0]!r}")
    return _SQLite(loc)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Ledger:
    """A privacy ledger in SQLite (a path) or PostgreSQL (a ``postgresql://`` URL).

    Args:
      location: file path or URL; None means :func:`default_location`.
      create: create a missing SQLite file; with False a missing file is an
        error and nothing is written.

    >>> import tempfile, os
    >>> led = Ledger(os.path.join(tempfile.mkdtemp(), "ledger.sqlite"))
    >>> acc = led.charge("d1", PrivacyCost(epsilon=0.4), budget=PrivacyFilter(epsilon=1.0),
    ...                  statistic="count", columns=[])
    >>> round(acc.filter.remaining().epsilon, 6), acc.releases
    (0.6, 1)
    """

    def __init__(self, location: str | os.PathLike | None = None, *, create: bool = True):
        self._dialect = _dialect(location)
        self.location = self._dialect.location
        if not create and isinstance(self._dialect, _SQLite) and not os.path.exists(self.location):
            raise FileNotFoundError(self.location)
        with self._connection() as con:
            for stmt in _SCHEMA:
                con.execute(stmt)

    def _connection(self):
        dialect = self._dialect

        class _Con:
            def __enter__(self):
                self.con = dialect.connect()
                return self

            def execute(self, text, params=()):
                try:
                    return self.con.execute(dialect.sql(text), tuple(params))
                except dialect.errors() as e:  # locked past the timeout, not a database, ...
                    raise ValueError(f"ledger {dialect.location}: {e}") from None

            def __exit__(self, *exc):
                self.con.close()

        return _Con()

    def _account(self, con, dataset: str, lock: bool = False) -> Account | None:
        row = con.execute(
            "SELECT name, kind, total_epsilon, total_rho, total_delta, created "
            "FROM dpjax_datasets WHERE dataset = ?" + (self._dialect.lock if lock else ""),
            (dataset,),
        ).fetchone()
        if row is None:
            return None
        name, kind, t_eps, t_rho, t_delta, created = row
        e, d, r, n = con.execute(
            "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0), COALESCE(SUM(rho), 0), "
            "COUNT(*) FROM dpjax_releases WHERE dataset = ?",
            (dataset,),
        ).fetchone()
        f = PrivacyFilter(
            epsilon=t_eps if kind == "pure" else None,
            rho=t_rho if kind == "zcdp" else None,
            delta=t_delta,
            spent=PrivacyCost(epsilon=float(e), delta=float(d), rho=float(r)),
        )
        return Account(dataset, name, f, int(n), created)

    @staticmethod
    def _same_budget(a: PrivacyFilter, b: PrivacyFilter) -> bool:
        return (a.epsilon, a.rho, a.delta) == (b.epsilon, b.rho, b.delta)

    def _transaction(self, con, body):
        con.execute(self._dialect.begin)
        try:
            out = body()
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return out

    def _register(self, con, dataset: str, budget: PrivacyFilter | None, name: str) -> Account:
        if budget is not None and budget.spent != PrivacyCost():
            raise ValueError("budget must be a fresh PrivacyFilter (nothing spent)")
        if budget is not None:
            con.execute(
                "INSERT INTO dpjax_datasets (dataset, name, kind, total_epsilon, total_rho, "
                "total_delta, created) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (dataset) DO NOTHING",
                (dataset, name or dataset[:12], budget.kind, budget.epsilon, budget.rho,
                 budget.delta, _now()),
            )  # fmt: skip
        acc = self._account(con, dataset, lock=True)
        if acc is None:
            raise ValueError(
                f"data set {dataset[:12]} has no budget in the ledger {self.location}; "
                "give its total budget the first time (total epsilon, or rho, and delta)"
            )
        if budget is not None and not self._same_budget(acc.filter, budget):
            raise ValueError(
                f"data set {dataset[:12]} is registered with a total budget of "
                f"{_budget_text(acc.filter)}; the budget given ({_budget_text(budget)}) "
                "conflicts: a total budget is set once ('dpjax budget reset' voids the guarantee)"
            )
        return acc

    def register(self, dataset: str, budget: PrivacyFilter, *, name: str = "") -> Account:
        """Registers a data set with its total budget (or checks it matches the registered one)."""
        with self._connection() as con:
            return self._transaction(con, lambda: self._register(con, dataset, budget, name))

    def charge(
        self,
        dataset: str,
        cost: PrivacyCost,
        *,
        statistic: str,
        columns: Sequence[str],
        budget: PrivacyFilter | None = None,
        name: str = "",
    ) -> Account:
        """Checks and charges one release in one transaction; returns the account after it.

        Registers the data set with ``budget`` if it is new (an error if it is
        new and ``budget`` is None, or registered with another budget).

        Raises:
          BudgetExceededError: the cost does not fit; nothing is written.
        """

        def body() -> Account:
            acc = self._register(con, dataset, budget, name)
            after = acc.filter.charge(cost)  # the session filter's rule; raises if it won't fit
            c = acc.filter.converted(cost)
            con.execute(
                "INSERT INTO dpjax_releases (dataset, seq, released_at, statistic, columns_read, "
                "epsilon, delta, rho) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset, acc.releases + 1, _now(), statistic, ",".join(columns),
                 c.epsilon, c.delta, c.rho),
            )  # fmt: skip
            return dataclasses.replace(acc, filter=after, releases=acc.releases + 1)

        with self._connection() as con:
            return self._transaction(con, body)

    def account(self, dataset: str) -> Account | None:
        """The data set's account, or None if it is not registered."""
        with self._connection() as con:
            return self._account(con, dataset)

    def accounts(self) -> list[Account]:
        """Every registered data set's account, oldest first."""
        with self._connection() as con:
            sql = "SELECT dataset FROM dpjax_datasets ORDER BY created, dataset"
            ids = [r[0] for r in con.execute(sql).fetchall()]
            return [self._account(con, d) for d in ids]

    def releases(self, dataset: str) -> list[tuple[Any, ...]]:
        """(seq, time, statistic, columns, epsilon, delta, rho) of each release, in order."""
        with self._connection() as con:
            return con.execute(
                "SELECT seq, released_at, statistic, columns_read, epsilon, delta, rho "
                "FROM dpjax_releases "
                "WHERE dataset = ? ORDER BY seq",
                (dataset,),
            ).fetchall()

    def reset(self, dataset: str) -> bool:
        """Deletes a data set's account and releases. VOIDS its privacy guarantee."""

        def body() -> bool:
            con.execute("DELETE FROM dpjax_releases WHERE dataset = ?", (dataset,))
            n = con.execute("DELETE FROM dpjax_datasets WHERE dataset = ?", (dataset,)).rowcount
            return n > 0

        with self._connection() as con:
            return self._transaction(con, body)

    def find(self, prefix: str) -> str:
        """The full id of the one registered data set whose id starts with ``prefix``."""
        if not prefix:
            raise ValueError("dataset id prefix must not be empty")
        with self._connection() as con:
            ids = [r[0] for r in con.execute("SELECT dataset FROM dpjax_datasets").fetchall()]
        ids = [d for d in ids if d.startswith(prefix)]
        if len(ids) != 1:
            found = "no" if not ids else "more than one"
            raise ValueError(f"dataset: {found} data set in the ledger matches {prefix!r}")
        return ids[0]


def _budget_text(f: PrivacyFilter) -> str:
    main = f"epsilon={f.epsilon:g}" if f.kind == "pure" else f"rho={f.rho:g}"
    return f"{main}, delta={f.delta:g}"
