"""The main job: two lightningd nodes on regtest open a channel, end to end.

A regtest chain (Bitcoin Core's bitcoind if installed, else bcoin from npm),
two lightningd daemons started as an operator would (`--daemon`), node 1's
wallet funded by mining, then with `lightning-cli`: connect, fundchannel,
mine the confirmations, and both sides reach CHANNELD_NORMAL. Everything is
stopped and removed at the end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bitcointx import segwit_addr

from contrib.regtest_node import RegtestNode

ROOT = Path(__file__).resolve().parent.parent
LIGHTNINGD = ROOT / "lightningd" / "lightningd"
LIGHTNING_CLI = ROOT / "cli" / "lightning-cli"
# Blocks that only mature the coinbase go to a key hash nobody can spend from.
ELSEWHERE = segwit_addr.encode("bcrt", 0, bytes(20))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


class DemoNode:
    def __init__(self, name: str, base: Path, chain: RegtestNode) -> None:
        self.name = name
        self.dir = base / name
        self.port = free_port()
        self.chain = chain

    def start(self) -> None:
        self.dir.mkdir()
        args = [
            f"--lightning-dir={self.dir}",
            "--network=regtest",
            f"--addr=127.0.0.1:{self.port}",
            f"--alias={self.name}",
            "--log-file=log",
            "--daemon",
            "--developer",
            "--dev-bitcoind-poll=1",
            *self.chain.lightningd_options(),
        ]
        subprocess.run([LIGHTNINGD, *args], check=True)
        wait(f"{self.name} to start", (self.dir / "regtest" / "lightning-rpc").exists, 30)

    def cli(self, *args: str, show: bool = False):
        cmd = [LIGHTNING_CLI, f"--lightning-dir={self.dir}", "--network=regtest", *args]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(
                f"{self.name}: lightning-cli {' '.join(args)} failed:\n{out.stdout}{out.stderr}"
            )
        result = json.loads(out.stdout)
        if show:
            print(f"{self.name}$ lightning-cli {' '.join(args)}\n{json.dumps(result, indent=2)}\n")
        return result

    def stop(self) -> None:
        self.cli("stop")
        pid_file = self.dir / "lightningd-regtest.pid"
        wait(f"{self.name} to exit", lambda: not pid_file.exists(), 30)


def channel_states(node: DemoNode) -> list[str]:
    return [c["state"] for c in node.cli("listpeerchannels")["channels"]]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="lightning-regtest-") as tmp:
        base = Path(tmp)
        chain = RegtestNode(str(base / "chain"))
        chain.start()
        print(f"regtest chain: {chain.kind}, RPC port {chain.rpcport}\n")
        nodes = [DemoNode("alice", base, chain), DemoNode("bob", base, chain)]
        try:
            for node in nodes:
                node.start()
            alice, bob = nodes
            chain.generate(1, alice.cli("newaddr")["bech32"])
            chain.generate(100, ELSEWHERE)
            # The coinbase is spendable once alice's wallet has seen the blocks maturing it.
            tip = chain.rpc("getblockcount")
            wait("alice to sync", lambda: alice.cli("getinfo")["blockheight"] == tip)
            bob_id = bob.cli("getinfo")["id"]
            alice.cli("connect", f"{bob_id}@127.0.0.1:{bob.port}", show=True)
            funded = alice.cli("fundchannel", bob_id, "500000sat", show=True)
            print(f"funding tx {funded['txid']} broadcast; mining the confirmations\n")
            chain.generate(6, ELSEWHERE)
            for node in nodes:
                wait(f"{node.name}'s channel to reach CHANNELD_NORMAL",
                     lambda node=node: channel_states(node) == ["CHANNELD_NORMAL"])  # fmt: skip
            for node in nodes:
                c = node.cli("listpeerchannels")["channels"][0]
                print(
                    f"{node.name}: {c['state']} short_channel_id {c['short_channel_id']} "
                    f"to_us {c['to_us_msat']}msat of {c['total_msat']}msat"
                )
        finally:
            for node in nodes:
                if (node.dir / "regtest" / "lightning-rpc").exists():
                    node.stop()
            chain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
