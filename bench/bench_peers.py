"""lightningd memory and file descriptors with many idle connected peers (no channels).

The peers are not nodes: the bench process itself opens BOLT #8 connections to one
lightningd (tests/scripted_peer.py's transport: common/peer_io.py), each with its own node
key, sends `init` and keeps the connection open. A reader thread answers lightningd's pings
(its 60 s keepalive would otherwise drop a silent peer) and drains anything else.

Measured with 0 peers, then with each count in `--peers` (cumulative: 100 then 400 more for
500): RSS / PSS / USS summed over lightningd and its subdaemons, lightningd's open fds, and
growth per peer = (memory with N - memory with 0) / N. Then every connection is closed and the
fds are counted again once lightningd lists no peer.

Run: .venv/bin/python -m bench.bench_peers [--peers 100,500] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import selectors
import threading
import time

from bench.benchlib import (
    FAST,
    LIGHTNINGD,
    add_lightningd_option,
    chain,
    emit,
    fd_count,
    git_state,
    lightningd_of,
    node_memory,
    wait_for,
)
from common.peer_io import ConnectionClosed, PeerConnection
from tests.scripted_peer import ScriptedPeer, init_msg
from wire import peer_wiregen as wire


class Peers(threading.Thread):
    """Idle raw peers of one node, kept alive by answering its pings from one thread."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.conns: list[PeerConnection] = []
        self.stop = threading.Event()
        self.errors: list[str] = []

    def add(self, index: int, node_id: str, port: int) -> None:
        secret = hashlib.sha256(b"bench-peer-%d" % index).digest()
        conn = ScriptedPeer(secret).connect(node_id, port, timeout=30)
        conn.write_message(init_msg())
        with self.lock:
            self.conns.append(conn)
            self.sel.register(conn.fileno(), selectors.EVENT_READ, conn)

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                ready = self.sel.select(timeout=0) if self.conns else []
            for key, _ in ready:
                self._serve(key.data)
            time.sleep(0.05)

    def _serve(self, conn: PeerConnection) -> None:
        try:
            msg = wire.decode(conn.read_message())
        except (ConnectionClosed, OSError) as exc:
            self.errors.append(f"peer connection lost: {exc!r}")
            with self.lock:
                self.sel.unregister(conn.fileno())
            return
        except Exception:  # a message type we do not decode: ignored, like gossip
            return
        if isinstance(msg, wire.Ping):
            conn.write_message(wire.Pong(ignored=bytes(msg.num_pong_bytes)).encode())

    def close_all(self) -> None:
        self.stop.set()
        self.join()
        for conn in self.conns:
            conn.close()


def snapshot(node, peers: int) -> dict:
    time.sleep(1.0)  # let lightningd finish each init exchange before reading
    return {"peers": peers, "memory": node_memory(node), "lightningd_fds": fd_count(node.proc.pid)}


def per_peer_kb(base: dict, snap: dict) -> dict | None:
    n = snap["peers"]
    if not n:
        return None
    b, a = base["memory"]["total"], snap["memory"]["total"]
    return {k: (a[k] - b[k]) / n for k in ("rss_kb", "pss_kb", "uss_kb")}


def connect_up_to(node, peers: Peers, count: int) -> float:
    """Open connections until there are `count`; seconds taken until lightningd lists them."""
    t0 = time.perf_counter()
    for i in range(len(peers.conns), count):
        peers.add(i, node.id, node.port)
    wait_for(lambda: len(node.rpc.listpeers()["peers"]) >= count, 120, f"{count} peers listed")
    return time.perf_counter() - t0


def measure(counts: list[int], executable: tuple[str, ...] = LIGHTNINGD) -> dict:
    with chain("bench-peers-", executable) as (bitcoind, factory):
        node = factory.get_node(*FAST)
        base = snapshot(node, 0)
        snaps, connect_s = [], {}
        peers = Peers()
        peers.start()
        for count in counts:
            connect_s[count] = connect_up_to(node, peers, count)
            snap = snapshot(node, count)
            snap["listed_peers"] = len(node.rpc.listpeers()["peers"])
            snap["per_peer_kb"] = per_peer_kb(base, snap)
            snaps.append(snap)
        peers.close_all()
        wait_for(lambda: not node.rpc.listpeers()["peers"], 120, "no peer listed")
        after = snapshot(node, 0)
        return {
            "chain": bitcoind.kind,
            "base": base,
            "with_peers": snaps,
            "connect_s": connect_s,
            "after_disconnect": after,
            "peer_errors": peers.errors[:20],
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", default="100,500", help="comma list, ascending")
    parser.add_argument("--json")
    add_lightningd_option(parser)
    args = parser.parse_args(argv)
    counts = sorted(int(x) for x in args.peers.split(",") if x)
    out = {"git": git_state(), **measure(counts, lightningd_of(args))}
    return emit(out, args.json)


if __name__ == "__main__":
    main()
