"""The regtest node the tests run on answers as Bitcoin Core does, whichever node it is.

Most checks share one node (module scope) to keep the file fast: it is started once,
funded once by mining 101 blocks to a P2WPKH key of ours, and stopped at the end.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTxInWitness,
    lx,
)
from bitcointx.core.key import CKey
from bitcointx.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, CScriptWitness
from bitcointx.wallet import P2TRBitcoinRegtestAddress, P2WPKHBitcoinRegtestAddress

import common.secp  # noqa: F401  (points bitcointx at coincurve's libsecp256k1)
from contrib.regtest_node import RegtestNode, RpcError, free_port

CORE_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
KEY = CKey(hashlib.sha256(b"regtest node test key").digest())
ADDRESS = P2WPKHBitcoinRegtestAddress.from_pubkey(KEY.pub)
FEE = 10_000  # sats: 1 sat/vB needs ~110 for these txs, well above the min relay fee


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    regtest = RegtestNode(tmp_path_factory.mktemp("regtest"))
    regtest.start()
    yield regtest
    regtest.stop()


@pytest.fixture(scope="module")
def coinbases(node: RegtestNode) -> list[str]:
    """Coinbase txids paying ADDRESS, the first `len - 100` of them mature."""
    hashes = node.generate(101, str(ADDRESS))
    return [node.rpc("getblock", h, 1)["tx"][0] for h in hashes]


def spend(txid: str, vout: int, value: int, to: str, fee: int = FEE) -> str:
    """Sign a one-in one-out P2WPKH spend of an output paying ADDRESS."""
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(lx(txid), vout), nSequence=0xFFFFFFFD)],
        [CMutableTxOut(value - fee, P2WPKHBitcoinRegtestAddress(to).to_scriptPubKey())],
        nVersion=2,
    )
    script_code = ADDRESS.to_redeemScript()
    sighash = script_code.sighash(
        tx, 0, SIGHASH_ALL, amount=value, sigversion=SIGVERSION_WITNESS_V0
    )
    sig = KEY.sign(sighash) + bytes([SIGHASH_ALL])
    tx.wit.vtxinwit[0] = CTxInWitness(CScriptWitness([sig, KEY.pub]))
    return tx.serialize().hex()


def other_address(tag: bytes) -> str:
    key = CKey(hashlib.sha256(tag).digest())
    return str(P2WPKHBitcoinRegtestAddress.from_pubkey(key.pub))


def rpc_error(node: RegtestNode, method: str, *params: object) -> RpcError:
    with pytest.raises(RpcError) as info:
        node.rpc(method, *params)
    return info.value


def test_chain_is_core_regtest(node: RegtestNode) -> None:
    info = node.rpc("getblockchaininfo")
    assert info["chain"] == "regtest"
    for field in ("blocks", "headers", "bestblockhash", "mediantime", "chainwork", "pruned"):
        assert field in info
    assert info["initialblockdownload"] is False
    assert node.rpc("getblockhash", 0) == CORE_GENESIS
    # Reads the chain database by iteration (broken on bcoin's leveldown until bridged).
    (tip,) = node.rpc("getchaintips")
    assert (tip["hash"], tip["status"]) == (info["bestblockhash"], "active")

    network = node.rpc("getnetworkinfo")
    assert isinstance(network["version"], int) and network["version"] >= 220000

    mempool = node.rpc("getmempoolinfo")
    assert mempool["minrelaytxfee"] == Decimal("0.00001000")
    assert mempool["mempoolminfee"] >= mempool["minrelaytxfee"]


def test_getblock_verbosity(node: RegtestNode) -> None:
    (block_hash,) = node.generate(1, str(ADDRESS))

    raw = node.rpc("getblock", block_hash, 0)
    assert isinstance(raw, str)
    header = bytes.fromhex(raw[:160])
    assert hashlib.sha256(hashlib.sha256(header).digest()).digest()[::-1].hex() == block_hash

    summary = node.rpc("getblock", block_hash, 1)
    assert summary["hash"] == block_hash
    assert isinstance(summary["tx"][0], str) and len(summary["tx"][0]) == 64
    assert summary["nTx"] == len(summary["tx"])
    assert summary["bits"] == "207fffff"

    full = node.rpc("getblock", block_hash, 2)
    coinbase = full["tx"][0]
    assert coinbase["txid"] == summary["tx"][0]
    assert "coinbase" in coinbase["vin"][0]
    out = coinbase["vout"][0]
    assert out["scriptPubKey"]["type"] == "witness_v0_keyhash"
    assert out["scriptPubKey"]["address"] == str(ADDRESS)
    assert "addresses" not in out["scriptPubKey"]
    assert str(out["value"]) == "50.00000000"


def test_generatetoaddress_taproot(node: RegtestNode) -> None:
    # bcoin predates BIP350: the launcher encodes and decodes bech32m itself.
    taproot = P2TRBitcoinRegtestAddress.from_xonly_output_pubkey(KEY.xonly_pub)
    (block_hash,) = node.generate(1, str(taproot))
    out = node.rpc("getblock", block_hash, 2)["tx"][0]["vout"][0]["scriptPubKey"]
    assert out["type"] == "witness_v1_taproot"
    assert out["address"] == str(taproot)


def test_spend_mature_coinbase(node: RegtestNode, coinbases: list[str]) -> None:
    value = 50 * 100_000_000
    dest = other_address(b"dest")

    immature = spend(coinbases[-1], 0, value, dest)
    err = rpc_error(node, "sendrawtransaction", immature)
    assert err.code == -26 and "premature-spend-of-coinbase" in err.message

    tx_hex = spend(coinbases[0], 0, value, dest)
    txid = node.rpc("sendrawtransaction", tx_hex)
    # Returned only once accepted: already in the mempool.
    assert txid in node.rpc("getrawmempool")
    assert node.rpc("gettxout", coinbases[0], 0) is None  # spent in the mempool
    assert node.rpc("sendrawtransaction", tx_hex) == txid  # resending is harmless

    conflict = spend(coinbases[0], 0, value, other_address(b"thief"), fee=2 * FEE)
    err = rpc_error(node, "sendrawtransaction", conflict)
    assert (err.code, err.message) == (-26, "txn-mempool-conflict")

    (block_hash,) = node.generate(1, str(ADDRESS))
    assert txid in node.rpc("getblock", block_hash, 1)["tx"]
    assert node.rpc("getrawmempool") == []

    txout = node.rpc("gettxout", txid, 0)
    assert txout["confirmations"] == 1
    assert txout["bestblock"] == block_hash
    assert txout["coinbase"] is False
    assert str(txout["value"]) == "49.99990000"
    assert txout["scriptPubKey"]["type"] == "witness_v0_keyhash"
    assert txout["scriptPubKey"]["address"] == dest
    assert txout["scriptPubKey"]["hex"].startswith("0014")

    err = rpc_error(node, "sendrawtransaction", conflict)
    assert err.code in (-25, -26) and "missingorspent" in err.message
    err = rpc_error(node, "sendrawtransaction", tx_hex)
    assert err.code == -27


def test_sendrawtransaction_rejects_as_core(node: RegtestNode, coinbases: list[str]) -> None:
    value = 50 * 100_000_000
    dest = other_address(b"dest")

    free = spend(coinbases[1], 0, value, dest, fee=0)
    err = rpc_error(node, "sendrawtransaction", free)
    assert err.code == -26 and err.message.startswith("min relay fee not met")

    greedy = spend(coinbases[1], 0, value, dest, fee=value // 2)
    err = rpc_error(node, "sendrawtransaction", greedy)
    assert err.code == -25 and "maxfeerate" in err.message

    err = rpc_error(node, "sendrawtransaction", "00")
    assert err.code == -22


def test_decoderawtransaction(node: RegtestNode, coinbases: list[str]) -> None:
    dest = other_address(b"decode")
    decoded = node.rpc("decoderawtransaction", spend(coinbases[2], 0, 50 * 10**8, dest))
    assert decoded["vin"][0]["txid"] == coinbases[2]
    assert len(decoded["vin"][0]["txinwitness"]) == 2
    assert decoded["vout"][0]["scriptPubKey"]["address"] == dest
    assert decoded["vsize"] < decoded["size"]


def test_estimatesmartfee(node: RegtestNode) -> None:
    for target in (2, 1008):
        estimate = node.rpc("estimatesmartfee", target)
        assert isinstance(estimate["blocks"], int)
        if "feerate" in estimate:
            assert estimate["feerate"] >= Decimal("0.00001000")
        else:
            assert estimate["errors"] == ["Insufficient data or no feerate found"]
    assert node.rpc("estimatesmartfee", 6, "CONSERVATIVE")["blocks"] >= 0
    assert rpc_error(node, "estimatesmartfee", 1009).code == -8


def test_rpc_errors(node: RegtestNode) -> None:
    assert rpc_error(node, "nosuchmethod").code == -32601
    assert rpc_error(node, "getblock", "00" * 32).code == -5
    bad = RegtestNode(node.datadir, node.rpcport, node.p2pport)
    with pytest.raises(RpcError):
        bad.rpc("getblockcount")  # another password: HTTP 401


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_leaves_no_process_and_keeps_chain(tmp_path: Path) -> None:
    regtest = RegtestNode(tmp_path / "btc")
    regtest.start()
    assert regtest.proc is not None
    tip = regtest.generate(3, str(ADDRESS))[-1]
    pids = {regtest.proc.pid} | _descendants(regtest.proc.pid)
    regtest.stop()
    assert regtest.proc.returncode is not None
    assert not [pid for pid in pids if _alive(pid)]

    # The chain is on disk: a restarted node carries on from the same tip.
    with RegtestNode(tmp_path / "btc") as again:
        assert again.rpc("getbestblockhash") == tip
        assert again.rpc("getblockcount") == 3


def test_cli_start_stop(tmp_path: Path) -> None:
    datadir = tmp_path / "cli"
    rpcport = free_port()
    cmd = [sys.executable, "-m", "contrib.regtest_node"]
    root = Path(__file__).resolve().parent.parent
    started = subprocess.run(
        [*cmd, "start", f"--datadir={datadir}", f"--rpcport={rpcport}", f"--p2pport={free_port()}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    assert f"--bitcoin-rpcport={rpcport}" in started.stdout
    regtest, pid = RegtestNode.from_state(datadir)
    try:
        assert regtest.rpc("getblockcount") == 0
    finally:
        subprocess.run([*cmd, "stop", f"--datadir={datadir}"], cwd=root, timeout=60, check=True)
    assert not _alive(pid)
    assert not os.path.exists(datadir / "regtest_node.json")
