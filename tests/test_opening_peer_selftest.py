"""The test counterparty against itself: before it judges lightningd, it must be right.

Two OpeningPeers (different seeds) run v1 channel establishment over a socketpair
with a real BOLT #8 handshake; each checks the other's commitment signature with
python-bitcointx's script interpreter.
"""

from __future__ import annotations

import pytest
from bitcointx.core.script import OP_0, CScript

from common.funding import derive_channel_id
from tests.opening_peer import (
    ANCHORS,
    STATIC_REMOTEKEY,
    Background,
    OpeningPeer,
    PeerRefused,
    SignatureCheckFailed,
    connected_pair,
    fake_funding_psbt,
    high_s,
    multisig_2of2,
    off_curve_point,
    verify_2of2_spend,
)
from wire import peer_wiregen as wire


@pytest.fixture
def pair():
    opener, accepter = OpeningPeer(b"alice"), OpeningPeer(b"bob")
    connected_pair(opener, accepter)
    yield opener, accepter
    opener.close()
    accepter.close()


def run_to_funding_created(opener: OpeningPeer, accepter: OpeningPeer, **open_overrides):
    opener.send_open_channel(**open_overrides)
    accepter.read_open_channel()
    accepter.send_accept_channel()
    opener.read_accept_channel()
    opener.send_funding_created()
    return accepter.read_funding_created()


@pytest.mark.parametrize(
    "channel_type, push_msat",
    [(ANCHORS, 0), (STATIC_REMOTEKEY, 0), (ANCHORS, 123_456_789), (STATIC_REMOTEKEY, 1000)],
)
def test_selftest_open_completes_and_both_signatures_verify(pair, channel_type, push_msat):
    opener, accepter = pair
    run_to_funding_created(opener, accepter, channel_type=channel_type, push_msat=push_msat)
    accepter.send_funding_signed()
    signed = opener.read_funding_signed()

    # BOLT #2: channel_id is the XOR of funding_txid and funding_output_index.
    assert signed.channel_id == derive_channel_id(opener.funding_txid, 0)
    assert accepter.channel_id() == opener.channel_id()
    # Each side's view of each commitment is the same transaction.
    assert opener.our_commitment.tx.GetTxid() == accepter.their_commitment().tx.GetTxid()
    assert accepter.our_commitment.tx.GetTxid() == opener.their_commitment().tx.GetTxid()
    # Both fully witnessed commitments verify, each with the other's signature.
    for peer in (opener, accepter):
        other = accepter if peer is opener else opener
        sigs = {
            peer.keys.points()["funding_pubkey"]: peer.sign(peer.our_commitment),
            other.keys.points()["funding_pubkey"]: peer.their_signature,
        }
        verify_2of2_spend(peer.our_commitment, sigs, opener.open_msg.funding_satoshis)
    # Balances: the opener pays the fee (and anchors), the accepter gets the push.
    accepter_outputs = accepter.our_commitment.outputs
    pushed = [o.amount_sat for o in accepter_outputs if o.kind.value == "to_local"]
    assert pushed == ([push_msat // 1000] if push_msat // 1000 >= 546 else [])


def test_selftest_funding_script_matches_bolt3(pair):
    opener, accepter = pair
    run_to_funding_created(opener, accepter)
    keys = (opener.keys.points()["funding_pubkey"], accepter.keys.points()["funding_pubkey"])
    wscript = multisig_2of2(*keys)
    assert wscript[0] == 0x52 and wscript[-2:] == bytes([0x52, 0xAE])  # 2 ... 2 CHECKMULTISIG
    import hashlib

    expected = CScript([OP_0, hashlib.sha256(wscript).digest()])
    assert opener.funding_script_pubkey() == bytes(expected) == accepter.funding_script_pubkey()


def test_selftest_bad_funding_signed_signature_is_caught(pair):
    opener, accepter = pair
    run_to_funding_created(opener, accepter)
    accepter.send_funding_signed(bad_signature=True)
    with pytest.raises(SignatureCheckFailed):
        opener.read_funding_signed()


def test_selftest_bad_funding_created_signature_is_caught(pair):
    opener, accepter = pair
    opener.send_open_channel()
    accepter.read_open_channel()
    accepter.send_accept_channel()
    opener.read_accept_channel()
    opener.send_funding_created(bad_signature=True)
    with pytest.raises(SignatureCheckFailed):
        accepter.read_funding_created()


def test_selftest_high_s_signature_is_caught(pair):
    """BOLT #2: a signature "non-compliant with LOW-S-standard rule" is incorrect."""
    opener, accepter = pair
    run_to_funding_created(opener, accepter)
    good = accepter.sign(accepter.their_commitment())
    accepter.send_funding_signed(signature=high_s(good))
    with pytest.raises(SignatureCheckFailed):
        opener.read_funding_signed()


def test_selftest_wrong_funding_outpoint_is_caught(pair):
    """A signature over another outpoint does not spend this one."""
    opener, accepter = pair
    opener.send_open_channel()
    accepter.read_open_channel()
    accepter.send_accept_channel()
    opener.read_accept_channel()
    sig_for_other_outpoint = opener.funding_created_msg(funding_txid=b"\x99" * 32).signature
    opener.send_funding_created(funding_txid=b"\x98" * 32, signature=sig_for_other_outpoint)
    with pytest.raises(SignatureCheckFailed):
        accepter.read_funding_created()


def test_selftest_overrides_and_errors(pair):
    opener, accepter = pair
    bad = off_curve_point()
    sent = opener.send_open_channel(
        htlc_basepoint=bad, to_self_delay=5000, channel_type=None, upfront_shutdown_script=None
    )
    got = accepter.read_open_channel()
    assert got == sent
    assert got.htlc_basepoint == bad and got.to_self_delay == 5000
    assert got.tlvs.channel_type is None and got.tlvs.upfront_shutdown_script is None
    # The accepter refuses; the opener sees a PeerRefused with the text.
    accepter.send(
        wire.Error(channel_id=got.temporary_channel_id, data=b"htlc_basepoint bad").encode()
    )
    with pytest.raises(PeerRefused, match="htlc_basepoint bad"):
        opener.read_accept_channel()
    # Pings are answered while waiting for the pong, both ways at once.
    accepter_pinged = Background(accepter.ping_pong)
    assert opener.ping_pong()
    assert accepter_pinged.result()


def test_selftest_channel_type_default_and_echo(pair):
    opener, accepter = pair
    opener.send_open_channel()
    got = accepter.read_open_channel()
    assert got.tlvs.channel_type == bytes([0x40, 0x10, 0x00])  # bits 22 and 12
    assert got.tlvs.upfront_shutdown_script == b""
    reply = accepter.send_accept_channel()
    assert reply.tlvs.channel_type == got.tlvs.channel_type
    assert reply.temporary_channel_id == got.temporary_channel_id


def test_selftest_fake_funding_psbt():
    from bitcointx.core.psbt import PartiallySignedTransaction

    spk = bytes(CScript([OP_0, b"\x33" * 32]))
    funding = fake_funding_psbt(spk, 1_000_000, b"seed")
    tx = PartiallySignedTransaction.from_base64(funding.psbt).unsigned_tx
    assert tx.GetTxid() == funding.txid
    assert bytes(tx.vout[funding.outnum].scriptPubKey) == spk
    assert tx.vout[funding.outnum].nValue == 1_000_000


def test_selftest_keys_are_deterministic():
    a, b = OpeningPeer(b"x"), OpeningPeer(b"x")
    assert a.keys.points() == b.keys.points() and a.node_id == b.node_id
    assert OpeningPeer(b"y").keys.points() != a.keys.points()
    assert len(set(a.keys.points().values())) == 6
