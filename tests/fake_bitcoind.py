"""An in-process stand-in for Bitcoin Core's JSON-RPC, with a chain the test scripts.

Blocks are real serialized blocks (python-bitcointx transactions under a header with a
correct merkle root; no proof of work), so the code under test parses what bitcoind would
send. Tests mine blocks (paying wherever they like), reorg them away, accept or reject
transactions, inject RPC errors, and take the server down and bring it back on the same
port. Replies follow Bitcoin Core's JSON-RPC 1.0 conventions (HTTP 500 with an `error`
object on failure, 401 on bad credentials).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTransaction,
    CTxOut,
)
from bitcointx.core.script import CScript, CScriptWitness
from bitcointx.core.scripteval import SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS, VerifyScript
from bitcointx.core.serialize import VarIntSerializer

import common.secp  # noqa: F401  (python-bitcointx needs libsecp256k1 for script checks)

COINBASE_SAT = 50 * 100_000_000
OP_TRUE_SCRIPT = CScript(b"\x51")


def dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def merkle_root(txids: list[bytes]) -> bytes:
    layer = list(txids)
    while len(layer) > 1:
        if len(layer) % 2:
            layer.append(layer[-1])
        layer = [dsha256(layer[i] + layer[i + 1]) for i in range(0, len(layer), 2)]
    return layer[0]


@dataclass
class FakeBlock:
    header: bytes
    txs: list[CTransaction]

    @property
    def hash(self) -> bytes:
        return dsha256(self.header)

    def serialize(self) -> bytes:
        return (
            self.header
            + VarIntSerializer.serialize(len(self.txs))
            + b"".join(tx.serialize() for tx in self.txs)
        )


class RpcFail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FakeBitcoind:
    chain: str = "regtest"
    user: str = "rpcuser"
    password: str = "rpcpass"
    version: int = 260000
    verify_scripts: bool = True
    blocks: list[FakeBlock] = field(default_factory=list)
    mempool: dict[bytes, CTransaction] = field(default_factory=dict)
    # blocks target -> sat per kvB; a missing target has no estimate.
    fees_perkb: dict[int, int] = field(default_factory=dict)
    floor_perkb: int = 1000
    ibd: bool = False
    warmup_replies: int = 0
    # method -> list of (code, message) to answer the next calls with.
    errors: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    calls: list[tuple[str, list[Any]]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _nonce: int = 0

    def __post_init__(self) -> None:
        if not self.blocks:
            self.blocks.append(self._make_block(b"\0" * 32, [self._coinbase(0, OP_TRUE_SCRIPT)]))

    # -- the chain -------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return len(self.blocks) - 1

    def _coinbase(self, height: int, script: bytes, value: int = COINBASE_SAT) -> CTransaction:
        self._nonce += 1
        tx = CMutableTransaction(
            [CMutableTxIn(COutPoint(), CScript([height, self._nonce]))],
            [CMutableTxOut(value, CScript(script))],
        )
        return CTransaction.from_tx(tx)

    def _make_block(self, prev: bytes, txs: list[CTransaction]) -> FakeBlock:
        root = merkle_root([tx.GetTxid() for tx in txs])
        self._nonce += 1
        header = struct.pack("<i", 0x20000000) + prev + root
        header += struct.pack("<III", 1_700_000_000 + len(self.blocks), 0x207FFFFF, self._nonce)
        return FakeBlock(header, txs)

    def mine(
        self, n: int = 1, script: bytes = OP_TRUE_SCRIPT, txs: Iterable[CTransaction] | None = None
    ) -> list[FakeBlock]:
        """Mine n blocks paying `script`; the first holds `txs` (default: the mempool)."""
        included = list(self.mempool.values()) if txs is None else list(txs)
        made = []
        for i in range(n):
            body = included if i == 0 else []
            coinbase = self._coinbase(self.height + 1, script)
            block = self._make_block(self.blocks[-1].hash, [coinbase, *body])
            self.blocks.append(block)
            made.append(block)
            for tx in body:
                self.mempool.pop(tx.GetTxid(), None)
        return made

    def reorg(self, depth: int, n_new: int, txs: Iterable[CTransaction] = ()) -> list[FakeBlock]:
        """Replace the top `depth` blocks by `n_new` others (holding only `txs`)."""
        del self.blocks[len(self.blocks) - depth :]
        return self.mine(n_new, txs=list(txs)) if n_new else []

    def _find_tx(self, txid: bytes) -> CTransaction | None:
        for block in self.blocks:
            for tx in block.txs:
                if tx.GetTxid() == txid:
                    return tx
        return self.mempool.get(txid)

    def utxos(self, include_mempool: bool = True) -> dict[tuple[bytes, int], CTxOut]:
        txs = [tx for b in self.blocks for tx in b.txs]
        if include_mempool:
            txs += list(self.mempool.values())
        unspent: dict[tuple[bytes, int], CTxOut] = {}
        for tx in txs:
            for vin in tx.vin:
                unspent.pop((vin.prevout.hash, vin.prevout.n), None)
            for n, out in enumerate(tx.vout):
                unspent[(tx.GetTxid(), n)] = out
        return unspent

    def confirmed_txids(self) -> set[bytes]:
        return {tx.GetTxid() for b in self.blocks for tx in b.txs}

    # -- RPC methods -------------------------------------------------------------------------

    def rpc_getnetworkinfo(self) -> dict:
        if self.warmup_replies:
            self.warmup_replies -= 1
            raise RpcFail(-28, "Loading block index...")
        return {"version": self.version, "subversion": "/Fake:0.1/", "localrelay": True}

    def rpc_getblockchaininfo(self) -> dict:
        return {
            "chain": self.chain,
            "blocks": self.height,
            "headers": self.height,
            "bestblockhash": self.blocks[-1].hash[::-1].hex(),
            "initialblockdownload": self.ibd,
        }

    def rpc_getblockcount(self) -> int:
        return self.height

    def rpc_getblockhash(self, height: int) -> str:
        if not 0 <= height <= self.height:
            raise RpcFail(-8, "Block height out of range")
        return self.blocks[height].hash[::-1].hex()

    def rpc_getblock(self, block_hash: str, verbosity: int = 1) -> Any:
        wanted = bytes.fromhex(block_hash)[::-1]
        for block in self.blocks:
            if block.hash == wanted:
                if verbosity != 0:
                    raise RpcFail(-8, "fake bitcoind only serves getblock <hash> 0")
                return block.serialize().hex()
        raise RpcFail(-5, "Block not found")

    def rpc_estimatesmartfee(self, blocks: int, mode: str = "conservative") -> dict:
        rate = self.fees_perkb.get(blocks)
        if rate is None:
            return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
        return {"feerate": rate / 100_000_000, "blocks": blocks}

    def rpc_getmempoolinfo(self) -> dict:
        floor = self.floor_perkb / 100_000_000
        return {"size": len(self.mempool), "mempoolminfee": floor, "minrelaytxfee": 0.00001}

    def rpc_sendrawtransaction(self, hexstring: str, maxfeerate: Any = None) -> str:
        try:
            tx = CTransaction.deserialize(bytes.fromhex(hexstring))
        except Exception as exc:
            raise RpcFail(-22, f"TX decode failed: {exc}") from None
        txid = tx.GetTxid()
        if txid in self.confirmed_txids():
            raise RpcFail(-27, "Transaction already in block chain")
        if txid in self.mempool:
            return txid[::-1].hex()
        unspent = self.utxos()
        for i, vin in enumerate(tx.vin):
            prev = unspent.get((vin.prevout.hash, vin.prevout.n))
            if prev is None:
                raise RpcFail(-25, "bad-txns-inputs-missingorspent")
            if self.verify_scripts:
                self._verify_input(tx, i, prev)
        self.mempool[txid] = tx
        return txid[::-1].hex()

    def _verify_input(self, tx: CTransaction, i: int, prev: CTxOut) -> None:
        wit = tx.wit.vtxinwit
        witness = wit[i].scriptWitness if i < len(wit) else CScriptWitness()
        try:
            VerifyScript(
                tx.vin[i].scriptSig,
                prev.scriptPubKey,
                tx,
                i,
                flags={SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS},
                amount=prev.nValue,
                witness=witness,
            )
        except Exception as exc:
            raise RpcFail(-26, f"mandatory-script-verify-flag-failed ({exc})") from None

    def rpc_gettxout(self, txid: str, n: int, include_mempool: bool = True) -> dict | None:
        out = self.utxos(include_mempool).get((bytes.fromhex(txid)[::-1], n))
        if out is None:
            return None
        return {"value": out.nValue / 100_000_000, "scriptPubKey": {"hex": out.scriptPubKey.hex()}}

    # -- HTTP --------------------------------------------------------------------------------

    def dispatch(self, method: str, params: list[Any]) -> Any:
        self.calls.append((method, params))
        queued = self.errors.get(method)
        if queued:
            code, message = queued.pop(0)
            raise RpcFail(code, message)
        handler = getattr(self, f"rpc_{method}", None)
        if handler is None:
            raise RpcFail(-32601, "Method not found")
        return handler(*params)

    def _authorized(self, headers: dict[str, str]) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return headers.get("authorization") == f"Basic {expected}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status, reply = self._respond(headers, body)
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(reply)}\r\nConnection: close\r\n\r\n".encode()
                + reply
            )
            await writer.drain()
        writer.close()

    def _respond(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if not self._authorized(headers):
            return 401, b""
        request = json.loads(body)
        try:
            result = self.dispatch(request["method"], list(request.get("params", [])))
        except RpcFail as exc:
            status = 404 if exc.code == -32601 else 500
            error = {"code": exc.code, "message": exc.message}
            return status, json.dumps(
                {"result": None, "error": error, "id": request["id"]}
            ).encode()
        return 200, json.dumps({"result": result, "error": None, "id": request["id"]}).encode()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Go down (the port is kept, so start() brings it back where clients expect it)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def write_cookie(self, datadir: str) -> str:
        """Write `<datadir>/<chain>/.cookie` as bitcoind does, and use its credentials."""
        import os

        subdir = {"main": "", "test": "testnet3"}.get(self.chain, self.chain)
        os.makedirs(os.path.join(datadir, subdir), exist_ok=True)
        self.user, self.password = (
            "__cookie__",
            hashlib.sha256(str(self._nonce).encode()).hexdigest(),
        )
        path = os.path.join(datadir, subdir, ".cookie")
        with open(path, "w") as f:
            f.write(f"{self.user}:{self.password}")
        return path


def start_regtest_node_or_skip(datadir: Any) -> Any:
    """A real regtest node (contrib/regtest_node.py), or skip the test if none can start."""
    import pytest

    try:
        from contrib.regtest_node import RegtestNode
    except ImportError as exc:
        pytest.skip(f"contrib/regtest_node.py unavailable: {exc}")
    node = RegtestNode(datadir)
    try:
        node.start(timeout=90)
    except Exception as exc:  # no bitcoind, no node/npm, no network for npm...
        pytest.skip(f"no regtest node could start: {exc}")
    return node
