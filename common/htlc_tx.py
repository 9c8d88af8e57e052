"""BOLT #3 second-stage HTLC-timeout and HTLC-success transactions.

Each spends one HTLC output of the owner's commitment tx into a revocable,
`to_self_delay`-delayed output (the same script as `to_local`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxInWitness,
    CMutableTxOut,
    COutPoint,
)
from bitcointx.core.script import (
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_SINGLE,
    CScript,
    CScriptWitness,
    SIGHASH_Type,
)

import common.secp  # noqa: F401  (before any bitcointx key operation)
from common.commit_tx import (
    ChannelType,
    CommitmentTx,
    CommitOutput,
    Htlc,
    htlc_second_stage_fee,
)
from common.scripts import p2wsh, sha256, to_local_script
from common.signature import script_sig, sign_segwit_input, verify_segwit_input


@dataclass
class HtlcTx:
    tx: CMutableTransaction
    htlc: Htlc
    commitment_output_index: int
    # The commitment's HTLC output being spent: what the signatures commit to.
    htlc_witness_script: CScript
    htlc_amount_sat: int
    channel_type: ChannelType

    @property
    def is_success(self) -> bool:
        # Received HTLCs are claimed by HTLC-success, offered ones by HTLC-timeout.
        return not self.htlc.offered

    @property
    def remote_sighash_type(self) -> SIGHASH_Type:
        """Sighash type of the peer's `htlc_signature` on this tx.

        BOLT #3: if `option_anchors` applies, `SIGHASH_SINGLE|SIGHASH_ANYONECANPAY`
        is used (so fees can be added later); the owner's own signature stays ALL.
        """
        if self.channel_type.anchors:
            return SIGHASH_SINGLE | SIGHASH_ANYONECANPAY
        return SIGHASH_ALL


def build_htlc_tx(
    *,
    commit_txid: bytes,
    output_index: int,
    htlc: Htlc,
    htlc_witness_script: CScript,
    to_self_delay: int,
    revocation_pubkey: bytes,
    local_delayed_pubkey: bytes,
    feerate_per_kw: int,
    channel_type: ChannelType,
) -> HtlcTx:
    """Unsigned HTLC-timeout (offered HTLC) or HTLC-success (received HTLC) tx.

    `commit_txid` is in internal byte order.
    """
    # BOLT #3: locktime `0` for HTLC-success, `cltv_expiry` for HTLC-timeout;
    # sequence `0` (set to `1` for `option_anchors`).
    locktime = htlc.cltv_expiry if htlc.offered else 0
    sequence = 1 if channel_type.anchors else 0
    fee = htlc_second_stage_fee(htlc, feerate_per_kw, channel_type)
    amount = htlc.amount_sat - fee
    if amount < 0:
        raise ValueError(f"HTLC of {htlc.amount_msat} msat cannot pay second-stage fee {fee}")
    out_script = to_local_script(revocation_pubkey, to_self_delay, local_delayed_pubkey)
    txin = CMutableTxIn(COutPoint(commit_txid, output_index), nSequence=sequence)
    tx = CMutableTransaction(
        [txin], [CMutableTxOut(amount, p2wsh(out_script))], nLockTime=locktime, nVersion=2
    )
    return HtlcTx(tx, htlc, output_index, htlc_witness_script, htlc.amount_sat, channel_type)


def htlc_txs_for_commitment(commitment: CommitmentTx) -> list[HtlcTx]:
    """One HTLC tx per untrimmed HTLC, in commitment output order."""
    txid = commitment.tx.GetTxid()
    keys = commitment.keys
    return [
        _htlc_tx_for_output(commitment, txid, idx, out, keys.revocation_pubkey)
        for idx, out in commitment.htlc_outputs()
    ]


def _htlc_tx_for_output(
    commitment: CommitmentTx, txid: bytes, idx: int, out: CommitOutput, revocation: bytes
) -> HtlcTx:
    assert out.htlc is not None and out.witness_script is not None
    return build_htlc_tx(
        commit_txid=txid,
        output_index=idx,
        htlc=out.htlc,
        htlc_witness_script=out.witness_script,
        to_self_delay=commitment.to_self_delay,
        revocation_pubkey=revocation,
        local_delayed_pubkey=commitment.keys.local_delayed_pubkey,
        feerate_per_kw=commitment.feerate_per_kw,
        channel_type=commitment.channel_type,
    )


def sign_htlc_tx(htlc_tx: HtlcTx, htlc_privkey: bytes, hashtype: SIGHASH_Type) -> bytes:
    """DER signature (no sighash byte) with the given sighash type."""
    return sign_segwit_input(
        htlc_privkey, htlc_tx.tx, 0, htlc_tx.htlc_witness_script, htlc_tx.htlc_amount_sat, hashtype
    )


def sign_remote_htlc_sig(htlc_tx: HtlcTx, htlc_privkey: bytes) -> bytes:
    """The `htlc_signature` we send for the peer's HTLC tx (right sighash type)."""
    return sign_htlc_tx(htlc_tx, htlc_privkey, htlc_tx.remote_sighash_type)


def verify_remote_htlc_sig(htlc_tx: HtlcTx, remote_htlc_pubkey: bytes, der: bytes) -> bool:
    """Check a peer's `htlc_signature` on our HTLC tx."""
    return verify_segwit_input(
        remote_htlc_pubkey,
        der,
        htlc_tx.tx,
        0,
        htlc_tx.htlc_witness_script,
        htlc_tx.htlc_amount_sat,
        htlc_tx.remote_sighash_type,
    )


def add_htlc_witness(
    htlc_tx: HtlcTx, remote_sig: bytes, local_sig: bytes, preimage: bytes | None = None
) -> None:
    """Witness `0 <remotehtlcsig> <localhtlcsig> <payment_preimage or empty>`.

    Signatures are DER without sighash byte; the local one is SIGHASH_ALL.
    """
    if htlc_tx.is_success:
        if preimage is None or sha256(preimage) != htlc_tx.htlc.payment_hash:
            raise ValueError("HTLC-success needs the payment preimage")
        last = preimage
    else:
        last = b""
    stack = [
        b"",
        script_sig(remote_sig, htlc_tx.remote_sighash_type),
        script_sig(local_sig, SIGHASH_ALL),
        last,
        bytes(htlc_tx.htlc_witness_script),
    ]
    htlc_tx.tx.wit.vtxinwit[0] = CMutableTxInWitness(CScriptWitness(stack))
