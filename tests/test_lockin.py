"""Channel lock-in on the real regtest node: lightningd as accepter, a real funding tx.

The scripted OpeningPeer opens a channel to lightningd funded by a transaction that really
pays the 2-of-2 output (from a mature coinbase of a test key), broadcast and mined on the
session's regtest node. lightningd (--funding-confirms=3) counts the confirmations down,
sends channel_ready at depth, and goes CHANNELD_NORMAL once the peer's channel_ready is in;
after a restart it reestablishes the channel as BOLT #2 says for a channel without updates.
"""

from __future__ import annotations

import hashlib

import pytest
from bitcointx import segwit_addr
from bitcointx.core import (
    CTransaction,
    Hash160,
)
from bitcointx.core.script import (
    OP_0,
    CScript,
)
from coincurve import PrivateKey, PublicKey

import common.secp  # noqa: F401  (before any bitcointx key operation)
from common.features import Feature, bits_to_bytes, bytes_to_bits, our_features
from common.shachain import per_commitment_point
from contrib.regtest_node import RpcError
from lightningd.chaintopology import parse_block
from lightningd.channel import scid_to_str
from lightningd.channel_control import ReestablishError, check_reestablish, make_scid
from tests.faucet import faucet, spend_p2wpkh
from tests.node import wait_for
from tests.opening_peer import ANCHORS, SCID_ALIAS_BIT, STATIC_REMOTEKEY, OpeningPeer
from wire import peer_wiregen as wire

FUNDING = 1_000_000
FEE = 5_000
LOCKIN_OPTIONS = ("--developer", "--dev-bitcoind-poll=1", "--funding-confirms=3")
AWAITING = "CHANNELD_AWAITING_LOCKIN"
NORMAL = "CHANNELD_NORMAL"
KEY = PrivateKey(hashlib.sha256(b"test_lockin funding key").digest())
PUBKEY = KEY.public_key.format()
P2WPKH = CScript([OP_0, Hash160(PUBKEY)])
ADDRESS = segwit_addr.encode("bcrt", 0, Hash160(PUBKEY))


# --- a real funding transaction ------------------------------------------------------------


def funding_tx(bitcoind, funding_script: bytes) -> CTransaction:
    """A faucet coin -> [the 2-of-2 funding output (outnum 0), change], signed (P2WPKH)."""
    tap = faucet(bitcoind)
    coin = tap.coin()
    change = coin.value_sat - FUNDING - FEE
    return spend_p2wpkh(tap.secret, coin, [(funding_script, FUNDING), (bytes(P2WPKH), change)])


def mine_funding(bitcoind, tx: CTransaction) -> str:
    """Mine `tx` (re-sent if a reorg left it out of the mempool); its short_channel_id."""
    try:
        bitcoind.rpc("sendrawtransaction", tx.serialize().hex())
    except RpcError as exc:
        if "already" not in exc.message and "txn-already" not in exc.message:
            raise
    block_hash = bitcoind.generate(1, ADDRESS)[0]
    height = bitcoind.rpc("getblock", block_hash)["height"]
    block = parse_block(bytes.fromhex(bitcoind.rpc("getblock", block_hash, 0)))
    index = [t.GetTxid() for t in block.txs].index(tx.GetTxid())
    return scid_to_str(make_scid(height, index, 0))


# --- lightningd and the peer -------------------------------------------------------------


def channel(node) -> dict:
    (chan,) = node.rpc.listpeerchannels()["channels"]
    return chan


def wait_status(node, text: str) -> dict:
    wait_for(lambda: text in " ".join(channel(node)["status"]), what=f"status {text!r}")
    return channel(node)


def wait_state(node, state: str) -> dict:
    wait_for(lambda: channel(node)["state"] == state, what=f"state {state}")
    return channel(node)


def open_funded(node, bitcoind, channel_type: list[int], channel_flags: int, features=None):
    """Open to lightningd with a real (not yet broadcast) funding tx."""
    peer = OpeningPeer()
    peer.connect_to(node, features)
    peer.set_timeout(30)
    peer.send_open_channel(channel_type=channel_type, channel_flags=channel_flags)
    accept = peer.read_accept_channel()
    assert accept.minimum_depth == 3
    tx = funding_tx(bitcoind, peer.funding_script_pubkey())
    peer.send_funding_created(funding_txid=tx.GetTxid(), funding_outnum=0)
    peer.read_funding_signed()
    return peer, tx


def peer_channel_ready(peer: OpeningPeer, alias: int | None = None) -> wire.ChannelReady:
    return wire.ChannelReady(
        channel_id=peer.channel_id(),
        second_per_commitment_point=per_commitment_point(peer.keys.shachain_seed, 1),
        tlvs=wire.ChannelReadyTlvs(short_channel_id=alias),
    )


def peer_reestablish(peer: OpeningPeer) -> wire.ChannelReestablish:
    return wire.ChannelReestablish(
        channel_id=peer.channel_id(),
        next_commitment_number=1,
        next_revocation_number=0,
        your_last_per_commitment_secret=bytes(32),
        my_current_per_commitment_point=per_commitment_point(peer.keys.shachain_seed, 0),
    )


def expect_nothing_more(peer: OpeningPeer) -> None:
    """A ping's pong is the next message: lightningd sent nothing (no error) before it."""
    peer.send(wire.Ping(num_pong_bytes=4, ignored=b"").encode())
    msg = peer.recv_skipping_pings()
    assert isinstance(msg, wire.Pong), f"expected only a pong, got {msg}"


def check_channel_ready(peer: OpeningPeer, msg: wire.ChannelReady) -> None:
    assert msg.channel_id == peer.channel_id()
    # BOLT #2: second_per_commitment_point is the point for commitment #1: a valid point,
    # not the first_per_commitment_point lightningd sent in accept_channel.
    PublicKey(msg.second_per_commitment_point)
    assert msg.second_per_commitment_point != peer.accept_msg.first_per_commitment_point


def reconnect(node, peer: OpeningPeer, features=None) -> wire.ChannelReestablish:
    """After lightningd's restart: connect again; its channel_reestablish, checked."""
    peer.close()
    peer.connect_to(node, features)
    peer.set_timeout(30)
    msg = peer.expect(wire.ChannelReestablish)
    # BOLT #2, a channel without updates: next_commitment_number 1, next_revocation_number
    # 0, "your_last_per_commitment_secret to all zeroes", our point for commitment 0.
    assert msg.channel_id == peer.channel_id()
    assert (msg.next_commitment_number, msg.next_revocation_number) == (1, 0)
    assert msg.your_last_per_commitment_secret == bytes(32)
    assert msg.my_current_per_commitment_point == peer.accept_msg.first_per_commitment_point
    assert msg.tlvs.next_funding is None
    return msg


def without_scid_alias() -> bytes:
    """Our init features without option_scid_alias (nor option_zeroconf, which needs it)."""
    gone = {f.bit(c) for f in (Feature.OPTION_SCID_ALIAS, Feature.OPTION_ZEROCONF) for c in (0, 1)}
    return bits_to_bytes([b for b in bytes_to_bits(our_features()) if b not in gone])


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel_type, flags, features, with_alias",
    [
        (ANCHORS, 1, without_scid_alias(), False),
        ([*STATIC_REMOTEKEY, SCID_ALIAS_BIT], 0, None, True),
    ],
    ids=["anchors_public_no_alias", "scid_alias_private"],
)
def test_lockin_then_restart(node_factory, bitcoind, channel_type, flags, features, with_alias):
    l1 = node_factory.get_node(*LOCKIN_OPTIONS)
    peer, tx = open_funded(l1, bitcoind, channel_type, flags, features)
    chan = wait_status(l1, "Funding needs 3 more confirmations for lockin.")
    assert chan["state"] == AWAITING and "short_channel_id" not in chan

    scid = mine_funding(bitcoind, tx)
    wait_status(l1, f"{AWAITING}:Funding needs 2 more confirmations for lockin.")
    bitcoind.generate(1, ADDRESS)
    wait_status(l1, "Funding needs 1 more confirmations for lockin.")
    bitcoind.generate(1, ADDRESS)

    ours = peer.expect(wire.ChannelReady)
    check_channel_ready(peer, ours)
    chan = wait_status(l1, "We've confirmed channel ready, they haven't yet.")
    assert chan["state"] == AWAITING
    assert chan["short_channel_id"] == scid
    alias = ours.tlvs.short_channel_id
    if with_alias:
        # BOLT #2: "if `option_scid_alias` was negotiated: MUST set `short_channel_id`
        # `alias`", "not related to the real `short_channel_id`".
        assert alias is not None and scid_to_str(alias) != scid
        assert chan["alias"] == {"local": scid_to_str(alias)}
    else:
        assert alias is None and "alias" not in chan

    their_alias = make_scid(7_000_000, 1, 1) if with_alias else None
    peer.send(peer_channel_ready(peer, their_alias).encode())
    chan = wait_state(l1, NORMAL)
    assert chan["status"] == [f"{NORMAL}:Channel ready for use."]
    assert chan["short_channel_id"] == scid
    if with_alias:
        assert chan["alias"] == {"local": scid_to_str(alias), "remote": scid_to_str(their_alias)}
    l1.wait_for_log(f"State changed from {AWAITING} to {NORMAL}")
    assert l1.rpc.getinfo()["num_active_channels"] == 1

    # Restart: the channel comes back NORMAL; BOLT #2: with next_commitment_number 1 in
    # both channel_reestablish, lightningd "MUST retransmit `channel_ready`".
    assert l1.stop() == 0
    l1.start()
    chan = channel(l1)
    assert (chan["state"], chan["short_channel_id"]) == (NORMAL, scid)
    reconnect(l1, peer, features)
    peer.send(peer_reestablish(peer).encode())
    again = peer.expect(wire.ChannelReady)
    assert again == ours
    # BOLT #2: "upon reconnection: MUST ignore any redundant `channel_ready` it receives."
    peer.send(peer_channel_ready(peer, their_alias).encode())
    expect_nothing_more(peer)
    assert channel(l1)["state"] == NORMAL


def test_early_channel_ready_is_kept(node_factory, bitcoind):
    """The opener "is free to send this message at any time": lightningd keeps it, fails
    nothing, and locks in once its own depth is reached (across a restart meanwhile)."""
    l1 = node_factory.get_node(*LOCKIN_OPTIONS)
    peer, tx = open_funded(l1, bitcoind, STATIC_REMOTEKEY, 1, without_scid_alias())
    peer.send(peer_channel_ready(peer).encode())
    l1.wait_for_log("Got channel_ready before the funding tx is buried: kept")
    expect_nothing_more(peer)
    chan = wait_status(l1, "They've confirmed channel ready, we haven't yet.")
    assert chan["state"] == AWAITING

    # Restart before depth: reestablish, and no channel_ready yet (not buried).
    assert l1.stop() == 0
    l1.start()
    reconnect(l1, peer, without_scid_alias())
    peer.send(peer_reestablish(peer).encode())
    expect_nothing_more(peer)
    chan = wait_status(l1, "They've confirmed channel ready, we haven't yet.")
    assert chan["state"] == AWAITING

    scid = mine_funding(bitcoind, tx)
    wait_status(l1, "Funding needs 2 more confirmations for lockin.")
    assert channel(l1)["state"] == AWAITING
    bitcoind.generate(2, ADDRESS)
    check_channel_ready(peer, peer.expect(wire.ChannelReady))
    chan = wait_state(l1, NORMAL)
    assert chan["short_channel_id"] == scid


def test_reorg_before_lockin_goes_back_to_waiting(node_factory, bitcoind):
    """Never NORMAL while the funding is not buried to minimum_depth."""
    l1 = node_factory.get_node(*LOCKIN_OPTIONS)
    peer, tx = open_funded(l1, bitcoind, STATIC_REMOTEKEY, 1, without_scid_alias())
    mine_funding(bitcoind, tx)
    funding_block = bitcoind.rpc("getbestblockhash")
    bitcoind.generate(2, ADDRESS)
    check_channel_ready(peer, peer.expect(wire.ChannelReady))
    assert "short_channel_id" in wait_status(l1, "We've confirmed channel ready")

    bitcoind.rpc("invalidateblock", funding_block)
    chan = wait_status(l1, "Funding needs 3 more confirmations for lockin.")
    assert "short_channel_id" not in chan
    l1.wait_for_log("reorganized to depth 0: waiting for lock-in again")

    peer.send(peer_channel_ready(peer).encode())
    l1.wait_for_log("Got channel_ready before the funding tx is buried: kept")
    assert channel(l1)["state"] == AWAITING

    scid = mine_funding(bitcoind, tx)
    bitcoind.generate(2, ADDRESS)
    chan = wait_state(l1, NORMAL)
    assert chan["short_channel_id"] == scid
    # channel_ready was sent once already: not again on the same connection.
    expect_nothing_more(peer)


# --- channel_reestablish checks (no node needed) -------------------------------------------


GOOD_POINT = PrivateKey(b"\x05" * 32).public_key.format()


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"next_commitment_number": 0}, "next_commitment_number 0"),
        ({"next_commitment_number": 2}, "commitment_number: 2 vs 1"),
        ({"next_revocation_number": 1}, "revocation_number: 1 vs 0"),
        ({"your_last_per_commitment_secret": b"\x01" * 32}, "secret is not zero"),
        ({"my_current_per_commitment_point": b"\x02" + b"\x00" * 32}, "point is invalid"),
    ],
)
def test_check_reestablish(fields, error):
    base = {
        "channel_id": bytes(32),
        "next_commitment_number": 1,
        "next_revocation_number": 0,
        "your_last_per_commitment_secret": bytes(32),
        "my_current_per_commitment_point": GOOD_POINT,
    }
    check_reestablish(wire.ChannelReestablish(**base))
    with pytest.raises(ReestablishError, match=error):
        check_reestablish(wire.ChannelReestablish(**{**base, **fields}))
