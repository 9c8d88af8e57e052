"""The master database: creation, migrations, refusals, durability and the small accessors."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxInWitness,
    CMutableTxOut,
    CMutableTxWitness,
    COutPoint,
    CTransaction,
)
from bitcointx.core.script import CScript, CScriptWitness

from common.chainparams import CHAINS
from lightningd import db_schema
from lightningd.db import DBID_BLOCK, Database, DatabaseError, PeerRow

REGTEST = CHAINS["regtest"].chain_hash
BITCOIN = CHAINS["bitcoin"].chain_hash
NODE_A = b"\x02" + b"\xaa" * 32
NODE_B = b"\x03" + b"\xbb" * 32
TABLES = {"version", "vars", "peers", "channels", "outputs", "transactions", "blocks"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "lightningd.sqlite3")


def _raw_version(path: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version FROM version").fetchone()[0]


def test_fresh_database_has_every_table_and_current_version(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        names = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert names >= TABLES
        assert db.query("SELECT version FROM version")[0][0] == len(db_schema.MIGRATIONS)
        assert db.get_var("genesis_hash") == REGTEST


def test_file_mode_is_0600_including_wal(path: str) -> None:
    old = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        db = Database.open(path, REGTEST)
    finally:
        os.umask(old)
    db.set_var("x", 1)
    for name in (path, path + "-wal", path + "-shm"):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
    db.close()


def test_pragmas_are_really_on(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        assert db.query_one("PRAGMA journal_mode")[0] == "wal"
        assert db.query_one("PRAGMA foreign_keys")[0] == 1
        assert db.query_one("PRAGMA synchronous")[0] == 2  # FULL
        assert db.query_one("PRAGMA busy_timeout")[0] > 0
        with pytest.raises(DatabaseError, match="FOREIGN KEY"):
            db.execute(
                "INSERT INTO channels (id, peer_id, state, opener, funding_satoshi, our_msat,"
                " created_at) VALUES (1, 999, 0, 0, 1000, 0, 0)"
            )


def test_reopen_runs_no_migration_twice(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = "INSERT INTO vars (name, intval) VALUES ('runs', 1) ON CONFLICT (name)"
    counting += " DO UPDATE SET intval = intval + 1;"
    monkeypatch.setattr(db_schema, "MIGRATIONS", [*db_schema.MIGRATIONS, counting])
    for _ in range(3):
        Database.open(path, REGTEST).close()
    with Database.open(path, REGTEST) as db:
        assert db.get_var("runs") == 1
    assert _raw_version(path) == len(db_schema.MIGRATIONS)


def test_upgrade_applies_only_new_migrations(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Database.open(path, REGTEST).close()
    old = len(db_schema.MIGRATIONS)
    monkeypatch.setattr(
        db_schema,
        "MIGRATIONS",
        [*db_schema.MIGRATIONS, "ALTER TABLE peers ADD COLUMN note TEXT; UPDATE peers SET note=1;"],
    )
    with Database.open(path, REGTEST) as db:
        db.add_peer(NODE_A, None)
        assert db.query_one("SELECT note FROM peers")[0] is None
    assert _raw_version(path) == old + 1


def test_failed_migration_changes_nothing(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Database.open(path, REGTEST).close()
    old = len(db_schema.MIGRATIONS)
    monkeypatch.setattr(
        db_schema,
        "MIGRATIONS",
        [*db_schema.MIGRATIONS, "CREATE TABLE newthing (x INTEGER);", "SELECT FROM nonsense;"],
    )
    with pytest.raises(DatabaseError, match=f"migration {old + 2} failed"):
        Database.open(path, REGTEST)
    monkeypatch.undo()
    assert _raw_version(path) == old
    with Database.open(path, REGTEST) as db:
        assert db.query_one("SELECT 1 FROM sqlite_master WHERE name = 'newthing'") is None


def test_newer_database_is_refused(path: str) -> None:
    Database.open(path, REGTEST).close()
    newer = len(db_schema.MIGRATIONS) + 5
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE version SET version = ?", (newer,))
    with pytest.raises(DatabaseError) as err:
        Database.open(path, REGTEST)
    message = str(err.value)
    assert path in message
    assert f"version {newer}" in message
    assert f"version {len(db_schema.MIGRATIONS)}" in message
    assert _raw_version(path) == newer  # untouched


def test_wrong_chain_is_refused(path: str) -> None:
    Database.open(path, REGTEST).close()
    with pytest.raises(DatabaseError) as err:
        Database.open(path, BITCOIN)
    assert path in str(err.value)
    assert "regtest" in str(err.value) and "bitcoin" in str(err.value)
    with Database.open(path, REGTEST) as db:  # still fine for its own chain
        assert db.get_var("genesis_hash") == REGTEST


def test_not_a_sqlite_file(path: str) -> None:
    Path(path).write_bytes(b"this is an hsm_secret, or a text file, not a database\n" * 100)
    with pytest.raises(DatabaseError, match=path):
        Database.open(path, REGTEST)


@pytest.mark.parametrize("size", [50, 4096, 3 * 4096 + 100])
def test_truncated_file(path: str, size: int) -> None:
    with Database.open(path, REGTEST) as db:
        for i in range(200):
            db.add_peer(bytes([2]) + i.to_bytes(32, "big"), f"127.0.0.1:{i}")
    assert os.path.getsize(path) > size and not os.path.exists(path + "-wal")
    os.truncate(path, size)
    with pytest.raises(DatabaseError, match=path):
        Database.open(path, REGTEST)


def test_corrupted_page(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        for i in range(200):
            db.add_peer(bytes([2]) + i.to_bytes(32, "big"), "x" * 100)
    page_size = 4096
    with open(path, "r+b") as f:  # scribble over a page in the middle, leave the header
        f.seek(page_size * (os.path.getsize(path) // page_size // 2))
        f.write(b"\xff" * page_size)
    with pytest.raises(DatabaseError, match=path):
        Database.open(path, REGTEST)


def test_missing_directory(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "lightningd.sqlite3")
    with pytest.raises(DatabaseError, match=missing):
        Database.open(missing, REGTEST)


def test_failed_transaction_leaves_nothing(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        with pytest.raises(ZeroDivisionError), db.transaction():
            db.add_peer(NODE_A, "a")
            db.set_var("half", b"done")
            _ = 1 / 0
        assert db.list_peers() == []
        assert db.get_var("half") is None
        assert not db.in_transaction
        with db.transaction():  # usable again afterwards
            db.add_peer(NODE_B, None)
        assert len(db.list_peers()) == 1


def test_nested_transaction_is_an_error(path: str) -> None:
    with Database.open(path, REGTEST) as db, db.transaction():
        db.set_var("outer", 1)
        with pytest.raises(RuntimeError, match="nested"), db.transaction():
            pass
    with Database.open(path, REGTEST) as db:
        assert db.get_var("outer") == 1  # the outer one still committed


def test_other_task_cannot_write_into_an_open_transaction(path: str) -> None:
    db = Database.open(path, REGTEST)

    async def holder(started: asyncio.Event, release: asyncio.Event) -> None:
        with db.transaction():
            db.set_var("mine", 1)
            started.set()
            await release.wait()  # the mistake the check exists to catch

    async def main() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(holder(started, release))
        await started.wait()
        with pytest.raises(RuntimeError, match="another task"):
            db.set_var("theirs", 2)
        release.set()
        await task

    asyncio.run(main())
    assert db.get_var("mine") == 1 and db.get_var("theirs") is None
    db.close()


def _child(path: str, body: str) -> int:
    script = textwrap.dedent(
        f"""
        import os, signal
        from common.chainparams import CHAINS
        from lightningd.db import Database
        db = Database.open({path!r}, CHAINS["regtest"].chain_hash)
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60).returncode


def test_commit_survives_sigkill(path: str) -> None:
    rc = _child(
        path,
        """
        with db.transaction():
            db.add_peer(bytes([2]) * 33, "10.0.0.1:9735")
            db.set_var("committed", b"yes")
        db.set_var("autocommitted", 7)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert rc == -signal.SIGKILL
    assert os.path.exists(path + "-wal")  # never checkpointed: recovery comes from the WAL
    with Database.open(path, REGTEST) as db:
        assert db.get_var("committed") == b"yes"
        assert db.get_var("autocommitted") == 7
        assert db.list_peers() == [PeerRow(1, bytes([2]) * 33, "10.0.0.1:9735")]


def test_uncommitted_write_is_gone_after_sigkill(path: str) -> None:
    rc = _child(
        path,
        """
        db.set_var("before", 1)
        with db.transaction():
            db.set_var("during", 2)
            os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert rc == -signal.SIGKILL
    with Database.open(path, REGTEST) as db:
        assert db.get_var("before") == 1
        assert db.get_var("during") is None


def test_vars_round_trip_each_type(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        assert db.get_var("v") is None
        assert db.get_int_var("v", 42) == 42
        for value in ("text", 0, -5, 2**62, b"\x00\x01", b""):
            db.set_var("v", value)
            assert db.get_var("v") == value and type(db.get_var("v")) is type(value)
        db.set_var("v", "now a string")
        with pytest.raises(DatabaseError, match="not an integer"):
            db.get_int_var("v", 0)
        with pytest.raises(TypeError):
            db.set_var("v", True)


def test_peers_upsert(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        a = db.add_peer(NODE_A, "127.0.0.1:9735")
        b = db.add_peer(NODE_B, None)
        assert a != b
        assert db.add_peer(NODE_A, "[::1]:9736") == a
        assert db.add_peer(NODE_A, None) == a  # no address: keep the one we know
        assert db.get_peer(NODE_A) == PeerRow(a, NODE_A, "[::1]:9736")
        assert db.get_peer(b"\x02" + b"\x00" * 32) is None
        assert db.list_peers() == [PeerRow(a, NODE_A, "[::1]:9736"), PeerRow(b, NODE_B, None)]
        with pytest.raises(ValueError):
            db.add_peer(b"\x02" * 32, None)
    with Database.open(path, REGTEST) as db:
        assert len(db.list_peers()) == 2


def test_channel_dbids_are_never_zero_or_reused(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        handed = [db.next_channel_dbid() for _ in range(DBID_BLOCK + 2)]  # across a block
        assert handed == list(range(1, DBID_BLOCK + 3))
        peer = db.add_peer(NODE_A, None)
        # A channel stored under a higher id (however it got there) is never handed out again.
        db.execute(
            "INSERT INTO channels (id, peer_id, state, opener, funding_satoshi, our_msat,"
            " created_at) VALUES (1000, ?, 0, 0, 1000, 0, 0)",
            (peer,),
        )
        with pytest.raises(DatabaseError, match="CHECK"):
            db.execute(
                "INSERT INTO channels (id, peer_id, state, opener, funding_satoshi, our_msat,"
                " created_at) VALUES (0, ?, 0, 0, 1000, 0, 0)",
                (peer,),
            )
    with Database.open(path, REGTEST) as db:  # the counter survives a restart
        assert db.next_channel_dbid() == 1001
    with Database.open(path, REGTEST) as db:  # the rest of a reserved block is skipped
        assert db.next_channel_dbid() == 1001 + DBID_BLOCK


def test_non_durable_transaction_commits_and_restores_full_sync(path: str) -> None:
    with Database.open(path, REGTEST) as db:
        with db.transaction(durable=False):
            db.set_var("x", 1)
        assert db._pragma("PRAGMA synchronous") == 2  # FULL again for the next commit
        with pytest.raises(ValueError), db.transaction(durable=False):
            db.set_var("x", 2)
            raise ValueError("rolled back")
        assert db._pragma("PRAGMA synchronous") == 2
        assert db.get_var("x") == 1
    with Database.open(path, REGTEST) as db:  # a crash of ours does not lose it
        assert db.get_var("x") == 1


def _legacy_points(*outpoints: tuple[bytes, int]) -> bytes:
    """The blobval of a version-1 `funding_reserved_<txid>` vars row."""
    return b"".join(txid + outnum.to_bytes(4, "big") for txid, outnum in outpoints)


def test_migration_2_releases_legacy_funding_reservations(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version-1 vars rows named the inputs of funding txs not yet broadcast: upgrading does
    once what the start after that crash did (free them unless the tx was recorded) and
    drops the rows; reservations the rows do not name are left alone."""
    monkeypatch.setattr(db_schema, "MIGRATIONS", db_schema.MIGRATIONS[:1])
    unsent, recorded = b"\x01" * 32, b"\x02" * 32
    coin = [bytes([0x10 + i]) * 32 for i in range(4)]
    with Database.open(path, REGTEST) as db, db.transaction():
        for txid in coin:
            for outnum in (0, 1):
                db.execute(
                    "INSERT INTO outputs (prev_out_tx, prev_out_index, value, type, status,"
                    " reserved_til) VALUES (?, ?, 1000, 6, 1, 500)",
                    (txid, outnum),
                )
        db.execute("INSERT INTO transactions (id, rawtx) VALUES (?, x'00')", (recorded,))
        db.set_var("funding_reserved_" + unsent.hex(), _legacy_points((coin[0], 1), (coin[1], 0)))
        db.set_var("funding_reserved_" + recorded.hex(), _legacy_points((coin[2], 0)))
        db.set_var("funding_reservedX" + unsent.hex(), _legacy_points((coin[3], 0)))  # not ours
    monkeypatch.undo()
    with Database.open(path, REGTEST) as db:
        rows = db.query(
            "SELECT prev_out_tx, prev_out_index, status, reserved_til, reserved_for_txid"
            " FROM outputs WHERE status = 0"
        )
        assert sorted((bytes(r[0]), r[1], r[3], r[4]) for r in rows) == [
            (coin[0], 1, None, None),
            (coin[1], 0, None, None),
        ]
        assert db.query_one("SELECT count(*) FROM outputs WHERE status = 1")[0] == 6
        names = [r[0] for r in db.query("SELECT name FROM vars WHERE name LIKE 'funding%'")]
        assert names == ["funding_reservedX" + unsent.hex()]


def _tx(prevout: COutPoint, witness: bool) -> bytes:
    """A one-input, one-output tx spending `prevout`, with or without a witness."""
    tx = CMutableTransaction(
        [CMutableTxIn(prevout, CScript(b"\x01\x02"))],
        [CMutableTxOut(1000, CScript(b"\x00\x14" + bytes(20)))],
    )
    if witness:
        tx.wit = CMutableTxWitness([CMutableTxInWitness(CScriptWitness([bytes(32)]))])
    return tx.serialize()


def test_migration_3_flags_coinbase_outputs(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs stored before is_in_coinbase existed are flagged from their recorded tx:
    coinbases with and without a witness, and no other tx (nor an unrecorded one)."""
    monkeypatch.setattr(db_schema, "MIGRATIONS", db_schema.MIGRATIONS[:2])
    null, spent = COutPoint(), COutPoint(b"\x07" * 32, 0)
    txs = {
        b"\x01" * 32: _tx(null, witness=False),
        b"\x02" * 32: _tx(null, witness=True),
        b"\x03" * 32: _tx(spent, witness=False),
        b"\x04" * 32: _tx(spent, witness=True),
    }
    assert [CTransaction.deserialize(raw).is_coinbase() for raw in txs.values()] == [
        True,
        True,
        False,
        False,
    ]
    unrecorded = b"\x05" * 32
    with Database.open(path, REGTEST) as db, db.transaction():
        for txid, raw in txs.items():
            db.execute("INSERT INTO transactions (id, rawtx) VALUES (?, ?)", (txid, raw))
        for txid in [*txs, unrecorded]:
            db.execute(
                "INSERT INTO outputs (prev_out_tx, prev_out_index, value, type, status)"
                " VALUES (?, 0, 1000, 6, 0)",
                (txid,),
            )
    monkeypatch.undo()
    with Database.open(path, REGTEST) as db:
        rows = db.query("SELECT prev_out_tx, is_in_coinbase FROM outputs ORDER BY prev_out_tx")
        assert [(bytes(r[0])[0], r[1]) for r in rows] == [(1, 1), (2, 1), (3, 0), (4, 0), (5, 0)]
