"""Shared pieces of the node benchmarks: a regtest chain, nodes, funding, statistics, memory.

Nodes are started exactly as tests/node.py starts them (its Node and NodeFactory are reused),
plus `--developer --dev-bitcoind-poll=1` so chain events are seen within a second.
"""

from __future__ import annotations

import argparse
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
from tests.node import LIGHTNINGD, Node, NodeFactory, wait_for  # noqa: E402

FAST = ("--developer", "--dev-bitcoind-poll=1")
# Blocks that only mature coinbases go to a key nobody here uses (as tests/test_fundchannel.py).
ELSEWHERE = p2wpkh_address(PrivateKey(b"\x66" * 32).public_key.format(), "bcrt")

# Unclean lightningd exits (Traceback in its output or log...) seen by any benchmark in this
# process: reported with the results (run_all puts them in its JSON) instead of aborting.
DAEMON_FAILURES: list[str] = []

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
    "LIGHTNINGD",
    "Node",
    "NodeFactory",
    "chain",
    "fund",
    "node_memory",
    "stats",
    "wait_for",
]


def add_lightningd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lightningd", help="measure this lightningd (Core Lightning's, say) instead of ours"
    )


def lightningd_of(args: argparse.Namespace) -> tuple[str, ...]:
    return (args.lightningd,) if args.lightningd else LIGHTNINGD


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
def chain(
    prefix: str = "bench-", executable: tuple[str, ...] = LIGHTNINGD
) -> Iterator[tuple[RegtestNode, NodeFactory]]:
    """A fresh regtest chain (bitcoind if on PATH, else bcoin) and a node factory on it,
    its nodes run by `executable` (a Core Lightning lightningd, for the CLN columns)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        bitcoind = RegtestNode(os.path.join(tmp, "bitcoind"))
        bitcoind.start()
        factory = NodeFactory(Path(tmp), bitcoind, executable)
        try:
            yield bitcoind, factory
        finally:
            try:
                # Not factory.teardown(): one unclean exit must not lose the results.
                stop_nodes(factory.nodes)  # failures land in DAEMON_FAILURES
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
    """lightningd, hsmd, gossipd, openingd, zygote: a forked subdaemon's title (its
    lightning_<name>), else the module a `python -m` process runs."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode() for a in argv if a]
    if args and args[0].startswith("lightning_"):
        return args[0].removeprefix("lightning_")
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


def descendants(pid: int) -> list[int]:
    """Children, grandchildren...: a subdaemon forked by a zygote may not be a direct child."""
    found, todo = [], children(pid)
    while todo:
        kid = todo.pop()
        found.append(kid)
        todo += children(kid)
    return found


def fd_count(pid: int) -> int | None:
    """Open file descriptors of one process (entries of /proc/<pid>/fd)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its reaped children (user + system), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def settle(nodes: list[Node], busy: float = 0.01, timeout: float = 60) -> float:
    """Wait until `nodes` use under `busy` of a core each (a node just (re)started keeps
    working after getinfo answers: its rescan, gossip; an idle node polling bitcoind every
    second uses ~0.4%). Returns the seconds waited."""
    t0 = time.perf_counter()
    busy *= len(nodes)

    def used() -> float:
        return sum(cpu_seconds(p) for n in nodes for p in [n.proc.pid, *descendants(n.proc.pid)])

    before = used()
    while time.perf_counter() - t0 < timeout:
        time.sleep(1.0)
        now = used()
        if now - before < busy:
            break
        before = now
    return time.perf_counter() - t0


def node_memory(node: Node) -> dict:
    """Memory of lightningd and each of its subdaemons, and the whole node's sums."""
    assert node.proc is not None
    procs = []
    for pid in [node.proc.pid, *descendants(node.proc.pid)]:
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


# Many nodes ------------------------------------------------------------------------------


def start_slow(node: Node, timeout: float = 300, tries: int = 5) -> Node:
    """Node.start with a longer wait (many nodes starting at once on 2 cores exceed its
    20 s), and a fresh port when the one picked at creation got taken meanwhile (by any
    ephemeral connection: free_port() only said it was free then)."""
    import subprocess

    from tests.node import free_port

    node.dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        node.log_offset = len(node.logs())
        node.proc = subprocess.Popen(
            node.cmdline(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(node._started, timeout, f"lightningd in {node.dir} to start")
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == tries - 1:
                raise
            node.port = free_port()
            continue
        node.info = node.rpc.getinfo()
        return node
    raise AssertionError("unreachable")


def start_nodes(factory: NodeFactory, count: int, *options: str, workers: int = 4) -> list[Node]:
    """`count` nodes started a few at a time in threads (all at once would thrash 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    nodes = [factory.get_node(*options, start=False) for _ in range(count)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(start_slow, nodes))
    return nodes


def stop_quietly(node: Node) -> str | None:
    """Stop a node; a failure (unclean exit, a Traceback in its log) is returned and noted in
    DAEMON_FAILURES, not raised: the measurement goes on and the failure is reported."""
    try:
        node.stop()
        return None
    except BaseException as exc:  # reported, never hidden
        node.kill()
        failure = f"{node.dir.name}: {type(exc).__name__}: {str(exc)[-1500:]}"
        DAEMON_FAILURES.append(failure)
        return failure


def stop_nodes(nodes: list[Node], workers: int = 8) -> list[str]:
    """Stop many nodes in parallel (one at a time takes ~0.5 s each); failures returned."""
    from concurrent.futures import ThreadPoolExecutor

    live = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    with ThreadPoolExecutor(workers) as pool:
        return [e for e in pool.map(stop_quietly, live) if e]


# Funding many nodes with one transaction: a coinbase of a key the bench holds, made mature,
# then one tx paying every node's address (vs fund()'s one block per coin per node).
BENCH_SECRET = b"\x66" * 32  # the key behind ELSEWHERE
COINBASE_FEE_SAT = 300_000  # generous: a 400-output tx is ~12.5 kvB (>= 20 sat/vB)


def mature_coinbase(bitcoind: RegtestNode) -> tuple[str, int]:
    """Mine one block to ELSEWHERE and 100 on top; (txid, value in sat) of its coinbase."""
    block = bitcoind.generate(1, ELSEWHERE)[0]
    txid = bitcoind.rpc("getblock", block)["tx"][0]
    bitcoind.generate(100, ELSEWHERE)
    value = bitcoind.rpc("gettxout", txid, 0)["value"]
    return txid, int(value * 100_000_000)


def pay_many(bitcoind: RegtestNode, coin: tuple[str, int], outputs: list[tuple[str, int]]) -> str:
    """Spend `coin` (a P2WPKH coinbase of BENCH_SECRET) to (address, sat) outputs; send it."""
    from common.chainparams import CHAINS
    from common.scripts import p2wpkh
    from lightningd.wallet import address_to_script
    from tests.faucet import Coin, spend_p2wpkh

    txid, value = coin
    regtest = CHAINS["regtest"]
    scripts = [(address_to_script(a, regtest), sat) for a, sat in outputs]
    change = value - sum(sat for _, sat in outputs) - COINBASE_FEE_SAT
    scripts.append((p2wpkh(PrivateKey(BENCH_SECRET).public_key.format()), change))
    tx = spend_p2wpkh(BENCH_SECRET, Coin(txid, 0, value), scripts)
    return bitcoind.rpc("sendrawtransaction", tx.serialize().hex())


def fund_many(
    bitcoind: RegtestNode, coin: tuple[str, int], wants: list[tuple[Node, int, int]]
) -> None:
    """(node, coins, sat each) paid by one tx spending `coin`, then one block.

    Take `coin` from mature_coinbase() before starting the nodes: they then start near the
    tip and only process the one block that confirms the payments.
    """
    outputs = [
        (node.rpc.newaddr()["bech32"], sat) for node, coins, sat in wants for _ in range(coins)
    ]
    txid = pay_many(bitcoind, coin, outputs)
    wait_for(lambda: txid in bitcoind.rpc("getrawmempool"), 30, "the funding tx in the mempool")
    bitcoind.generate(1, ELSEWHERE)
    nodes = [node for node, _, _ in wants]
    sync(bitcoind, *nodes, timeout=180)
    for node, coins, _ in wants:
        wait_for(
            lambda node=node, coins=coins: (
                sum(o["status"] == "confirmed" for o in node.rpc.listfunds()["outputs"]) >= coins
            ),
            120,
            "confirmed coins in the wallet",
        )


def git_state() -> dict:
    """The commit measured, and whether the daemon's files had uncommitted changes then."""
    import subprocess

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip()

    import hashlib

    diff = git("diff", "HEAD", "--", ".", ":!bench")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": git("status", "--short"),
        # Identifies the uncommitted daemon changes measured (another engineer edits the tree).
        "daemon_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16],
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
