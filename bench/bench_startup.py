"""lightningd start-up: seconds from spawning the process until `getinfo` answers over RPC.

- empty: a fresh lightning-dir every run (new hsm_secret, new database), so the time includes
  creating both; the node is stopped with `stop` after each run.
- restart: the same lightning-dir started again (database already there, no channels).

(Start-up with stored channels is measured by bench_open.py, which restarts its funder
once it holds its channels; there is no cheap way here to store many channels without opening
them on chain.)

Run: .venv/bin/python -m bench.bench_startup [--runs 7] [--json FILE]
"""

from __future__ import annotations

import argparse

from bench.benchlib import FAST, Node, chain, emit, start_to_rpc_ready, stats


def measure(runs: int) -> dict:
    with chain("bench-start-") as (bitcoind, factory):
        empty = []
        for _ in range(runs):
            node = Node(factory.base / f"empty-{len(factory.nodes)}", bitcoind, *FAST)
            factory.nodes.append(node)
            empty.append(start_to_rpc_ready(node))
            node.stop()
        node = factory.nodes[-1]
        restart = []
        for _ in range(runs):
            restart.append(start_to_rpc_ready(node))
            node.stop()
        return {
            "chain": bitcoind.kind,
            "empty_db_s": stats(empty),
            "empty_db_samples_s": empty,
            "restart_s": stats(restart),
            "restart_samples_s": restart,
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    out = measure(args.runs)
    return emit(out, args.json)


if __name__ == "__main__":
    main()
