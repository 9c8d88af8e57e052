"""The gossip store file: round trip, deletion, compaction, damaged tails, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gossipd.gossip_store import (
    FLAG_DELETED,
    HEADER,
    STORE_VERSION,
    GossipStore,
    channel_amount_msg,
    parse_channel_amount,
)


def msgs(n: int) -> list[bytes]:
    return [b"\x01\x02" + bytes([i % 256]) * (10 + i) for i in range(n)]


def reopen(path: Path) -> tuple[GossipStore, list[str]]:
    logs: list[str] = []
    return GossipStore(str(path), logs.append), logs


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "gossip_store"
    store, _ = reopen(path)
    offsets = [store.append(m, 100 + i) for i, m in enumerate(msgs(5))]
    assert offsets[0] == 1 and offsets == sorted(offsets)
    store.close()
    assert path.read_bytes()[0] == STORE_VERSION
    store, logs = reopen(path)
    assert [(r.offset, r.timestamp, r.msg) for r in store.records] == [
        (o, 100 + i, m) for i, (o, m) in enumerate(zip(offsets, msgs(5), strict=True))
    ]
    assert logs == []
    # appending after a reload continues the file
    store.append(b"\xff\xff", 7)
    store.close()
    assert reopen(path)[0].records[-1].msg == b"\xff\xff"


def test_deleted_flag_persists(tmp_path: Path) -> None:
    path = tmp_path / "gossip_store"
    store, _ = reopen(path)
    offsets = [store.append(m, 1) for m in msgs(3)]
    store.delete(offsets[1])
    assert [r.msg for r in store.live()] == [msgs(3)[0], msgs(3)[2]]
    store.close()
    store, logs = reopen(path)
    assert [r.deleted for r in store.records] == [False, True, False]
    assert store.records[1].flags & FLAG_DELETED and logs == []


def test_compaction(tmp_path: Path) -> None:
    path = tmp_path / "gossip_store"
    store, _ = reopen(path)
    for m in msgs(10):
        store.append(m, 1)
    size = path.stat().st_size
    live = [(m, 5) for m in msgs(10)[::3]]
    offsets = store.rewrite(live)
    assert path.stat().st_size < size
    assert [r.offset for r in store.records] == offsets
    store.append(b"\x00\x07", 9)
    store.close()
    store, logs = reopen(path)
    assert [(r.msg, r.timestamp) for r in store.records] == [*live, (b"\x00\x07", 9)]
    assert logs == [] and not (tmp_path / "gossip_store.tmp").exists()


def test_truncated_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "gossip_store"
    store, _ = reopen(path)
    for m in msgs(4):
        store.append(m, 1)
    store.close()
    full = path.read_bytes()
    for cut in (1, 5, HEADER.size + 3):  # mid-body, mid-header, just past a header
        path.write_bytes(full[:-cut] if cut < 5 else full + full[1 : 1 + cut])
        store, logs = reopen(path)
        assert len(logs) == 1 and "truncated" in logs[0]
        good = [r.msg for r in store.records]
        assert good == msgs(4)[: len(good)] and len(good) >= 3
        store.append(b"\x00\x08", 2)
        store.close()
        store, logs = reopen(path)
        assert logs == [] and store.records[-1].msg == b"\x00\x08"
        store.close()


def test_corrupt_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "gossip_store"
    store, _ = reopen(path)
    for m in msgs(4):
        store.append(m, 1)
    last = store.records[-1].offset
    store.close()
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # a flipped byte in the last message
    path.write_bytes(bytes(data))
    store, logs = reopen(path)
    assert [r.msg for r in store.records] == msgs(3)
    assert "checksum" in logs[0] and path.stat().st_size == last
    store.close()
    # garbage appended after good records
    path.write_bytes(path.read_bytes() + os.urandom(40))
    store, logs = reopen(path)
    assert [r.msg for r in store.records] == msgs(3) and logs


def test_unknown_version_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "gossip_store"
    path.write_bytes(b"\x77garbage")
    store, logs = reopen(path)
    assert store.records == [] and logs and path.read_bytes() == bytes([STORE_VERSION])


def test_channel_amount_record() -> None:
    assert parse_channel_amount(channel_amount_msg(123456)) == 123456
    assert parse_channel_amount(b"\x01\x00" + bytes(8)) is None


WRITER = """
import sys
from gossipd.gossip_store import GossipStore
store = GossipStore(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    store.append(b"\\x01\\x02" + i.to_bytes(4, "big") * 50, i)
    i += 1
"""


def test_kill_9_mid_append(tmp_path: Path) -> None:
    path = tmp_path / "gossip_store"
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.2 + 0.05 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store, _ = reopen(path)
        assert len(store.records) > 10
        for rec in store.records:  # every record that survived is whole
            assert rec.msg == b"\x01\x02" + rec.timestamp.to_bytes(4, "big") * 50
        store.close()
    # a torn write (what a power cut could leave) is cut on reload as well
    with open(path, "ab") as f:
        f.write(HEADER.pack(0, 200, 0, 0) + bytes(50))
    store, logs = reopen(path)
    assert logs and all(r.msg[:2] == b"\x01\x02" for r in store.records)
