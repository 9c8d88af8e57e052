"""A block spending an announced channel's funding output closes it in gossipd's view."""

from __future__ import annotations

from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxInWitness,
    CMutableTxOut,
    CMutableTxWitness,
    COutPoint,
)
from bitcointx.core.script import CScriptWitness

from common.scripts import funding_script, p2wsh
from common.signature import script_sig, sign_segwit_input
from lightningd.gossip_control import parse_scid
from tests.node import wait_for
from tests.scripted_peer import ScriptedPeer, init_msg
from tests.test_fundchannel import FAST
from tests.test_gossipd_validation import KEYS, channel_announcement, channel_update, pub
from tests.test_lockin import ADDRESS, FUNDING, P2WPKH, funding_tx, mine_funding


def spend_funding(funding_txid: bytes) -> bytes:
    """Both funding keys are the test's: spend the 2-of-2 output back to a test address."""
    pubkeys = {pub(KEYS.fund1): KEYS.fund1, pub(KEYS.fund2): KEYS.fund2}
    wscript = funding_script(*pubkeys)
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(funding_txid, 0))], [CMutableTxOut(FUNDING - 1000, P2WPKH)]
    )
    # BOLT #3: the witness carries the signatures in the order of the sorted keys.
    sigs = [
        script_sig(sign_segwit_input(pubkeys[k], tx, 0, wscript, FUNDING)) for k in sorted(pubkeys)
    ]
    witness = CScriptWitness([b"", *sigs, bytes(wscript)])
    tx.wit = CMutableTxWitness([CMutableTxInWitness(witness)])
    return tx.serialize()


def listed(node, scid: str) -> list[dict]:
    return node.rpc.listchannels(scid)["channels"]


def test_spent_funding_output_closes_channel(node_factory, bitcoind):
    l1 = node_factory.get_node(*FAST)
    wscript = funding_script(pub(KEYS.fund1), pub(KEYS.fund2))
    tx = funding_tx(bitcoind, bytes(p2wsh(wscript)))
    scid = mine_funding(bitcoind, tx)
    peer = ScriptedPeer()
    peer.connect(l1.id, l1.port)
    peer.recv()
    peer.send(init_msg())
    number = parse_scid(scid)
    peer.send(channel_announcement(KEYS, number).encode())
    for direction in (0, 1):
        update = channel_update(direction, scid=number, htlc_max=FUNDING * 1000)
        peer.send(update.encode())
    wait_for(lambda: len(listed(l1, scid)) == 2, what="the announced channel")
    assert listed(l1, scid)[0]["amount_msat"] == FUNDING * 1000
    bitcoind.rpc("sendrawtransaction", spend_funding(tx.GetTxid()).hex())
    bitcoind.generate(1, ADDRESS)
    wait_for(lambda: listed(l1, scid) == [], what="the spent channel to be forgotten")
