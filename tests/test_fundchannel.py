"""fundchannel end to end: two real nodes, one real regtest chain, the wallet paying."""

from __future__ import annotations

import pytest
from bitcointx.core import CMutableTransaction, CMutableTxIn, CTxOut
from bitcointx.core.psbt import PartiallySignedTransaction
from coincurve import PrivateKey
from pyln.client import RpcError

from hsmd.derive import p2wpkh_address
from tests.faucet import faucet
from tests.node import wait_for
from tests.test_lockin import FEE, FUNDING, P2WPKH, funding_tx

FAST = ("--developer", "--dev-bitcoind-poll=1")


# Blocks that only mature coinbases go to a key nobody here uses.
ELSEWHERE = p2wpkh_address(PrivateKey(b"\x66" * 32).public_key.format(), "bcrt")


def funded_node(node_factory, bitcoind, *options: str, coins: int = 1):
    """A node whose wallet holds `coins` confirmed outputs, each a whole faucet coinbase less
    the fee (tests/faucet.py); returns (node, the first one's value in sat).

    Regtest halves the subsidy every 150 blocks and the chain is shared by the whole run,
    so the value is read back rather than assumed.
    """
    node = node_factory.get_node(*FAST, *options)
    tap = faucet(bitcoind)
    for _ in range(coins):
        tap.pay([(node.rpc.newaddr()["bech32"], None)], mine=False)
    tap.mine(1)
    # Spendable only once the wallet has seen the block that confirms them.
    tip = bitcoind.rpc("getblockcount")
    wait_for(lambda: node.rpc.getinfo()["blockheight"] == tip, what="the node to reach the tip")
    outputs = [o for o in node.rpc.listfunds()["outputs"] if o["status"] == "confirmed"]
    assert len(outputs) == coins
    return node, outputs[0]["amount_msat"] // 1000


def test_fundchannel(node_factory, bitcoind):
    l1, coin_sat = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    result = l1.rpc.fundchannel(l2.id, 100_000)
    assert set(result) >= {"tx", "txid", "outnum", "channel_id", "channel_type", "mindepth"}
    assert result["channel_type"]["names"] == ["static_remotekey/even", "anchors/even"]
    # Broadcast only after the channel was stored: it is in bitcoind's mempool now.
    assert result["txid"] in bitcoind.rpc("getrawmempool")
    for node, opener in ((l1, "local"), (l2, "remote")):
        chans = wait_for(lambda node=node: node.rpc.listpeerchannels()["channels"])
        assert chans[0]["state"] == "CHANNELD_AWAITING_LOCKIN"
        assert chans[0]["opener"] == opener
        assert chans[0]["funding_txid"] == result["txid"]
        assert chans[0]["total_msat"] == 100_000_000
    # The wallet spent the coinbase and kept the change (unconfirmed until mined).
    assert {o["status"] for o in l1.rpc.listfunds()["outputs"]} == {"unconfirmed"}  # change
    spent = l1.rpc.listfunds(spent=True)["outputs"]
    assert any(o["status"] == "spent" and o["amount_msat"] == coin_sat * 1000 for o in spent)
    assert l1.rpc.listfunds()["channels"][0]["amount_msat"] == 100_000_000


def test_back_to_back_opens_to_one_peer(node_factory, bitcoind):
    """The next fundchannel may follow the last one's reply at once: the open is over when
    the channel is stored, not when its openingd has been reaped ("Peer already OPENINGD")."""
    l1, _ = funded_node(node_factory, bitcoind, coins=4)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    txids = [l1.rpc.fundchannel(l2.id, 100_000)["txid"] for _ in range(4)]
    assert len(set(txids)) == 4
    assert len(l1.rpc.listpeerchannels(l2.id)["channels"]) == 4


def test_fundchannel_insufficient_funds(node_factory):
    l1, l2 = node_factory.get_nodes(2, *FAST)
    l1.rpc.connect(l2.uri())
    with pytest.raises(RpcError) as info:
        l1.rpc.fundchannel(l2.id, 100_000)
    assert info.value.error["code"] == 301
    # Nothing was left behind: no channel, and the peer can still be opened to later.
    wait_for(lambda: l1.rpc.listpeerchannels()["channels"] == [], what="no channel")
    assert l1.rpc.listpeers()["peers"][0]["connected"]


def test_fundchannel_all(node_factory, bitcoind):
    l1, coin_sat = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    # A coinbase is beyond 2^24 sat: large channels are negotiated by default, so "all" works.
    result = l1.rpc.fundchannel(l2.id, "all")
    chan = l1.rpc.listpeerchannels()["channels"][0]
    # Everything but the fee (a few hundred sat at regtest feerates), and no change output.
    assert coin_sat * 1000 - 10_000_000 < chan["total_msat"] < coin_sat * 1000
    assert l1.rpc.listfunds()["outputs"] == []
    assert result["txid"] in bitcoind.rpc("getrawmempool")


def states(node) -> list[str]:
    return [c["state"] for c in node.rpc.listpeerchannels()["channels"]]


def mine_until_normal(bitcoind, *nodes, blocks: int = 6) -> None:
    bitcoind.generate(blocks, ELSEWHERE)
    for node in nodes:
        wait_for(lambda node=node: states(node) == ["CHANNELD_NORMAL"], what="CHANNELD_NORMAL")


def test_fundchannel_options(node_factory, bitcoind):
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    close_to = l1.rpc.newaddr()["bech32"]
    result = l1.rpc.fundchannel(
        l2.id,
        "200000sat",
        feerate="1000perkw",
        announce=False,
        push_msat=10_000_000,
        close_to=close_to,
        mindepth=2,
        reserve="5000sat",
        channel_type=[12],
    )
    assert result["channel_type"] == {"bits": [12], "names": ["static_remotekey/even"]}
    assert result["mindepth"] == 2
    assert result["close_to"].startswith("0014")
    chan = l1.rpc.listpeerchannels()["channels"][0]
    assert chan["private"] is True
    assert chan["to_us_msat"] == 200_000_000 - 10_000_000
    assert chan["their_reserve_msat"] == 5_000_000  # what we asked l2 to keep
    assert chan["feerate"]["perkw"] == 1000
    theirs = l2.rpc.listpeerchannels()["channels"][0]
    assert theirs["to_us_msat"] == 10_000_000
    mine_until_normal(bitcoind, l1, l2)


def test_funder_restart_before_lockin(node_factory, bitcoind):
    """The channel and its funding tx survive the funder's restart; lock-in follows."""
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    txid = l1.rpc.fundchannel(l2.id, 300_000)["txid"]
    assert l1.stop() == 0
    l1.start()
    assert states(l1) == ["CHANNELD_AWAITING_LOCKIN"]
    assert txid in bitcoind.rpc("getrawmempool")
    l1.rpc.connect(l2.uri())
    mine_until_normal(bitcoind, l1, l2)
    # Every satoshi accounted for: the change output is ours, the channel holds the rest.
    change = sum(o["amount_msat"] for o in l1.rpc.listfunds()["outputs"])
    assert change > 0
    assert l1.rpc.listfunds()["channels"][0]["our_amount_msat"] == 300_000_000


def test_multifundchannel(node_factory, bitcoind):
    l1, _ = funded_node(node_factory, bitcoind)
    l2, l3 = node_factory.get_nodes(2, *FAST)
    for peer in (l2, l3):
        l1.rpc.connect(peer.uri())
    result = l1.rpc.multifundchannel(
        [{"id": l2.id, "amount": 100_000}, {"id": l3.id, "amount": "150000sat", "announce": False}]
    )
    assert result["txid"] in bitcoind.rpc("getrawmempool")
    assert {c["id"] for c in result["channel_ids"]} == {l2.id, l3.id}
    assert len({c["outnum"] for c in result["channel_ids"]}) == 2  # two outputs of one tx
    mine_until_normal(bitcoind, l2, l3)
    assert sorted(c["total_msat"] for c in l1.rpc.listpeerchannels()["channels"]) == [
        100_000_000,
        150_000_000,
    ]


def test_multifundchannel_minchannels(node_factory, bitcoind):
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    stranger = PrivateKey(b"\x77" * 32).public_key.format().hex()  # nobody we know
    with pytest.raises(RpcError):
        l1.rpc.multifundchannel(
            [{"id": l2.id, "amount": 100_000}, {"id": stranger, "amount": 100_000}]
        )
    # Nothing half-done: l2's open was cancelled and the wallet's coins are free again.
    wait_for(lambda: l1.rpc.listpeerchannels()["channels"] == [], what="cancelled open")
    result = l1.rpc.multifundchannel(
        [{"id": l2.id, "amount": 100_000}, {"id": stranger, "amount": 100_000}], minchannels=1
    )
    assert [c["id"] for c in result["channel_ids"]] == [l2.id]
    assert result["failed"][0]["id"] == stranger


def test_psbt_flow_on_chain(node_factory, bitcoind):
    """fundchannel_start / fundchannel_complete with a PSBT funded and broadcast by the user."""
    l1, l2 = node_factory.get_nodes(2, *FAST)
    l1.rpc.connect(l2.uri())
    start = l1.rpc.fundchannel_start(l2.id, FUNDING)
    assert start["funding_address"].startswith("bcrt1q")
    tx = funding_tx(bitcoind, bytes.fromhex(start["scriptpubkey"]))  # signed by the test
    unsigned = CMutableTransaction(
        [CMutableTxIn(t.prevout, nSequence=t.nSequence) for t in tx.vin], tx.vout, nVersion=2
    )
    psbt = PartiallySignedTransaction(unsigned_tx=unsigned)
    psbt.set_utxo(CTxOut(FUNDING + FEE + tx.vout[1].nValue, P2WPKH), 0, force_witness_utxo=True)
    done = l1.rpc.call("fundchannel_complete", {"id": l2.id, "psbt": psbt.to_base64()})
    assert done["commitments_secured"] is True
    assert states(l1) == ["CHANNELD_AWAITING_LOCKIN"]
    # The user broadcasts: lightningd never saw the signatures, and did not need them.
    bitcoind.rpc("sendrawtransaction", tx.serialize().hex())
    mine_until_normal(bitcoind, l1, l2)
    assert l1.rpc.listpeerchannels()["channels"][0]["funding_txid"] == tx.GetTxid()[::-1].hex()


def test_fundee_restart_before_lockin(node_factory, bitcoind):
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    l1.rpc.fundchannel(l2.id, 300_000)
    assert l2.stop() == 0
    bitcoind.generate(6, ELSEWHERE)  # confirmed while l2 was away
    l2.start()
    assert states(l2) == ["CHANNELD_AWAITING_LOCKIN"]
    l1.rpc.connect(l2.uri())  # reestablish, then lock-in
    wait_for(lambda: states(l1) == states(l2) == ["CHANNELD_NORMAL"], what="lock-in after restart")
