"""gossipd: validates, stores and relays BOLT #7 gossip; answers gossip queries.

    fd 0 == lightningd (gossipd_wire.csv)

Peers idle in lightningd's loop, so every peer's gossip arrives on the one master
socket as gossipd_recv_gossip, tagged with the peer's node id, and everything we
send a peer leaves as gossipd_send_gossip. A channel_announcement waits for
lightningd's gossipd_get_txout_reply while other messages keep flowing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field

from common import subdaemon
from common.daemon_conn import AsyncDaemonConn
from common.read_peer_msg import TokenBucket
from common.status import Status, async_sender
from gossipd import gossipd_wiregen as gw
from gossipd.gossip_store import GossipStore, channel_amount_msg, parse_channel_amount
from gossipd.routing import (
    MSGFLAG_DONT_FORWARD,
    BadGossip,
    Channel,
    GossipRejected,
    IgnoredGossip,
    Node,
    Routing,
    channel_range_replies,
    check_channel_announcement,
    check_funding_txout,
    decode_short_ids,
    scid_str,
    update_direction,
)
from wire import peer_wiregen as pw
from wire.fundamental import WireError

GOSSIP_TYPES = (256, 257, 258)
QUERY_TYPES = (261, 262, 263, 264, 265)
# Per-peer rate limit on incoming gossip: a token bucket.
RATE_BURST = 1000
RATE_PER_SEC = 100.0


@dataclass
class Peer:
    node_id: bytes
    gossip_queries: bool
    bucket: TokenBucket
    # (first_timestamp, end) once the peer sent gossip_timestamp_filter
    filter: tuple[int, int] | None = None
    sent_anns: set[int] = field(default_factory=set)
    dropped: int = 0

    def wants(self, timestamp: int) -> bool:
        """BOLT #7: "greater or equal to `first_timestamp`, and less than `first_timestamp`
        plus `timestamp_range`"."""
        return self.filter is not None and self.filter[0] <= timestamp < self.filter[1]


@dataclass
class Pending:
    """A channel_announcement waiting for its funding output."""

    raw: bytes
    ann: pw.ChannelAnnouncement
    source: bytes | None
    updates: dict[int, bytes] = field(default_factory=dict)
    # node_announcements of its nodes that arrived while it waited: (source, raw)
    nodes: dict[bytes, tuple[bytes | None, bytes]] = field(default_factory=dict)


def warning(text: str) -> bytes:
    """BOLT #1 warning; all-zero channel_id: "the warning is not channel-specific"."""
    return pw.Warning(channel_id=bytes(32), data=text.encode()).encode()


class Gossipd:
    def __init__(self, conn: AsyncDaemonConn, status: Status) -> None:
        self.conn = conn
        self.status = status
        self.peers: dict[bytes, Peer] = {}
        self.pending: dict[int, Pending] = {}
        self.routing: Routing
        self.store: GossipStore
        self.our_id = b""

    # --- start-up ----------------------------------------------------------------

    async def init(self) -> None:
        init = gw.GossipdInit.decode(await self.conn.recv())
        self.routing = Routing(init.chain_hash)
        self.our_id = init.our_node_id
        self.store = GossipStore(init.gossip_store_path, self.status.unusual)
        self.load_store()
        await self.conn.send(
            gw.GossipdInitReply(channels_loaded=len(self.routing.channels)).encode()
        )

    def load_store(self) -> None:
        """Replay the store into the view, then compact it to what is still live."""
        records = list(self.store.live())
        for i, rec in enumerate(records):
            try:
                self._load_record(rec.msg, records[i + 1].msg if i + 1 < len(records) else b"")
            except (GossipRejected, WireError) as exc:
                self.status.debug(f"gossip_store: dropping record: {exc}")
        self.compact()

    def _load_record(self, msg: bytes, following: bytes) -> None:
        msgtype = int.from_bytes(msg[:2], "big")
        if msgtype == pw.ChannelAnnouncement.TYPE:
            amount = parse_channel_amount(following)
            if amount is None:
                raise IgnoredGossip("channel_announcement without its amount")
            ann = pw.ChannelAnnouncement.decode(msg)
            if ann.short_channel_id not in self.routing.channels:
                self.routing.add_channel(msg, ann, amount)
        elif msgtype == pw.ChannelUpdate.TYPE:
            chan, upd = self.routing.check_update(msg)
            self.routing.apply_update(chan, msg, upd)
        elif msgtype == pw.NodeAnnouncement.TYPE:
            self.routing.apply_node(msg, *self.routing.check_node(msg))

    def compact(self) -> None:
        entries: list[tuple[bytes, int]] = []
        for chan in self.routing.channels.values():
            entries += [(chan.raw, 0), (channel_amount_msg(chan.capacity_sat), 0)]
            entries += [(h.raw, h.update.timestamp) for h in chan.half if h]
        entries += [
            (n.raw, n.ann.timestamp) for n in self.routing.nodes.values() if n.ann and n.raw
        ]
        offsets = iter(self.store.rewrite(entries))
        for chan in self.routing.channels.values():
            chan.offsets = (next(offsets), next(offsets))
            for h in chan.half:
                if h:
                    h.offset = next(offsets)
        for node in self.routing.nodes.values():
            if node.ann and node.raw:
                node.offset = next(offsets)

    # --- the main loop -------------------------------------------------------------

    async def serve(self) -> None:
        while True:
            msg = await self.conn.recv()
            try:
                await self.handle_master(msg)
            except WireError as exc:
                self.status.broken(f"bad message from lightningd: {exc}")

    async def handle_master(self, msg: bytes) -> None:
        m = gw.decode(msg)
        if isinstance(m, gw.GossipdNewPeer):
            bucket = TokenBucket(RATE_BURST, RATE_PER_SEC)
            self.peers[m.peer_id] = Peer(m.peer_id, m.gossip_queries, bucket)
            if m.gossip_queries:
                # BOLT #7: a gossip_queries peer sends no gossip until we ask with
                # gossip_timestamp_filter; first_timestamp 0 asks for all it has.
                ask = pw.GossipTimestampFilter(
                    chain_hash=self.routing.chain_hash,
                    first_timestamp=0,
                    timestamp_range=0xFFFFFFFF,
                )
                await self.send_peer(m.peer_id, ask.encode())
        elif isinstance(m, gw.GossipdPeerGone):
            peer = self.peers.pop(m.peer_id, None)
            if peer is not None and peer.dropped:
                self.status.info(
                    f"peer {m.peer_id.hex()}: dropped {peer.dropped} gossip messages "
                    "over the rate limit"
                )
        elif isinstance(m, gw.GossipdRecvGossip):
            await self.from_peer(m.peer_id, m.msg)
        elif isinstance(m, gw.GossipdGetTxoutReply):
            await self.txout_reply(m)
        elif isinstance(m, gw.GossipdLocalGossip):
            await self.handle_gossip(None, m.msg)
        elif isinstance(m, gw.GossipdOutpointsSpent):
            self.outpoints_spent(m.short_channel_ids)
        elif isinstance(m, gw.GossipdListchannels):
            reply = listchannels(self.routing, m.short_channel_id, m.source, m.destination)
            await self.conn.send(gw.GossipdListchannelsReply(json=reply).encode())
        elif isinstance(m, gw.GossipdListnodes):
            reply = listnodes(self.routing, m.id)
            await self.conn.send(gw.GossipdListnodesReply(json=reply).encode())
        else:
            self.status.broken(f"unexpected message {type(m).NAME} from lightningd")

    async def send_peer(self, peer_id: bytes, msg: bytes) -> None:
        await self.conn.send(gw.GossipdSendGossip(peer_id=peer_id, msg=msg).encode())

    # --- from peers --------------------------------------------------------------

    async def from_peer(self, peer_id: bytes, msg: bytes) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            self.status.unusual(f"gossip from unknown peer {peer_id.hex()}")
            return
        msgtype = int.from_bytes(msg[:2], "big")
        if msgtype in GOSSIP_TYPES:
            if not peer.bucket.take():
                # Logged once: a line per dropped message would let the flood into the log.
                if not peer.dropped:
                    self.status.info(
                        f"peer {peer_id.hex()}: gossip over {RATE_PER_SEC:g}/s "
                        f"(burst {RATE_BURST}): dropping the excess"
                    )
                peer.dropped += 1
                return
            await self.handle_gossip(peer_id, msg)
        elif msgtype in QUERY_TYPES:
            await self.handle_query(peer, msg)
        else:
            self.status.unusual(f"peer {peer_id.hex()}: unexpected message type {msgtype}")

    async def handle_gossip(self, source: bytes | None, msg: bytes) -> None:
        """One gossip message from a peer (source) or our own (source None)."""
        try:
            msgtype = int.from_bytes(msg[:2], "big")
            if msgtype == pw.ChannelAnnouncement.TYPE:
                await self.channel_announcement(source, msg)
            elif msgtype == pw.ChannelUpdate.TYPE:
                await self.channel_update(source, msg)
            elif msgtype == pw.NodeAnnouncement.TYPE:
                await self.node_announcement(source, msg)
        except BadGossip as exc:
            await self.reject(source, str(exc))
        except IgnoredGossip as exc:
            self.status.debug(f"ignoring gossip: {exc}")

    async def reject(self, source: bytes | None, why: str) -> None:
        if source is None:
            self.status.broken(f"our own gossip is invalid: {why}")
            return
        self.status.info(f"peer {source.hex()}: invalid gossip: {why}")
        await self.send_peer(source, warning(why))

    async def channel_announcement(self, source: bytes | None, raw: bytes) -> None:
        ann = check_channel_announcement(raw, self.routing.chain_hash)
        scid = ann.short_channel_id
        if scid in self.routing.channels or scid in self.pending:
            raise IgnoredGossip(f"channel_announcement {scid_str(scid)}: already known")
        self.pending[scid] = Pending(raw, ann, source)
        await self.conn.send(gw.GossipdGetTxout(short_channel_id=scid).encode())

    async def txout_reply(self, m: gw.GossipdGetTxoutReply) -> None:
        pend = self.pending.pop(m.short_channel_id, None)
        if pend is None:
            self.status.unusual(f"txout reply for {scid_str(m.short_channel_id)} not asked")
            return
        amount = None if m.amount is None else m.amount.sat
        try:
            capacity = check_funding_txout(pend.ann, amount, m.script)
        except BadGossip as exc:
            await self.reject(pend.source, str(exc))
            return
        except IgnoredGossip as exc:
            self.status.debug(f"ignoring gossip: {exc}")
            return
        chan = self.routing.add_channel(pend.raw, pend.ann, capacity)
        chan.offsets = (
            self.store.append(pend.raw, 0),
            self.store.append(channel_amount_msg(capacity), 0),
        )
        self.status.debug(f"channel {scid_str(chan.scid)} announced, {capacity} sat")
        # BOLT #7: "MUST NOT send the `channel_announcement`" without a channel_update:
        # it goes out with its first update.
        for raw in pend.updates.values():
            await self.handle_gossip(pend.source, raw)
        for source, raw in pend.nodes.values():
            await self.handle_gossip(source, raw)

    async def channel_update(self, source: bytes | None, raw: bytes) -> None:
        try:
            upd = pw.ChannelUpdate.decode(raw)
        except WireError as exc:
            raise BadGossip(f"malformed channel_update: {exc}") from None
        pend = self.pending.get(upd.short_channel_id)
        if pend is not None:
            pend.updates[update_direction(upd)] = raw  # checked once the channel is in
            return
        chan, upd = self.routing.check_update(raw)
        old = self.routing.apply_update(chan, raw, upd)
        if old:
            self.store.delete(old.offset)
        half = chan.half[update_direction(upd)]
        assert half is not None
        half.offset = self.store.append(raw, upd.timestamp)
        # BOLT #7: `dont_forward`: "MUST NOT forward such a `channel_update` to other peers"
        if not upd.message_flags & MSGFLAG_DONT_FORWARD:
            await self.relay(source, chan, raw, upd.timestamp)

    async def node_announcement(self, source: bytes | None, raw: bytes) -> None:
        pend = self._pending_for_node(raw)
        if pend is not None:
            # Its channel is still being checked: judge the node once the channel is in,
            # rather than ignore it as a node without channels.
            pend.nodes[pw.NodeAnnouncement.decode(raw).node_id] = (source, raw)
            return
        ann, addresses = self.routing.check_node(raw)
        old = self.routing.nodes[ann.node_id]
        if old.raw is not None:
            self.store.delete(old.offset)
        node = self.routing.apply_node(raw, ann, addresses)
        node.offset = self.store.append(raw, ann.timestamp)
        await self.relay(source, None, raw, ann.timestamp)

    def _pending_for_node(self, raw: bytes) -> Pending | None:
        """A channel waiting for its txout that involves this node_announcement's node."""
        try:
            node_id = pw.NodeAnnouncement.decode(raw).node_id
        except WireError:
            return None  # check_node reports it
        if node_id in self.routing.nodes and self.routing.nodes[node_id].channels:
            return None
        return next(
            (p for p in self.pending.values() if node_id in (p.ann.node_id_1, p.ann.node_id_2)),
            None,
        )

    # --- relay -------------------------------------------------------------------

    async def relay(
        self, source: bytes | None, chan: Channel | None, raw: bytes, timestamp: int
    ) -> None:
        """Send new gossip to each peer but its source.

        BOLT #7: "MUST not send gossip it did not generate itself, until it receives
        `gossip_timestamp_filter`"; "SHOULD send gossip messages as it generates them
        regardless of `timestamp`"; "Otherwise (relayed gossip): SHOULD restrict future
        gossip messages to those whose `timestamp` is greater or equal to `first_timestamp`,
        and less than `first_timestamp` plus `timestamp_range`."
        """
        for peer in list(self.peers.values()):
            if peer.node_id == source:
                continue
            if source is not None and not peer.wants(timestamp):
                continue
            await self.send_with_announcement(peer, chan, raw)

    async def send_with_announcement(self, peer: Peer, chan: Channel | None, raw: bytes) -> None:
        """BOLT #7: "MUST send the `channel_announcement` prior to any corresponding
        `channel_update`s"."""
        if chan is not None and chan.scid not in peer.sent_anns:
            peer.sent_anns.add(chan.scid)
            await self.send_peer(peer.node_id, chan.raw)
        await self.send_peer(peer.node_id, raw)

    # --- queries -----------------------------------------------------------------

    async def handle_query(self, peer: Peer, msg: bytes) -> None:
        try:
            m = pw.decode(msg)
            if isinstance(m, pw.GossipTimestampFilter):
                await self.timestamp_filter(peer, m)
            elif isinstance(m, pw.QueryChannelRange):
                await self.query_channel_range(peer, m)
            elif isinstance(m, pw.QueryShortChannelIds):
                await self.query_short_channel_ids(peer, m)
            else:
                self.status.debug(f"peer {peer.node_id.hex()}: ignoring {type(m).NAME}")
        except (WireError, BadGossip) as exc:
            await self.reject(peer.node_id, f"bad query: {exc}")

    async def timestamp_filter(self, peer: Peer, m: pw.GossipTimestampFilter) -> None:
        """BOLT #7: "SHOULD send all gossip messages whose `timestamp` is greater or equal to
        `first_timestamp`, and less than `first_timestamp` plus `timestamp_range`"."""
        if m.chain_hash != self.routing.chain_hash:
            return
        peer.filter = (m.first_timestamp, m.first_timestamp + m.timestamp_range)
        for chan in list(self.routing.channels.values()):
            for half in chan.half:
                if half and peer.wants(half.update.timestamp) and not _dont_forward(half.raw):
                    await self.send_with_announcement(peer, chan, half.raw)
        for node in list(self.routing.nodes.values()):
            if node.ann and node.raw and peer.wants(node.ann.timestamp):
                await self.send_peer(peer.node_id, node.raw)

    async def query_channel_range(self, peer: Peer, m: pw.QueryChannelRange) -> None:
        """BOLT #7: "MUST respond with one or more `reply_channel_range`" (for another chain:
        one, empty). A channel with no update is not offered (it would not be sent)."""
        scids: list[int] = []
        if m.chain_hash == self.routing.chain_hash:
            chans = self.routing.channels.values()
            scids = [c.scid for c in chans if c.timestamp() is not None]
        for reply in channel_range_replies(
            m.chain_hash, m.first_blocknum, m.number_of_blocks, scids
        ):
            await self.send_peer(peer.node_id, reply.encode())

    async def query_short_channel_ids(self, peer: Peer, m: pw.QueryShortChannelIds) -> None:
        """BOLT #7: "with a `channel_announcement` and the latest `channel_update` for each
        end; MUST follow with any `node_announcement`s"; "MUST follow these responses with
        `reply_short_channel_ids_end`"."""
        ours = m.chain_hash == self.routing.chain_hash
        scids = decode_short_ids(m.encoded_short_ids) if ours else []
        sent_nodes: set[bytes] = set()
        for scid in scids:
            chan = self.routing.channels.get(scid)
            if chan is None:
                continue
            await self.send_peer(peer.node_id, chan.raw)
            for half in chan.half:
                if half:
                    await self.send_peer(peer.node_id, half.raw)
            for node_id in chan.node_ids:
                node = self.routing.nodes.get(node_id)
                if node and node.raw and node_id not in sent_nodes:
                    sent_nodes.add(node_id)
                    await self.send_peer(peer.node_id, node.raw)
        end = pw.ReplyShortChannelIdsEnd(chain_hash=m.chain_hash, full_information=int(ours))
        await self.send_peer(peer.node_id, end.encode())

    # --- chain -------------------------------------------------------------------

    def outpoints_spent(self, scids: tuple[int, ...]) -> None:
        """BOLT #7: once the funding output is spent, "SHOULD NOT rebroadcast this
        `channel_announcement`". We forget it at once."""
        for scid in scids:
            for offset in self.routing.remove_channel(scid):
                self.store.delete(offset)
            self.pending.pop(scid, None)


def _dont_forward(raw: bytes) -> bool:
    return bool(pw.ChannelUpdate.decode(raw).message_flags & MSGFLAG_DONT_FORWARD)


# ---------------------------------------------------------------------------
# listchannels / listnodes: Core Lightning's JSON


def channel_json(chan: Channel, direction: int) -> dict[str, object] | None:
    half = chan.half[direction]
    if half is None:
        return None
    u = half.update
    return {
        "source": chan.node_ids[direction].hex(),
        "destination": chan.node_ids[1 - direction].hex(),
        "short_channel_id": scid_str(chan.scid),
        "direction": direction,
        "public": True,
        "amount_msat": chan.capacity_sat * 1000,
        "message_flags": u.message_flags,
        "channel_flags": u.channel_flags,
        "active": not u.channel_flags & 2,
        "last_update": u.timestamp,
        "base_fee_millisatoshi": u.fee_base_msat,
        "fee_per_millionth": u.fee_proportional_millionths,
        "delay": u.cltv_expiry_delta,
        "htlc_minimum_msat": u.htlc_minimum_msat,
        "htlc_maximum_msat": u.htlc_maximum_msat,
        "features": chan.ann.features.hex(),
    }


def listchannels(
    routing: Routing, scid: int | None, source: bytes | None, destination: bytes | None
) -> bytes:
    out = []
    for chan in sorted(routing.channels.values(), key=lambda c: c.scid):
        if scid is not None and chan.scid != scid:
            continue
        for d in (0, 1):
            entry = channel_json(chan, d)
            if entry is None:
                continue
            if source is not None and chan.node_ids[d] != source:
                continue
            if destination is not None and chan.node_ids[1 - d] != destination:
                continue
            out.append(entry)
    return json.dumps({"channels": out}).encode()


def node_json(node: Node) -> dict[str, object]:
    entry: dict[str, object] = {"nodeid": node.node_id.hex()}
    if node.ann is not None:
        entry.update(
            alias=node.ann.alias.rstrip(b"\0").decode("utf-8", "replace"),
            color=node.ann.rgb_color.hex(),
            last_timestamp=node.ann.timestamp,
            features=node.ann.features.hex(),
            addresses=[
                {"type": a.type, "address": a.address, "port": a.port} for a in node.addresses
            ],
        )
    return entry


def listnodes(routing: Routing, node_id: bytes | None) -> bytes:
    nodes = sorted(routing.nodes.values(), key=lambda n: n.node_id)
    out = [node_json(n) for n in nodes if node_id is None or n.node_id == node_id]
    return json.dumps({"nodes": out}).encode()


# ---------------------------------------------------------------------------
# main


async def run_gossipd(sub: subdaemon.Subdaemon) -> None:
    conn = AsyncDaemonConn(sub.master.sock)
    gossipd = Gossipd(conn, Status(async_sender(conn)))
    await gossipd.init()
    await gossipd.serve()


def main(sub: subdaemon.Subdaemon) -> None:
    asyncio.run(run_gossipd(sub))


if __name__ == "__main__":
    subdaemon.run("gossipd", main, sys.argv[1:])
