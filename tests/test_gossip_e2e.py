"""Real gossip between three nodes on regtest: our announcements reach a third node."""

from __future__ import annotations

import time

from tests.node import wait_for
from tests.test_fundchannel import ELSEWHERE, FAST, funded_node, mine_until_normal


def scids(node) -> list[tuple[str, int]]:
    return sorted(
        (c["short_channel_id"], c["direction"]) for c in node.rpc.listchannels()["channels"]
    )


def test_announced_channel_reaches_third_node(node_factory, bitcoind):
    l1, _ = funded_node(node_factory, bitcoind, "--alias=ALICE")
    l2 = node_factory.get_node(*FAST, "--alias=BOB")
    l3 = node_factory.get_node(*FAST)
    l1.rpc.connect(l2.uri())
    l1.rpc.fundchannel(l2.id, 500_000)
    mine_until_normal(bitcoind, l1, l2, blocks=6)
    scid = l1.rpc.listpeerchannels()["channels"][0]["short_channel_id"]
    l3.rpc.connect(l1.uri())
    # BOLT #7: announced after six confirmations, then spread with both directions' updates.
    wait_for(lambda: scids(l3) == [(scid, 0), (scid, 1)], timeout=60, what="C to learn the channel")
    chan = l3.rpc.listchannels(scid)["channels"][0]
    assert chan["amount_msat"] == 500_000_000
    assert chan["public"] is True
    nodes = {n["nodeid"]: n for n in l3.rpc.listnodes()["nodes"]}
    wait_for(lambda: {n.get("alias") for n in l3.rpc.listnodes()["nodes"]} >= {"ALICE", "BOB"},
             timeout=60, what="node announcements")  # fmt: skip
    assert set(nodes) >= {l1.id, l2.id}


def test_private_channel_never_leaks(node_factory, bitcoind):
    l1, _ = funded_node(node_factory, bitcoind)
    l2, l3 = node_factory.get_nodes(2, *FAST)
    l1.rpc.connect(l2.uri())
    l1.rpc.fundchannel(l2.id, 200_000, announce=False)
    mine_until_normal(bitcoind, l1, l2, blocks=6)
    bitcoind.generate(2, ELSEWHERE)
    l3.rpc.connect(l1.uri())
    l3.rpc.connect(l2.uri())
    # Give gossip every chance to (wrongly) flow before concluding it didn't.
    l1.wait_for_log("CHANNELD_NORMAL")
    time.sleep(2)
    assert scids(l3) == []
