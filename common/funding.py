"""The funding output, channel_id derivation and a simple funding transaction.

Byte order: txids passed in here are 32 raw bytes in *internal* order, i.e.
as serialised in a transaction outpoint and as carried in `funding_created`'s
`funding_txid` (the reverse of the usual hex display; use bitcointx `lx()` to
convert a displayed txid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxInWitness,
    CMutableTxOut,
    COutPoint,
    Hash160,
)
from bitcointx.core.script import (
    OP_0,
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    SIGVERSION_BASE,
    SIGVERSION_WITNESS_V0,
    CScript,
    CScriptWitness,
    SignatureHash,
)
from coincurve import PrivateKey

import common.secp  # noqa: F401  (before any bitcointx key operation)
from common.scripts import funding_script, p2wsh
from common.signature import script_sig, sign_hash

TXID_LEN = 32
SEQUENCE_FINAL = 0xFFFFFFFF


@dataclass(frozen=True)
class FundingOutput:
    witness_script: CScript
    script_pubkey: CScript
    amount_sat: int


def funding_output(
    local_funding_pubkey: bytes, remote_funding_pubkey: bytes, amount_sat: int
) -> FundingOutput:
    """BOLT #3: the funding output script is a P2WSH to the sorted 2-of-2."""
    wscript = funding_script(local_funding_pubkey, remote_funding_pubkey)
    return FundingOutput(wscript, p2wsh(wscript), amount_sat)


def derive_channel_id(funding_txid: bytes, funding_output_index: int) -> bytes:
    """BOLT #2 channel_id from a funding outpoint.

    BOLT #2: "combining the `funding_txid` and the `funding_output_index`,
    using big-endian exclusive-OR (i.e. `funding_output_index` alters the
    last 2 bytes)".  `funding_txid` is in internal byte order (as on the wire).
    """
    if len(funding_txid) != TXID_LEN:
        raise ValueError("funding_txid must be 32 bytes")
    if not 0 <= funding_output_index <= 0xFFFF:
        raise ValueError(f"funding_output_index {funding_output_index} does not fit 16 bits")
    cid = bytearray(funding_txid)
    cid[30] ^= funding_output_index >> 8
    cid[31] ^= funding_output_index & 0xFF
    return bytes(cid)


@dataclass(frozen=True)
class WalletInput:
    """A UTXO spent by the funding transaction."""

    txid: bytes  # internal byte order
    index: int
    amount_sat: int
    script_pubkey: CScript


@dataclass
class FundingTx:
    tx: CMutableTransaction
    funding_outnum: int
    funding: FundingOutput
    inputs: list[WalletInput]  # in transaction (BIP69) order, for signing


def _bip69_input_key(inp: WalletInput) -> tuple[bytes, int]:
    # BIP69 sorts by the txid as displayed (reversed internal bytes), then index.
    return (inp.txid[::-1], inp.index)


def _bip69_output_key(out: CMutableTxOut) -> tuple[int, bytes]:
    return (out.nValue, bytes(out.scriptPubKey))


def build_funding_tx(
    inputs: Sequence[WalletInput],
    funding: FundingOutput,
    change_script_pubkey: CScript | None = None,
    change_sat: int = 0,
    locktime: int = 0,
) -> FundingTx:
    """Unsigned version-2 funding tx, inputs and outputs in BIP69 order.

    The caller decides the change amount (fee policy is the wallet's business);
    no change output is added when `change_script_pubkey` is None.
    """
    total_in = sum(i.amount_sat for i in inputs)
    total_out = funding.amount_sat + (change_sat if change_script_pubkey is not None else 0)
    if total_out > total_in:
        raise ValueError(f"outputs {total_out} sat exceed inputs {total_in} sat")
    ordered = sorted(inputs, key=_bip69_input_key)
    vin = [CMutableTxIn(COutPoint(i.txid, i.index), nSequence=SEQUENCE_FINAL) for i in ordered]
    funding_out = CMutableTxOut(funding.amount_sat, funding.script_pubkey)
    vout = [funding_out]
    if change_script_pubkey is not None:
        vout.append(CMutableTxOut(change_sat, change_script_pubkey))
    vout.sort(key=_bip69_output_key)
    tx = CMutableTransaction(vin, vout, nLockTime=locktime, nVersion=2)
    return FundingTx(tx, vout.index(funding_out), funding, ordered)


def _p2pkh(pubkey_hash: bytes) -> CScript:
    return CScript([OP_DUP, OP_HASH160, pubkey_hash, OP_EQUALVERIFY, OP_CHECKSIG])


def sign_wallet_input(funding_tx: FundingTx, input_index: int, privkey: bytes) -> None:
    """Sign a P2PKH or P2WPKH wallet input of the funding tx in place (SIGHASH_ALL)."""
    tx = funding_tx.tx
    utxo = funding_tx.inputs[input_index]
    pubkey = PrivateKey(privkey).public_key.format(compressed=True)
    spk = bytes(utxo.script_pubkey)
    if spk == bytes(_p2pkh(Hash160(pubkey))):
        sighash = SignatureHash(
            utxo.script_pubkey, tx, input_index, SIGHASH_ALL, sigversion=SIGVERSION_BASE
        )
        sig = script_sig(sign_hash(privkey, sighash))
        tx.vin[input_index].scriptSig = CScript([sig, pubkey])
    elif spk == bytes(CScript([OP_0, Hash160(pubkey)])):
        # BIP143: the scriptCode of a P2WPKH spend is the matching P2PKH script.
        sighash = SignatureHash(
            _p2pkh(Hash160(pubkey)),
            tx,
            input_index,
            SIGHASH_ALL,
            amount=utxo.amount_sat,
            sigversion=SIGVERSION_WITNESS_V0,
        )
        sig = script_sig(sign_hash(privkey, sighash))
        tx.wit.vtxinwit[input_index] = CMutableTxInWitness(CScriptWitness([sig, pubkey]))
    else:
        raise ValueError(f"input {input_index}: scriptPubKey {spk.hex()} is not ours")
