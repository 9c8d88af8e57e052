"""fundchannel end to end: two real nodes, one real regtest chain, the wallet paying."""

from __future__ import annotations

import pytest
from coincurve import PrivateKey
from pyln.client import RpcError

from hsmd.derive import p2wpkh_address
from tests.node import wait_for

FAST = ("--developer", "--dev-bitcoind-poll=1")


# Blocks that only mature coinbases go to a key nobody here uses.
ELSEWHERE = p2wpkh_address(PrivateKey(b"\x66" * 32).public_key.format(), "bcrt")


def funded_node(node_factory, bitcoind, *options: str):
    """A node whose wallet holds one mature regtest coinbase; returns (node, its value in sat).

    Regtest halves the subsidy every 150 blocks and the chain is shared by the whole run,
    so the value is read back rather than assumed.
    """
    node = node_factory.get_node(*FAST, *options)
    bitcoind.generate(1, node.rpc.newaddr()["bech32"])
    bitcoind.generate(100, ELSEWHERE)
    outputs = wait_for(
        lambda: [o for o in node.rpc.listfunds()["outputs"] if o["status"] == "confirmed"],
        what="the coinbase in the wallet",
    )
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
