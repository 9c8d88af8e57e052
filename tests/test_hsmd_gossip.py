"""hsmd's gossip signatures, with hsmd as a real subprocess: it signs our channel's
announcement, our channel_update and node_announcement, and refuses anything else."""

from __future__ import annotations

import dataclasses

import pytest
from coincurve import PrivateKey

from common.gossip_sign import (
    Policy,
    channel_announcement,
    channel_announcement_hash,
    channel_update,
    channel_update_hash,
    node_announcement,
    node_announcement_hash,
    order_endpoints,
)
from common.signature import verify_hash_compact
from hsmd import hsmd_wiregen as wire
from hsmd.capabilities import OPENINGD_CAPABILITIES, Capability
from hsmd.derive import SecretDeriver
from lightningd.hsm_control import HsmError
from tests.test_hsmd import (
    CLN_L1_SECRET,
    OTHER_PEER,
    PEER,
    REGTEST,
    assert_cut_off,
    client,
    client_request,
    run,
    started,
)
from wire import peer_wiregen as peer_wire

DBID = 7
SCID = (110 << 40) | (2 << 16) | 1
PEER_FUNDING = PrivateKey(b"\x33" * 32).public_key.format()
DERIVER = SecretDeriver(CLN_L1_SECRET)
NODE_ID = DERIVER.node_id()
FUNDING = DERIVER.channel_secrets(PEER, DBID).funding_pubkey


def announcement(local=NODE_ID, remote=PEER, ours=FUNDING, theirs=PEER_FUNDING, chain=REGTEST):
    ends = order_endpoints(local, remote, ours, theirs)
    return channel_announcement(chain, SCID, ends).encode()


def test_signs_channel_announcement_for_its_channel(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        raw = announcement()
        node_sig, bitcoin_sig = await hsm.sign_channel_announcement(raw, PEER, DBID)
        h = channel_announcement_hash(raw)
        assert verify_hash_compact(NODE_ID, h, node_sig)
        assert verify_hash_compact(FUNDING, h, bitcoin_sig)
        await hsm.stop()

    run(main())


@pytest.mark.parametrize(
    "kwargs, peer, dbid, reason",
    [
        # Someone else's bitcoin key where our funding key belongs.
        ({"ours": PEER_FUNDING, "theirs": FUNDING}, PEER, DBID, "our node id and funding key"),
        # Another channel's funding key (same peer, other dbid).
        ({}, PEER, DBID + 1, "our node id and funding key"),
        # Not our node id.
        ({"local": OTHER_PEER}, PEER, DBID, "our node id and funding key"),
        # The other end is not the channel's peer.
        ({"remote": OTHER_PEER}, PEER, DBID, "our node id and funding key"),
        ({"chain": bytes(32)}, PEER, DBID, "another chain"),
        ({}, PEER, 0, "dbid 0"),
    ],
)
def test_refuses_foreign_channel_announcement(tmp_path, kwargs, peer, dbid, reason):
    async def main():
        hsm, _ = await started(tmp_path)
        with pytest.raises(HsmError, match=reason):
            await hsm.sign_channel_announcement(announcement(**kwargs), peer, dbid)
        # The master is not cut off for it.
        await hsm.sign_channel_announcement(announcement(), PEER, DBID)
        await hsm.stop()

    run(main())


def test_refuses_unordered_or_wrong_message(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        ann = announcement()
        msg = peer_wire.decode(ann)
        swapped = dataclasses.replace(
            msg,
            node_id_1=msg.node_id_2,
            node_id_2=msg.node_id_1,
            bitcoin_key_1=msg.bitcoin_key_2,
            bitcoin_key_2=msg.bitcoin_key_1,
        ).encode()
        with pytest.raises(HsmError, match="ascending order"):
            await hsm.sign_channel_announcement(swapped, PEER, DBID)
        update = channel_update(REGTEST, SCID, 1, 0, Policy(htlc_maximum_msat=1000)).encode()
        with pytest.raises(HsmError, match="expected channel_announcement"):
            await hsm.sign_channel_announcement(update, PEER, DBID)
        with pytest.raises(HsmError, match="malformed"):
            await hsm.sign_channel_announcement(ann[:-1], PEER, DBID)
        with pytest.raises(HsmError, match="expected channel_update"):
            await hsm.sign_channel_update(ann)
        await hsm.stop()

    run(main())


def test_signs_channel_update_and_node_announcement(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        update = channel_update(REGTEST, SCID, 5, 1, Policy(htlc_maximum_msat=10**6)).encode()
        signed = await hsm.sign_channel_update(update)
        assert signed[:2] == update[:2] and signed[66:] == update[66:]
        assert verify_hash_compact(NODE_ID, channel_update_hash(update), signed[2:66])
        other_chain = channel_update(bytes(32), SCID, 5, 1, Policy(htlc_maximum_msat=1)).encode()
        with pytest.raises(HsmError, match="another chain"):
            await hsm.sign_channel_update(other_chain)

        ann = node_announcement(NODE_ID, 5, b"\x01\x02\x03", "me", b"", b"").encode()
        sig = await hsm.sign_node_announcement(ann)
        assert verify_hash_compact(NODE_ID, node_announcement_hash(ann), sig)
        foreign = node_announcement(PEER, 5, b"\x01\x02\x03", "me", b"", b"").encode()
        with pytest.raises(HsmError, match="not for our node id"):
            await hsm.sign_node_announcement(foreign)
        await hsm.stop()

    run(main())


@pytest.mark.parametrize(
    "request_msg",
    [
        lambda: wire.HsmdCannouncementSigReq(ca=announcement(), peerid=PEER, dbid=DBID),
        lambda: wire.HsmdNodeAnnouncementSigReq(
            announcement=node_announcement(NODE_ID, 5, b"\0\0\0", "me", b"", b"").encode()
        ),
        lambda: wire.HsmdCupdateSigReq(
            cu=channel_update(REGTEST, SCID, 5, 1, Policy(htlc_maximum_msat=1)).encode()
        ),
    ],
    ids=["cannouncement", "node_announcement", "cupdate"],
)
def test_channel_client_without_sign_gossip_is_refused(tmp_path, request_msg):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm, PEER, DBID, OPENINGD_CAPABILITIES)
        assert_cut_off(conn, client_request(conn, request_msg()), "lacks capability SIGN_GOSSIP")
        await hsm.stop()

    run(main())


def test_gossip_client_signs_only_its_own_channel(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm, PEER, DBID, Capability.SIGN_GOSSIP)
        own = wire.HsmdCannouncementSigReq(ca=announcement(), peerid=PEER, dbid=DBID)
        reply = client_request(conn, own)
        assert isinstance(reply, wire.HsmdCannouncementSigReply)
        other = wire.HsmdCannouncementSigReq(ca=announcement(), peerid=PEER, dbid=DBID + 1)
        assert_cut_off(conn, client_request(conn, other), "its own channel")
        await hsm.stop()

    run(main())
