"""Channel-open latency, lock-in latency, concurrent inbound opens, and node memory.

Real lightningd nodes on a fresh regtest chain (bitcoind if on PATH, else bcoin):

- sequential: l1 (funded with several mature coinbases) calls `fundchannel` to l2 `--opens`
  times; each time the RPC call is timed, then `mindepth` blocks are mined and the time until
  both sides list the channel as CHANNELD_NORMAL is timed. While the first calls are in flight a
  thread samples l1's children to catch openingd's memory. Memory (PSS/USS per process) of
  l1 is read idle (before any open) and once it has 5 channels.
- concurrent (`--concurrent 10,25,50,100`): one chain, max(N) spoke lightningds (started 4 at
  a time in threads) funded by ONE transaction from a bench-held coinbase (not one block per
  coin). Per N, a fresh hub: memory before any spoke connects, with N spokes connected, right
  after the opens and with N locked-in channels (N idle channel peers); the first N spokes call
  `fundchannel` to it at the same moment (a barrier): total wall time, opens/s, successes
  (only the round's N spokes run during it: the others are stopped, and restarted when needed);
  hub USS growth per channel peer = (USS with N channels - USS before) / N. The hub is
  stopped after its round (spokes keep their channels to it: lightningd does not reconnect).
- multifundchannel (`--multifund 10,25`): a funder with one coin per round connects to N
  spokes not used by an earlier multifund round and calls `multifundchannel` with all N
  (one funding tx); wall time of the call, channels opened, and lock-in time.
- start-up with stored channels: l1 is restarted 3 times once it holds its `--opens` channels;
  seconds from spawn until `getinfo` answers.

Run: .venv/bin/python -m bench.bench_open [--opens 8] [--concurrent 10,25,50,100]
     [--multifund 10,25] [--no-sequential] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from bench.benchlib import (
    ELSEWHERE,
    FAST,
    LIGHTNINGD,
    add_lightningd_option,
    chain,
    descendants,
    emit,
    fund,
    fund_many,
    git_state,
    lightningd_of,
    mature_coinbase,
    node_memory,
    proc_name,
    settle,
    smaps,
    start_nodes,
    start_slow,
    start_to_rpc_ready,
    stats,
    stop_nodes,
    stop_quietly,
    wait_for,
)

AMOUNT = 100_000  # sat per channel


def channel_state(node, channel_id: str) -> str | None:
    for chan in node.rpc.listpeerchannels()["channels"]:
        if chan.get("channel_id") == channel_id:
            return chan["state"]
    return None


class OpeningdWatcher(threading.Thread):
    """Polls a lightningd's descendants for its openingd and keeps the largest reading.
    By title: the openingd may be the zygote's spare, a process older than the open."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.best: dict | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            for kid in descendants(self.pid):
                if proc_name(kid).split()[0] != "openingd":
                    continue
                m = smaps(kid)
                if m and (self.best is None or m["pss_kb"] > self.best["pss_kb"]):
                    self.best = {"pid": kid, "name": "openingd", **m}
            time.sleep(0.002)


def sequential(opens: int, executable: tuple[str, ...] = LIGHTNINGD) -> dict:
    with chain("bench-open-", executable) as (bitcoind, factory):
        l1 = factory.get_node(*FAST)
        l2 = factory.get_node(*FAST)
        fund(bitcoind, [l1], opens + 1)
        time.sleep(1.0)  # let both settle after start-up and the block burst
        memory_idle = {"l1": node_memory(l1), "l2": node_memory(l2)}
        l1.rpc.connect(l2.uri())
        open_s, lockin_s, mindepths, errors = [], [], [], []
        memory_5 = None
        for i in range(opens):
            # Each open starts on an idle pair: the last lock-in's channel_ready exchange and
            # block processing are not this open's cost.
            settle([l1, l2])
            try:
                t0 = time.perf_counter()
                result = l1.rpc.fundchannel(l2.id, AMOUNT)
                open_s.append(time.perf_counter() - t0)
            except Exception as exc:  # reported, not hidden
                errors.append(f"open {i}: {exc}")
                break
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
        # openingd's memory, from one more (untimed) open: polling /proc every 2 ms takes a
        # core's share that the timed opens above must not lose.
        watcher = OpeningdWatcher(l1.proc.pid)
        watcher.start()
        try:
            l1.rpc.fundchannel(l2.id, AMOUNT)
        except Exception as exc:
            errors.append(f"openingd memory open: {exc}")
        finally:
            watcher.stop.set()
            watcher.join()
        openingd = watcher.best
        # Start-up with the channels stored: restart the funder a few times.
        restart_s = []
        for _ in range(3):
            stop_quietly(l1)
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


SPOKE_COIN_SAT = 1_000_000  # one per concurrent round: an open of AMOUNT plus its fee
FUNDER_COIN_SAT = 10_000_000  # one per multifundchannel round (25 x AMOUNT plus fees)


def hub_memory(hub) -> dict:
    time.sleep(1.0)  # let the hub settle (openingds exit, replies flushed) before reading
    return node_memory(hub)


def connect_all(spokes, target) -> None:
    """Every spoke connects to `target` (a few at a time), until `target` lists them all."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: s.rpc.connect(target.uri()), spokes))
    wait_for(lambda: len(target.rpc.listpeers()["peers"]) >= len(spokes), 60, "all peers connected")


def all_normal(node, expected: int) -> bool:
    chans = node.rpc.listpeerchannels()["channels"]
    return sum(c["state"] == "CHANNELD_NORMAL" for c in chans) >= expected


def barrier_opens(spokes, hub) -> tuple[float, list[float], list[str | None], list]:
    """All spokes call fundchannel to the hub at the same moment (a barrier)."""
    n = len(spokes)
    barrier = threading.Barrier(n + 1)
    ends: list[float] = [0.0] * n
    errors: list[str | None] = [None] * n
    results: list = [None] * n

    def open_one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = spokes[i].rpc.fundchannel(hub.id, AMOUNT)
        except Exception as exc:  # reported, not hidden
            errors[i] = str(exc)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return t0, ends, errors, results


def lock_in(bitcoind, node, expected: int, mindepth: int) -> float:
    """Mine `mindepth` blocks; seconds until `node` lists `expected` CHANNELD_NORMAL channels."""
    t0 = time.perf_counter()
    bitcoind.generate(max(mindepth, 1), ELSEWHERE)
    wait_for(lambda: all_normal(node, expected), 300, f"{expected} channels CHANNELD_NORMAL")
    return time.perf_counter() - t0


def growth_kb(before: dict, after: dict, n: int) -> dict:
    """(after - before) / n per memory kind, in kB: what each peer or channel adds."""
    b, a = before["total"], after["total"]
    return {k: (a[k] - b[k]) / n for k in ("rss_kb", "pss_kb", "uss_kb")}


def wait_mempool(bitcoind, txids: list[str]) -> None:
    wait_for(lambda: set(txids) <= set(bitcoind.rpc("getrawmempool")), 60, "funding txs in mempool")


def running(node) -> bool:
    return node.proc is not None and node.proc.poll() is None


def ensure_running(bitcoind, spokes, k: int) -> list[str]:
    """Exactly spokes[:k] running: idle spokes beyond a round's N would only add load (each
    polls the chain every second), which a fresh chain per N would not have."""
    from concurrent.futures import ThreadPoolExecutor

    failures = stop_nodes([s for s in spokes[k:] if running(s)])
    wanted = [s for s in spokes[:k] if not running(s)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(start_slow, wanted))
    tip = bitcoind.rpc("getblockcount")
    for s in wanted:  # their wallets must be at the tip before they fund anything
        wait_for(lambda s=s: s.rpc.getinfo()["blockheight"] >= tip, 120, "spoke at the tip")
    # Restarted spokes rescan the last blocks after getinfo answers: a round timed during
    # that measured their start-up too (N=50 after N=10,25: 5.8 s; with fresh spokes 2.4 s).
    settle(spokes[:k])
    return failures


def concurrent_round(bitcoind, factory, spokes) -> dict:
    """A fresh hub; N spokes connect, then open to it at once; memory at three points."""
    n = len(spokes)
    hub = start_slow(factory.get_node(*FAST, start=False))
    out: dict = {"n": n, "hub": hub.dir.name, "loadavg_at_start": os.getloadavg()}
    try:
        out["hub_memory_before"] = hub_memory(hub)
        connect_all(spokes, hub)
        out["hub_memory_connected"] = hub_memory(hub)
        t0, ends, errors, results = barrier_opens(spokes, hub)
        total = max(ends) - t0
        ok = sum(e is None for e in errors)
        out["hub_memory_after_opens"] = hub_memory(hub)
        txids = [r["txid"] for r in results if r]
        wait_mempool(bitcoind, txids)
        mindepth = max((r["mindepth"] for r in results if r), default=1)
        out["lockin_all_s"] = lock_in(bitcoind, hub, ok, mindepth)
        out["hub_memory_channels"] = hub_memory(hub)
        hub_channels = len(hub.rpc.listpeerchannels()["channels"])
        out.update(
            succeeded=ok,
            all_succeeded=ok == n and hub_channels == n,
            hub_channels=hub_channels,
            errors=[e for e in errors if e],
            total_s=total,
            opens_per_s=ok / total if total else None,
            per_open_latency_s=stats([e - t0 for e in ends]),
            hub_uss_growth_per_channel_kb=growth_kb(
                out["hub_memory_before"], out["hub_memory_channels"], n
            )["uss_kb"],
            hub_growth_per_channel_kb=growth_kb(
                out["hub_memory_before"], out["hub_memory_channels"], n
            ),
            # The channel alone, the connection already paid for.
            hub_growth_per_channel_over_connected_kb=growth_kb(
                out["hub_memory_connected"], out["hub_memory_channels"], n
            ),
        )
    except Exception as exc:  # a failed round is reported, and the next one still runs
        out["failure"] = f"{type(exc).__name__}: {exc}"
        out["hub_log_tail"] = hub.logs().splitlines()[-40:]
    out["hub_stop_failure"] = stop_quietly(hub)
    return out


def multifund_round(bitcoind, funder, peers) -> dict:
    """One node opens to N peers with one multifundchannel call (one funding tx)."""
    n = len(peers)
    out: dict = {"n": n, "loadavg_at_start": os.getloadavg()}
    try:
        for peer in peers:
            funder.rpc.connect(peer.uri())
        dests = [{"id": p.id, "amount": AMOUNT} for p in peers]
        before = len(funder.rpc.listpeerchannels()["channels"])
        t0 = time.perf_counter()
        result = funder.rpc.multifundchannel(dests)
        out["total_s"] = time.perf_counter() - t0
        opened = len(result["channel_ids"])
        out.update(
            succeeded=opened,
            failed=result.get("failed", []),
            all_succeeded=opened == n and not result.get("failed"),
            opens_per_s=opened / out["total_s"],
        )
        wait_mempool(bitcoind, [result["txid"]])
        mindepth = max(c["mindepth"] for c in result["channel_ids"])
        out["lockin_all_s"] = lock_in(bitcoind, funder, before + opened, mindepth)
    except Exception as exc:  # reported, not hidden
        out["failure"] = f"{type(exc).__name__}: {exc}"
        out["funder_log_tail"] = funder.logs().splitlines()[-40:]
    return out


def fleet(ns: list[int], multi: list[int], executable: tuple[str, ...] = LIGHTNINGD) -> dict:
    """One chain and max(N) spokes for every concurrent round (a fresh hub each), and a
    funder that multifunds to disjoint slices of the same spokes."""
    with chain("bench-fleet-", executable) as (bitcoind, factory):
        coin = mature_coinbase(bitcoind)  # before the nodes: they start at the tip
        count = max([*ns, sum(multi), 1])
        t0 = time.perf_counter()
        spokes = start_nodes(factory, count, *FAST)
        funder = start_slow(factory.get_node(*FAST, start=False))
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        wants = [(s, len(ns), SPOKE_COIN_SAT) for s in spokes] + [
            (funder, len(multi), FUNDER_COIN_SAT)
        ]
        fund_many(bitcoind, coin, wants)
        fund_s = time.perf_counter() - t0
        failures: list[str] = []
        rounds = []
        for n in ns:
            failures += ensure_running(bitcoind, spokes, n)
            rounds.append(concurrent_round(bitcoind, factory, spokes[:n]))
        failures += ensure_running(bitcoind, spokes, sum(multi))
        multis, first = [], 0
        for n in multi:
            multis.append(multifund_round(bitcoind, funder, spokes[first : first + n]))
            first += n
        failures += stop_nodes([*spokes, funder])
        return {
            "chain": bitcoind.kind,
            "spokes": count,
            "start_spokes_s": start_s,
            "fund_all_s": fund_s,
            "concurrent": rounds,
            "multifundchannel": multis,
            "stop_failures": failures,
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opens", type=int, default=8)
    parser.add_argument(
        "--concurrent", default="10,25,50,100", help="comma list of N; empty to skip"
    )
    parser.add_argument("--multifund", default="10,25", help="comma list of N; empty to skip")
    parser.add_argument("--no-sequential", action="store_true")
    parser.add_argument("--json")
    add_lightningd_option(parser)
    args = parser.parse_args(argv)
    exe = lightningd_of(args)
    ns = [int(x) for x in args.concurrent.split(",") if x]
    multi = [int(x) for x in args.multifund.split(",") if x]
    out: dict = {"git": git_state(), "lightningd": list(exe)}
    out["sequential"] = None if args.no_sequential else sequential(args.opens, exe)
    out.update(fleet(ns, multi, exe) if ns or multi else {"concurrent": [], "multifundchannel": []})
    return emit(out, args.json)


if __name__ == "__main__":
    main()
