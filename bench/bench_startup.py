"""lightningd start-up: seconds from spawning the process until `getinfo` answers over RPC.

- empty: a fresh lightning-dir every run (new hsm_secret, new database), so the time includes
  creating both; the node is stopped with `stop` after each run.
- restart: the same lightning-dir started again (database already there, no channels).

- N stored channels (`--channels 1000`, SYNTHETIC rows): a node is started once on a chain
  and follows it for more than the --rescan window (so every start re-processes 15 blocks,
  as a real restart does), then stopped; bench/synthetic_channels.py then stores N
  CHANNELD_NORMAL channels (distinct peers, funding txs, short_channel_ids) through the
  daemon's own save_channel, their funding confirmed below the rescan window; the node is
  started `--channel-runs` times. Each run also records how many
  channels listpeerchannels shows and in which states, and the log lines at UNUSUAL or
  BROKEN level, so a start-up that copes badly with the rows shows up instead of hiding.
  (bench_open.py also restarts its funder with its few real channels.)

Run: .venv/bin/python -m bench.bench_startup [--runs 7] [--channels 1000] [--channel-runs 5]
     [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import re
import time

from bench.benchlib import (
    ELSEWHERE,
    FAST,
    LIGHTNINGD,
    Node,
    add_lightningd_option,
    chain,
    emit,
    git_state,
    lightningd_of,
    node_memory,
    start_to_rpc_ready,
    stats,
    stop_quietly,
    wait_for,
)
from bench.synthetic_channels import add_channels
from lightningd.chaintopology import RESCAN_BLOCKS


def measure(runs: int, executable: tuple[str, ...] = LIGHTNINGD) -> dict:
    with chain("bench-start-", executable) as (bitcoind, factory):
        empty = []
        for _ in range(runs):
            node = Node(
                factory.base / f"empty-{len(factory.nodes)}",
                bitcoind,
                *FAST,
                executable=executable,
            )
            factory.nodes.append(node)
            empty.append(start_to_rpc_ready(node))
            stop_quietly(node)
        node = factory.nodes[-1]
        restart = []
        for _ in range(runs):
            restart.append(start_to_rpc_ready(node))
            stop_quietly(node)
        return {
            "chain": bitcoind.kind,
            "empty_db_s": stats(empty),
            "empty_db_samples_s": empty,
            "restart_s": stats(restart),
            "restart_samples_s": restart,
        }


def notable_lines(node: Node) -> list[str]:
    """This run's UNUSUAL / BROKEN log lines (and any Traceback), deduplicated by text."""
    text = node.logs()[node.log_offset :]
    lines = [ln for ln in text.splitlines() if re.search(r"UNUSUAL|BROKEN|Traceback", ln)]
    return [f"{n}x {ln}" for ln, n in collections.Counter(lines).most_common(10)]


def after_start(node: Node) -> dict:
    """What the node shows once up: channels by state, how long listpeerchannels takes."""
    t0 = time.perf_counter()
    chans = node.rpc.listpeerchannels()["channels"]
    took = time.perf_counter() - t0
    return {
        "listed": len(chans),
        "states": dict(collections.Counter(c["state"] for c in chans)),
        "listpeerchannels_s": took,
        "memory": node_memory(node)["total"],
    }


def measure_channels(runs: int, count: int) -> dict:
    """start -> getinfo with `count` synthetic stored channels (see the module docstring)."""
    with chain("bench-start-chan-") as (bitcoind, factory):
        bitcoind.generate(5, ELSEWHERE)
        node = Node(factory.base / "channels", bitcoind, *FAST)
        factory.nodes.append(node)
        start_to_rpc_ready(node)
        # More blocks than the rescan window on top of the first one the node stores.
        bitcoind.generate(RESCAN_BLOCKS + 5, ELSEWHERE)
        tip = bitcoind.rpc("getblockcount")
        wait_for(lambda: node.rpc.getinfo()["blockheight"] >= tip, 60, "the tip")
        stop_quietly(node)
        t0 = time.perf_counter()
        written = add_channels(node.dir, count)
        written["write_s"] = time.perf_counter() - t0
        samples, checks, failure = [], [], None
        for _ in range(runs):
            try:
                samples.append(start_to_rpc_ready(node, timeout=300))
                time.sleep(2.0)  # let the watches and depth callbacks run before looking
                checks.append({**after_start(node), "log": notable_lines(node)})
            except Exception as exc:  # the daemon failing with the rows is a result
                failure = f"{type(exc).__name__}: {str(exc)[-3000:]}"
                checks.append({"log": notable_lines(node)})
                break
            finally:
                stop_error = stop_quietly(node)
            if stop_error:
                failure = stop_error
                break
        return {
            "synthetic_rows": True,
            "written": written,
            "start_s": stats(samples),
            "start_samples_s": samples,
            "checks": checks,
            "failure": failure,
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--channels", type=int, default=1000, help="0 to skip")
    parser.add_argument("--channel-runs", type=int, default=5)
    parser.add_argument("--json")
    add_lightningd_option(parser)
    args = parser.parse_args(argv)
    out = {"git": git_state(), **measure(args.runs, lightningd_of(args))}
    if args.channels and args.lightningd:
        out["stored_channels"] = None  # written with our schema: not another lightningd's
    elif args.channels:
        out["stored_channels"] = measure_channels(args.channel_runs, args.channels)
    return emit(out, args.json)


if __name__ == "__main__":
    main()
