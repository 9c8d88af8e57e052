"""Real lightningd processes for tests, driven through pyln-client as users drive CLN."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pyln.client import LightningRpc

ROOT = Path(__file__).resolve().parent.parent
# How a node is started unless told otherwise: this project's lightningd.
LIGHTNINGD = (sys.executable, "-m", "lightningd.lightningd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


class Node:
    def __init__(
        self, directory: Path, bitcoind, *options: str, executable: tuple[str, ...] = LIGHTNINGD
    ) -> None:
        """`executable`: the command that runs a lightningd taking CLN's options (the
        benchmarks run Core Lightning's through it)."""
        self.dir = directory
        self.bitcoind = bitcoind
        self.executable = executable
        self.port = free_port()
        self.options = list(options)
        self.proc: subprocess.Popen | None = None
        self.rpc = LightningRpc(str(self.dir / "regtest" / "lightning-rpc"))
        self.info: dict = {}
        self.log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.dir / "log"

    def cmdline(self) -> list[str]:
        return [
            *self.executable,
            f"--lightning-dir={self.dir}",
            "--network=regtest",
            f"--addr=127.0.0.1:{self.port}",
            "--log-level=debug",
            f"--log-file={self.log_path}",
            "--bitcoin-rpcconnect=127.0.0.1",
            f"--bitcoin-rpcport={self.bitcoind.rpcport}",
            f"--bitcoin-rpcuser={self.bitcoind.rpcuser}",
            f"--bitcoin-rpcpassword={self.bitcoind.rpcpassword}",
            *self.options,
        ]

    def start(self) -> Node:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Only this run's lines count: a restarted node's log already says "Server started".
        self.log_offset = len(self.logs())
        self.proc = subprocess.Popen(
            self.cmdline(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for(self._started, what=f"lightningd in {self.dir} to start")
        self.info = self.rpc.getinfo()
        return self

    def _started(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            out, err = self.proc.communicate()
            raise RuntimeError(f"lightningd exited {self.proc.returncode}: {err}{out}")
        return "Server started" in self.logs()[self.log_offset :]

    @property
    def id(self) -> str:
        return self.info["id"]

    def uri(self) -> str:
        return f"{self.id}@127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> str:
        regex = re.compile(pattern)
        return wait_for(
            lambda: next((ln for ln in self.logs().splitlines() if regex.search(ln)), None),
            timeout,
            f"log line /{pattern}/",
        )

    def stop(self) -> int:
        """`stop` over RPC, as an operator would; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            try:
                self.rpc.stop()
            except (OSError, ValueError):
                self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.check_clean_exit()
        return code

    def check_clean_exit(self) -> None:
        assert self.proc is not None
        # Bounded: a subdaemon left alive would hold lightningd's stdout open for ever.
        out, err = self.proc.communicate(timeout=20)
        for text in (out, err, self.logs()):
            assert "Traceback" not in text, text

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class NodeFactory:
    def __init__(self, base: Path, bitcoind, executable: tuple[str, ...] = LIGHTNINGD) -> None:
        self.base = base
        self.bitcoind = bitcoind
        self.executable = executable
        self.nodes: list[Node] = []

    def get_node(self, *options: str, start: bool = True) -> Node:
        node = Node(
            self.base / f"lightning-{len(self.nodes) + 1}",
            self.bitcoind,
            *options,
            executable=self.executable,
        )
        self.nodes.append(node)
        return node.start() if start else node

    def get_nodes(self, count: int, *options: str) -> list[Node]:
        return [self.get_node(*options) for _ in range(count)]

    def teardown(self) -> None:
        """Stop every node, even after one fails its clean-exit check; then report the first
        failure (a node left running would poll a chain that is gone for ever)."""
        failures: list[BaseException] = []
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.stop()
                except BaseException as exc:
                    failures.append(exc)
                finally:
                    node.kill()
        if failures:
            raise failures[0]
