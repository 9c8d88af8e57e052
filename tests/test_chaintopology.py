"""lightningd/chaintopology.py against the in-process fake Bitcoin Core."""

from __future__ import annotations

import asyncio
import random

import pytest
from bitcointx import segwit_addr
from bitcointx.core import CMutableTransaction, CMutableTxIn, CMutableTxOut, COutPoint

from common.chainparams import CHAINS
from common.status import LogLevel
from lightningd.bitcoind import Bitcoind
from lightningd.chaintopology import (
    BroadcastError,
    ChainTopology,
    param_feerate,
    parse_block,
)
from lightningd.db import Database
from lightningd.jsonrpc import ParamError, RpcError
from lightningd.log import NodeLog
from tests.fake_bitcoind import OP_TRUE_SCRIPT, FakeBitcoind, start_regtest_node_or_skip

REGTEST = CHAINS["regtest"].chain_hash


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class Setup:
    """A fake bitcoind, a database and a topology over them."""

    def __init__(self, tmp_path, network: str = "regtest", **fake_args) -> None:
        self.tmp_path = tmp_path
        self.network = network
        chain = {"regtest": "regtest", "testnet": "test"}[network]
        self.fake = FakeBitcoind(chain=chain, **fake_args)
        self.log = NodeLog(LogLevel.BROKEN, [], memory_lines=5000)
        self.db = Database.open(str(tmp_path / "l.sqlite3"), CHAINS[network].chain_hash)
        self.seen: list[int] = []
        self.reorgs: list[int] = []

    async def topology(self, **kwargs) -> ChainTopology:
        if self.fake._server is None and not kwargs.pop("fake_down", False):
            await self.fake.start()
        btc = Bitcoind(self.log, self.network, "127.0.0.1", self.fake.port, "rpcuser", "rpcpass")
        topo = ChainTopology(btc, self.db, self.log, self.network, poll_interval=0.02, **kwargs)

        async def on_block(block, height):
            assert block.hash == self.fake.blocks[height].hash
            self.seen.append(height)

        async def on_reorg(height):
            self.reorgs.append(height)

        topo.add_block_listener(on_block)
        topo.add_reorg_listener(on_reorg)
        return topo

    def stored(self) -> list[tuple[int, bytes]]:
        rows = self.db.query("SELECT height, hash FROM blocks ORDER BY height")
        return [(r["height"], bytes(r["hash"])) for r in rows]

    def chain(self, low: int) -> list[tuple[int, bytes]]:
        return [(h, b.hash) for h, b in enumerate(self.fake.blocks) if h >= low]


def spend(prev_txid: bytes, value: int, n: int = 0) -> CMutableTransaction:
    """A tx spending an OP_TRUE output to another OP_TRUE output."""
    return CMutableTransaction(
        [CMutableTxIn(COutPoint(prev_txid, n))], [CMutableTxOut(value, OP_TRUE_SCRIPT)]
    )


def test_parse_block_matches_the_fake():
    fake = FakeBitcoind()
    block = fake.mine(1)[0]
    parsed = parse_block(block.serialize())
    assert parsed.hash == block.hash
    assert parsed.prev_hash == fake.blocks[0].hash
    assert [t.GetTxid() for t in parsed.txs] == [t.GetTxid() for t in block.txs]
    with pytest.raises(ValueError):
        parse_block(block.serialize() + b"\0")


def test_first_start_a_few_blocks_below_the_tip_then_follows(tmp_path):
    async def main():
        s = Setup(tmp_path)
        s.fake.mine(20)
        topo = await s.topology()
        await topo.start()
        assert topo.height == 20
        assert s.stored() == s.chain(14)
        assert s.seen == list(range(14, 21))
        s.fake.mine(2)
        await asyncio.wait_for(topo.wait_for_height(22), 5)
        assert s.seen[-2:] == [21, 22]
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_given_start_height(tmp_path):
    async def main():
        s = Setup(tmp_path)
        s.fake.mine(5)
        topo = await s.topology(start_height=1)
        await topo.start()
        assert s.stored() == s.chain(1)
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_reorg_deletes_orphans_nulls_heights_and_follows_new_branch(tmp_path):
    async def main():
        s = Setup(tmp_path)
        s.fake.mine(10)
        topo = await s.topology(start_height=0)
        await topo.start()
        # An output and a transaction confirmed in block 9, which is about to vanish.
        s.db.execute(
            "INSERT INTO outputs (prev_out_tx, prev_out_index, value, type, keyindex,"
            " scriptpubkey, confirmation_height) VALUES (?, 0, 1000, 6, 1, x'00', 9)",
            (b"\x01" * 32,),
        )
        s.db.execute(
            "INSERT INTO transactions (id, blockheight, txindex, rawtx) VALUES (?, 9, 1, x'00')",
            (b"\x02" * 32,),
        )
        s.fake.reorg(3, 4)  # blocks 8..10 replaced by 8..11
        await topo.poll()
        assert s.reorgs == [7]
        assert topo.height == 11 and s.stored() == s.chain(0)
        assert s.seen[-4:] == [8, 9, 10, 11]
        out = s.db.query_one("SELECT confirmation_height FROM outputs")
        assert out["confirmation_height"] is None
        tx = s.db.query_one("SELECT blockheight FROM transactions")
        assert tx["blockheight"] is None
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_reorg_to_a_shorter_chain(tmp_path):
    async def main():
        s = Setup(tmp_path)
        s.fake.mine(6)
        topo = await s.topology(start_height=0)
        await topo.start()
        s.fake.reorg(3, 1)  # 4..6 replaced by a single block 4
        await topo.poll()
        assert s.reorgs == [3]
        assert topo.height == 4 and s.stored() == s.chain(0)
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_watch_txid_sees_depth_change_and_reorg(tmp_path):
    async def main():
        s = Setup(tmp_path)
        coinbase = s.fake.mine(1)[0].txs[0]
        topo = await s.topology(start_height=0)
        await topo.start()
        tx = spend(coinbase.GetTxid(), 49_0000_0000)
        txid = await topo.broadcast(tx.serialize())
        assert txid == tx.GetTxid() and txid in s.fake.mempool
        depths = []

        async def watcher(depth, height, index):
            depths.append((depth, height, index))

        topo.watch_txid(txid, watcher)
        s.fake.mine(1)
        await topo.poll()
        assert depths == [(1, 2, 1)]
        s.fake.mine(1)
        await topo.poll()
        assert depths[-1] == (2, 2, 1)
        s.fake.reorg(2, 3, txs=[])  # both blocks gone; the tx back in no block
        await topo.poll()
        assert (0, None, None) in depths
        # Ours and unconfirmed: we sent it again on the new blocks.
        assert txid in s.fake.mempool
        s.fake.mine(1)
        await topo.poll()
        assert depths[-1] == (1, 5, 1)
        # A late watcher hears the current depth at once.
        late = []

        async def late_watcher(depth, height, index):
            late.append(depth)

        topo.watch_txid(txid, late_watcher)
        await asyncio.sleep(0.05)
        assert late == [1]
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_many_watches_are_told_with_a_few_queries(tmp_path):
    """A restart watches every channel's funding: depths come from one query per batch of
    txids (per new block, and once for the new watches), not one per watch."""

    async def main():
        s = Setup(tmp_path)
        blocks = s.fake.mine(3)
        topo = await s.topology(start_height=0)
        told: dict[bytes, list[tuple]] = {}

        def watcher(txid: bytes):
            async def depth_changed(depth, height, index):
                told.setdefault(txid, []).append((depth, height, index))

            return depth_changed

        unknown = [random.randbytes(32) for _ in range(1200)]
        coinbases = [b.txs[0].GetTxid() for b in blocks]
        for txid in [*unknown, *coinbases]:
            topo.watch_txid(txid, watcher(txid))
        dropped = []

        async def unwatched(depth, height, index):
            dropped.append(depth)

        topo.watch_txid(coinbases[0], unwatched)
        topo.unwatch_txid(coinbases[0], unwatched)  # before its first telling: never told
        queries = []
        query = s.db.query

        def counting(sql, params=()):
            if "blockheight IS NOT NULL AND id IN" in sql:
                queries.append(len(params))
            return query(sql, params)

        s.db.query = counting
        await topo.start()
        await asyncio.sleep(0.05)
        # Each coinbase was told its depth as each block came, the last one at the tip (3).
        for height, txid in enumerate(coinbases, start=1):
            assert told[txid][-1] == (3 - height + 1, height, 0)
        assert not set(told) - set(coinbases) and not dropped
        # 4 blocks processed + the new watches, each in 3 batches of at most 500 txids.
        assert len(queries) <= 5 * 3 and max(queries) <= 500
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_broadcast_refused_already_confirmed_and_unreachable(tmp_path):
    async def main():
        s = Setup(tmp_path)
        coinbase = s.fake.mine(1)[0].txs[0]
        topo = await s.topology(start_height=0)
        await topo.start()
        bogus = spend(b"\x07" * 32, 1000)
        with pytest.raises(BroadcastError, match="inputs are spent or unknown") as err:
            await topo.broadcast(bogus.serialize())
        assert err.value.final
        assert s.db.query("SELECT * FROM transactions") == []
        with pytest.raises(BroadcastError, match="cannot parse"):
            await topo.broadcast(b"\x01\x02")

        tx = spend(coinbase.GetTxid(), 1000)
        await s.fake.stop()
        with pytest.raises(BroadcastError, match="unreachable") as err:
            await topo.broadcast(tx.serialize())
        assert not err.value.final
        await topo.poll()  # down: logged, nothing lost
        assert topo.height == 1
        await s.fake.start()
        s.fake.mine(1, txs=[])
        await topo.poll()  # a new block: unconfirmed txs of ours are sent again
        assert tx.GetTxid() in s.fake.mempool
        s.fake.mine(1)
        await topo.poll()
        assert topo.tx_confirmation(tx.GetTxid()) == (3, 1)
        # Sending a confirmed tx again is fine (bitcoind's -27).
        assert await topo.broadcast(tx.serialize()) == tx.GetTxid()
        unusual = [e.message for e in s.log.entries(LogLevel.UNUSUAL)]
        assert sum("bitcoind unreachable" in m for m in unusual) == 1
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_resent_as_soon_as_bitcoind_answers_again(tmp_path):
    """No new block needed: a tx bitcoind never got (down when sent), or lost with its
    mempool (restarted), goes out on the first poll that reaches it."""

    async def main():
        s = Setup(tmp_path)
        coinbases = [b.txs[0] for b in s.fake.mine(2)]
        topo = await s.topology(start_height=0)
        await topo.start()
        never_got, forgotten = (spend(c.GetTxid(), 1000) for c in coinbases)
        await topo.broadcast(forgotten.serialize())
        await s.fake.stop()
        with pytest.raises(BroadcastError, match="unreachable"):
            await topo.broadcast(never_got.serialize())
        s.fake.mempool.clear()  # bitcoind restarts without its mempool
        await s.fake.start()
        await topo.poll()
        assert set(s.fake.mempool) == {never_got.GetTxid(), forgotten.GetTxid()}
        # Once, not on every poll: the next one sends nothing.
        s.fake.mempool.clear()
        await topo.poll()
        assert s.fake.mempool == {}
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_resent_after_a_reorg_to_a_shorter_chain(tmp_path):
    """invalidateblock-like: the block holding our tx goes, no block comes; the tx is not in
    bitcoind's mempool (as if it was never put back): we send it again at once."""

    async def main():
        s = Setup(tmp_path)
        coinbase = s.fake.mine(1)[0].txs[0]
        topo = await s.topology(start_height=0)
        await topo.start()
        tx = spend(coinbase.GetTxid(), 1000)
        await topo.broadcast(tx.serialize())
        s.fake.mine(1)
        await topo.poll()
        assert topo.tx_confirmation(tx.GetTxid()) == (2, 1)
        s.fake.reorg(1, 0)
        await topo.poll()
        assert topo.height == 1 and topo.tx_confirmation(tx.GetTxid()) is None
        assert tx.GetTxid() in s.fake.mempool
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_stop_whenever_it_comes_ends_the_poller(tmp_path):
    """A cancel that arrives as a bitcoind call completes must not be lost (asyncio.wait_for
    before Python 3.12 swallowed it: the poller went on and lightningd's shutdown hung)."""

    async def main():
        s = Setup(tmp_path)
        s.fake.mine(3)
        rng = random.Random(9)
        for _ in range(100):
            topo = await s.topology(start_height=0)
            topo.poll_interval = 0  # always in the middle of a call
            await topo.start()
            await asyncio.sleep(rng.uniform(0, 0.005))
            await asyncio.wait_for(topo.stop(), 5)
        await s.fake.stop()

    run(main())


def test_poll_loop_survives_bitcoind_restart(tmp_path):
    async def main():
        s = Setup(tmp_path)
        s.fake.mine(3)
        topo = await s.topology(start_height=0)
        await topo.start()
        await s.fake.stop()
        await asyncio.sleep(0.1)
        assert topo.height == 3
        s.fake.mine(2)
        await s.fake.start()
        await asyncio.wait_for(topo.wait_for_height(5), 5)
        assert s.stored() == s.chain(0)
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_restart_resumes_from_stored_tip_with_rescan(tmp_path):
    async def main():
        s = Setup(tmp_path)
        s.fake.mine(30)
        topo = await s.topology(start_height=0)
        await topo.start()
        await topo.stop()
        s.fake.mine(2)
        s.seen.clear()
        topo = await s.topology(start_height=0)
        await topo.start()
        # Rolled back CLN's 15 blocks from the stored tip (30), then caught up to 32.
        assert s.seen == list(range(16, 33))
        assert s.stored() == s.chain(0)
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_restart_notices_a_reorg_that_happened_while_down(tmp_path):
    async def main():
        s = Setup(tmp_path)
        s.fake.mine(30)
        topo = await s.topology(start_height=0, rescan=2)
        await topo.start()
        await topo.stop()
        s.fake.reorg(5, 6)
        topo = await s.topology(start_height=0, rescan=2)
        await topo.start()
        assert s.stored() == s.chain(0)
        assert s.reorgs == [25]
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_feerates_from_estimates(tmp_path):
    async def main():
        s = Setup(tmp_path, fees_perkb={2: 60000, 6: 44000, 12: 30000, 100: 15000})
        topo = await s.topology()
        await topo.start()
        got = await topo.json_feerates("perkw")
        rates = got["perkw"]
        assert rates["opening"] == 7500 and rates["penalty"] == 7500
        assert rates["mutual_close"] == 3750
        assert rates["unilateral_close"] == 11000
        assert rates["unilateral_anchor_close"] == 3750
        assert rates["min_acceptable"] == 1875
        assert rates["max_acceptable"] == 150000
        assert rates["floor"] == 253
        assert rates["estimates"][0] == {
            "blockcount": 2,
            "feerate": 15000,
            "smoothed_feerate": 15000,
        }
        # CLN's own example (same feerates) gives these figures.
        assert got["onchain_fee_estimates"] == {
            "opening_channel_satoshis": 5265,
            "mutual_close_satoshis": 2523,
            "unilateral_close_satoshis": 4170,
            "unilateral_close_nonanchor_satoshis": 6578,
            "htlc_timeout_satoshis": 7293,
            "htlc_success_satoshis": 7733,
        }
        assert (await topo.json_feerates("perkb"))["perkb"]["opening"] == 30000
        assert topo.resolve_feerate("urgent") == 11000
        assert topo.resolve_feerate("slow") == 3750
        assert topo.resolve_feerate("minimum") == 253
        assert topo.resolve_feerate("3blocks") == 15000  # never a slower target
        assert topo.resolve_feerate("7blocks") == 11000
        assert topo.resolve_feerate(1000) == 1000
        s.fake.floor_perkb = 20000  # the mempool fills up: nothing below 5000perkw
        await topo.poll()
        assert topo.feerate_perkw("mutual_close") == 5000
        assert topo.feerate_perkw("floor") == 5000
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_regtest_fakes_missing_estimates_at_the_floor(tmp_path):
    async def main():
        s = Setup(tmp_path)
        topo = await s.topology()
        await topo.start()
        rates = (await topo.json_feerates("perkw"))["perkw"]
        assert rates["opening"] == rates["unilateral_close"] == rates["floor"] == 253
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_no_estimates_elsewhere(tmp_path):
    async def main():
        s = Setup(tmp_path, network="testnet")
        topo = await s.topology()
        await topo.start()
        got = await topo.json_feerates("perkw")
        assert got["warning_missing_feerates"]
        assert "opening" not in got["perkw"] and got["perkw"]["floor"] == 253
        with pytest.raises(RpcError) as err:
            topo.resolve_feerate("opening")
        assert err.value.code == 501
        # Later estimates arrive and are used.
        s.fake.fees_perkb = {2: 4000, 6: 4000, 12: 4000, 100: 4000}
        await topo.poll()
        assert topo.resolve_feerate("opening") == 1000
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_param_feerate():
    assert param_feerate("urgent") == "urgent"
    assert param_feerate("6blocks") == "6blocks"
    assert param_feerate("1000perkw") == 1000
    assert param_feerate(4000) == 1000
    with pytest.raises(ParamError):
        param_feerate("fast")
    assert param_feerate("100perkw") == 253  # raised to the floor, as CLN's param_feerate_val


def test_a_failing_listener_does_not_stop_the_chain(tmp_path):
    async def main():
        s = Setup(tmp_path)
        topo = await s.topology(start_height=0)

        async def broken(block, height):
            raise RuntimeError("boom")

        topo._block_listeners.insert(0, broken)
        s.fake.mine(2)
        await topo.start()
        assert s.seen == [0, 1, 2]
        assert any("boom" in e.message for e in s.log.entries(LogLevel.BROKEN))
        await topo.stop()
        await s.fake.stop()

    run(main())


def test_follows_a_real_regtest_node(tmp_path):
    node = start_regtest_node_or_skip(tmp_path / "bitcoin")
    try:

        async def main():
            log = NodeLog(LogLevel.BROKEN, [], memory_lines=5000)
            db = Database.open(str(tmp_path / "l.sqlite3"), REGTEST)
            btc = Bitcoind(
                log, "regtest", "127.0.0.1", node.rpcport, node.rpcuser, node.rpcpassword
            )
            await btc.check_chain()
            topo = ChainTopology(btc, db, log, "regtest", poll_interval=0.05, start_height=0)
            await topo.start()
            address = segwit_addr.encode("bcrt", 0, b"\x01" * 20)
            node.generate(5, address)
            await asyncio.wait_for(topo.wait_for_height(5), 20)
            for height in range(6):
                row = db.query_one("SELECT hash FROM blocks WHERE height = ?", (height,))
                assert bytes(row["hash"])[::-1].hex() == node.rpc("getblockhash", height)
            assert topo.feerate_perkw("opening") >= 253
            await topo.stop()
            db.close()

        run(main())
    finally:
        node.stop()


def test_poll_loop_survives_a_bad_block(tmp_path):
    async def main():
        s = Setup(tmp_path)
        topo = await s.topology(start_height=0)
        await topo.start()
        s.fake.mine(1)
        good = s.fake.rpc_getblock
        s.fake.rpc_getblock = lambda h, v=1: "00"  # garbage where a block should be
        await asyncio.sleep(0.1)
        assert topo.height == 0
        assert any("Polling bitcoind failed" in e.message for e in s.log.entries(LogLevel.BROKEN))
        s.fake.rpc_getblock = good
        await asyncio.wait_for(topo.wait_for_height(1), 5)
        await topo.stop()
        await s.fake.stop()

    run(main())
