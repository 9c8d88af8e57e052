"""lightningd's half of gossipd: start it, relay peers' gossip, answer its chain questions.

Idle peers live in lightningd's event loop, so their gossip goes to gossipd over
gossipd's one socket, tagged with the peer's node id, and gossipd's replies come
back the same way. gossipd asks lightningd (which asks bitcoind) whether a
channel's funding output exists and is unspent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from common.amount import AmountSat
from common.daemon_conn import DaemonConnError
from common.features import Feature, negotiated, our_features
from gossipd import gossipd_wiregen as wire
from lightningd.bitcoind import BitcoindError, BitcoindUnreachable
from lightningd.chaintopology import Block, parse_block
from lightningd.jsonrpc import Param, RpcError, make_parser, param_node_id
from lightningd.jsonrpc_errors import LIGHTNINGD
from lightningd.subd import Subd

if TYPE_CHECKING:
    from lightningd.lightningd import LightningD
    from lightningd.peer_control import Peer

SOURCE = "gossipd"
GOSSIP_STORE = "gossip_store"
# BOLT #7's messages, plus gossip_timestamp_filter (265): all of them go to gossipd.
GOSSIP_TYPES = range(256, 266)


def parse_scid(text: str) -> int:
    """ "103x1x0" (CLN's form) to the u64 of BOLT #7; ValueError if it is not one."""
    if not isinstance(text, str):
        raise TypeError(f"not a short_channel_id: {text!r}")
    parts = text.split("x")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"not a short_channel_id: {text!r}")
    block, tx, out = (int(p) for p in parts)
    if block >= 2**24 or tx >= 2**24 or out >= 2**16:
        raise ValueError(f"short_channel_id out of range: {text!r}")
    return block << 40 | tx << 16 | out


# CLN's param_short_channel_id: "short_channel_id: should be a short_channel_id of form NxNxN".
param_short_channel_id = make_parser("should be a short_channel_id of form NxNxN", parse_scid)


class GossipControl:
    def __init__(self, ld: LightningD) -> None:
        self.ld = ld
        self.subd: Subd | None = None
        # Funding outpoints we confirmed to gossipd: (txid, outnum) -> short_channel_id.
        # Kept for this run only; channels gossipd reloads from its store are not watched.
        self.funding_outpoints: dict[tuple[bytes, int], int] = {}
        self._lock = asyncio.Lock()
        self._reply: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        cfg = self.ld.config
        self.subd = await Subd.start(
            SOURCE,
            "gossipd.gossipd",
            {},
            ["--developer"] if cfg.developer else [],
            self.ld.log,
            None,
            self._from_gossipd,
            self._died,
        )
        reply = await self._request(
            wire.GossipdInit(
                chain_hash=cfg.chain.chain_hash,
                our_node_id=self.ld.node_id,
                gossip_store_path=os.path.join(cfg.network_dir, GOSSIP_STORE),
                dev_fast_gossip=cfg.dev_fast_gossip,
            )
        )
        self.ld.log.info(SOURCE, f"gossipd started with {reply.channels_loaded} channels")
        if self.ld.topology is not None:
            self.ld.topology.add_block_listener(self._block)

    async def stop(self) -> None:
        if self.subd is not None:
            subd, self.subd = self.subd, None
            await subd.stop()

    async def _died(self, subd: Subd) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(RpcError(LIGHTNINGD, "gossipd died"))
        if self.subd is subd:  # not a shutdown: Core Lightning cannot work without gossipd
            self.ld.log.broken(SOURCE, f"gossipd died: {subd.fail_desc or subd.exit_code}")
            self.subd = None

    async def _request(self, msg: Any) -> Any:
        """One request at a time; gossipd answers them in order."""
        if self.subd is None:
            raise RpcError(LIGHTNINGD, "gossipd is not running")
        async with self._lock:
            self._reply = asyncio.get_running_loop().create_future()
            try:
                await self.subd.send(msg.encode())
            except DaemonConnError as exc:
                raise RpcError(LIGHTNINGD, f"gossipd is gone: {exc}") from None
            return await self._reply

    async def _send(self, msg: Any) -> None:
        if self.subd is not None:
            try:
                await self.subd.send(msg.encode())
            except DaemonConnError as exc:
                self.ld.log.unusual(SOURCE, f"cannot reach gossipd: {exc}")

    # -- gossipd's messages ----------------------------------------------------------------

    async def _from_gossipd(self, raw: bytes, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        msg = wire.decode(raw)
        if isinstance(msg, wire.GossipdSendGossip):
            await self._to_peer(msg.peer_id, msg.msg)
        elif isinstance(msg, wire.GossipdGetTxout):
            asyncio.get_running_loop().create_task(self._answer_txout(msg.short_channel_id))
        elif self._reply is not None and not self._reply.done():
            self._reply.set_result(msg)
        else:
            self.ld.log.broken(SOURCE, f"unexpected {msg.NAME}")

    async def _to_peer(self, node_id: bytes, msg: bytes) -> None:
        peer = self.ld.peers.peers.get(node_id)
        # A peer busy with a subdaemon (openingd) misses this gossip; it asks again later.
        if peer is not None and peer.conn is not None:
            # A write error is the peer's own loop's to notice: it disconnects the peer.
            with contextlib.suppress(ConnectionError, OSError):
                await peer.conn.write_message(msg)

    async def _answer_txout(self, scid: int) -> None:
        amount, script = await self.funding_output(scid)
        await self._send(
            wire.GossipdGetTxoutReply(short_channel_id=scid, amount=amount, script=script)
        )

    async def funding_output(self, scid: int) -> tuple[AmountSat | None, bytes]:
        """The output a short_channel_id names, if it is on chain and unspent."""
        height, txindex, outnum = scid >> 40, scid >> 16 & 0xFFFFFF, scid & 0xFFFF
        try:
            block_hash = await self.ld.bitcoind.getblockhash(height)
            if block_hash is None:
                return None, b""
            txs = parse_block(await self.ld.bitcoind.getrawblock(block_hash)).txs
            if txindex >= len(txs):
                return None, b""
            txid = bytes(txs[txindex].GetTxid())
            out = await self.ld.bitcoind.gettxout(txid, outnum)
        except (BitcoindError, BitcoindUnreachable) as exc:
            self.ld.log.unusual(SOURCE, f"cannot check funding output {scid}: {exc}")
            return None, b""
        if out is None:
            return None, b""
        sat = round(float(out["value"]) * 100_000_000)
        self.funding_outpoints[(txid, outnum)] = scid
        return AmountSat(sat), bytes.fromhex(out["scriptPubKey"]["hex"])

    async def _block(self, block: Block, height: int) -> None:
        """BOLT #7: a channel whose funding output is spent is closed: tell gossipd."""
        spent = [
            self.funding_outpoints.pop(key)
            for tx in block.txs
            for txin in tx.vin
            if (key := (bytes(txin.prevout.hash), txin.prevout.n)) in self.funding_outpoints
        ]
        if spent:
            self.ld.log.debug(SOURCE, f"block {height} closes {len(spent)} announced channels")
            await self._send(wire.GossipdOutpointsSpent(short_channel_ids=tuple(spent)))

    # -- peers -----------------------------------------------------------------------------

    async def peer_connected(self, peer: Peer) -> None:
        queries = negotiated(our_features(), peer.init.features, Feature.GOSSIP_QUERIES)
        await self._send(wire.GossipdNewPeer(peer_id=peer.node_id, gossip_queries=queries))

    async def peer_gone(self, node_id: bytes) -> None:
        await self._send(wire.GossipdPeerGone(peer_id=node_id))

    async def peer_gossip(self, peer: Peer, raw: bytes) -> None:
        await self._send(wire.GossipdRecvGossip(peer_id=peer.node_id, msg=raw))

    async def local_gossip(self, raw: bytes) -> None:
        """Our own signed announcement or update: gossipd checks and spreads it."""
        await self._send(wire.GossipdLocalGossip(msg=raw))

    # -- RPC ---------------------------------------------------------------------------------

    def register_commands(self) -> None:
        rpc = self.ld.rpc
        rpc.register(
            "listchannels",
            self.json_listchannels,
            [
                Param("short_channel_id", param_short_channel_id, required=False),
                Param("source", param_node_id, required=False),
                Param("destination", param_node_id, required=False),
            ],
            category="channels",
            description="Show channel {short_channel_id} or {source} (or all known channels, "
            "if not specified)",
        )
        rpc.register(
            "listnodes",
            self.json_listnodes,
            [Param("id", param_node_id, required=False)],
            category="network",
            description="Show node {id} (or all known nodes, if not specified)",
        )

    async def json_listchannels(
        self,
        short_channel_id: int | None = None,
        source: bytes | None = None,
        destination: bytes | None = None,
    ) -> dict:
        reply = await self._request(
            wire.GossipdListchannels(
                short_channel_id=short_channel_id, source=source, destination=destination
            )
        )
        return json.loads(reply.json)

    async def json_listnodes(self, id: bytes | None = None) -> dict:
        reply = await self._request(wire.GossipdListnodes(id=id))
        return json.loads(reply.json)
