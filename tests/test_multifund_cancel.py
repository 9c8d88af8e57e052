"""multifundchannel when one peer fails after others stored their channels.

The funding tx will then never be sent, so the channels already stored on it must go: from
lightningd's database and memory, with an `error` to each of those peers (as Core
Lightning's multifundchannel cleanup does through fundchannel_cancel), and the wallet's
coins must be free again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from pyln.client import RpcError

from common.read_peer_msg import make_error
from lightningd.jsonrpc_errors import FUNDING_BROADCAST_FAIL
from lightningd.lightningd import DEV_CRASH_ENV
from tests.node import NodeFactory, wait_for
from tests.opening_peer import Background, OpeningPeer, error_text
from tests.test_chain_outage import OPTIONS, FakeChain, at_tip, funded_pair
from tests.test_crash_matrix import AMOUNT, assert_untouched, start_crashing_at, wait_killed
from tests.test_fundchannel import FAST, funded_node

CANCEL_TEXT = "Cancel channel by our RPC command before funding transaction broadcast."
STORED = r"Channel [0-9a-f]{64} stored: CHANNELD_AWAITING_LOCKIN"


def stored_count(node) -> int:
    return sum(1 for line in node.logs().splitlines() if re.search(STORED, line))


def test_multifund_peer_fails_after_others_stored(node_factory, bitcoind):
    l1, coin_sat = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)  # a real node: receives the error through lightningd
    l1.rpc.connect(l2.uri())
    good = OpeningPeer(b"multifund good peer")  # signs, then reads exactly what comes back
    bad = OpeningPeer(b"multifund bad peer")  # refuses to sign, once the others are stored
    for peer in (good, bad):
        peer.connect_to(l1)
    wait_for(lambda: len(l1.rpc.listpeers()["peers"]) == 3, what="three peers")

    call = Background(
        l1.rpc.multifundchannel,
        [{"id": p, "amount": 100_000} for p in (l2.id, good.node_id.hex(), bad.node_id.hex())],
    )
    for peer in (good, bad):
        peer.read_open_channel()
        peer.send_accept_channel()
    good.read_funding_created()
    good.send_funding_signed()
    bad.read_funding_created()
    # Force the order: both other channels are on l1's disk before the failure.
    wait_for(lambda: stored_count(l1) == 2, what="l2's and good's channels stored")
    assert sorted(c["state"] for c in l1.rpc.listpeerchannels()["channels"]) == [
        "CHANNELD_AWAITING_LOCKIN",
        "CHANNELD_AWAITING_LOCKIN",
        "OPENINGD",  # bad's, waiting for its funding_signed
    ]
    bad.send(make_error(bad.channel_id(), "not signing today"))

    with pytest.raises(RpcError) as info:
        call.result()
    assert "not signing today" in info.value.error["message"]

    # Nothing left on our side, in memory or (after a restart) on disk.
    assert l1.rpc.listpeerchannels()["channels"] == []
    # The good peer got an error for its own channel_id (BOLT #1: it fails the channel).
    error = good.expect_error()
    assert error.channel_id == good.channel_id()
    assert error_text(error) == CANCEL_TEXT
    # So did l2, through lightningd's peer loop.
    l2.wait_for_log(f"Peer sent error: {re.escape(CANCEL_TEXT)}")
    # ...and, its funding never seen, forgot the channel.
    wait_for(lambda: l2.rpc.listpeerchannels()["channels"] == [], what="l2 to forget it")
    l2.wait_for_log("Forgetting channel: the peer failed it, unfunded")
    # The funding tx never left, and every coin is available again.
    funds = l1.rpc.listfunds()
    assert [(o["status"], o["reserved"]) for o in funds["outputs"]] == [("confirmed", False)]
    assert funds["outputs"][0]["amount_msat"] == coin_sat * 1000
    assert funds["channels"] == []

    # lightningd survived, and the coins really are spendable: a new open to l2 works.
    txid = l1.rpc.fundchannel(l2.id, 100_000)["txid"]
    assert txid in bitcoind.rpc("getrawmempool")
    assert l1.stop() == 0
    l1.start()
    assert [c["funding_txid"] for c in l1.rpc.listpeerchannels()["channels"]] == [txid]


# -- bitcoind refuses the funding tx (a scripted bitcoind: tests/fake_bitcoind.py) ---------


@pytest.fixture
def fake_chain() -> Iterator[FakeChain]:
    chain = FakeChain()
    yield chain
    chain.close()


@pytest.fixture
def fake_nodes(tmp_path, fake_chain):
    factory = NodeFactory(tmp_path, fake_chain)
    yield factory
    factory.teardown()


def sent_txs(chain: FakeChain) -> list[str]:
    return chain.call(lambda: [p[0] for m, p in chain.fake.calls if m == "sendrawtransaction"])


def refuse_next_broadcast(chain: FakeChain) -> None:
    """bitcoind refuses the next sendrawtransaction for good (-26)."""
    chain.call(
        lambda: chain.fake.errors.setdefault("sendrawtransaction", []).append(
            (-26, "min relay fee not met")
        )
    )


@pytest.mark.parametrize("command", ["fundchannel", "multifundchannel"])
def test_refused_funding_tx_cancels_its_channels(fake_nodes, fake_chain, command):
    """bitcoind refuses the funding tx for good: the wallet takes its inputs back, so the
    tx is never sent again; the channels stored on it are cancelled, peers told."""
    l1, l2, before = funded_pair(fake_nodes, fake_chain)
    peers = [l2]
    if command == "multifundchannel":
        peers.append(fake_nodes.get_node(*OPTIONS))
        l1.rpc.connect(peers[1].uri())
    refuse_next_broadcast(fake_chain)
    with pytest.raises(RpcError) as info:
        if command == "fundchannel":
            l1.rpc.fundchannel(l2.id, AMOUNT)
        else:
            l1.rpc.multifundchannel([{"id": p.id, "amount": AMOUNT} for p in peers])
    assert info.value.error["code"] == FUNDING_BROADCAST_FAIL
    assert "min relay fee not met" in info.value.error["message"]

    assert_untouched(l1, before)  # no channel, nothing spent or reserved
    for peer in peers:
        peer.wait_for_log(f"Peer sent error: {re.escape(CANCEL_TEXT)}")
    # Never sent again: not on the next blocks, nor after a restart.
    assert len(sent_txs(fake_chain)) == 1
    fake_chain.mine(2)
    at_tip(fake_chain, l1)
    assert l1.stop() == 0
    l1.start()
    fake_chain.mine(1)
    at_tip(fake_chain, l1)
    assert len(sent_txs(fake_chain)) == 1
    assert_untouched(l1, before)


def test_killed_between_cancelling_and_releasing(fake_nodes, fake_chain, monkeypatch):
    """Killed after the refused funding tx's channel is cancelled (durably, its tx record
    with it) but before its inputs go back: the next start frees inputs reserved for a tx
    nothing holds, and nothing is sent again."""
    l1, l2, before = funded_pair(fake_nodes, fake_chain)
    l1.stop()
    start_crashing_at(l1, "funding_refused_cancelled", monkeypatch)
    l1.rpc.connect(l2.uri())
    refuse_next_broadcast(fake_chain)
    with pytest.raises((OSError, ValueError)):  # its RPC connection broke
        l1.rpc.fundchannel(l2.id, AMOUNT)
    l1.wait_for_log(f"{DEV_CRASH_ENV}=funding_refused_cancelled: killing ourselves")
    wait_killed(l1)
    l2.wait_for_log(f"Peer sent error: {re.escape(CANCEL_TEXT)}")
    l1.start()
    l1.wait_for_log("Released the inputs of unsent transaction")
    assert_untouched(l1, before)
    fake_chain.mine(1)
    at_tip(fake_chain, l1)
    assert len(sent_txs(fake_chain)) == 1
