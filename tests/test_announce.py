"""Our channel announcements on the real regtest node: lightningd as accepter of a public
channel, a real funding tx mined to six confirmations.

lightningd sends `announcement_signatures` whose signatures are checked here against a
channel_announcement built independently of common/gossip_sign.py; the peer's own are
accepted, and lightningd's local gossip hook (by default a debug log line with the message
in hex) gets a channel_announcement with four valid signatures, a channel_update and a
node_announcement. A private channel announces nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from types import SimpleNamespace

import pytest
from coincurve import PrivateKey, PublicKey

from common.chainparams import CHAINS
from common.gossip_sign import check_channel_announcement
from common.signature import compact_to_der, der_to_compact
from hsmd.derive import SecretDeriver
from lightningd.channel import REMOTE, Channel, ChannelState, load_channels, save_channel
from lightningd.channel_control import ChannelControl
from lightningd.db import Database
from lightningd.options import Config, NetAddr
from tests.node import wait_for
from tests.opening_peer import STATIC_REMOTEKEY, OpeningPeer
from tests.test_channel_store import opened
from tests.test_hsmd import CLN_L1_SECRET, run, started
from tests.test_lockin import (
    ADDRESS,
    FUNDING,
    LOCKIN_OPTIONS,
    NORMAL,
    mine_funding,
    open_funded,
    peer_channel_ready,
    peer_reestablish,
    reconnect,
    wait_state,
    without_scid_alias,
)
from wire import peer_wiregen as wire

REGTEST = CHAINS["regtest"].chain_hash
GOSSIP_LINE = re.compile(r"Local gossip (\w+): ([0-9a-f]+)")


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def verify(pubkey: bytes, h: bytes, sig: bytes) -> bool:
    return PublicKey(pubkey).verify(compact_to_der(sig), h, hasher=None)


def sign(secret: bytes, h: bytes) -> bytes:
    return der_to_compact(PrivateKey(secret).sign(h, hasher=None))


def announcement_hash(scid: int, ends: list[tuple[bytes, bytes]]) -> bytes:
    """BOLT #7, from offset 256: len, features (none), chain_hash, short_channel_id, node_id_1,
    node_id_2, bitcoin_key_1, bitcoin_key_2; node 1 is the lesser node id."""
    (n1, b1), (n2, b2) = sorted(ends)
    return sha256d(b"\0\0" + REGTEST + scid.to_bytes(8, "big") + n1 + n2 + b1 + b2)


def parse_scid(text: str) -> int:
    block, tx, out = (int(p) for p in text.split("x"))
    return block << 40 | tx << 16 | out


def local_gossip(node) -> list[tuple[str, bytes]]:
    return [(m[1], bytes.fromhex(m[2])) for m in GOSSIP_LINE.finditer(node.logs())]


def wait_synced(node, bitcoind) -> None:
    height = bitcoind.rpc("getblockcount")
    wait_for(lambda: node.rpc.getinfo()["blockheight"] == height, what=f"height {height}")


def recv_raw(peer: OpeningPeer) -> wire.Message:
    """The next message but pings (answered): ScriptedPeer's readers skip all gossip."""
    while isinstance(msg := peer.recv(), wire.Ping):
        peer.send(wire.Pong(ignored=bytes(msg.num_pong_bytes)).encode())
    return msg


def expect_ann_sigs(peer: OpeningPeer) -> wire.AnnouncementSignatures:
    """The next announcement_signatures, skipping other gossip."""
    while not isinstance(msg := recv_raw(peer), wire.AnnouncementSignatures):
        assert msg.TYPE in range(256, 512) or isinstance(msg, wire.Pong), msg
    return msg


def no_ann_sigs(peer: OpeningPeer) -> None:
    """Up to the pong of a ping: no announcement_signatures, and nothing but gossip."""
    peer.send(wire.Ping(num_pong_bytes=4, ignored=b"").encode())
    while not isinstance(msg := recv_raw(peer), wire.Pong):
        assert msg.TYPE in range(256, 512) and msg.TYPE != 259, msg


def lock_in(node, bitcoind, peer: OpeningPeer, tx) -> str:
    """Funding mined to depth 3: channel_ready both ways, CHANNELD_NORMAL."""
    scid = mine_funding(bitcoind, tx)
    bitcoind.generate(2, ADDRESS)
    peer.expect(wire.ChannelReady)
    peer.send(peer_channel_ready(peer).encode())
    wait_state(node, NORMAL)
    return scid


def check_gossip(node, peer: OpeningPeer, scid: int, h: bytes) -> None:
    gossip = dict(local_gossip(node))
    node_id = bytes.fromhex(node.id)
    ann = wire.decode(gossip["channel_announcement"])
    assert ann.short_channel_id == scid and ann.chain_hash == REGTEST
    assert ann.node_id_1 < ann.node_id_2
    assert {ann.node_id_1, ann.node_id_2} == {node_id, peer.node_id}
    assert sha256d(gossip["channel_announcement"][258:]) == h
    for key, sig in (
        (ann.node_id_1, ann.node_signature_1),
        (ann.node_id_2, ann.node_signature_2),
        (ann.bitcoin_key_1, ann.bitcoin_signature_1),
        (ann.bitcoin_key_2, ann.bitcoin_signature_2),
    ):
        assert verify(key, h, sig)

    raw = gossip["channel_update"]
    update = wire.decode(raw)
    assert verify(node_id, sha256d(raw[66:]), update.signature)
    assert update.short_channel_id == scid and update.chain_hash == REGTEST
    # BOLT #7: direction 0 from node_id_1; must_be_one; enabled.
    assert update.channel_flags == (0 if node_id == ann.node_id_1 else 1)
    assert update.message_flags == 1
    assert (update.cltv_expiry_delta, update.fee_base_msat) == (34, 1000)
    assert update.fee_proportional_millionths == 10
    assert update.htlc_minimum_msat <= update.htlc_maximum_msat <= FUNDING * 1000

    raw = gossip["node_announcement"]
    node_ann = wire.decode(raw)
    assert node_ann.node_id == node_id
    assert verify(node_id, sha256d(raw[66:]), node_ann.signature)
    info = node.rpc.getinfo()
    assert node_ann.alias.rstrip(b"\0").decode() == info["alias"]
    assert node_ann.rgb_color.hex() == info["color"]


def test_public_channel_announced(node_factory, bitcoind):
    l1 = node_factory.get_node(*LOCKIN_OPTIONS)
    peer, tx = open_funded(l1, bitcoind, STATIC_REMOTEKEY, 1, without_scid_alias())
    scid = parse_scid(lock_in(l1, bitcoind, peer, tx))

    # Depth 5: BOLT #7 "MUST NOT send `announcement_signatures` ... until ... at least six
    # confirmations".
    bitcoind.generate(2, ADDRESS)
    wait_synced(l1, bitcoind)
    no_ann_sigs(peer)

    bitcoind.generate(1, ADDRESS)
    ours = expect_ann_sigs(peer)
    assert (ours.channel_id, ours.short_channel_id) == (peer.channel_id(), scid)
    node_id = bytes.fromhex(l1.id)
    peer_funding = PrivateKey(peer.keys.funding_privkey).public_key.format()
    h = announcement_hash(
        scid, [(node_id, peer.accept_msg.funding_pubkey), (peer.node_id, peer_funding)]
    )
    assert verify(node_id, h, ours.node_signature)
    assert verify(peer.accept_msg.funding_pubkey, h, ours.bitcoin_signature)
    assert local_gossip(l1) == []

    # A bad signature is refused with a warning, and nothing is announced.
    bad = wire.AnnouncementSignatures(
        channel_id=peer.channel_id(),
        short_channel_id=scid,
        node_signature=sign(peer.secret, sha256d(b"something else")),
        bitcoin_signature=sign(peer.keys.funding_privkey, h),
    )
    peer.send(bad.encode())
    try:
        l1.wait_for_log("announcement_signatures: bad node_signature", timeout=5)
    except TimeoutError:
        # peer_control must hand type 259 to channel_control.channel_message (not gossipd).
        pytest.skip("lightningd does not route announcement_signatures to channel_control")
    warning = peer.expect_error(warning_ok=True)
    assert b"bad node_signature" in warning.data

    theirs = wire.AnnouncementSignatures(
        channel_id=peer.channel_id(),
        short_channel_id=scid,
        node_signature=sign(peer.secret, h),
        bitcoin_signature=sign(peer.keys.funding_privkey, h),
    )
    peer.send(theirs.encode())
    l1.wait_for_log("Got announcement_signatures")
    wait_for(lambda: len(local_gossip(l1)) == 3, what="three local gossip messages")
    assert [name for name, _ in local_gossip(l1)] == [
        "channel_announcement",
        "channel_update",
        "node_announcement",
    ]
    check_gossip(l1, peer, scid, h)

    # Restart: their signatures were stored, so the channel is announced again without them;
    # ours go out again after reestablish (BOLT #7 retransmission).
    assert l1.stop() == 0
    l1.start()
    reconnect(l1, peer, without_scid_alias())
    peer.send(peer_reestablish(peer).encode())
    peer.expect(wire.ChannelReady)
    again = expect_ann_sigs(peer)
    assert again == ours
    wait_for(lambda: len(local_gossip(l1)) == 6, what="gossip again after restart")


def test_private_channel_not_announced(node_factory, bitcoind):
    l1 = node_factory.get_node(*LOCKIN_OPTIONS)
    peer, tx = open_funded(l1, bitcoind, STATIC_REMOTEKEY, 0, without_scid_alias())
    lock_in(l1, bitcoind, peer, tx)
    bitcoind.generate(5, ADDRESS)
    wait_synced(l1, bitcoind)
    no_ann_sigs(peer)
    assert local_gossip(l1) == []


# --- the receive path in-process: ChannelControl with a real hsmd and database ------------
#
# (lightningd must route the peer's announcement_signatures to ChannelControl.channel_message;
# these drive it directly.)

PEER_SECRET = b"\x21" * 32
PEER_ID = PrivateKey(PEER_SECRET).public_key.format()
PEER_FUNDING_SECRET = b"\x02" * 32  # tests/test_channel_store.opened's their_funding_pubkey
SCID_TEXT = "103x1x1"  # funding_outnum 1, as in opened()


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[wire.Message] = []

    async def write_message(self, msg: bytes) -> None:
        self.sent.append(wire.decode(msg))

    def take(self, kind: type) -> list:
        got = [m for m in self.sent if isinstance(m, kind)]
        self.sent = [m for m in self.sent if not isinstance(m, kind)]
        return got


class FakeLightningd:
    """What ChannelControl uses of LightningD."""

    def __init__(self, hsm, db, log) -> None:
        self.hsm, self.db, self.log = hsm, db, log
        self.node_id = hsm.info.node_id
        self.config = Config.for_network("regtest")
        self.alias, self.color = "ANNOUNCER", b"\x01\x02\x03"
        self.channels: list[Channel] = []
        self.peers = SimpleNamespace(peers={})

    def channels_of(self, node_id: bytes) -> list[Channel]:
        return [c for c in self.channels if c.peer_id == node_id]

    def announced_addresses(self) -> list[NetAddr]:
        return [NetAddr("ipv4", "203.0.113.5", 9735)]


def reestablish_from_peer(channel: Channel) -> wire.ChannelReestablish:
    return wire.ChannelReestablish(
        channel_id=channel.opened.channel_id,
        next_commitment_number=1,
        next_revocation_number=0,
        your_last_per_commitment_secret=bytes(32),
        my_current_per_commitment_point=channel.opened.their_first_per_commitment_point,
    )


async def setup(tmp_path, flags: int = 1, depth: int = 6):
    hsm, log = await started(tmp_path)
    db = Database.open(str(tmp_path / "db.sqlite3"), REGTEST)
    ld = FakeLightningd(hsm, db, log)
    dbid = db.next_channel_dbid()
    funding = SecretDeriver(CLN_L1_SECRET).channel_secrets(PEER_ID, dbid).funding_pubkey
    o = dataclasses.replace(opened(REMOTE), our_funding_pubkey=funding, channel_flags=flags)
    channel = Channel(dbid, PEER_ID, ChannelState.CHANNELD_NORMAL, o, SCID_TEXT)
    channel.channel_ready_sent = channel.channel_ready_received = True
    channel.depth = depth
    save_channel(db, channel, None)
    ld.channels.append(channel)
    cc = ChannelControl(ld)
    gossip: list[bytes] = []

    async def collect(msg: bytes) -> None:
        gossip.append(msg)

    cc.on_local_gossip = collect
    peer = SimpleNamespace(node_id=PEER_ID, conn=FakeConn(), init=SimpleNamespace(features=b""))
    ld.peers.peers[PEER_ID] = peer
    await cc.peer_connected(peer)
    await cc.channel_message(peer, o.channel_id, reestablish_from_peer(channel))
    assert [type(m) for m in peer.conn.take(wire.ChannelReestablish)] == [wire.ChannelReestablish]
    assert len(peer.conn.take(wire.ChannelReady)) == 1
    return SimpleNamespace(hsm=hsm, db=db, ld=ld, cc=cc, channel=channel, peer=peer, gossip=gossip)


def their_sigs(t, h: bytes, scid: int | None = None, node_secret=PEER_SECRET):
    return wire.AnnouncementSignatures(
        channel_id=t.channel.opened.channel_id,
        short_channel_id=parse_scid(SCID_TEXT) if scid is None else scid,
        node_signature=sign(node_secret, h),
        bitcoin_signature=sign(PEER_FUNDING_SECRET, h),
    )


def expected_hash(t) -> bytes:
    o = t.channel.opened
    ends = [(t.ld.node_id, o.our_funding_pubkey), (PEER_ID, o.their_funding_pubkey)]
    return announcement_hash(parse_scid(SCID_TEXT), ends)


def test_receive_path_in_process(tmp_path):
    async def main():
        t = await setup(tmp_path)
        conn, channel_id = t.peer.conn, t.channel.opened.channel_id
        (ours,) = conn.take(wire.AnnouncementSignatures)
        h = expected_hash(t)
        assert verify(t.ld.node_id, h, ours.node_signature)
        assert verify(t.channel.opened.our_funding_pubkey, h, ours.bitcoin_signature)

        # Wrong scid, then a bad signature: warnings, nothing stored or announced.
        await t.cc.channel_message(t.peer, channel_id, their_sigs(t, h, scid=1 << 40))
        await t.cc.channel_message(t.peer, channel_id, their_sigs(t, h, node_secret=b"\x05" * 32))
        warnings = conn.take(wire.Warning)
        assert [w.data for w in warnings] == [
            b"announcement_signatures for 1x0x0, not ours",
            b"announcement_signatures: bad node_signature",
        ]
        assert t.channel.remote_ann_node_sig is None and t.gossip == []

        good = their_sigs(t, h)
        await t.cc.channel_message(t.peer, channel_id, good)
        # Ours went out once on this connection already: not again.
        assert conn.take(wire.AnnouncementSignatures) == [] and conn.sent == []
        assert [wire.decode(m).NAME for m in t.gossip] == [
            "channel_announcement",
            "channel_update",
            "node_announcement",
        ]
        ann, update, node_ann = (wire.decode(m) for m in t.gossip)
        assert sha256d(t.gossip[0][258:]) == h
        assert check_channel_announcement(ann) == ""
        assert verify(t.ld.node_id, sha256d(t.gossip[1][66:]), update.signature)
        assert update.channel_flags == (0 if t.ld.node_id < PEER_ID else 1)
        assert update.htlc_maximum_msat == 1_000_000_000  # capacity (their in-flight: no limit)
        assert update.htlc_minimum_msat == 1  # their htlc_minimum_msat
        assert verify(t.ld.node_id, sha256d(t.gossip[2][66:]), node_ann.signature)
        assert node_ann.addresses == b"\x01" + bytes([203, 0, 113, 5]) + (9735).to_bytes(2, "big")
        assert node_ann.alias.rstrip(b"\0") == b"ANNOUNCER"

        # Stored; the same message again changes nothing and announces nothing new.
        (stored,) = load_channels(t.db)
        assert (stored.remote_ann_node_sig, stored.remote_ann_bitcoin_sig) == (
            good.node_signature,
            good.bitcoin_signature,
        )
        await t.cc.channel_message(t.peer, channel_id, good)
        assert len(t.gossip) == 3

        # Reconnection: ours again, after their channel_reestablish (BOLT #7 retransmission).
        await t.cc.peer_connected(t.peer)
        assert conn.take(wire.AnnouncementSignatures) == []
        await t.cc.channel_message(t.peer, channel_id, reestablish_from_peer(t.channel))
        assert conn.take(wire.AnnouncementSignatures) == [ours]
        assert len(t.gossip) == 3  # announced once per run
        await t.hsm.stop()

    run(main())


def test_early_announcement_signatures_deferred(tmp_path):
    async def main():
        t = await setup(tmp_path, depth=5)
        assert t.peer.conn.take(wire.AnnouncementSignatures) == []
        h = expected_hash(t)
        await t.cc.channel_message(t.peer, t.channel.opened.channel_id, their_sigs(t, h))
        assert t.channel.remote_ann_node_sig is None and t.gossip == []
        # Depth 6: ours go out, theirs are checked and stored, and the channel is announced.
        height, txindex = 103, 1
        await t.cc._depth_changed(t.channel, 6, height, txindex)
        assert len(t.peer.conn.take(wire.AnnouncementSignatures)) == 1
        assert t.channel.remote_ann_node_sig is not None
        assert len(t.gossip) == 3
        await t.hsm.stop()

    run(main())


def test_private_channel_in_process(tmp_path):
    async def main():
        t = await setup(tmp_path, flags=0, depth=10)
        assert t.peer.conn.take(wire.AnnouncementSignatures) == []
        h = expected_hash(t)
        await t.cc.channel_message(t.peer, t.channel.opened.channel_id, their_sigs(t, h))
        assert [w.data for w in t.peer.conn.take(wire.Warning)] == [b"Channel is not public"]
        assert t.gossip == []
        await t.hsm.stop()

    run(main())
