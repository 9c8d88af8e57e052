"""bitcoind going away, losing its mempool, and reorganising under a channel open.

Two real lightningd nodes on tests/fake_bitcoind.py, whose chain the test scripts: it can
go down and come back on the same port, forget its mempool as a restarted bitcoind does,
and reorganise a block away without mining its transactions again (which a real node's
invalidateblock would not allow: it puts them back in its mempool). The rules:

- an open whose channel is stored is never reported failed because bitcoind was away:
  its funding tx is queued and sent again once bitcoind is back;
- lightningd sends its unconfirmed funding tx again when bitcoind returns and after a
  reorg, without waiting for someone else's next block;
- a channel is never CHANNELD_NORMAL on a funding tx that is not buried in the chain;
- a fundee forgets a channel whose funding tx it has not seen in 2016 blocks (BOLT #2).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bitcointx.core import CTransaction
from pyln.client import RpcError

from common.chainparams import CHAINS
from lightningd.channel_control import FUNDEE_FORGET_BLOCKS
from lightningd.wallet import address_to_script
from tests.fake_bitcoind import OP_TRUE_SCRIPT, FakeBitcoind
from tests.node import Node, NodeFactory, wait_for
from tests.test_crash_matrix import (
    AMOUNT,
    assert_accounted,
    assert_untouched,
    start_crashing_at,
    wait_killed,
    wallet_msat,
)
from tests.test_fundchannel import FAST, states

OPTIONS = (*FAST, "--funding-confirms=3")
AWAITING, NORMAL = "CHANNELD_AWAITING_LOCKIN", "CHANNELD_NORMAL"
COINBASE_MATURITY = 100


class FakeChain:
    """A FakeBitcoind served from its own thread; every call runs in that thread's loop."""

    def __init__(self) -> None:
        self.fake = FakeBitcoind()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.fake.start)

    # NodeFactory reads these, as it does from a RegtestNode.
    @property
    def rpcport(self) -> int:
        return self.fake.port

    @property
    def rpcuser(self) -> str:
        return self.fake.user

    @property
    def rpcpassword(self) -> str:
        return self.fake.password

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def mine(
        self, n: int, txs: list[CTransaction] | None = None, script: bytes = OP_TRUE_SCRIPT
    ) -> None:
        self.call(self.fake.mine, n, script, txs)

    def mempool(self) -> set[bytes]:
        return self.call(lambda: set(self.fake.mempool))

    def sent(self, txid: bytes) -> int:
        """How many times anyone sent `txid` to this bitcoind."""

        def count() -> int:
            return sum(
                m == "sendrawtransaction"
                and CTransaction.deserialize(bytes.fromhex(p[0])).GetTxid() == txid
                for m, p in self.fake.calls
            )

        return self.call(count)

    def close(self) -> None:
        self.call(self.fake.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def chain() -> Iterator[FakeChain]:
    fake = FakeChain()
    yield fake
    fake.close()


@pytest.fixture
def nodes(tmp_path, chain):
    factory = NodeFactory(tmp_path, chain)
    yield factory
    factory.teardown()


def at_tip(chain: FakeChain, *nodes: Node, timeout: float = 20) -> None:
    height = chain.call(lambda: chain.fake.height)
    for node in nodes:
        wait_for(lambda node=node: node.rpc.getinfo()["blockheight"] == height, timeout, "the tip")


def funded_pair(nodes: NodeFactory, chain: FakeChain) -> tuple[Node, Node, int]:
    """l1 with one mature coinbase, l2 empty, connected; l1's wallet total in msat."""
    l1, l2 = nodes.get_nodes(2, *OPTIONS)
    address = l1.rpc.newaddr()["bech32"]
    script = address_to_script(address, CHAINS["regtest"])
    assert script is not None
    chain.mine(1, script=script)
    chain.mine(COINBASE_MATURITY)
    at_tip(chain, l1, l2)
    wait_for(
        lambda: [o["status"] for o in l1.rpc.listfunds()["outputs"]] == ["confirmed"],
        what="the coinbase in l1's wallet",
    )
    l1.rpc.connect(l2.uri())
    return l1, l2, wallet_msat(l1)


def funding_outputs_sat(chain: FakeChain, txid: bytes) -> int:
    def total() -> int:
        tx = next(t for b in chain.fake.blocks for t in b.txs if t.GetTxid() == txid)
        return sum(out.nValue for out in tx.vout)

    return chain.call(total)


def lock_in(chain: FakeChain, l1: Node, l2: Node, txid: bytes, before_msat: int) -> None:
    """Mine the funding (it must be in the mempool), bury it, and check the books."""
    assert txid in chain.mempool()
    chain.mine(3)
    for node in (l1, l2):
        wait_for(lambda node=node: states(node) == [NORMAL], what="CHANNELD_NORMAL")
    assert_accounted(l1, before_msat, funding_outputs_sat(chain, txid))


def txid_of(result: dict) -> bytes:
    return bytes.fromhex(result["txid"])[::-1]


def test_open_while_bitcoind_is_down(nodes, chain):
    """The channel is stored before the broadcast fails: fundchannel succeeds, and the tx
    goes out as soon as bitcoind answers again."""
    l1, l2, before = funded_pair(nodes, chain)
    chain.call(chain.fake.stop)
    result = l1.rpc.fundchannel(l2.id, AMOUNT)
    txid = txid_of(result)
    l1.wait_for_log(f"bitcoind unreachable, will retry broadcasting {result['txid']}")
    assert [c["state"] for c in l1.rpc.listpeerchannels()["channels"]] == [AWAITING]
    chain.call(chain.fake.start)
    wait_for(lambda: txid in chain.mempool(), what="the funding tx rebroadcast")
    lock_in(chain, l1, l2, txid, before)


def test_bitcoind_restarts_during_lockin_and_forgets_the_mempool(nodes, chain):
    """bitcoind goes away with our funding tx only in its mempool and comes back without
    it, having mined blocks meanwhile: the channel waits, and the tx is sent again."""
    l1, l2, before = funded_pair(nodes, chain)
    txid = txid_of(l1.rpc.fundchannel(l2.id, AMOUNT))
    assert txid in chain.mempool()
    chain.call(chain.fake.stop)
    l1.wait_for_log("bitcoind unreachable")
    chain.call(chain.fake.mempool.clear)
    chain.mine(6, txs=[])
    assert states(l1) == states(l2) == [AWAITING]
    chain.call(chain.fake.start)
    at_tip(chain, l1, l2)
    wait_for(lambda: txid in chain.mempool(), what="the funding tx rebroadcast")
    assert states(l1) == states(l2) == [AWAITING]
    lock_in(chain, l1, l2, txid, before)


def test_reorg_drops_the_funding_tx(nodes, chain):
    """The funding tx's blocks are reorganised away (the chain shrinks, as after
    invalidateblock) and later blocks lack it: the channel never becomes NORMAL on it, even
    past the height where it would have been buried; lightningd sends it again at once."""
    l1, l2, before = funded_pair(nodes, chain)
    txid = txid_of(l1.rpc.fundchannel(l2.id, AMOUNT))
    chain.mine(2)  # depth 2 of 3
    at_tip(chain, l1, l2)
    assert chain.sent(txid) == 1 and txid not in chain.mempool()
    chain.call(chain.fake.reorg, 2, 0)  # no new block: only the reorg can trigger a resend
    at_tip(chain, l1, l2)
    for node in (l1, l2):
        node.wait_for_log("Reorg: blocks")
        (chan,) = node.rpc.listpeerchannels()["channels"]
        assert chan["state"] == AWAITING and "short_channel_id" not in chan
    wait_for(lambda: txid in chain.mempool(), what="the funding tx rebroadcast after the reorg")
    # Not re-mined: three blocks without it would bury it if anyone still counted the old one.
    chain.call(chain.fake.mempool.clear)
    chain.mine(3, txs=[])
    at_tip(chain, l1, l2)
    wait_for(lambda: txid in chain.mempool(), what="the funding tx rebroadcast on a new block")
    assert states(l1) == states(l2) == [AWAITING]
    (chan,) = l1.rpc.listpeerchannels()["channels"]
    assert chan["status"] == [f"{AWAITING}:Funding needs 3 more confirmations for lockin."]
    lock_in(chain, l1, l2, txid, before)


@pytest.mark.timeout(300)  # 2016 blocks to follow, on 2 shared cores
def test_fundee_forgets_a_channel_never_funded(nodes, chain, monkeypatch):
    """The accepter died after storing the channel, before funding_signed left: the opener
    never broadcast. BOLT #2 lets the fundee forget it after 2016 blocks, not one earlier."""
    l1, l2, before = funded_pair(nodes, chain)
    l2.stop()
    start_crashing_at(l2, "channel_stored", monkeypatch)
    l1.rpc.connect(l2.uri())
    with pytest.raises(RpcError):
        l1.rpc.fundchannel(l2.id, AMOUNT)
    wait_killed(l2)
    assert_untouched(l1, before)
    l1.stop()  # only l2 needs to follow the 2016 blocks
    l2.start()
    assert states(l2) == [AWAITING]
    chain.mine(FUNDEE_FORGET_BLOCKS - 1)
    at_tip(chain, l2, timeout=120)  # 2 shared cores: a few ms a block, but 2015 of them
    assert states(l2) == [AWAITING]
    chain.mine(1)
    l2.wait_for_log(
        f"Forgetting channel: It has been {FUNDEE_FORGET_BLOCKS} blocks without the funding"
        " transaction [0-9a-f]{64} getting confirmed"
    )
    assert_untouched(l2, 0)
    l2.stop()
    l2.start()  # forgotten on disk too
    assert l2.rpc.listpeerchannels()["channels"] == []
