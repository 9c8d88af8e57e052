"""The chain as bitcoind sees it: blocks, reorgs, our transactions, and feerates.

Like Core Lightning's chaintopology.c, we poll bitcoind (`getblockcount`, `getblockhash`,
`getblock <hash> 0`) every --dev-bitcoind-poll seconds, store each block in `blocks`, and
tell listeners about it. A reorg is found by walking back from our tip until our stored hash
matches bitcoind's: the orphaned rows are deleted, which the schema's ON DELETE SET NULL turns
into "unconfirmed" for outputs and transactions that were in them, and the new branch is
processed like any other blocks. On restart we roll back CLN's default --rescan of 15 blocks
from the stored tip and process them again, so a crash between storing a block and a
listener's writes loses nothing (listeners must be idempotent).

Transactions we broadcast are kept in `transactions` before they are sent and sent again on
every new block until they confirm, after a reorg, and when bitcoind answers again after an
outage (a restarted bitcoind has forgotten its mempool). `watch_txid` callbacks hear each
change of depth.

Feerates come from `estimatesmartfee` at bcli's targets (2 CONSERVATIVE, 6, 12 and 100
ECONOMICAL), raised to max(mempoolminfee, minrelaytxfee) and to 253perkw. On regtest, where
estimates rarely exist, bcli fakes 1000 sat/kvB for a missing estimate; we do the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from bitcointx.core import CTransaction
from bitcointx.core.serialize import VarIntSerializer

import common.secp  # noqa: F401  (python-bitcointx's secp256k1, before any bitcointx use)
from common.scripts import sha256
from lightningd.bitcoind import (
    RPC_VERIFY_ALREADY_IN_CHAIN,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    Bitcoind,
    BitcoindError,
    BitcoindUnreachable,
)
from lightningd.db import Database
from lightningd.feerate import FEERATE_FLOOR_PERKW, parse_feerate
from lightningd.jsonrpc import JsonRpcServer, Param, ParamError, RpcError
from lightningd.jsonrpc_errors import BCLI_NO_FEE_ESTIMATES
from lightningd.log import NodeLog

SOURCE = "chaintopology"
# Core Lightning's --rescan default: blocks re-processed from the stored tip at start.
RESCAN_BLOCKS = 15
# First start without a stored tip: begin this far below bitcoind's tip.
FIRST_START_DEPTH = 6
# bcli's estimatesmartfee calls.
FEE_TARGETS: tuple[tuple[int, str], ...] = (
    (2, "CONSERVATIVE"),
    (6, "ECONOMICAL"),
    (12, "ECONOMICAL"),
    (100, "ECONOMICAL"),
)
REGTEST_FAKE_PERKB = 1000  # bcli's fake_fees value on regtest
# CLN: a commitment tx with anchors can lowball (CPFP later) but must reach the mempool.
ANCHOR_UNILATERAL_MIN_PERKW = 1250
MAX_ACCEPTABLE_MULTIPLIER = 10  # bcli: max_acceptable = 2-block estimate * 10
# Named feerates: target blocks (CLN: urgent 6, normal 12, slow 100).
_NAMED_TARGETS = {
    "opening": 12,
    "normal": 12,
    "penalty": 12,
    "mutual_close": 100,
    "slow": 100,
    "unilateral_close": 6,
    "urgent": 6,
}
# Typical weights behind `feerates`' onchain_fee_estimates (CLN's figures), and the feerate
# each one is priced at.
_FEE_ESTIMATE_WEIGHTS = (
    ("opening_channel_satoshis", 702, "opening"),
    ("mutual_close_satoshis", 673, "mutual_close"),
    ("unilateral_close_satoshis", 1112, "unilateral_anchor_close"),
    ("unilateral_close_nonanchor_satoshis", 598, "unilateral_close"),
    ("htlc_timeout_satoshis", 663, "unilateral_close"),
    ("htlc_success_satoshis", 703, "unilateral_close"),
)
_MISSING_FEERATES = "Some fee estimates unavailable: bitcoind startup?"
# Txids per `IN (...)` when looking up many confirmations at once (SQLite's oldest limit on
# bound parameters is 999).
_SQL_BATCH = 500


@dataclass(frozen=True)
class Block:
    hash: bytes  # internal byte order, like every hash in the database
    prev_hash: bytes
    header: bytes
    txs: list[CTransaction]


def block_hash(header: bytes) -> bytes:
    return sha256(sha256(header))


def parse_block(raw: bytes) -> Block:
    """A serialized block: 80-byte header, tx count, transactions (with witnesses)."""
    if len(raw) < 81:
        raise ValueError("block too short")
    stream = io.BytesIO(raw)
    header = stream.read(80)
    count = VarIntSerializer.stream_deserialize(stream)
    txs = [CTransaction.stream_deserialize(stream) for _ in range(count)]
    if stream.read(1):
        raise ValueError("trailing bytes after the block's transactions")
    return Block(block_hash(header), header[4:36], header, txs)


class BroadcastError(Exception):
    """bitcoind did not take a transaction. `final`: it refused it (not just unreachable)."""

    def __init__(self, message: str, final: bool) -> None:
        super().__init__(message)
        self.final = final


BlockListener = Callable[[Block, int], Awaitable[None]]
ReorgListener = Callable[[int], Awaitable[None]]  # gets the height of the last common block
TxCallback = Callable[[int, int | None, int | None], Awaitable[None]]  # depth, height, index
Confirmation = tuple[int, int]  # blockheight, txindex
FeerateSpec = int | str  # perkw, or a name / "<n>blocks" resolved when used


def txid_hex(txid: bytes) -> str:
    """The txid as people and bitcoind print it (reversed byte order)."""
    return txid[::-1].hex()


class ChainTopology:
    def __init__(
        self,
        bitcoind: Bitcoind,
        db: Database,
        log: NodeLog,
        network: str,
        poll_interval: float = 30,
        start_height: int | None = None,
        rescan: int = RESCAN_BLOCKS,
    ) -> None:
        self.bitcoind = bitcoind
        self.db = db
        self.log = log
        self.network = network
        self.poll_interval = poll_interval
        self.start_height = start_height
        self.rescan = rescan
        self._tip: tuple[int, bytes] | None = None
        self._block_listeners: list[BlockListener] = []
        self._reorg_listeners: list[ReorgListener] = []
        self._watches: dict[bytes, list[TxCallback]] = {}
        self._told_depth: dict[tuple[bytes, TxCallback], int] = {}
        # Watches added since the last look at `transactions`: told together, in one query.
        self._new_watches: list[tuple[bytes, TxCallback]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._new_block = asyncio.Event()
        self._unreachable_since_logged = False
        # Something of ours may not have reached bitcoind: send it all once it answers.
        self._resend_when_back = False
        self.estimates_perkw: dict[int, int] = {}
        self.floor_perkw = FEERATE_FLOOR_PERKW

    # -- what others read and register -----------------------------------------------------

    @property
    def height(self) -> int:
        """Our tip's height (getinfo's blockheight); 0 before the first block."""
        return self._tip[0] if self._tip else 0

    @property
    def tip_hash(self) -> bytes | None:
        return self._tip[1] if self._tip else None

    def add_block_listener(self, listener: BlockListener) -> None:
        self._block_listeners.append(listener)

    def add_reorg_listener(self, listener: ReorgListener) -> None:
        self._reorg_listeners.append(listener)

    def watch_txid(self, txid: bytes, callback: TxCallback) -> None:
        """Call `callback(depth, blockheight, txindex)` whenever txid's depth changes.

        Depth 0 means unconfirmed (or reorged out). A transaction is found in blocks we
        process from now on, or in `transactions` (ours, or seen while watched); register
        watches before start() so the blocks processed at start-up are checked too.
        """
        self._watches.setdefault(txid, []).append(callback)
        # Batched: a restart watches every channel's funding at once, and one query for all
        # of them beats one each.
        self._new_watches.append((txid, callback))
        if len(self._new_watches) == 1:
            self._spawn(self._tell_new_watches())

    def unwatch_txid(self, txid: bytes, callback: TxCallback | None = None) -> None:
        callbacks = self._watches.get(txid, [])
        for cb in [c for c in callbacks if callback is None or c == callback]:
            callbacks.remove(cb)
            self._told_depth.pop((txid, cb), None)
        if not callbacks:
            self._watches.pop(txid, None)

    def tx_confirmation(self, txid: bytes) -> Confirmation | None:
        """(blockheight, txindex) of a transaction in `transactions`, if confirmed."""
        return self.tx_confirmations([txid]).get(txid)

    def tx_confirmations(self, txids: Collection[bytes]) -> dict[bytes, Confirmation]:
        """tx_confirmation for many txids at once: those confirmed, by txid."""
        ids = list(txids)
        found: dict[bytes, Confirmation] = {}
        for start in range(0, len(ids), _SQL_BATCH):
            chunk = ids[start : start + _SQL_BATCH]
            rows = self.db.query(
                "SELECT id, blockheight, txindex FROM transactions"
                f" WHERE blockheight IS NOT NULL AND id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                found[bytes(row["id"])] = (int(row["blockheight"]), int(row["txindex"] or 0))
        return found

    async def wait_for_height(self, height: int) -> None:
        """Until our tip reaches `height` (callers add their own timeout)."""
        while self.height < height:
            event = self._new_block
            await event.wait()

    # -- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Catch up with bitcoind, fetch feerates, then keep polling in the background."""
        await self._roll_back_for_rescan()
        await self.sync()
        await self._update_feerates_logged()
        self.log.info(SOURCE, f"Synced with bitcoind at block {self.height}")
        self._poller = asyncio.create_task(self._poll_loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # shutting down: a listener's failure no longer matters
        self._poller = None
        await self.bitcoind.close()  # its kept-alive connections

    async def _roll_back_for_rescan(self) -> None:
        row = self.db.query_one("SELECT MIN(height) AS low, MAX(height) AS high FROM blocks")
        if row is None or row["high"] is None:
            return
        keep = max(int(row["low"]), int(row["high"]) - self.rescan)
        self._delete_blocks_above(keep)
        self._load_tip()
        self.log.debug(SOURCE, f"Rescanning from block {keep + 1}")

    def _load_tip(self) -> None:
        row = self.db.query_one("SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1")
        self._tip = None if row is None else (int(row["height"]), bytes(row["hash"]))

    # -- following the chain ----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except Exception as exc:
                # A bug or a bad block must not silently end the chain-following task.
                self.log.broken(SOURCE, f"Polling bitcoind failed: {exc!r}; will retry")

    async def poll(self) -> None:
        """One round: new blocks (and reorgs), then feerates. Errors are logged, not raised."""
        try:
            await self.sync()
            await self._update_feerates()
        except BitcoindUnreachable as exc:
            self._resend_when_back = True
            if not self._unreachable_since_logged:
                self.log.unusual(
                    SOURCE, f"bitcoind unreachable ({exc}); retrying every {self.poll_interval}s"
                )
                self._unreachable_since_logged = True
            return
        except BitcoindError as exc:
            self.log.unusual(SOURCE, f"bitcoind error while polling: {exc}")
            return
        if self._unreachable_since_logged:
            self.log.info(SOURCE, "bitcoind is back")
            self._unreachable_since_logged = False
        if self._resend_when_back:
            # It may have restarted without its mempool, or never got what we sent.
            self._resend_when_back = False
            await self._rebroadcast()

    async def sync(self) -> None:
        """Process blocks until our tip is bitcoind's, handling reorgs on the way."""
        if self._tip is None:
            self._load_tip()
        await self._check_for_reorg()
        added = 0
        while True:
            count = await self.bitcoind.getblockcount()
            height = await self._first_height(count) if self._tip is None else self.height + 1
            if height > count:
                break
            block_hash_ = await self.bitcoind.getblockhash(height)
            if block_hash_ is None:  # the chain shrank under us: look again
                await self._check_for_reorg()
                continue
            block = parse_block(await self.bitcoind.getrawblock(block_hash_))
            if self._tip is not None and block.prev_hash != self._tip[1]:
                await self._check_for_reorg()
                continue
            await self._add_block(block, height)
            added += 1
        if added:
            await self._rebroadcast()

    async def _first_height(self, count: int) -> int:
        if self.start_height is not None:
            return self.start_height
        return max(0, count - FIRST_START_DEPTH)

    async def _check_for_reorg(self) -> None:
        if self._tip is None:
            return
        fork = await self._find_fork()
        if fork >= self.height:
            return
        self.log.unusual(SOURCE, f"Reorg: blocks {fork + 1}..{self.height} are no longer ours")
        self._delete_blocks_above(fork)
        self._load_tip()
        for listener in self._reorg_listeners:
            await self._call_listener(listener, fork)
        await self._tell_all_depths()
        # Its transactions are unconfirmed again: the new branch may never mine them unless
        # sent again (a shorter branch brings no new block to trigger that).
        await self._rebroadcast()

    async def _find_fork(self) -> int:
        """The height of the last block we share with bitcoind (below our oldest: -1 off)."""
        rows = self.db.query("SELECT height, hash FROM blocks ORDER BY height DESC")
        count = await self.bitcoind.getblockcount()
        for row in rows:
            height = int(row["height"])
            if height > count:
                continue
            if await self.bitcoind.getblockhash(height) == bytes(row["hash"]):
                return height
        return int(rows[-1]["height"]) - 1 if rows else -1

    def _delete_blocks_above(self, height: int) -> None:
        # The foreign keys null the outputs' and transactions' heights in these blocks.
        self.db.execute("DELETE FROM blocks WHERE height > ?", (height,))

    async def _add_block(self, block: Block, height: int) -> None:
        tracked = self._tracked_txids()
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO blocks (height, hash, prev_hash) VALUES (?, ?, ?)",
                (height, block.hash, block.prev_hash),
            )
            for index, tx in enumerate(block.txs):
                if tx.GetTxid() in tracked:
                    self._record_confirmed(tx, height, index)
        self._tip = (height, block.hash)
        self.log.debug(SOURCE, f"Block {height} {txid_hex(block.hash)}: {len(block.txs)} txs")
        for listener in self._block_listeners:
            await self._call_listener(listener, block, height)
        await self._tell_all_depths()
        self._new_block.set()
        self._new_block = asyncio.Event()

    def _tracked_txids(self) -> set[bytes]:
        rows = self.db.query("SELECT id FROM transactions WHERE blockheight IS NULL")
        return set(self._watches) | {bytes(r["id"]) for r in rows}

    def _record_confirmed(self, tx: CTransaction, height: int, index: int) -> None:
        self.db.execute(
            "INSERT INTO transactions (id, blockheight, txindex, rawtx) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET blockheight = excluded.blockheight,"
            " txindex = excluded.txindex",
            (tx.GetTxid(), height, index, tx.serialize()),
        )

    async def _call_listener(self, listener: Callable[..., Awaitable[None]], *args: Any) -> None:
        # One broken listener must not stop the chain for everybody else.
        try:
            await listener(*args)
        except Exception as exc:
            self.log.broken(SOURCE, f"listener {listener!r} failed: {exc!r}")

    # -- watched transactions ----------------------------------------------------------------

    def _depth(self, conf: Confirmation | None) -> tuple[int, int | None, int | None]:
        if conf is None:
            return 0, None, None
        return self.height - conf[0] + 1, conf[0], conf[1]

    async def _tell_depths(self, watches: list[tuple[bytes, TxCallback]]) -> None:
        """Each watch's callback, if its txid's depth changed since it was last told.

        Confirmations are read for all of them at once, and read again for those left
        should the tip move while a callback awaits (only a new tip changes them). A watch
        removed by an earlier callback is skipped.
        """
        tip: tuple[int, bytes] | None = None
        confs: dict[bytes, Confirmation] | None = None
        for i, (txid, callback) in enumerate(watches):
            if confs is None or self._tip != tip:
                tip, confs = self._tip, self.tx_confirmations({t for t, _ in watches[i:]})
            depth, height, index = self._depth(confs.get(txid))
            key = (txid, callback)
            if self._told_depth.get(key, 0) == depth or callback not in self._watches.get(txid, ()):
                continue
            self._told_depth[key] = depth
            await self._call_listener(callback, depth, height, index)

    async def _tell_new_watches(self) -> None:
        new, self._new_watches = self._new_watches, []
        await self._tell_depths(new)

    async def _tell_all_depths(self) -> None:
        await self._tell_depths(
            [(txid, cb) for txid, callbacks in self._watches.items() for cb in callbacks]
        )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- broadcasting ------------------------------------------------------------------------

    async def broadcast(self, raw_tx: bytes, txid: bytes | None = None) -> bytes:
        """Send a transaction and keep sending it each block until it confirms.

        Returns the txid (internal byte order; a caller holding the parsed tx passes it).
        BroadcastError(final=True) if bitcoind refused it (it is then forgotten);
        final=False if bitcoind could not be reached (it is kept and sent again on the
        next block).
        """
        if txid is None:
            try:
                txid = bytes(CTransaction.deserialize(raw_tx).GetTxid())
            except Exception as exc:  # bitcointx raises several types for bad bytes
                raise BroadcastError(f"cannot parse transaction: {exc}", final=True) from None
        known = self.db.query_one("SELECT 1 FROM transactions WHERE id = ?", (txid,))
        # Remembered before sending: if we die right after, we still send it again later.
        self.db.execute(
            "INSERT INTO transactions (id, rawtx) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            (txid, raw_tx),
        )
        try:
            await self.bitcoind.sendrawtransaction(raw_tx)
        except BitcoindUnreachable as exc:
            self._resend_when_back = True
            raise BroadcastError(
                f"bitcoind unreachable, will retry broadcasting {txid_hex(txid)}: {exc}",
                final=False,
            ) from None
        except BitcoindError as exc:
            if exc.code == RPC_VERIFY_ALREADY_IN_CHAIN:
                return txid
            if known is None:
                self.db.execute("DELETE FROM transactions WHERE id = ?", (txid,))
            raise BroadcastError(refusal_message(txid, exc), final=True) from None
        self.log.info(SOURCE, f"Broadcast {txid_hex(txid)}")
        return txid

    async def _rebroadcast(self) -> None:
        rows = self.db.query("SELECT id, rawtx FROM transactions WHERE blockheight IS NULL")
        for row in rows:
            try:
                await self.bitcoind.sendrawtransaction(bytes(row["rawtx"]))
            except BitcoindError as exc:
                self.log.debug(SOURCE, f"Rebroadcast {txid_hex(bytes(row['id']))}: {exc}")
            except BitcoindUnreachable:
                self._resend_when_back = True  # gone again: all of it once more when back
                return

    # -- feerates ----------------------------------------------------------------------------

    async def _update_feerates_logged(self) -> None:
        try:
            await self._update_feerates()
        except (BitcoindError, BitcoindUnreachable) as exc:
            self.log.unusual(SOURCE, f"Could not get fee estimates: {exc}")

    async def _update_feerates(self) -> None:
        floor_perkb = await self.bitcoind.mempool_floor_perkb()
        fresh: dict[int, int] = {}
        for blocks, mode in FEE_TARGETS:
            perkb = await self.bitcoind.estimatesmartfee(blocks, mode)
            if perkb is None and self.network == "regtest":
                perkb = REGTEST_FAKE_PERKB
            if perkb is None:
                # As CLN: keep what we had rather than forget every estimate.
                self.log.debug(SOURCE, f"No fee estimate for {blocks} blocks")
                return
            fresh[blocks] = max(perkb, floor_perkb) // 4
        self.floor_perkw = max(FEERATE_FLOOR_PERKW, floor_perkb // 4)
        self.estimates_perkw = {b: max(r, self.floor_perkw) for b, r in fresh.items()}

    def _for_deadline(self, blocks: int) -> int | None:
        """The estimate for the largest target not beyond `blocks` (else the most urgent)."""
        if not self.estimates_perkw:
            return None
        targets = sorted(self.estimates_perkw)
        usable = [t for t in targets if t <= blocks] or targets[:1]
        return self.estimates_perkw[usable[-1]]

    def feerate_perkw(self, name: str) -> int | None:
        """A named feerate (CLN's names, plus "<n>blocks"), or None without estimates."""
        if name in ("floor", "minimum"):
            return self.floor_perkw
        if name in _NAMED_TARGETS:
            return self._for_deadline(_NAMED_TARGETS[name])
        if name.endswith("blocks") and name[: -len("blocks")].isdigit():
            return self._for_deadline(int(name[: -len("blocks")]))
        rate: int | None = None
        if name == "unilateral_anchor_close":
            slow = self._for_deadline(100)
            rate = None if slow is None else max(slow, ANCHOR_UNILATERAL_MIN_PERKW)
        elif name == "min_acceptable":
            slow = self._for_deadline(100)
            rate = None if slow is None else max(slow // 2, self.floor_perkw)
        elif name == "max_acceptable":
            fast = self._for_deadline(2)
            rate = None if fast is None else fast * MAX_ACCEPTABLE_MULTIPLIER
        else:
            raise ValueError(f"unknown feerate name {name!r}")
        return rate

    def resolve_feerate(self, spec: FeerateSpec) -> int:
        """A feerate parameter as perkw; RpcError (CLN's 501) while we have no estimates."""
        if isinstance(spec, int):
            return spec
        rate = self.feerate_perkw(spec)
        if rate is None:
            raise RpcError(BCLI_NO_FEE_ESTIMATES, "Cannot estimate fees (yet)")
        return rate

    # -- RPC ---------------------------------------------------------------------------------

    def register_commands(self, rpc: JsonRpcServer) -> None:
        rpc.register(
            "feerates",
            self.json_feerates,
            [Param("style", param_feerate_style)],
            category="bitcoin",
            description="Return feerate estimates, either satoshi-per-kw or satoshi-per-kb",
        )

    async def json_feerates(self, style: str) -> dict[str, Any]:
        scale = 4 if style == "perkb" else 1
        names = (
            "opening",
            "mutual_close",
            "unilateral_close",
            "unilateral_anchor_close",
            "penalty",
            "min_acceptable",
            "max_acceptable",
        )
        rates: dict[str, Any] = {}
        for name in names:
            rate = self.feerate_perkw(name)
            if rate is not None:
                rates[name] = rate * scale
        rates["floor"] = self.floor_perkw * scale
        rates["estimates"] = [
            {"blockcount": b, "feerate": r * scale, "smoothed_feerate": r * scale}
            for b, r in sorted(self.estimates_perkw.items())
        ]
        result: dict[str, Any] = {style: rates}
        if not self.estimates_perkw:
            result["warning_missing_feerates"] = _MISSING_FEERATES
            return result
        result["onchain_fee_estimates"] = {
            key: weight * (self.feerate_perkw(rate) or 0) // 1000
            for key, weight, rate in _FEE_ESTIMATE_WEIGHTS
        }
        return result


def refusal_message(txid: bytes, exc: BitcoindError) -> str:
    """bitcoind's refusal of a transaction, with what it usually means."""
    hints = {
        RPC_VERIFY_ERROR: "its inputs are spent or unknown to bitcoind",
        RPC_VERIFY_REJECTED: "rejected by bitcoind's mempool policy",
    }
    hint = hints.get(exc.code, "refused by bitcoind")
    return f"Error broadcasting transaction {txid_hex(txid)}: {hint}: {exc.message}"


def param_feerate_style(value: Any) -> str:
    if value in ("perkw", "perkb"):
        return str(value)
    raise ParamError("should be 'perkw' or 'perkb'")


def param_feerate(value: Any) -> FeerateSpec:
    """A feerate parameter as CLN takes it: a name or "<n>blocks" (resolved later by the
    topology's estimates), or a number with perkw/perkb (bare: perkb)."""
    if isinstance(value, str):
        names = ("floor", "minimum", "min_acceptable", "max_acceptable", *_NAMED_TARGETS)
        if value in names or value == "unilateral_anchor_close":
            return value
        if value.endswith("blocks") and value[: -len("blocks")].isdigit():
            return value
    try:
        return parse_feerate(value)
    except ParamError:
        raise ParamError(
            "should be a feerate: urgent, normal, slow, minimum, <n>blocks, <n>perkw or <n>perkb"
        ) from None
