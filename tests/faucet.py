"""Coins for tests from the one shared regtest chain, without burning its block subsidy.

Regtest halves the block subsidy every 150 blocks. A test that funds a wallet by mining a
coinbase to it and 100 blocks on top uses 101 blocks, and a suite of such tests runs the
subsidy down to nothing (50 BTC / 2**20 after ~3,000 blocks). The faucet mines its own
coinbases instead and pays each funding from one of them: after the first, one block per
funding (the block that confirms the payment, itself a future faucet coin).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTransaction,
    CTxInWitness,
    CTxWitness,
    lx,
)
from bitcointx.core.script import CScript, CScriptWitness
from coincurve import PrivateKey

import common.secp  # noqa: F401  (python-bitcointx's secp256k1 first, as the daemon does)
from common.chainparams import CHAINS
from common.scripts import p2wpkh
from common.signature import script_sig, sign_segwit_input
from contrib.regtest_node import RegtestNode
from hsmd.derive import p2wpkh_address
from lightningd.wallet import address_to_script

COINBASE_MATURITY = 100
FEE_SAT = 10_000  # ample for a few outputs at regtest's minimum relay fee


@dataclass(frozen=True)
class Coin:
    txid: str  # as bitcoind prints it
    outnum: int
    value_sat: int


def spend_p2wpkh(secret: bytes, coin: Coin, outputs: list[tuple[bytes, int]]) -> CTransaction:
    """`coin` (a P2WPKH output of `secret`'s key) spent to (scriptPubKey, sat) outputs."""
    pubkey = PrivateKey(secret).public_key.format()
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(lx(coin.txid), coin.outnum))],
        [CMutableTxOut(sat, CScript(script)) for script, sat in outputs],
        nVersion=2,
    )
    # BIP143: a P2WPKH input signs the P2PKH form of its key's script.
    script_code = CScript(b"\x76\xa9\x14" + p2wpkh(pubkey)[2:] + b"\x88\xac")
    der = sign_segwit_input(secret, tx, 0, script_code, coin.value_sat)
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([script_sig(der), pubkey]))])
    return tx.to_immutable()


class Faucet:
    """The coinbases of one key on one chain, paid out oldest first once mature."""

    def __init__(self, bitcoind: RegtestNode, secret: bytes) -> None:
        self.bitcoind = bitcoind
        self.secret = secret
        self.pubkey = PrivateKey(secret).public_key.format()
        self.address = p2wpkh_address(self.pubkey, "bcrt")
        self.script = p2wpkh(self.pubkey)
        self.unspent: list[tuple[int, str]] = []  # (height, coinbase txid), oldest first

    def mine(self, blocks: int) -> list[str]:
        """Mine `blocks` to the faucet: each is a coin once it has matured."""
        hashes = self.bitcoind.generate(blocks, self.address)
        tip = self.bitcoind.rpc("getblockcount")
        for i, block_hash in enumerate(hashes):
            txid = self.bitcoind.rpc("getblock", block_hash)["tx"][0]
            self.unspent.append((tip - len(hashes) + 1 + i, txid))
        return hashes

    def coin(self) -> Coin:
        """A coinbase of ours spendable in the next block (mining until there is one)."""
        if not self.unspent:
            self.mine(1)
        height, txid = self.unspent[0]
        age = self.bitcoind.rpc("getblockcount") - height
        if age < COINBASE_MATURITY:
            self.mine(COINBASE_MATURITY - age)
        self.unspent.pop(0)
        out = self.bitcoind.rpc("gettxout", txid, 0)
        return Coin(txid, 0, round(out["value"] * 100_000_000))

    def pay(self, outputs: list[tuple[str, int | None]], mine: bool = True) -> CTransaction:
        """Pay (address, sat) outputs from one coin (an amount None: all that is left);
        the rest comes back as change. Mined into one block unless `mine` is False."""
        coin = self.coin()
        regtest = CHAINS["regtest"]
        fixed = sum(sat for _, sat in outputs if sat is not None)
        rest = coin.value_sat - FEE_SAT - fixed
        assert rest >= 0, f"faucet coin of {coin.value_sat} sat cannot pay {fixed} sat"
        scripts: list[tuple[bytes, int]] = []
        for address, sat in outputs:
            script = address_to_script(address, regtest)
            assert script is not None, address
            scripts.append((script, rest if sat is None else sat))
        if all(sat is not None for _, sat in outputs) and rest > 0:
            scripts.append((self.script, rest))
        tx = spend_p2wpkh(self.secret, coin, scripts)
        self.bitcoind.rpc("sendrawtransaction", tx.serialize().hex())
        if mine:
            self.mine(1)
        return tx


_FAUCETS: dict[int, Faucet] = {}
TEST_SECRET = hashlib.sha256(b"tests/faucet.py").digest()


def faucet(bitcoind: RegtestNode) -> Faucet:
    """The tests' faucet on this chain (one per chain, so coins are not paid twice)."""
    key = id(bitcoind)
    if key not in _FAUCETS:
        _FAUCETS[key] = Faucet(bitcoind, TEST_SECRET)
    return _FAUCETS[key]
