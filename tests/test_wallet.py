"""lightningd/wallet.py: addresses, receiving, coin selection, signing by a real hsmd."""

from __future__ import annotations

import asyncio
import os

import pytest
from bitcointx import segwit_addr
from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTransaction,
)
from bitcointx.core.psbt import PartiallySignedTransaction
from bitcointx.core.script import CScript
from coincurve import PrivateKey
from pyln.client import LightningRpc
from pyln.client import RpcError as PylnRpcError

import common.secp  # noqa: F401
from common.amount import AmountSat
from common.chainparams import CHAINS
from common.status import LogLevel
from hsmd.derive import SecretDeriver
from lightningd.bitcoind import Bitcoind
from lightningd.chaintopology import ChainTopology, txid_hex
from lightningd.db import Database
from lightningd.hsm_control import HsmControl
from lightningd.jsonrpc import JsonRpcServer, ParamError, RpcError
from lightningd.log import NodeLog
from lightningd.wallet import (
    EMERGENCY_RESERVE_SAT,
    Utxo,
    Wallet,
    address_to_script,
    p2wpkh_script,
    param_addresstype,
    param_outpoints,
    plan_spend,
    script_to_address,
    tx_core_weight,
)
from tests.fake_bitcoind import OP_TRUE_SCRIPT, FakeBitcoind, start_regtest_node_or_skip

REGTEST = CHAINS["regtest"]
SECRET = b"lightning-1".ljust(32, b"\0")
BTC = 100_000_000
# Somebody else's address: where withdrawals go.
THEIR_SCRIPT = p2wpkh_script(PrivateKey(b"\x42" * 32).public_key.format())
THEIR_ADDRESS = script_to_address(THEIR_SCRIPT, "bcrt")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Node:
    """A fake bitcoind, a database, a topology, a real hsmd and the wallet over them."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.fake = FakeBitcoind()
        self.log = NodeLog(LogLevel.BROKEN, [], memory_lines=5000)
        self.db = Database.open(str(tmp_path / "l.sqlite3"), REGTEST.chain_hash)

    async def start(self) -> Node:
        await self.fake.start()
        secret = self.tmp_path / "hsm_secret"
        secret.write_bytes(SECRET)
        os.chmod(secret, 0o400)
        self.hsm = HsmControl(self.log)
        info = await self.hsm.start(str(secret), REGTEST.chain_hash)
        btc = Bitcoind(self.log, "regtest", "127.0.0.1", self.fake.port, "rpcuser", "rpcpass")
        self.topology = ChainTopology(btc, self.db, self.log, "regtest", poll_interval=3600)
        self.topology.start_height = 0
        self.wallet = Wallet(
            self.db, self.hsm, self.topology, self.log, REGTEST, info.bip32_account_xpub
        )
        await self.topology.start()
        return self

    async def stop(self) -> None:
        await self.topology.stop()
        await self.hsm.stop()
        await self.fake.stop()

    async def mine(self, n: int = 1, **kwargs) -> None:
        self.fake.mine(n, **kwargs)
        await self.topology.poll()

    async def fund(self, *amounts: int, script: bytes | None = None, confirm: bool = True):
        """Pay each amount to a new address of ours from a fresh coinbase, one tx."""
        coinbase = self.fake.mine(1)[0].txs[0]
        outs = []
        for amount in amounts:
            to = script or self.wallet.script(self.wallet.new_keyindex())
            outs.append(CMutableTxOut(amount, CScript(to)))
        outs.append(CMutableTxOut(50 * BTC - sum(amounts) - 10_000, OP_TRUE_SCRIPT))
        tx = CMutableTransaction([CMutableTxIn(COutPoint(coinbase.GetTxid(), 0))], outs)
        self.fake.rpc_sendrawtransaction(tx.serialize().hex())
        if confirm:
            await self.mine(1)
        else:
            await self.topology.poll()
        return tx

    async def listfunds(self, spent: bool = False) -> list[dict]:
        return (await self.wallet.json_listfunds(spent))["outputs"]


def test_addresses_are_hsmd_s_bip84_keys(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        deriver = SecretDeriver(SECRET)
        for index in (0, 1, 2, 1000):
            assert node.wallet.address(index) == deriver.wallet_address(index, "bcrt")
        # CLN hands out keyindex 1 first (bip32_max_index starts at 0).
        first = await node.wallet.json_newaddr("bech32")
        second = await node.wallet.json_newaddr("bech32")
        assert first == {"bech32": deriver.wallet_address(1, "bcrt")}
        assert second == {"bech32": deriver.wallet_address(2, "bcrt")}
        assert node.db.get_var("bip32_max_index") == 2
        with pytest.raises(RpcError, match="p2tr") as err:
            await node.wallet.json_newaddr("p2tr")
        assert err.value.code == -32602
        await node.stop()

    run(main())


def test_param_parsers():
    assert param_addresstype("all") == "bech32"
    with pytest.raises(ParamError):
        param_addresstype("p2sh-segwit")
    txid = "ab" * 32
    assert param_outpoints([f"{txid}:3"]) == [(bytes.fromhex(txid)[::-1], 3)]
    for bad in ("x", [f"{txid}"], ["zz:1"], [f"{txid}:-1"]):
        with pytest.raises(ParamError):
            param_outpoints(bad)


def test_address_round_trips():
    assert address_to_script(THEIR_ADDRESS, REGTEST) == THEIR_SCRIPT
    assert address_to_script(THEIR_ADDRESS, CHAINS["bitcoin"]) is None  # wrong network
    p2pkh = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"  # testnet base58
    assert address_to_script(p2pkh, REGTEST)[:3] == b"\x76\xa9\x14"
    assert address_to_script(p2pkh[:-1] + "o", REGTEST) is None  # bad checksum
    taproot = segwit_addr.encode("bcrt", 1, b"\x07" * 32)
    assert address_to_script(taproot, REGTEST) == b"\x51\x20" + b"\x07" * 32
    assert script_to_address(b"\x51\x20" + b"\x07" * 32, "bcrt") == taproot


def test_receives_and_lists_confirmed_outputs(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        tx = await node.fund(BTC, BTC // 2)
        outputs = await node.listfunds()
        assert len(outputs) == 2
        by_amount = {o["amount_msat"]: o for o in outputs}
        one = by_amount[BTC * 1000]
        assert one["txid"] == txid_hex(tx.GetTxid())
        assert one["status"] == "confirmed" and one["blockheight"] == node.topology.height
        assert one["reserved"] is False and "reserved_to_block" not in one
        assert one["address"] == node.wallet.address(1)
        assert one["scriptpubkey"] == node.wallet.script(1).hex()
        assert (await node.wallet.json_listfunds(False))["channels"] == []
        await node.stop()

    run(main())


def test_lookahead_finds_funds_sent_to_addresses_not_yet_handed_out(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.fund(BTC, script=node.wallet.script(150))
        assert len(await node.listfunds()) == 1
        assert node.wallet.max_index == 150  # never handed out again
        assert node.wallet.script(150 + node.wallet.lookahead) in node.wallet.scripts
        await node.stop()

    run(main())


def test_withdraw_signs_broadcasts_and_tracks_change(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.fund(BTC)
        result = await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(BTC // 4), 1000, 1, None)
        tx = CTransaction.deserialize(bytes.fromhex(result["tx"]))
        assert result["txid"] == txid_hex(tx.GetTxid())
        assert tx.GetTxid() in node.fake.mempool  # the fake verified every signature
        # 1 P2WPKH input, 2 P2WPKH outputs: 42 + 272 + 2 * 124 = 562 weight at 1000perkw.
        paid = {bytes(o.scriptPubKey): o.nValue for o in tx.vout}
        assert paid[THEIR_SCRIPT] == BTC // 4
        change = BTC - BTC // 4 - 562
        assert sorted(paid.values()) == sorted([BTC // 4, change])
        assert tx.nLockTime == node.topology.height
        assert all(i.nSequence == 0xFFFFFFFD for i in tx.vin)
        psbt = PartiallySignedTransaction.from_base64(result["psbt"])
        assert psbt.unsigned_tx.GetTxid() == tx.GetTxid()
        assert psbt.inputs[0].witness_utxo.nValue == BTC

        outputs = await node.listfunds()
        assert [(o["status"], o["amount_msat"]) for o in outputs] == [
            ("unconfirmed", change * 1000)
        ]
        spent = [o for o in await node.listfunds(True) if o["status"] == "spent"]
        assert len(spent) == 1 and spent[0]["amount_msat"] == BTC * 1000
        await node.mine(1)
        assert [o["status"] for o in await node.listfunds()] == ["confirmed"]
        row = node.db.query_one("SELECT spend_height FROM outputs WHERE status = 2")
        assert row["spend_height"] == node.topology.height
        await node.stop()

    run(main())


def test_withdraw_all_and_its_errors(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        with pytest.raises(RpcError) as err:
            await node.wallet.json_withdraw(THEIR_ADDRESS, None, 1000, 1, None)
        assert err.value.code == 301
        await node.fund(BTC, BTC)
        with pytest.raises(RpcError) as err:
            await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(3 * BTC), 1000, 1, None)
        assert err.value.code == 301
        with pytest.raises(RpcError) as err:
            await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(500), 1000, 1, None)
        assert err.value.code == 302
        with pytest.raises(RpcError) as err:
            await node.wallet.json_withdraw("bc1notanaddress", AmountSat(10_000), 1000, 1, None)
        assert err.value.code == -1  # as CLN: LIGHTNINGD, "Could not parse destination address..."
        # Nothing was left reserved by the failures.
        assert not any(o["reserved"] for o in await node.listfunds())

        result = await node.wallet.json_withdraw(THEIR_ADDRESS, None, "opening", 1, None)
        tx = CTransaction.deserialize(bytes.fromhex(result["tx"]))
        # Regtest feerates are the 253perkw floor: 2 inputs, 1 output, no change.
        weight = tx_core_weight(2, 1) + 2 * 272 + 124
        assert [o.nValue for o in tx.vout] == [2 * BTC - 253 * weight // 1000]
        assert await node.listfunds() == []
        await node.stop()

    run(main())


def test_minconf_and_explicit_utxos(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.fund(BTC)
        first = await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(BTC // 4), 1000, 1, None)
        # Our change is unconfirmed: not spendable at minconf 1.
        (change,) = await node.listfunds()
        assert change["status"] == "unconfirmed"
        with pytest.raises(RpcError) as err:
            await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(10_000), 1000, 1, None)
        assert err.value.code == 301
        point = (bytes.fromhex(first["txid"])[::-1], change["output"])
        result = await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(10_000), 1000, 0, [point])
        tx = CTransaction.deserialize(bytes.fromhex(result["tx"]))
        assert [(i.prevout.hash, i.prevout.n) for i in tx.vin] == [point]
        assert tx.GetTxid() in node.fake.mempool
        with pytest.raises(RpcError, match="Already spent"):
            await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(10_000), 1000, 0, [point])
        with pytest.raises(RpcError, match="Unknown UTXO"):
            await node.wallet.json_withdraw(
                THEIR_ADDRESS, AmountSat(10_000), 1000, 0, [(b"\x01" * 32, 0)]
            )
        await node.stop()

    run(main())


def test_emergency_reserve_with_anchor_channels(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        node.wallet.needs_emergency_reserve = lambda: True
        await node.fund(100_000)
        with pytest.raises(RpcError) as err:
            await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(90_000), 1000, 1, None)
        assert err.value.code == 313
        result = await node.wallet.json_withdraw(THEIR_ADDRESS, None, 1000, 1, None)
        tx = CTransaction.deserialize(bytes.fromhex(result["tx"]))
        kept = [o.nValue for o in tx.vout if bytes(o.scriptPubKey) != THEIR_SCRIPT]
        assert kept == [EMERGENCY_RESERVE_SAT]
        await node.stop()

    run(main())


def test_fund_outputs_reserves_and_release_frees(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.fund(BTC)
        funding_script = b"\x00\x20" + b"\x11" * 32
        funded, tx = await node.wallet.fund_outputs([(funding_script, AmountSat(500_000))], 2000)
        outnum = funded.outnums[0]
        assert bytes(tx.vout[outnum].scriptPubKey) == funding_script
        assert tx.vout[outnum].nValue == 500_000
        listed = await node.listfunds()
        assert listed[0]["reserved"] is True
        assert listed[0]["reserved_to_block"] == node.topology.height + 72
        with pytest.raises(RpcError) as err:  # nothing else to spend
            await node.wallet.fund_outputs([(funding_script, AmountSat(10_000))], 2000)
        assert err.value.code == 301
        node.wallet.release(tx)
        assert (await node.listfunds())[0]["reserved"] is False

        # Several outputs at once (multifundchannel), one of them "all".
        other = b"\x00\x20" + b"\x22" * 32
        funded, signed = await node.wallet.fund_outputs(
            [(funding_script, AmountSat(300_000)), (other, None)], 1000
        )
        assert signed.GetTxid() == funded.tx.GetTxid()
        assert funded.change_outnum is None
        assert funded.tx.vout[funded.outnums[0]].nValue == 300_000
        assert funded.tx.vout[funded.outnums[1]].nValue == funded.amounts[1]
        assert sum(funded.amounts) + funded.fee_sat == BTC
        txid = await node.wallet.broadcast(signed)
        assert txid in node.fake.mempool
        await node.stop()

    run(main())


def test_reservation_lapses_after_72_blocks(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.fund(BTC)
        await node.wallet.fund_outputs([(THEIR_SCRIPT, AmountSat(10_000))], 1000)
        await node.mine(71)
        assert (await node.listfunds())[0]["reserved"] is True
        await node.mine(1)
        assert (await node.listfunds())[0]["reserved"] is False
        assert len(node.wallet.spendable(1)) == 1
        await node.stop()

    run(main())


def test_refused_broadcast_releases_inputs(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.fund(BTC)
        node.fake.errors["sendrawtransaction"] = [(-26, "min relay fee not met")]
        with pytest.raises(RpcError, match="min relay fee not met"):
            await node.wallet.json_withdraw(THEIR_ADDRESS, AmountSat(10_000), 1000, 1, None)
        outputs = await node.listfunds()
        assert [(o["status"], o["reserved"]) for o in outputs] == [("confirmed", False)]
        await node.stop()

    run(main())


def test_reorg_unconfirms_then_reconfirms(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        tx = await node.fund(BTC)
        height = node.topology.height
        node.fake.reorg(1, 2, txs=[])
        await node.topology.poll()
        assert (await node.listfunds())[0]["status"] == "unconfirmed"
        await node.mine(1, txs=[tx])
        outputs = await node.listfunds()
        assert outputs[0]["status"] == "confirmed"
        assert outputs[0]["blockheight"] == height + 2
        await node.stop()

    run(main())


def test_immature_coinbase_is_not_spendable(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.mine(1, script=node.wallet.script(node.wallet.new_keyindex()))
        assert len(await node.listfunds()) == 1
        assert node.wallet.spendable(1) == []
        await node.mine(99)
        assert len(node.wallet.spendable(1)) == 1
        await node.stop()

    run(main())


def test_reserveinputs_and_unreserveinputs(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        tx = await node.fund(BTC)
        spend = CMutableTransaction(
            [CMutableTxIn(COutPoint(tx.GetTxid(), 0))], [CMutableTxOut(1000, THEIR_SCRIPT)]
        )
        psbt = PartiallySignedTransaction(unsigned_tx=CTransaction.from_tx(spend))
        height = node.topology.height
        got = await node.wallet.json_reserveinputs(psbt, True, 72)
        assert got["reservations"] == [
            {
                "txid": txid_hex(tx.GetTxid()),
                "vout": 0,
                "was_reserved": False,
                "reserved": True,
                "reserved_to_block": height + 72,
            }
        ]
        with pytest.raises(RpcError, match="already reserved"):
            await node.wallet.json_reserveinputs(psbt, True, 72)
        got = await node.wallet.json_reserveinputs(psbt, False, 10)
        assert got["reservations"][0]["reserved_to_block"] == height + 82
        got = await node.wallet.json_unreserveinputs(psbt, 72)
        assert got["reservations"][0]["reserved_to_block"] == height + 10
        got = await node.wallet.json_unreserveinputs(psbt, 72)
        assert got["reservations"][0]["reserved"] is False
        assert (await node.listfunds())[0]["reserved"] is False
        await node.stop()

    run(main())


def reserved_by_outnum(outputs: list[dict]) -> dict[int, bool]:
    return {o["output"]: o["reserved"] for o in outputs}


def psbt_spending(tx, *outnums: int) -> PartiallySignedTransaction:
    spend = CMutableTransaction(
        [CMutableTxIn(COutPoint(tx.GetTxid(), n)) for n in outnums],
        [CMutableTxOut(1000, THEIR_SCRIPT)],
    )
    return PartiallySignedTransaction(unsigned_tx=CTransaction.from_tx(spend))


def test_start_releases_the_inputs_of_a_tx_never_recorded(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        await node.fund(BTC, BTC // 2)  # outnums 0 and 1; the largest is chosen first
        unsent = node.wallet.prepare([(THEIR_SCRIPT, AmountSat(10_000))], 1000)
        recorded = node.wallet.prepare([(THEIR_SCRIPT, AmountSat(10_000))], 1000)
        assert node.wallet.get_utxo(*unsent.inputs[0].outpoint).reserved_for == unsent.txid
        # As save_channel stores fundchannel's tx with its channel (broadcast() does too).
        node.db.execute(
            "INSERT INTO transactions (id, rawtx) VALUES (?, ?)",
            (recorded.txid, recorded.tx.serialize()),
        )
        assert node.wallet.unsent_txids() == {unsent.txid}
        assert node.wallet.release_unsent() == {unsent.txid}  # what the next start does
        assert reserved_by_outnum(await node.listfunds()) == {0: False, 1: True}
        assert node.wallet.get_utxo(*unsent.inputs[0].outpoint).reserved_for is None
        assert node.wallet.release_unsent() == set()
        await node.stop()

    run(main())


def test_reserveinputs_reservations_survive_the_start(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        tx = await node.fund(BTC, BTC // 2, BTC // 4)
        taken = node.wallet.prepare([(THEIR_SCRIPT, AmountSat(10_000))], 1000)
        assert taken.inputs[0].outnum == 0
        await node.wallet.json_reserveinputs(psbt_spending(tx, 1), True, 72)
        # Reserving an unsent tx's input makes it the user's: it no longer goes with the tx.
        await node.wallet.json_reserveinputs(psbt_spending(tx, 0), False, 72)
        unsent = node.wallet.prepare([(THEIR_SCRIPT, AmountSat(10_000))], 1000)
        assert unsent.inputs[0].outnum == 2
        assert node.wallet.release_unsent() == {unsent.txid}
        assert reserved_by_outnum(await node.listfunds()) == {0: True, 1: True, 2: False}
        await node.stop()

    run(main())


def test_unreserveinputs_leaves_a_shortened_reservation_with_its_tx(tmp_path):
    async def main():
        node = await Node(tmp_path).start()
        tx = await node.fund(BTC)
        unsent = node.wallet.prepare([(THEIR_SCRIPT, AmountSat(10_000))], 1000)
        got = await node.wallet.json_unreserveinputs(psbt_spending(tx, 0), 10)
        assert got["reservations"][0]["reserved"] is True
        assert node.wallet.release_unsent() == {unsent.txid}
        assert reserved_by_outnum(await node.listfunds()) == {0: False}
        await node.stop()

    run(main())


def test_plan_spend_drops_dust_change_to_fees():
    utxo = Utxo(b"\x01" * 32, 0, 100_000, 1, THEIR_SCRIPT, 0, 1, None, None)
    weight = tx_core_weight(1, 1) + 272 + 124
    # Exactly enough for the output and a fee without change: nothing comes back.
    plan = plan_spend([utxo], [(THEIR_SCRIPT, 100_000 - weight)], 1000)
    assert plan.change_sat == 0 and plan.fee_sat == weight
    plan = plan_spend([utxo], [(THEIR_SCRIPT, 100_000 - weight - 600)], 1000)
    assert plan.change_sat == 0 and plan.fee_sat == weight + 600  # 600 - 124 is dust
    plan = plan_spend([utxo], [(THEIR_SCRIPT, 50_000)], 1000)
    assert plan.change_sat == 50_000 - (weight + 124)


def test_commands_over_json_rpc_with_pyln_client(tmp_path):
    """CLN's parameter names and result shapes, as pyln-client users see them."""

    async def main():
        node = await Node(tmp_path).start()
        server = JsonRpcServer(node.log)
        node.wallet.register_commands(server)
        node.topology.register_commands(server)
        path = str(tmp_path / "rpc")
        await server.start(path)
        await node.fund(BTC)
        rpc = LightningRpc(path)

        def calls():
            addr = rpc.newaddr()
            assert addr["bech32"].startswith("bcrt1q")
            funds = rpc.listfunds()
            assert funds["channels"] == [] and funds["outputs"][0]["amount_msat"] == BTC * 1000
            sent = rpc.withdraw(THEIR_ADDRESS, "10000sat", feerate="2000perkw")
            assert set(sent) == {"tx", "txid", "psbt"}
            try:
                rpc.withdraw(destination=THEIR_ADDRESS, satoshi="10btc", feerate="urgent")
                raise AssertionError("withdraw of 10btc worked")
            except PylnRpcError as exc:
                assert exc.error["code"] == 301
            assert rpc.feerates("perkw")["perkw"]["opening"] == 253
            return sent

        sent = await asyncio.get_running_loop().run_in_executor(None, calls)
        assert bytes.fromhex(sent["txid"])[::-1] in node.fake.mempool
        await server.stop()
        await node.stop()

    run(main())


def test_receive_and_withdraw_on_a_real_regtest_node(tmp_path):
    """hsmd's signatures and our fee arithmetic, accepted by a real node's mempool."""
    regtest = start_regtest_node_or_skip(tmp_path / "bitcoin")
    try:

        async def main():
            node = Node(tmp_path)
            secret = tmp_path / "hsm_secret"
            secret.write_bytes(SECRET)
            os.chmod(secret, 0o400)
            node.hsm = HsmControl(node.log)
            info = await node.hsm.start(str(secret), REGTEST.chain_hash)
            btc = Bitcoind(
                node.log,
                "regtest",
                "127.0.0.1",
                regtest.rpcport,
                regtest.rpcuser,
                regtest.rpcpassword,
            )
            await btc.check_chain()
            topo = ChainTopology(btc, node.db, node.log, "regtest", poll_interval=0.05)
            topo.start_height = 0
            wallet = Wallet(node.db, node.hsm, topo, node.log, REGTEST, info.bip32_account_xpub)
            await topo.start()
            ours = (await wallet.json_newaddr("bech32"))["bech32"]
            base = topo.height
            regtest.generate(101, ours)  # the first coinbase matures
            await asyncio.wait_for(topo.wait_for_height(base + 101), 30)
            # Core and bcoin let a mempool tx spend a coinbase 100 deep: two of them are.
            assert len(wallet.spendable(1)) == 2
            result = await wallet.json_withdraw(THEIR_ADDRESS, AmountSat(BTC), "opening", 1, None)
            assert result["txid"] in regtest.rpc("getrawmempool")
            regtest.generate(1, THEIR_ADDRESS)
            await asyncio.wait_for(topo.wait_for_height(base + 102), 30)
            change = [
                o
                for o in (await wallet.json_listfunds(False))["outputs"]
                if o["txid"] == result["txid"]
            ]
            assert [o["status"] for o in change] == ["confirmed"]
            await topo.stop()
            await node.hsm.stop()

        run(main())
    finally:
        regtest.stop()
