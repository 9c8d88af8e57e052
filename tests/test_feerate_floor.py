"""Feerates below the floor, as Core Lightning takes them: raised to 253perkw, not refused.

CLN's param_feerate_val: "if (**feerate_per_kw < FEERATE_FLOOR) **feerate_per_kw =
FEERATE_FLOOR;". So `fundchannel ... 0perkw` opens a channel whose first commitment and
funding tx pay 253 sat per 1000 weight (1 sat/vbyte rounded up: the least that relays).
"""

from __future__ import annotations

import pytest

from lightningd.feerate import FEERATE_FLOOR_PERKW
from tests.node import wait_for
from tests.test_fundchannel import FAST, funded_node
from tests.test_opening_opener import fundchannel_start, peer_connected_from


@pytest.mark.parametrize("feerate", ["0perkw", "252perkw", "0perkb", "1000perkb", 0, 1011])
def test_fundchannel_start_raises_feerate_to_floor(node_factory, feerate):
    """The open_channel the peer receives carries 253, whatever lower rate was asked."""
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer, feerate=feerate)
    assert peer.read_open_channel().feerate_per_kw == FEERATE_FLOOR_PERKW
    peer.send_accept_channel()
    assert start.result()["scriptpubkey"] == peer.funding_script_pubkey().hex()


def test_fundchannel_start_keeps_feerate_above_floor(node_factory):
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer, feerate="254perkw")
    assert peer.read_open_channel().feerate_per_kw == 254
    peer.send_accept_channel()
    start.result()


def test_fundchannel_zero_feerate_opens_at_floor(node_factory, bitcoind):
    """fundchannel with 0perkw: the channel opens, both sides record 253perkw, and the
    funding tx in bitcoind's mempool pays that."""
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    result = l1.rpc.fundchannel(l2.id, 100_000, feerate="0perkw")
    entry = bitcoind.rpc("getmempoolentry", result["txid"])
    fee_sat = round(entry["fees"]["base"] * 100_000_000)
    # As CLN's amount_tx_fee: feerate * weight / 1000, rounded down; bitcoind took it.
    assert fee_sat >= FEERATE_FLOOR_PERKW * entry["weight"] // 1000
    for node in (l1, l2):
        (chan,) = wait_for(lambda node=node: node.rpc.listpeerchannels()["channels"])
        assert chan["state"] == "CHANNELD_AWAITING_LOCKIN"
        assert chan["feerate"]["perkw"] == FEERATE_FLOOR_PERKW


def test_withdraw_below_floor_is_not_refused(node_factory, bitcoind):
    """The same parameter parser for every command: withdraw at 0perkw pays the floor."""
    l1, _ = funded_node(node_factory, bitcoind)
    address = l1.rpc.newaddr()["bech32"]
    sent = l1.rpc.withdraw(address, "10000sat", feerate="0perkw")
    entry = bitcoind.rpc("getmempoolentry", sent["txid"])
    fee_sat = round(entry["fees"]["base"] * 100_000_000)
    assert fee_sat >= FEERATE_FLOOR_PERKW * entry["weight"] // 1000
