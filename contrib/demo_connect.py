"""The main job for now: two lightningd nodes on regtest meet, driven by lightning-cli.

Starts two daemons from the source tree (each with its own hsmd, database and
RPC socket in a temporary lightning-dir), connects the first to the second
with `lightning-cli connect`, shows `listpeers` from both sides, and stops
them with `lightning-cli stop`. No bitcoind is needed yet: later issues turn
this into a regtest channel open.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIGHTNINGD = ROOT / "lightningd" / "lightningd"
LIGHTNING_CLI = ROOT / "cli" / "lightning-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoNode:
    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.dir = base / name
        self.port = free_port()

    def start(self) -> None:
        self.dir.mkdir()
        args = [
            f"--lightning-dir={self.dir}",
            "--network=regtest",
            f"--addr=127.0.0.1:{self.port}",
            f"--alias={self.name}",
            "--log-file=log",
            "--daemon",
        ]
        subprocess.run([LIGHTNINGD, *args], check=True)
        deadline = time.monotonic() + 30
        while not (self.dir / "regtest" / "lightning-rpc").exists():
            if time.monotonic() > deadline:
                sys.exit(f"{self.name} did not start; see {self.dir / 'regtest' / 'log'}")
            time.sleep(0.05)

    def stop(self) -> str:
        """`lightning-cli stop`, then wait until the daemon has exited (its pid file goes)."""
        result = self.cli("stop")
        pid_file = self.dir / "lightningd-regtest.pid"
        deadline = time.monotonic() + 30
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return str(result)

    def cli(self, *args: str) -> dict | str:
        cmd = [LIGHTNING_CLI, f"--lightning-dir={self.dir}", "--network=regtest", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)


def show(title: str, value: object) -> None:
    print(f"$ {title}\n{json.dumps(value, indent=2)}\n")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="lightning-demo-") as tmp:
        alice, bob = DemoNode("alice", Path(tmp)), DemoNode("bob", Path(tmp))
        for node in (alice, bob):
            node.start()
        try:
            info = bob.cli("getinfo")
            print(f"bob is {info['id']} on {info['network']}, listening on port {bob.port}\n")
            uri = f"{info['id']}@127.0.0.1:{bob.port}"
            show(f"lightning-cli connect {uri}   (on alice)", alice.cli("connect", uri))
            show("lightning-cli listpeers   (on bob)", bob.cli("listpeers"))
        finally:
            for node in (alice, bob):
                print(f"{node.name}: lightning-cli stop -> {node.stop()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
