"""The request log's database: SQLite by default, PostgreSQL for a fleet. Same schema, same queries.

The SQL is written once, with ``?`` placeholders that the PostgreSQL side turns into ``%s``; times are integer
milliseconds so that bucketing by integer division behaves the same on both. Every method is blocking and is
called from a worker thread (the writer) or through ``asyncio.to_thread`` (the JSON API), never on the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

from ollama_metrics_proxy.redact import redact_text, redact_url

log = logging.getLogger(__name__)

# SQLite allows 32766 bound values per statement; 22 columns times 256 rows stays well below.
ROWS_PER_INSERT = 256
# The one definition of an error, shared with the live figures, the recording rules and the dashboards: a failure
# on the server's side. A client's mistake (4xx) is counted apart, and a client giving up is neither.
ERROR_OUTCOMES = ("server_error", "upstream_unreachable", "upstream_error", "timeout", "busy")
CLIENT_ERROR_OUTCOMES = ("client_error",)


class UsageRecord(NamedTuple):
    """One proxied inference request, as stored (a tuple in column order, so it binds straight into the
    INSERT). Text fields stay None unless --log-content is on."""

    started_ms: int
    endpoint: str
    model: str | None
    outcome: str
    status: int
    client_address: str | None
    client_identity: str | None
    prompt_tokens: int | None
    cached_tokens: int | None
    generation_tokens: int | None
    duration_seconds: float
    ttft_seconds: float | None
    load_seconds: float | None
    prompt_eval_seconds: float | None
    eval_seconds: float | None
    done_reason: str | None
    bytes_in: int
    bytes_out: int
    proxy: str
    prompt_text: str | None = None
    response_text: str | None = None
    # Of generation_tokens, how many are estimated from content chunks because the reply reported no count.
    generation_tokens_estimated: int = 0
    # Streamed replies: the time to the first answer chunk after any thinking, and the chunks of each kind.
    ttfat_seconds: float | None = None
    thinking_chunks: int | None = None
    answer_chunks: int | None = None
    tool_calls: int | None = None
    location: str | None = None  # local, or cloud (an Ollama cloud model: no local decode time)


COLUMNS = UsageRecord._fields

# Each entry upgrades the schema by one version; the store applies the missing ones at start.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id {id_column},
        started_ms BIGINT NOT NULL,
        endpoint TEXT NOT NULL,
        model TEXT,
        outcome TEXT NOT NULL,
        status INTEGER NOT NULL,
        client_address TEXT,
        client_identity TEXT,
        prompt_tokens BIGINT,
        cached_tokens BIGINT,
        generation_tokens BIGINT,
        duration_seconds DOUBLE PRECISION NOT NULL,
        ttft_seconds DOUBLE PRECISION,
        load_seconds DOUBLE PRECISION,
        prompt_eval_seconds DOUBLE PRECISION,
        eval_seconds DOUBLE PRECISION,
        done_reason TEXT,
        bytes_in BIGINT NOT NULL,
        bytes_out BIGINT NOT NULL,
        proxy TEXT NOT NULL,
        prompt_text TEXT,
        response_text TEXT
    );
    CREATE INDEX requests_started ON requests (started_ms)
    """,
    "ALTER TABLE requests ADD COLUMN generation_tokens_estimated BIGINT NOT NULL DEFAULT 0",
    """
    ALTER TABLE requests ADD COLUMN ttfat_seconds DOUBLE PRECISION;
    ALTER TABLE requests ADD COLUMN thinking_chunks BIGINT;
    ALTER TABLE requests ADD COLUMN answer_chunks BIGINT;
    ALTER TABLE requests ADD COLUMN tool_calls BIGINT;
    ALTER TABLE requests ADD COLUMN location TEXT
    """,
)
LOCAL = "COALESCE(location, 'local') = 'local'"  # rows from before the location column were all local


class Connection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class StoreError(Exception):
    """The database refused or could not be reached; the message is shown to the user."""


class Store:
    """Schema management and every query, over one connection guarded by a lock."""

    placeholder = "?"
    id_column = "INTEGER PRIMARY KEY AUTOINCREMENT"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, target: str) -> None:
        self.target = target
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self._inserts: dict[int, str] = {}

    # ---------------------------------------------------------------- connection handling

    def connect(self) -> Connection:
        raise NotImplementedError

    def describe(self) -> str:
        return self.target

    def still_open(self) -> bool:
        """Whether the open connection still reaches the database its target names (see SqliteStore)."""
        return True

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        with self._lock:
            try:
                if self._connection is not None and not self.still_open():
                    self._reset()
                if self._connection is None:
                    self._connection = self.connect()
                    self._migrate(self._connection)
                cursor = self._connection.cursor()
                yield cursor
                self._connection.commit()
            except self.errors as exc:
                self._reset()
                raise StoreError(redact_text(str(exc).strip()) or type(exc).__name__) from exc

    def _reset(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(*self.errors):
                self._connection.close()
            self._connection = None

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _migrate(self, connection: Connection) -> None:
        cursor = connection.cursor()
        cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cursor.execute("SELECT MAX(version) FROM schema_version")
        current = cursor.fetchone()[0] or 0
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in migration.format(id_column=self.id_column).split(";"):
                if statement.strip():
                    cursor.execute(statement)
            cursor.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
        connection.commit()

    def ping(self) -> None:
        with self._cursor() as cursor:
            cursor.execute("SELECT 1")

    # ---------------------------------------------------------------- writes

    def insert(self, records: Sequence[UsageRecord]) -> None:
        """Many rows per INSERT statement: one database round (and, for SQLite, one release of the GIL) per
        ``ROWS_PER_INSERT`` records instead of one per record, which keeps the writer thread from contending
        with the relay."""
        with self._cursor() as cursor:
            for start in range(0, len(records), ROWS_PER_INSERT):
                rows = records[start : start + ROWS_PER_INSERT]
                cursor.execute(self._insert_statement(len(rows)), [value for row in rows for value in row])

    def _insert_statement(self, rows: int) -> str:
        statement = self._inserts.get(rows)
        if statement is None:
            one_row = f"({', '.join('?' for _ in COLUMNS)})"
            statement = self._inserts[rows] = self._sql(
                f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES {', '.join([one_row] * rows)}")
        return statement

    def delete_before(self, before_ms: int | None) -> int:
        with self._cursor() as cursor:
            if before_ms is None:
                cursor.execute("DELETE FROM requests")
            else:
                cursor.execute(self._sql("DELETE FROM requests WHERE started_ms < ?"), (before_ms,))
            return int(cursor.rowcount)

    def keep_newest(self, rows: int) -> int:
        """Delete all but the newest ``rows`` records."""
        with self._cursor() as cursor:
            cursor.execute(self._sql("SELECT id FROM requests ORDER BY id DESC LIMIT 1 OFFSET ?"), (rows,))
            row = cursor.fetchone()
            if row is None:
                return 0
            cursor.execute(self._sql("DELETE FROM requests WHERE id <= ?"), (row[0],))
            return int(cursor.rowcount)

    # ---------------------------------------------------------------- reads

    def count(self) -> int:
        with self._cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM requests")
            return int(cursor.fetchone()[0])

    def logs(self, filters: dict[str, Any], limit: int, cursor_key: tuple[int, int] | None) -> list[dict[str, Any]]:
        clauses, params = self._filters(filters)
        if cursor_key is not None:  # keyset pagination: strictly older than the last row of the previous page
            clauses.append("(started_ms < ? OR (started_ms = ? AND id < ?))")
            params += [cursor_key[0], cursor_key[0], cursor_key[1]]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        statement = (f"SELECT id, {', '.join(COLUMNS)} FROM requests {where} "
                     f"ORDER BY started_ms DESC, id DESC LIMIT ?")
        with self._cursor() as cursor:
            cursor.execute(self._sql(statement), (*params, limit))
            names = ["id", *COLUMNS]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def history(self, since_ms: int, step_ms: int) -> list[tuple[int, int, int, float, int]]:
        """Per time bucket: (bucket start ms, requests, generated tokens, summed duration, errors)."""
        statement = (
            "SELECT started_ms / ? AS bucket, COUNT(*), COALESCE(SUM(generation_tokens), 0), "
            f"SUM(duration_seconds), {_count_of(ERROR_OUTCOMES)} "
            "FROM requests WHERE started_ms >= ? GROUP BY bucket ORDER BY bucket"
        )
        with self._cursor() as cursor:
            cursor.execute(self._sql(statement), (step_ms, since_ms))
            return [(int(bucket) * step_ms, int(n), int(tokens), float(duration), int(errs))
                    for bucket, n, tokens, duration, errs in cursor.fetchall()]

    def per_model(self, limit: int, after: tuple[int, str] | None = None) -> tuple[list[dict[str, Any]], int]:
        return self._grouped("model", limit, after)

    def per_client(self, limit: int, after: tuple[int, str] | None = None) -> tuple[list[dict[str, Any]], int]:
        return self._grouped("client_identity", limit, after)

    def _grouped(self, column: str, limit: int, after: tuple[int, str] | None) -> tuple[list[dict[str, Any]], int]:
        """One page of per-``column`` totals, most requests first (ties by name), after the (requests, name) of
        the previous page's last row; and how many names there are in all."""
        having, params = "", []
        if after is not None:
            having = "HAVING COUNT(*) < ? OR (COUNT(*) = ? AND {column} > ?) "
            params = [after[0], after[0], after[1]]
        statement = (
            f"SELECT {column}, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cached_tokens), 0), "
            "COALESCE(SUM(generation_tokens), 0), "
            "COALESCE(SUM(generation_tokens_estimated), 0), AVG(duration_seconds), "
            f"SUM(CASE WHEN eval_seconds IS NOT NULL AND {LOCAL} THEN COALESCE(generation_tokens, 0) ELSE 0 END), "
            f"SUM(CASE WHEN {LOCAL} THEN eval_seconds END), "
            f"{_count_of(ERROR_OUTCOMES)}, {_count_of(CLIENT_ERROR_OUTCOMES)}, MAX(started_ms) "
            f"FROM requests WHERE {column} IS NOT NULL GROUP BY {column} {having.format(column=column)}"
            f"ORDER BY COUNT(*) DESC, {column} LIMIT ?"
        )
        with self._cursor() as cursor:
            cursor.execute(self._sql(statement), (*params, limit))
            rows = cursor.fetchall()
            cursor.execute(f"SELECT COUNT(DISTINCT {column}) FROM requests")
            total = int(cursor.fetchone()[0])
            return [
                {"name": name, "requests": int(n), "prompt_tokens": int(prompt), "cached_tokens": int(cached),
                 "generation_tokens": int(generated),
                 "generation_tokens_estimated": int(estimated), "average_duration_seconds": float(average or 0),
                 "decode_tokens_per_second": float(decoded) / float(evals) if evals else None,
                 "errors": int(errs), "client_errors": int(client_errs), "error_ratio": int(errs) / int(n),
                 "last_used_ms": int(last)}
                for name, n, prompt, cached, generated, estimated, average, decoded, evals, errs, client_errs, last
                in rows
            ], total

    def _filters(self, filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
        clauses, params = [], []
        for key, column in (("model", "model"), ("outcome", "outcome"), ("client", "client_identity"),
                            ("endpoint", "endpoint")):
            if filters.get(key):
                clauses.append(f"{column} = ?")
                params.append(filters[key])
        if filters.get("since") is not None:
            clauses.append("started_ms >= ?")
            params.append(filters["since"])
        if filters.get("until") is not None:
            clauses.append("started_ms < ?")
            params.append(filters["until"])
        return clauses, params


def _count_of(outcomes: Sequence[str]) -> str:
    """SQL counting the rows whose outcome is one of ``outcomes`` (a fixed set, never user input)."""
    listed = ", ".join(f"'{outcome}'" for outcome in outcomes)
    return f"SUM(CASE WHEN outcome IN ({listed}) THEN 1 ELSE 0 END)"


def make_private(path: str) -> None:
    """Take group and other permissions off a file of the proxy's own that has them (made by an older version
    or by hand): it may hold prompts and responses."""
    mode = os.stat(path).st_mode
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
        log.warning("%s was readable by other users; made it private to this user (mode 0600)", path)


class SqliteStore(Store):
    busy_timeout_ms = 2000

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self._opened: tuple[int, int] | None = None  # (device, inode) of the file the connection has open

    def still_open(self) -> bool:
        """A database file deleted (or replaced) under the running proxy keeps taking writes that no one will
        ever read: 50 of 50 records "written", none kept. Checked before each use (a stat, every half second at
        most for the writer), it is noticed, said loudly and the file made anew."""
        try:
            found = os.stat(self.target)
        except OSError:
            found = None
        if found is not None and (found.st_dev, found.st_ino) == self._opened:
            return True
        log.error("request log %s was %s while open; making it anew (records written to the old file since it "
                  "went are lost)", self.target, "deleted" if found is None else "replaced")
        return False

    def connect(self) -> Connection:
        directory = os.path.dirname(os.path.abspath(self.target))
        try:
            # Private to this user: with --log-content the log holds prompts and responses. SQLite gives its WAL
            # and shared-memory files the database file's permissions.
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.close(os.open(self.target, os.O_RDWR | os.O_CREAT, 0o600))
            make_private(self.target)
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {self.target}: {exc.strerror}") from exc
        connection = sqlite3.connect(self.target, timeout=self.busy_timeout_ms / 1000, check_same_thread=False)
        # WAL lets the API read while the writer writes; with WAL, synchronous=NORMAL still survives a crash of
        # the proxy (only a power cut can lose the last batches) and saves an fsync per batch.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        opened = os.stat(self.target)
        self._opened = (opened.st_dev, opened.st_ino)
        return connection


class PostgresStore(Store):
    placeholder = "%s"
    id_column = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError("PostgreSQL needs the psycopg package: pip install 'ollama-metrics-proxy[postgres]'"
                             ) from exc
        self._psycopg = psycopg
        self.errors = (psycopg.Error,)

    def connect(self) -> Connection:
        connection: Connection = self._psycopg.connect(self.target, connect_timeout=5)
        return connection

    def describe(self) -> str:
        return redact_url(self.target)


def open_store(target: str) -> Store:
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresStore(target)
    return SqliteStore(target)
