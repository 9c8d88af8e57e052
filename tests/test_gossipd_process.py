"""gossipd as a real subprocess; the test plays lightningd on its fd 0.

Peers' gossip goes in as gossipd_recv_gossip and comes out as gossipd_send_gossip, as
it does when lightningd relays for peers idling in its loop.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

from common import status_wiregen as status_wire
from common.amount import AmountSat
from common.daemon_conn import DaemonConn
from common.subdaemon import REQ_FD
from gossipd import gossipd_wiregen as gw
from gossipd.routing import decode_short_ids
from lightningd.subd import spawn_subdaemon
from tests.test_gossipd_validation import (
    CAPACITY,
    KEYS,
    REGTEST,
    SCID,
    channel_announcement,
    channel_update,
    funding_spk,
    key,
    make_keys,
    node_announcement,
    pub,
)
from wire import peer_wiregen as pw

PEER_A = pub(key(50))
PEER_B = pub(key(51))
PEER_C = pub(key(52))
OUR_ID = pub(key(60))


class Gossipd:
    def __init__(self, store: Path) -> None:
        ours, theirs = socket.socketpair()
        self.pid = spawn_subdaemon("gossipd.gossipd", {REQ_FD: theirs.fileno()})
        theirs.close()
        ours.settimeout(15)
        self.master = DaemonConn(ours)
        self.logs: list[str] = []
        self.send(gw.GossipdInit(REGTEST, OUR_ID, str(store), False))
        self.loaded = self.recv(gw.GossipdInitReply).channels_loaded

    def send(self, msg) -> None:
        self.master.send(msg.encode())

    def new_peer(self, peer: bytes) -> None:
        """A gossip_queries peer arrives: gossipd asks it for all its gossip (BOLT #7)."""
        self.send(gw.GossipdNewPeer(peer_id=peer, gossip_queries=True))
        ask = self.to_peer(peer, pw.GossipTimestampFilter)
        assert (ask.first_timestamp, ask.timestamp_range) == (0, 0xFFFFFFFF)

    def recv(self, expected: type):
        while True:
            raw = self.master.recv()
            if int.from_bytes(raw[:2], "big") < 65000:
                break
            status = status_wire.decode(raw)
            assert isinstance(status, status_wire.StatusLog), status
            self.logs.append(status.entry)
        msg = gw.decode(raw)
        assert isinstance(msg, expected), msg
        return msg

    def peer_says(self, peer: bytes, msg) -> None:
        self.send(gw.GossipdRecvGossip(peer_id=peer, msg=msg.encode()))

    def to_peer(self, peer: bytes, expected: type):
        out = self.recv(gw.GossipdSendGossip)
        assert out.peer_id == peer, (out.peer_id.hex(), pw.decode(out.msg))
        msg = pw.decode(out.msg)
        assert isinstance(msg, expected), msg
        return msg

    def nothing_pending(self) -> None:
        """gossipd handles lightningd's messages in order: listnodes' reply comes next."""
        self.send(gw.GossipdListnodes(id=None))
        self.recv(gw.GossipdListnodesReply)

    def listchannels(self) -> list[dict]:
        self.send(gw.GossipdListchannels(short_channel_id=None, source=None, destination=None))
        return json.loads(self.recv(gw.GossipdListchannelsReply).json)["channels"]

    def listnodes(self) -> list[dict]:
        self.send(gw.GossipdListnodes(id=None))
        return json.loads(self.recv(gw.GossipdListnodesReply).json)["nodes"]

    def stop(self) -> int:
        self.master.close()
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def txout_reply(scid: int, amount: int | None = CAPACITY, script: bytes | None = None):
    return gw.GossipdGetTxoutReply(
        short_channel_id=scid,
        amount=None if amount is None else AmountSat(amount),
        script=funding_spk() if script is None else script,
    )


def filter_all() -> pw.GossipTimestampFilter:
    return pw.GossipTimestampFilter(
        chain_hash=REGTEST, first_timestamp=0, timestamp_range=0xFFFFFFFF
    )


def announce(g: Gossipd) -> None:
    """Peer A announces the channel and both updates; gossipd checks the txout."""
    ann = channel_announcement()
    g.peer_says(PEER_A, ann)
    assert g.recv(gw.GossipdGetTxout).short_channel_id == SCID
    # while the txout is outstanding, gossip keeps flowing: an update is held, a forgery
    # from A is answered with a warning at once
    g.peer_says(PEER_A, channel_update(0, timestamp=1000))
    forged = channel_announcement(scid=SCID + 1)
    g.peer_says(PEER_A, replace(forged, node_signature_2=forged.node_signature_1))
    warn = g.to_peer(PEER_A, pw.Warning)
    assert warn.channel_id == bytes(32) and b"node_signature_2" in warn.data
    g.send(txout_reply(SCID))


def test_gossip_flow(tmp_path: Path) -> None:
    store = tmp_path / "gossip_store"
    g = Gossipd(store)
    assert g.loaded == 0
    for peer in (PEER_A, PEER_B, PEER_C):
        g.new_peer(peer)
    g.peer_says(PEER_B, filter_all())
    announce(g)
    # relayed to B (after its filter), announcement first; not to A (the source), not to C
    # (no gossip_timestamp_filter)
    assert g.to_peer(PEER_B, pw.ChannelAnnouncement).short_channel_id == SCID
    assert g.to_peer(PEER_B, pw.ChannelUpdate).timestamp == 1000
    g.peer_says(PEER_A, channel_update(1, timestamp=1001))
    assert g.to_peer(PEER_B, pw.ChannelUpdate).channel_flags == 1
    g.peer_says(PEER_A, node_announcement(KEYS.node1, timestamp=1002))
    assert g.to_peer(PEER_B, pw.NodeAnnouncement).node_id == pub(KEYS.node1)
    # a replayed update and a stale one are dropped quietly
    g.peer_says(PEER_A, channel_update(1, timestamp=1001))
    g.peer_says(PEER_A, channel_update(0, timestamp=999))
    g.nothing_pending()
    # an update signed by the wrong node: a warning, not stored
    g.peer_says(PEER_A, channel_update(0, timestamp=2000, signer=KEYS.node2))
    assert b"signature" in g.to_peer(PEER_A, pw.Warning).data
    # a node without channels: ignored
    g.peer_says(PEER_A, node_announcement(key(77)))
    g.nothing_pending()

    chans = g.listchannels()
    assert [(c["direction"], c["last_update"]) for c in chans] == [(0, 1000), (1, 1001)]
    c0 = chans[0]
    assert c0["source"] == pub(KEYS.node1).hex() and c0["destination"] == pub(KEYS.node2).hex()
    assert c0["short_channel_id"] == "103x1x0" and c0["amount_msat"] == CAPACITY * 1000
    assert c0["active"] and c0["public"] and c0["base_fee_millisatoshi"] == 1000
    assert c0["fee_per_millionth"] == 10 and c0["delay"] == 6
    nodes = {n["nodeid"]: n for n in g.listnodes()}
    n1 = nodes[pub(KEYS.node1).hex()]
    assert n1["alias"] == "alice" and n1["color"] == "010203" and n1["last_timestamp"] == 1002
    assert n1["addresses"] == [{"type": "ipv4", "address": "127.0.0.1", "port": 9735}]
    assert nodes[pub(KEYS.node2).hex()] == {"nodeid": pub(KEYS.node2).hex()}

    # queries from C
    g.peer_says(
        PEER_C, pw.QueryChannelRange(chain_hash=REGTEST, first_blocknum=0, number_of_blocks=1000)
    )
    reply = g.to_peer(PEER_C, pw.ReplyChannelRange)
    assert decode_short_ids(reply.encoded_short_ids) == [SCID] and reply.sync_complete
    g.peer_says(
        PEER_C, pw.QueryChannelRange(chain_hash=REGTEST, first_blocknum=104, number_of_blocks=10)
    )
    assert decode_short_ids(g.to_peer(PEER_C, pw.ReplyChannelRange).encoded_short_ids) == []
    ids = b"\x00" + SCID.to_bytes(8, "big") + (SCID + 5).to_bytes(8, "big")
    g.peer_says(PEER_C, pw.QueryShortChannelIds(chain_hash=REGTEST, encoded_short_ids=ids))
    assert g.to_peer(PEER_C, pw.ChannelAnnouncement).short_channel_id == SCID
    assert g.to_peer(PEER_C, pw.ChannelUpdate).timestamp == 1000
    assert g.to_peer(PEER_C, pw.ChannelUpdate).timestamp == 1001
    assert g.to_peer(PEER_C, pw.NodeAnnouncement).timestamp == 1002
    assert g.to_peer(PEER_C, pw.ReplyShortChannelIdsEnd).full_information == 1
    g.peer_says(PEER_C, pw.QueryShortChannelIds(chain_hash=REGTEST, encoded_short_ids=b"\x00\x01"))
    assert g.to_peer(PEER_C, pw.Warning)

    # C's filter from 1001 on: the store's matching gossip, announcement first
    g.peer_says(
        PEER_C,
        pw.GossipTimestampFilter(chain_hash=REGTEST, first_timestamp=1001, timestamp_range=100),
    )
    assert g.to_peer(PEER_C, pw.ChannelAnnouncement).short_channel_id == SCID
    assert g.to_peer(PEER_C, pw.ChannelUpdate).timestamp == 1001
    assert g.to_peer(PEER_C, pw.NodeAnnouncement).timestamp == 1002
    g.nothing_pending()
    # a peer that goes away gets nothing more
    g.send(gw.GossipdPeerGone(peer_id=PEER_B))
    g.peer_says(PEER_A, channel_update(0, timestamp=1050, fee_base=7))
    assert g.to_peer(PEER_C, pw.ChannelUpdate).fee_base_msat == 7
    g.nothing_pending()
    assert g.stop() == 0

    # restart: the store is reloaded (and compacted: the superseded update is gone)
    g = Gossipd(store)
    assert g.loaded == 1
    chans = g.listchannels()
    assert [(c["direction"], c["last_update"]) for c in chans] == [(0, 1050), (1, 1001)]
    assert g.listnodes()[0]["alias"] == "alice"
    # the channel closes
    g.send(gw.GossipdOutpointsSpent(short_channel_ids=(SCID,)))
    assert g.listchannels() == [] and g.listnodes() == []
    assert g.stop() == 0
    g = Gossipd(store)
    assert g.loaded == 0 and g.listchannels() == []
    assert g.stop() == 0


def test_bad_txouts(tmp_path: Path) -> None:
    g = Gossipd(tmp_path / "gossip_store")
    g.new_peer(PEER_A)
    # wrong funding script: a warning, nothing stored
    g.peer_says(PEER_A, channel_announcement())
    assert g.recv(gw.GossipdGetTxout).short_channel_id == SCID
    g.send(txout_reply(SCID, script=funding_spk(make_keys(3, 4))))
    assert b"P2WSH" in g.to_peer(PEER_A, pw.Warning).data
    # spent output: ignored quietly
    g.peer_says(PEER_A, channel_announcement())
    assert g.recv(gw.GossipdGetTxout).short_channel_id == SCID
    g.send(txout_reply(SCID, amount=None, script=b""))
    g.nothing_pending()
    assert g.listchannels() == []
    g.peer_says(PEER_A, channel_update(0))
    g.nothing_pending()
    assert g.listchannels() == []
    # wrong chain: ignored, no txout asked
    g.peer_says(PEER_A, channel_announcement(chain=bytes(32)))
    g.nothing_pending()
    # our own gossip (local), accepted once lightningd confirms the output, and sent to
    # peers regardless of their filters
    g.send(gw.GossipdLocalGossip(msg=channel_announcement().encode()))
    assert g.recv(gw.GossipdGetTxout).short_channel_id == SCID
    g.send(txout_reply(SCID))
    g.send(gw.GossipdLocalGossip(msg=channel_update(0, timestamp=5).encode()))
    assert g.to_peer(PEER_A, pw.ChannelAnnouncement).short_channel_id == SCID
    assert g.to_peer(PEER_A, pw.ChannelUpdate).timestamp == 5
    assert len(g.listchannels()) == 1
    assert g.stop() == 0
