"""The master's SQLite database: `<lightning-dir>/<network>/lightningd.sqlite3`.

Only lightningd touches it, from its asyncio thread, with short synchronous calls.

Transactions: a statement run outside `with db.transaction():` is its own transaction and is
durably committed when the call returns. Use `transaction()` to make several statements
atomic. Nesting it is an error, not a savepoint: the only way to nest by accident in an
asyncio program is to `await` inside a transaction and let another task start one, and
silently joining (or savepointing inside) someone else's transaction would let that task
believe its writes were committed when they were not. For the same reason, a statement from
another asyncio task while a transaction is open is refused.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from common.chainparams import CHAINS
from lightningd import db_schema
from lightningd.db_schema import VAR_GENESIS_HASH, VAR_NEXT_CHANNEL_DBID

# Long enough to ride out an operator's `sqlite3 .backup` checkpoint, short enough that a
# stuck lock shows up as an error rather than a frozen daemon.
BUSY_TIMEOUT_MS = 5000
# In WAL mode FULL fsyncs the WAL on every commit, so a commit is on disk before we do
# anything irreversible (sign, send, broadcast). NORMAL only syncs at checkpoints and can
# lose the last commits on power loss (though never on a crash of our own).
SYNCHRONOUS = "FULL"
DBID_BLOCK = 32  # channel dbids reserved on disk at a time (next_channel_dbid)

VarValue = str | int | bytes


class DatabaseError(Exception):
    """The database cannot be opened or used; the message is meant for the operator."""


@dataclass(frozen=True)
class PeerRow:
    id: int
    node_id: bytes
    address: str | None


def _network_name(chain_hash: bytes) -> str:
    for params in CHAINS.values():
        if params.chain_hash == chain_hash:
            return params.network
    return "unknown chain " + chain_hash[::-1].hex()


def _split_statements(script: str) -> list[str]:
    """Split a script into statements, since executescript() would COMMIT our transaction."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current)
            current = ""
    if current.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {current!r}")
    return statements


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: plain synchronous use
        return None


def _create_private(path: str) -> None:
    """Create the file 0600 before SQLite sees it; SQLite gives -wal/-shm the same mode."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise DatabaseError(f"cannot create database {path}: {e.strerror}") from e
    os.close(fd)


class Database:
    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        self._tx_owner: asyncio.Task[Any] | None = None
        self._in_tx = False
        self._dbid_next = self._dbid_end = 0  # the block of dbids reserved on disk

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, chain_hash: bytes) -> Database:
        """Open (creating if missing) and migrate the database for the chain `chain_hash`."""
        if len(chain_hash) != 32:
            raise ValueError("chain_hash must be 32 bytes")
        _create_private(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, Python adds none.
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open database {path}: {e}") from e
        conn.row_factory = sqlite3.Row
        db = cls(conn, path)
        try:
            db._configure()
            db._check_integrity()
            with db.transaction():  # a new database never exists without its chain
                db._migrate()
                db._check_chain(chain_hash)
        except sqlite3.Error as e:
            conn.close()
            raise DatabaseError(f"cannot use database {path}: {e}") from e
        except BaseException:
            conn.close()
            raise
        return db

    def _pragma(self, sql: str) -> Any:
        row = self._conn.execute(sql).fetchone()
        return None if row is None else row[0]

    def _configure(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self._pragma("PRAGMA journal_mode = WAL")
        if mode != "wal":
            raise DatabaseError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")

    def _check_integrity(self) -> None:
        # Reads every page once: cheap at a node's database size, and a corrupt database is
        # refused at startup rather than failing in the middle of a channel operation.
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            # SQLite's lines hold newlines of their own: the operator gets one line.
            detail = "; ".join(" ".join(p.split()) for p in problems[:5])
            raise DatabaseError(f"{self.path} is corrupt: {detail}")

    def _schema_version(self) -> int:
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'version'"
        ).fetchone()
        if not exists:
            return 0
        row = self._conn.execute("SELECT version FROM version").fetchone()
        if row is None:
            raise DatabaseError(f"{self.path}: version table is empty")
        return int(row[0])

    def _migrate(self) -> None:
        migrations = db_schema.MIGRATIONS
        current = self._schema_version()
        if current > len(migrations):
            raise DatabaseError(
                f"{self.path} has schema version {current}, but this lightningd only knows "
                f"up to version {len(migrations)}: refusing to open a database written by "
                "a newer version (downgrades are not supported)"
            )
        if current == 0:
            self._conn.execute("CREATE TABLE IF NOT EXISTS version (version INTEGER)")
            self._conn.execute("DELETE FROM version")
            self._conn.execute("INSERT INTO version VALUES (0)")
        for index in range(current, len(migrations)):
            self._run_migration(index, migrations[index])
        self._conn.execute("UPDATE version SET version = ?", (len(migrations),))

    def _run_migration(self, index: int, script: str) -> None:
        for statement in _split_statements(script):
            try:
                self._conn.execute(statement)
            except sqlite3.Error as e:
                raise DatabaseError(
                    f"{self.path}: migration {index + 1} failed: {e}; nothing was changed"
                ) from e

    def _check_chain(self, chain_hash: bytes) -> None:
        stored = self.get_var(VAR_GENESIS_HASH)
        if stored is None:
            self.set_var(VAR_GENESIS_HASH, chain_hash)
        elif stored != chain_hash:
            theirs = _network_name(stored) if isinstance(stored, bytes) else repr(stored)
            raise DatabaseError(
                f"{self.path} belongs to {theirs}, but we are running on "
                f"{_network_name(chain_hash)}: refusing to mix chains"
            )

    # -- transactions and statements -------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """Commit the block's statements together, or roll them all back if it raises.

        A durable commit is on disk when this returns (the WAL is fsynced). One that is not
        (durable=False: ~1 ms less) survives our own crash but may be lost with the power
        until the next durable commit syncs the WAL, which holds every earlier commit. Use
        it only where a durable commit always follows before anything leaves the node
        (a reservation or change index for a tx that is stored or broadcast later).
        """
        if self._in_tx:
            raise RuntimeError("nested database transaction (did something await inside one?)")
        if not durable:
            self._raw("PRAGMA synchronous = NORMAL")
        try:
            # IMMEDIATE takes the write lock now, so we never fail halfway on a lock upgrade.
            self._raw("BEGIN IMMEDIATE")
            self._in_tx, self._tx_owner = True, _current_task()
            try:
                yield
            except BaseException:
                self._end_tx("ROLLBACK")
                raise
            self._end_tx("COMMIT")
        finally:
            if not durable:
                self._raw(f"PRAGMA synchronous = {SYNCHRONOUS}")

    def _end_tx(self, verb: str) -> None:
        try:
            self._raw(verb)
        finally:
            if self._conn.in_transaction:  # a failed COMMIT can leave it open
                self._conn.execute("ROLLBACK")
            self._in_tx, self._tx_owner = False, None

    def _raw(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise DatabaseError(f"database {self.path}: {e} (in: {sql.strip()[:80]})") from e

    def _check_owner(self) -> None:
        if self._in_tx and _current_task() is not self._tx_owner:
            raise RuntimeError("database statement from another task while a transaction is open")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; outside transaction() it commits on its own."""
        self._check_owner()
        return self._raw(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        # fetchall, not fetchone: an INSERT/UPDATE ... RETURNING left half-stepped would keep
        # its implicit transaction open instead of committing it.
        rows = self.query(sql, params)
        return rows[0] if rows else None

    # -- vars ------------------------------------------------------------------------------

    def get_var(self, name: str) -> VarValue | None:
        """The value set_var stored (str, int or bytes), or None if unset."""
        row = self.query_one("SELECT val, intval, blobval FROM vars WHERE name = ?", (name,))
        if row is None:
            return None
        for value in (row["intval"], row["blobval"], row["val"]):
            if value is not None:
                return value
        return None

    def get_int_var(self, name: str, default: int) -> int:
        value = self.get_var(name)
        if value is None:
            return default
        if not isinstance(value, int):
            raise DatabaseError(f"database {self.path}: var {name} is not an integer")
        return value

    def set_var(self, name: str, value: VarValue) -> None:
        columns: dict[type, str] = {str: "val", int: "intval", bytes: "blobval"}
        column = columns.get(type(value))  # exact type: bool is not an int here
        if column is None:
            raise TypeError(f"var {name}: cannot store {type(value).__name__}")
        self.execute(
            f"INSERT INTO vars (name, {column}) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET"
            f" val = NULL, intval = NULL, blobval = NULL, {column} = excluded.{column}",
            (name, value),
        )

    # -- peers -----------------------------------------------------------------------------

    def add_peer(self, node_id: bytes, address: str | None) -> int:
        """Insert or update a peer and return its id; a None address keeps the known one."""
        if len(node_id) != 33:
            raise ValueError("node_id must be a 33-byte compressed public key")
        row = self.query_one(
            "INSERT INTO peers (node_id, address) VALUES (?, ?) ON CONFLICT (node_id) DO UPDATE"
            " SET address = COALESCE(excluded.address, address) RETURNING id",
            (node_id, address),
        )
        assert row is not None
        return int(row["id"])

    def get_peer(self, node_id: bytes) -> PeerRow | None:
        row = self.query_one("SELECT id, node_id, address FROM peers WHERE node_id = ?", (node_id,))
        return None if row is None else PeerRow(row["id"], row["node_id"], row["address"])

    def list_peers(self) -> list[PeerRow]:
        rows = self.query("SELECT id, node_id, address FROM peers ORDER BY id")
        return [PeerRow(r["id"], r["node_id"], r["address"]) for r in rows]

    # -- channels --------------------------------------------------------------------------

    def next_channel_dbid(self) -> int:
        """Hand out a fresh channel dbid, durably, so it is never handed out again.

        Unlike Core Lightning (which reuses the dbid of an open that never reached the
        database), a dbid is never reused: hsmd derives the channel's secrets from it, and an
        aborted open may already have shown the peer points derived from them. They are
        reserved on disk DBID_BLOCK at a time (one fsync per block, not per open); a restart
        skips what was left of the block.
        """
        if self._dbid_next >= self._dbid_end:
            row = self.query_one(
                "UPDATE vars SET intval = MAX(intval, (SELECT COALESCE(MAX(id), 0) + 1"
                " FROM channels)) + ? WHERE name = ? RETURNING intval",
                (DBID_BLOCK, VAR_NEXT_CHANNEL_DBID),
            )
            if row is None:
                raise DatabaseError(f"database {self.path}: var {VAR_NEXT_CHANNEL_DBID} is missing")
            self._dbid_end = int(row[0])
            self._dbid_next = self._dbid_end - DBID_BLOCK
        self._dbid_next += 1
        return self._dbid_next - 1

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back. Safe to call twice."""
        self._conn.close()
        self._in_tx, self._tx_owner = False, None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
