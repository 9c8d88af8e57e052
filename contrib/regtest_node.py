"""A regtest Bitcoin node for tests and scripts: Bitcoin Core when present, else bcoin.

Bitcoin Core's `bitcoind` is used when it is on PATH or named by $BITCOIND. It is in no
registry this project can reach, so otherwise the npm package bcoin is installed (once,
under contrib/bcoin/node_modules) and run by contrib/bcoin/regtest.js, which makes it
answer JSON-RPC as Bitcoin Core does on regtest. Either way a client sees Core.

    with RegtestNode(tmp_path / "bitcoin") as node:
        node.generate(101, address)
        node.rpc("getblockchaininfo")

CLI for startup scripts (a detached node; prints lightningd's --bitcoin-* options):

    python -m contrib.regtest_node start --datadir D [--rpcport 18443] [--p2pport 18444]
    python -m contrib.regtest_node stop --datadir D
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

BCOIN_DIR = Path(__file__).resolve().parent / "bcoin"
LAUNCHER = BCOIN_DIR / "regtest.js"
STAMP = BCOIN_DIR / "node_modules" / ".regtest-install-stamp"
STATE_FILE = "regtest_node.json"
LOG_FILE = "regtest_node.log"
CORE_RPCPORT = 18443
CORE_P2PPORT = 18444
# Bitcoin Core's RPC_IN_WARMUP: the server answers but is still loading.
RPC_IN_WARMUP = -28


class RpcError(Exception):
    """A JSON-RPC error answered by the node, with Core's code and message."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {message} ({code})")
        self.method = method
        self.code = code
        self.message = message


def find_bitcoind() -> str | None:
    """Bitcoin Core's daemon: $BITCOIND, else `bitcoind` on PATH, else None (use bcoin)."""
    named = os.environ.get("BITCOIND")
    if not named:
        return shutil.which("bitcoind")
    found = shutil.which(named)
    if found is None:
        # An explicit choice that does not exist must not quietly become bcoin.
        raise FileNotFoundError(f"BITCOIND={named} is not an executable")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _install_digest() -> str:
    files = [BCOIN_DIR / "package.json", BCOIN_DIR / "package-lock.json"]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.exists())).hexdigest()


def ensure_bcoin() -> None:
    """npm-install bcoin once; a stamp of package*.json makes later calls instant."""
    digest = _install_digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    STAMP.parent.mkdir(exist_ok=True)
    # Parallel test workers must not run npm in the same directory at once.
    with open(STAMP.parent / ".regtest-install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if STAMP.exists() and STAMP.read_text() == digest:
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("neither bitcoind nor npm found: cannot run a regtest node")
        subprocess.run(
            [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=BCOIN_DIR,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # After the install: npm may have rewritten package-lock.json.
        STAMP.write_text(_install_digest())


def _json_number(value: object) -> float:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot send {type(value).__name__} over JSON-RPC")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so none is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RegtestNode:
    """One regtest node in `datadir`; ports left None are picked free."""

    def __init__(
        self,
        datadir: str | os.PathLike[str],
        rpcport: int | None = None,
        p2pport: int | None = None,
    ) -> None:
        self.datadir = Path(datadir)
        self.rpcport = rpcport or free_port()
        self.p2pport = p2pport or free_port()
        self.rpcuser = "regtest"
        self.rpcpassword = secrets.token_hex(16)
        self.bitcoind = find_bitcoind()
        self.kind = "bitcoind" if self.bitcoind else "bcoin"
        self.proc: subprocess.Popen[bytes] | None = None
        self._id = 0

    # Lifetime

    def command(self) -> list[str]:
        if self.bitcoind:
            return [
                self.bitcoind,
                "-regtest",
                f"-datadir={self.datadir}",
                f"-rpcport={self.rpcport}",
                f"-port={self.p2pport}",
                f"-rpcuser={self.rpcuser}",
                f"-rpcpassword={self.rpcpassword}",
                "-fallbackfee=0.00001",
                "-txindex=1",
                "-server=1",
                "-listen=1",
                "-bind=127.0.0.1",
                "-printtoconsole=0",
            ]
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("neither bitcoind nor node found: cannot run a regtest node")
        return [
            node,
            str(LAUNCHER),
            f"--datadir={self.datadir}",
            f"--rpcport={self.rpcport}",
            f"--port={self.p2pport}",
            f"--rpcuser={self.rpcuser}",
            f"--rpcpassword={self.rpcpassword}",
        ]

    def start(self, timeout: float = 60, detach: bool = False) -> None:
        """Start and wait until RPC answers. `detach` outlives this process (CLI)."""
        if self.kind == "bcoin":
            ensure_bcoin()
        self.datadir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        if self.kind == "bcoin" and not detach:
            # The launcher exits when our end of its stdin closes, even on SIGKILL.
            cmd.append("--stdin-watch")
        with open(self.datadir / LOG_FILE, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL if detach else subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
                preexec_fn=None if detach else _die_with_parent,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log_tail()}")
            try:
                self.rpc("getblockchaininfo")
                return
            except (OSError, RpcError) as err:
                if isinstance(err, RpcError) and err.code != RPC_IN_WARMUP:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} RPC not up in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        """Ask the node to stop, wait for it, and kill it if it will not go."""
        if self.proc is None or self.proc.poll() is not None:
            self._reap()
            return
        with contextlib.suppress(OSError, RpcError):
            self.rpc("stop")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()

    def __enter__(self) -> RegtestNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        path = self.datadir / LOG_FILE
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # RPC

    def rpc(self, method: str, *params: Any, timeout: float = 60) -> Any:
        """Call `method` over JSON-RPC 1.0 as bitcoin-cli does; errors raise RpcError.

        Amounts come back as Decimal, exact as Core prints them (8 decimals).
        """
        self._id += 1
        call = {"jsonrpc": "1.0", "id": self._id, "method": method, "params": params}
        body = json.dumps(call, default=_json_number)
        auth = base64.b64encode(f"{self.rpcuser}:{self.rpcpassword}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rpcport}/",
            data=body.encode(),
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                reply = json.loads(response.read(), parse_float=Decimal)
        except urllib.error.HTTPError as err:
            # Core answers RPC errors with HTTP 404/500 and the error in the body.
            payload = err.read()
            try:
                reply = json.loads(payload, parse_float=Decimal)
                error = reply["error"]
                code, message = int(error["code"]), str(error["message"])
            except (ValueError, TypeError, KeyError):
                raise RpcError(method, err.code, f"HTTP {err.code}: {payload[:200]!r}") from err
            raise RpcError(method, code, message) from err
        if reply.get("error"):
            raise RpcError(method, reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def generate(self, n: int, address: str) -> list[str]:
        """Mine `n` blocks paying to `address`; returns their hashes."""
        return self.rpc("generatetoaddress", n, address)

    def lightningd_options(self) -> list[str]:
        return [
            "--bitcoin-rpcconnect=127.0.0.1",
            f"--bitcoin-rpcport={self.rpcport}",
            f"--bitcoin-rpcuser={self.rpcuser}",
            f"--bitcoin-rpcpassword={self.rpcpassword}",
        ]

    # CLI state: a detached node is found again through its datadir.

    def save_state(self) -> None:
        assert self.proc is not None
        state = {
            "kind": self.kind,
            "pid": self.proc.pid,
            "rpcport": self.rpcport,
            "p2pport": self.p2pport,
            "rpcuser": self.rpcuser,
            "rpcpassword": self.rpcpassword,
        }
        (self.datadir / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def from_state(cls, datadir: str | os.PathLike[str]) -> tuple[RegtestNode, int]:
        state = json.loads((Path(datadir) / STATE_FILE).read_text())
        node = cls(datadir, state["rpcport"], state["p2pport"])
        node.rpcuser, node.rpcpassword = state["rpcuser"], state["rpcpassword"]
        node.kind = state["kind"]
        return node, state["pid"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def stop_detached(datadir: str | os.PathLike[str], timeout: float = 30) -> None:
    """Stop a node started by `start`: RPC stop, then SIGTERM, then SIGKILL."""
    state_path = Path(datadir) / STATE_FILE
    if not state_path.exists():
        return
    node, pid = RegtestNode.from_state(datadir)
    with contextlib.suppress(OSError, RpcError):
        node.rpc("stop", timeout=5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + timeout / 2
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _pid_alive(pid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    state_path.unlink()


def _cli_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrib.regtest_node")
    parser.add_argument("action", choices=["start", "stop", "rpc"])
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--rpcport", type=int, default=CORE_RPCPORT)
    parser.add_argument("--p2pport", type=int, default=CORE_P2PPORT)
    parser.add_argument("params", nargs="*", help="rpc: the method, then its parameters")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop_detached(args.datadir)
        return 0
    if args.action == "rpc":
        # Like bitcoin-cli: numbers and JSON pass as JSON, anything else as a string.
        node, _ = RegtestNode.from_state(args.datadir)
        method, *raw = args.params
        print(json.dumps(node.rpc(method, *(_cli_value(p) for p in raw)), indent=2))
        return 0
    stop_detached(args.datadir)
    node = RegtestNode(args.datadir, args.rpcport, args.p2pport)
    node.start(detach=True)
    node.save_state()
    print(" ".join(node.lightningd_options()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
