"""Channel-open latency, lock-in latency, concurrent inbound opens, and node memory.

Real lightningd nodes on a fresh regtest chain (bitcoind if on PATH, else bcoin):

- sequential: l1 (funded with several mature coinbases) calls `fundchannel` to l2 `--opens`
  times; each time the RPC call is timed, then `mindepth` blocks are mined and the time until
  both sides list the channel as CHANNELD_NORMAL is timed. While the first calls are in flight a
  thread samples l1's children to catch openingd's memory. Memory (PSS/USS per process) of
  l1 is read idle (before any open) and once it has 5 channels.
- concurrent: N spokes, each funded, all connected to one hub, call `fundchannel` to the hub at
  the same moment (a barrier); total wall time, opens/s, successes, hub RSS/PSS before/after.
- start-up with stored channels: l1 is restarted 3 times once it holds its `--opens` channels;
  seconds from spawn until `getinfo` answers.

Run: .venv/bin/python -m bench.bench_open [--opens 8] [--concurrent 5,10] [--json FILE]
"""

from __future__ import annotations

import argparse
import threading
import time

from bench.benchlib import (
    ELSEWHERE,
    FAST,
    chain,
    children,
    emit,
    fund,
    node_memory,
    proc_name,
    smaps,
    start_to_rpc_ready,
    stats,
    wait_for,
)

AMOUNT = 100_000  # sat per channel


def channel_state(node, channel_id: str) -> str | None:
    for chan in node.rpc.listpeerchannels()["channels"]:
        if chan.get("channel_id") == channel_id:
            return chan["state"]
    return None


class OpeningdWatcher(threading.Thread):
    """Polls the children of a lightningd for an openingd and records its largest footprint."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.best: dict | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            for kid in children(self.pid):
                if proc_name(kid) == "openingd":
                    m = smaps(kid)
                    if m and (self.best is None or m["pss_kb"] > self.best["pss_kb"]):
                        self.best = {"pid": kid, "name": "openingd", **m}
            time.sleep(0.002)


def sequential(opens: int) -> dict:
    with chain("bench-open-") as (bitcoind, factory):
        l1 = factory.get_node(*FAST)
        l2 = factory.get_node(*FAST)
        fund(bitcoind, [l1], opens + 1)
        time.sleep(1.0)  # let both settle after start-up and the block burst
        memory_idle = {"l1": node_memory(l1), "l2": node_memory(l2)}
        l1.rpc.connect(l2.uri())
        open_s, lockin_s, mindepths, errors = [], [], [], []
        memory_5 = None
        openingd = None
        for i in range(opens):
            watcher = OpeningdWatcher(l1.proc.pid)
            watcher.start()
            try:
                t0 = time.perf_counter()
                result = l1.rpc.fundchannel(l2.id, AMOUNT)
                open_s.append(time.perf_counter() - t0)
            except Exception as exc:  # reported, not hidden
                errors.append(f"open {i}: {exc}")
                break
            finally:
                watcher.stop.set()
                watcher.join()
            if watcher.best and (openingd is None or watcher.best["pss_kb"] > openingd["pss_kb"]):
                openingd = watcher.best
            mindepth = result["mindepth"]
            mindepths.append(mindepth)
            cid, txid = result["channel_id"], result["txid"]
            wait_for(lambda txid=txid: txid in bitcoind.rpc("getrawmempool"), 10, "mempool")
            t0 = time.perf_counter()
            bitcoind.generate(mindepth, ELSEWHERE)
            wait_for(
                lambda cid=cid: (
                    channel_state(l1, cid) == channel_state(l2, cid) == "CHANNELD_NORMAL"
                ),
                60,
                "CHANNELD_NORMAL on both sides",
            )
            lockin_s.append(time.perf_counter() - t0)
            if i + 1 == 5:
                time.sleep(0.5)
                memory_5 = {"l1": node_memory(l1), "l2": node_memory(l2)}
        # Start-up with the channels stored: restart the funder a few times.
        restart_s = []
        for _ in range(3):
            l1.stop()
            restart_s.append(start_to_rpc_ready(l1))
        stored = len(l1.rpc.listpeerchannels()["channels"])
        return {
            "chain": bitcoind.kind,
            "opens": len(open_s),
            "errors": errors,
            "mindepth": sorted(set(mindepths)),
            "fundchannel_s": stats(open_s),
            "fundchannel_samples_s": open_s,
            "lockin_s": stats(lockin_s),
            "lockin_samples_s": lockin_s,
            "memory_idle": memory_idle,
            "memory_5_channels": memory_5,
            "openingd_in_flight": openingd,
            "restart_with_channels_s": stats(restart_s),
            "restart_stored_channels": stored,
        }


def concurrent(n: int) -> dict:
    with chain(f"bench-conc{n}-") as (bitcoind, factory):
        hub = factory.get_node(*FAST)
        spokes = [factory.get_node(*FAST) for _ in range(n)]
        fund(bitcoind, spokes, 1)
        for spoke in spokes:
            spoke.rpc.connect(hub.uri())
        wait_for(
            lambda: len(hub.rpc.listpeers()["peers"]) == n, 30, "all spokes connected to the hub"
        )
        time.sleep(1.0)
        before = node_memory(hub)
        barrier = threading.Barrier(n + 1)
        ends: list[float] = [0.0] * n
        errors: list[str | None] = [None] * n

        def open_one(i: int) -> None:
            barrier.wait()
            try:
                spokes[i].rpc.fundchannel(hub.id, AMOUNT)
            except Exception as exc:
                errors[i] = str(exc)
            ends[i] = time.perf_counter()

        threads = [threading.Thread(target=open_one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        total = max(ends) - t0
        after = node_memory(hub)
        ok = sum(e is None for e in errors)
        hub_channels = len(hub.rpc.listpeerchannels()["channels"])
        return {
            "n": n,
            "succeeded": ok,
            "all_succeeded": ok == n and hub_channels == n,
            "hub_channels": hub_channels,
            "errors": [e for e in errors if e],
            "total_s": total,
            "opens_per_s": ok / total if total else None,
            "per_open_latency_s": stats([e - t0 for e in ends]),
            "hub_memory_before": before,
            "hub_memory_after": after,
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opens", type=int, default=8)
    parser.add_argument("--concurrent", default="5,10", help="comma list of N; empty to skip")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    out = {"sequential": sequential(args.opens), "concurrent": []}
    for n in [int(x) for x in args.concurrent.split(",") if x]:
        out["concurrent"].append(concurrent(n))
    return emit(out, args.json)


if __name__ == "__main__":
    main()
