"""Shared pieces of the node benchmarks: a regtest chain, nodes, funding, statistics, memory.

Nodes are started exactly as tests/node.py starts them (its Node and NodeFactory are reused),
plus `--developer --dev-bitcoind-poll=1` so chain events are seen within a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coincurve import PrivateKey  # noqa: E402

from contrib.regtest_node import RegtestNode  # noqa: E402
from hsmd.derive import p2wpkh_address  # noqa: E402
from tests.node import Node, NodeFactory, wait_for  # noqa: E402

FAST = ("--developer", "--dev-bitcoind-poll=1")
# Blocks that only mature coinbases go to a key nobody here uses (as tests/test_fundchannel.py).
ELSEWHERE = p2wpkh_address(PrivateKey(b"\x66" * 32).public_key.format(), "bcrt")

# Reference figures quoted from the text of issue 8 (Core Lightning); NOT measured here.
CLN_REFERENCE = {
    "fundchannel_s": 0.053,  # fundchannel median on two nodes
    "concurrent_10_total_s": 0.42,  # N=10 concurrent inbound opens, total
    "pss_5_channels_mb": 40.0,  # whole node PSS with 5 channels
}

__all__ = [
    "CLN_REFERENCE",
    "ELSEWHERE",
    "FAST",
    "Node",
    "NodeFactory",
    "chain",
    "fund",
    "node_memory",
    "stats",
    "wait_for",
]


def stats(samples: list[float]) -> dict:
    """min / median / p95 (nearest rank) / max / n of a list of samples."""
    s = sorted(samples)
    if not s:
        return {"n": 0}
    rank = max(0, min(len(s) - 1, round(0.95 * len(s) + 0.5) - 1))
    return {
        "n": len(s),
        "min": s[0],
        "median": statistics.median(s),
        "p95": s[rank],
        "max": s[-1],
    }


@contextlib.contextmanager
def chain(prefix: str = "bench-") -> Iterator[tuple[RegtestNode, NodeFactory]]:
    """A fresh regtest chain (bitcoind if on PATH, else bcoin) and a node factory on it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        bitcoind = RegtestNode(os.path.join(tmp, "bitcoind"))
        bitcoind.start()
        factory = NodeFactory(Path(tmp), bitcoind)
        try:
            yield bitcoind, factory
        finally:
            try:
                factory.teardown()
            finally:
                for node in factory.nodes:
                    node.kill()
                bitcoind.stop()


def sync(bitcoind: RegtestNode, *nodes: Node, timeout: float = 60) -> None:
    tip = bitcoind.rpc("getblockcount")
    for node in nodes:
        wait_for(
            lambda node=node: node.rpc.getinfo()["blockheight"] >= tip,
            timeout,
            "the node to reach the tip",
        )


def fund(bitcoind: RegtestNode, nodes: list[Node], coins: int) -> None:
    """Give each node `coins` mature coinbases: 1 block to it, repeatedly, then 100 elsewhere."""
    for node in nodes:
        address = node.rpc.newaddr()["bech32"]
        for _ in range(coins):
            bitcoind.generate(1, address)
    bitcoind.generate(100, ELSEWHERE)
    sync(bitcoind, *nodes)
    for node in nodes:
        wait_for(
            lambda node=node: (
                sum(o["status"] == "confirmed" for o in node.rpc.listfunds()["outputs"]) >= coins
            ),
            60,
            "mature coins in the wallet",
        )


# Memory ---------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                kids += [int(x) for x in text.split()]
    return kids


def proc_name(pid: int) -> str:
    """lightningd, hsmd, gossipd, openingd...: the module a `python -m` process runs."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode() for a in argv if a]
    if "-m" in args and args.index("-m") + 1 < len(args):
        return args[args.index("-m") + 1].split(".")[-1]
    return Path(args[0]).name if args else "?"


def smaps(pid: int) -> dict | None:
    """PSS, USS (private clean + dirty) and RSS in kB from /proc/<pid>/smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            fields[parts[0][:-1]] = int(parts[1])
    return {
        "pss_kb": fields.get("Pss", 0),
        "uss_kb": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "rss_kb": fields.get("Rss", 0),
    }


def node_memory(node: Node) -> dict:
    """Memory of lightningd and each of its subdaemons, and the whole node's sums."""
    assert node.proc is not None
    procs = []
    for pid in [node.proc.pid, *children(node.proc.pid)]:
        m = smaps(pid)
        if m is not None:
            procs.append({"pid": pid, "name": proc_name(pid), **m})
    total = {k: sum(p[k] for p in procs) for k in ("pss_kb", "uss_kb", "rss_kb")}
    return {"processes": procs, "total": total}


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def start_to_rpc_ready(node: Node, timeout: float = 60) -> float:
    """Start `node`'s lightningd; seconds from spawn until `getinfo` answers over RPC."""
    import subprocess

    from pyln.client import RpcError

    node.dir.mkdir(parents=True, exist_ok=True)
    node.log_offset = len(node.logs())
    t0 = time.perf_counter()
    node.proc = subprocess.Popen(
        node.cmdline(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = t0 + timeout
    while True:
        try:
            node.info = node.rpc.getinfo()
            return time.perf_counter() - t0
        except (OSError, ValueError, RpcError):
            if node.proc.poll() is not None:
                out, err = node.proc.communicate()
                code = node.proc.returncode
                raise RuntimeError(f"lightningd exited {code}: {err}{out}") from None
            if time.perf_counter() > deadline:
                raise TimeoutError("lightningd did not answer getinfo") from None
            time.sleep(0.002)


def emit(out: dict, json_path: str | None) -> dict:
    """A benchmark script's result: printed as JSON, and written to `json_path` if given."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))
    return out
