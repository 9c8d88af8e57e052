"""The database under abuse: kill -9 mid-write, and files lightningd must refuse to use.

Why WAL with synchronous=FULL (lightningd/db.py), test-wise: a commit that returned
survives a kill -9 of the writer at any instant, a transaction is all or nothing, and a
transaction(durable=False) survives our own crash too (only power loss, which a later
durable commit covers, could take it). And a database lightningd cannot trust (corrupt,
truncated, written by a newer version, or for another chain) stops it at start-up with
one line saying why, no traceback, and the file left exactly as it was for the operator.
(tests/test_db.py checks Database.open's refusals one by one; here it is the daemon.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.chainparams import CHAINS
from lightningd import db_schema
from lightningd.db import Database
from tests.node import wait_for
from tests.opening_peer import Background

REGTEST = CHAINS["regtest"].chain_hash
ROOT = Path(__file__).resolve().parent.parent
PAGE = 4096

# -- kill -9 while a writer commits as fast as it can -----------------------------------------

# Each transaction adds a peer and bumps `count` to the number of peers: durable and
# non-durable ones alternate, and each writes several pages' worth now and then. It prints
# every count it committed, so the parent knows what must have survived.
WRITER = """
import os, sys
from common.chainparams import CHAINS
from lightningd.db import Database
from tests.node import wait_for
from tests.opening_peer import Background
db = Database.open(sys.argv[1], CHAINS["regtest"].chain_hash)
n = db.get_int_var("count", 0)
while True:
    n += 1
    with db.transaction(durable=n % 2 == 0):
        db.add_peer(b"\\x02" + n.to_bytes(32, "big"), "x" * (n % 7) * 100)
        db.set_var("count", n)
    os.write(1, b"%d\\n" % n)
"""


def kill_writer_after(path: str, seconds: float) -> int:
    """Run WRITER, SIGKILL it `seconds` after its first commit; the last count it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), path], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # it is writing now (start-up time varies with the load)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    out = (first + proc.stdout.read()).split()
    assert proc.wait() == -signal.SIGKILL
    return int(out[-1])


def check_consistent(path: str, committed: int) -> int:
    """Open as lightningd does (quick_check included) and check every invariant."""
    with Database.open(path, REGTEST) as db:
        assert db.query_one("PRAGMA integrity_check")[0] == "ok"
        assert db.query("PRAGMA foreign_key_check") == []
        count = db.get_int_var("count", 0)
        # Everything reported committed is there (the next one may be too: it can commit
        # before the report is written), and no transaction is half there.
        assert count in (committed, committed + 1)
        assert db.query_one("SELECT COUNT(*) FROM peers")[0] == count
        ids = [int.from_bytes(r[0][1:], "big") for r in db.query("SELECT node_id FROM peers")]
        assert sorted(ids) == list(range(1, count + 1))
        return count


def run_kills(tmp_path: Path, rounds: int, seed: int) -> None:
    path = str(tmp_path / "lightningd.sqlite3")
    Database.open(path, REGTEST).close()
    rng = random.Random(seed)
    last = 0
    for _ in range(rounds):
        committed = kill_writer_after(path, rng.uniform(0, 0.5))
        assert committed >= last  # nothing committed was ever lost
        last = check_consistent(path, committed)
    assert last > rounds  # the writer really wrote in every round


def test_kill_9_during_heavy_writes(tmp_path):
    run_kills(tmp_path, rounds=4, seed=1)


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_kill_9_during_heavy_writes_many_times(tmp_path):
    started = time.monotonic()
    run_kills(tmp_path, rounds=150, seed=2)
    print(f"150 kill -9 rounds in {time.monotonic() - started:.0f}s")


def test_lightningd_killed_hands_out_no_address_twice(node_factory):
    """kill -9 while newaddr calls commit: no key index handed out is ever handed out again."""
    l1 = node_factory.get_node()
    seen: list[str] = []

    def hand_out() -> None:
        with contextlib.suppress(OSError, ValueError):  # until lightningd dies under us
            while True:
                seen.append(l1.rpc.newaddr()["bech32"])

    asking = Background(hand_out)
    wait_for(lambda: len(seen) > 20, what="some addresses")
    l1.kill()
    asking.result()  # ended by the kill, and by nothing else
    l1.start()
    assert len(set(seen)) == len(seen)
    assert l1.rpc.newaddr()["bech32"] not in seen
    db = l1.dir / "regtest" / "lightningd.sqlite3"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# -- files lightningd must refuse ---------------------------------------------------------------


def damage_garbage(path: Path) -> str:
    with open(path, "r+b") as f:  # the header stays valid: only a page in the middle is bad
        f.seek(PAGE * (path.stat().st_size // PAGE // 2))
        f.write(random.Random(3).randbytes(PAGE))
    return f"{path} is corrupt: *** in database main *** Page "


def damage_truncated(path: Path) -> str:
    os.truncate(path, PAGE * 2 + 100)
    return f"cannot use database {path}: database disk image is malformed"


def damage_newer(path: Path) -> str:
    newer = len(db_schema.MIGRATIONS) + 1
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE version SET version = ?", (newer,))
    conn.close()
    return (
        f"{path} has schema version {newer}, but this lightningd only knows up to version "
        f"{len(db_schema.MIGRATIONS)}: refusing to open a database written by a newer version"
    )


def damage_other_chain(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE vars SET blobval = ? WHERE name = 'genesis_hash'",
            (CHAINS["bitcoin"].chain_hash,),
        )
    conn.close()
    return f"{path} belongs to bitcoin, but we are running on regtest: refusing to mix chains"


@pytest.mark.parametrize(
    "damage", [damage_garbage, damage_truncated, damage_newer, damage_other_chain]
)
def test_lightningd_refuses_a_database_it_cannot_trust(node_factory, damage):
    l1 = node_factory.get_node()
    for _ in range(100):  # some pages for the damage to land on
        l1.rpc.newaddr()
    l1.stop()
    path = l1.dir / "regtest" / "lightningd.sqlite3"
    assert not Path(f"{path}-wal").exists()  # checkpointed at a clean stop
    expected = damage(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    run = subprocess.run(l1.cmdline(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"lightningd: {expected}")
    assert "Traceback" not in run.stderr + l1.logs()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
