"""BOLT #3 commitment transactions: fees, trimming, outputs, ordering, signing.

Everything is seen from the commitment's *owner* ("local"): the side that can
broadcast it, whose own funds are delayed and revocable.  To build the peer's
commitment, call the same functions with the roles swapped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxInWitness,
    CMutableTxOut,
    COutPoint,
)
from bitcointx.core.script import SIGHASH_ALL, CScript, CScriptWitness

import common.secp  # noqa: F401  (before any bitcointx key operation)
from common.funding import funding_output
from common.scripts import (
    anchor_script,
    offered_htlc_script,
    p2wpkh,
    p2wsh,
    received_htlc_script,
    sha256,
    to_local_script,
    to_remote_anchor_script,
)
from common.signature import script_sig, sign_segwit_input, verify_segwit_input

# BOLT #3: "The amount of the output is fixed at 330 sats".
ANCHOR_OUTPUT_SAT = 330

# BOLT #3 "Fee Calculation" expected weights.
COMMIT_WEIGHT_NO_ANCHORS = 724
COMMIT_WEIGHT_ANCHORS = 1124
HTLC_OUTPUT_WEIGHT = 172
HTLC_TIMEOUT_WEIGHT = 663
HTLC_SUCCESS_WEIGHT = 703

# Feature bits (BOLT #9) that select the commitment format.
FEATURE_STATIC_REMOTEKEY = 12
FEATURE_ANCHORS_ZERO_FEE_HTLC_TX = 22

COMMITMENT_NUMBER_BITS = 48


class ChannelType(enum.Enum):
    """Commitment format.  Both imply `option_static_remotekey`."""

    STATIC_REMOTEKEY = "static_remotekey"
    ANCHORS = "anchors_zero_fee_htlc_tx"

    @property
    def anchors(self) -> bool:
        return self is ChannelType.ANCHORS

    @classmethod
    def from_feature_bits(cls, bits: Iterable[int]) -> ChannelType:
        """Map a `channel_type` feature set (even or odd bit numbers) to a format."""
        pairs = {b & ~1 for b in bits}
        if FEATURE_ANCHORS_ZERO_FEE_HTLC_TX in pairs:
            return cls.ANCHORS
        if FEATURE_STATIC_REMOTEKEY in pairs:
            return cls.STATIC_REMOTEKEY
        raise ValueError(f"unsupported channel_type feature bits {sorted(bits)}")


@dataclass(frozen=True)
class Htlc:
    """An HTLC as committed in this commitment tx.

    `offered` is from the owner's side: True for an HTLC the owner offered
    (local->remote), which the owner reclaims through an HTLC-timeout tx.
    """

    offered: bool
    amount_msat: int
    payment_hash: bytes
    cltv_expiry: int
    htlc_id: int = 0  # caller's label, carried through to the outputs

    @property
    def amount_sat(self) -> int:
        # BOLT #3: amounts "MUST be rounded down to whole satoshis".
        return self.amount_msat // 1000


@dataclass(frozen=True)
class CommitmentKeys:
    """Keys for one commitment, already derived for its per_commitment_point."""

    local_funding_pubkey: bytes
    remote_funding_pubkey: bytes
    revocation_pubkey: bytes
    local_delayed_pubkey: bytes
    remote_pubkey: bytes  # `remotepubkey`: the peer's payment_basepoint with static_remotekey
    local_htlc_pubkey: bytes
    remote_htlc_pubkey: bytes


class OutputKind(enum.Enum):
    TO_LOCAL = "to_local"
    TO_REMOTE = "to_remote"
    LOCAL_ANCHOR = "to_local_anchor"
    REMOTE_ANCHOR = "to_remote_anchor"
    OFFERED_HTLC = "offered_htlc"
    RECEIVED_HTLC = "received_htlc"


@dataclass(frozen=True)
class CommitOutput:
    kind: OutputKind
    amount_sat: int
    script_pubkey: CScript
    witness_script: CScript | None  # None for the P2WPKH to_remote
    htlc: Htlc | None = None

    def sort_key(self) -> tuple[int, bytes, int]:
        # BOLT #3: by value, then scriptpubkey (memcmp, shorter first), then
        # for HTLC outputs in increasing `cltv_expiry` order.
        cltv = self.htlc.cltv_expiry if self.htlc is not None else 0
        return (self.amount_sat, bytes(self.script_pubkey), cltv)


@dataclass
class CommitmentTx:
    tx: CMutableTransaction
    funding_witness_script: CScript
    funding_sat: int
    outputs: list[CommitOutput]  # parallel to tx.vout
    base_fee_sat: int
    keys: CommitmentKeys
    to_self_delay: int
    feerate_per_kw: int
    channel_type: ChannelType
    trimmed_htlcs: list[Htlc] = field(default_factory=list)

    @property
    def fee_sat(self) -> int:
        """Actual fee: base fee plus everything trimmed or clamped away."""
        return self.funding_sat - sum(o.amount_sat for o in self.outputs)

    def htlc_outputs(self) -> list[tuple[int, CommitOutput]]:
        """(output index, output) for every HTLC output, in transaction order.

        This is the order of `htlc_signatures` in `commitment_signed`.
        """
        return [(i, o) for i, o in enumerate(self.outputs) if o.htlc is not None]


class InitialCommitmentError(ValueError):
    """The opening parameters do not give a valid first commitment."""


# --- fees and trimming ---------------------------------------------------


def commit_tx_weight(num_untrimmed_htlcs: int, channel_type: ChannelType) -> int:
    # BOLT #3: Start with `weight` = 724 (1124 if `option_anchors` applies);
    # add 172 for each untrimmed HTLC output.
    base = COMMIT_WEIGHT_ANCHORS if channel_type.anchors else COMMIT_WEIGHT_NO_ANCHORS
    return base + HTLC_OUTPUT_WEIGHT * num_untrimmed_htlcs


def commit_tx_base_fee(
    feerate_per_kw: int, num_untrimmed_htlcs: int, channel_type: ChannelType
) -> int:
    """BOLT #3: Multiply `feerate_per_kw` by `weight`, divide by 1000 (rounding down)."""
    return feerate_per_kw * commit_tx_weight(num_untrimmed_htlcs, channel_type) // 1000


def anchors_total_sat(channel_type: ChannelType) -> int:
    # BOLT #3: "also subtract two times the fixed anchor size of 330 sats from the funder"
    return 2 * ANCHOR_OUTPUT_SAT if channel_type.anchors else 0


def htlc_timeout_fee(feerate_per_kw: int, channel_type: ChannelType) -> int:
    # BOLT #3: If `option_anchors` applies: MUST be 0; else feerate * 663 / 1000.
    return 0 if channel_type.anchors else feerate_per_kw * HTLC_TIMEOUT_WEIGHT // 1000


def htlc_success_fee(feerate_per_kw: int, channel_type: ChannelType) -> int:
    # BOLT #3: If `option_anchors` applies: MUST be 0; else feerate * 703 / 1000.
    return 0 if channel_type.anchors else feerate_per_kw * HTLC_SUCCESS_WEIGHT // 1000


def htlc_second_stage_fee(htlc: Htlc, feerate_per_kw: int, channel_type: ChannelType) -> int:
    """Fee of the HTLC tx that spends this HTLC from the owner's commitment."""
    if htlc.offered:
        return htlc_timeout_fee(feerate_per_kw, channel_type)
    return htlc_success_fee(feerate_per_kw, channel_type)


def htlc_is_trimmed(
    htlc: Htlc, feerate_per_kw: int, dust_limit_sat: int, channel_type: ChannelType
) -> bool:
    # BOLT #3: if the HTLC amount minus the HTLC-timeout (resp. -success) fee
    # would be less than `dust_limit_satoshis` set by the transaction owner:
    # MUST NOT contain that output.
    fee = htlc_second_stage_fee(htlc, feerate_per_kw, channel_type)
    return htlc.amount_sat - fee < dust_limit_sat


# --- commitment number obscuring -----------------------------------------


def commitment_number_obscurer(
    opener_payment_basepoint: bytes, accepter_payment_basepoint: bytes
) -> int:
    """BOLT #3: the lower 48 bits of SHA256(payment_basepoint from open_channel ||
    payment_basepoint from accept_channel)."""
    digest = sha256(opener_payment_basepoint + accepter_payment_basepoint)
    return int.from_bytes(digest[-COMMITMENT_NUMBER_BITS // 8 :], "big")


def locktime_and_sequence(commitment_number: int, obscurer: int) -> tuple[int, int]:
    """BOLT #3: locktime upper 8 bits 0x20, lower 24 bits of the obscured number;
    sequence upper 8 bits 0x80, lower 24 bits the upper 24 bits of it."""
    if not 0 <= commitment_number < 1 << COMMITMENT_NUMBER_BITS:
        raise ValueError(f"commitment_number {commitment_number} is not 48 bits")
    obscured = commitment_number ^ obscurer
    locktime = (0x20 << 24) | (obscured & 0xFFFFFF)
    sequence = (0x80 << 24) | ((obscured >> 24) & 0xFFFFFF)
    return locktime, sequence


# --- outputs ---------------------------------------------------------------


def _p2wsh_output(
    kind: OutputKind, amount_sat: int, wscript: CScript, htlc: Htlc | None = None
) -> CommitOutput:
    return CommitOutput(kind, amount_sat, p2wsh(wscript), wscript, htlc)


def _htlc_output(htlc: Htlc, keys: CommitmentKeys, anchors: bool) -> CommitOutput:
    if htlc.offered:
        wscript = offered_htlc_script(
            keys.revocation_pubkey,
            keys.local_htlc_pubkey,
            keys.remote_htlc_pubkey,
            htlc.payment_hash,
            anchors,
        )
        return _p2wsh_output(OutputKind.OFFERED_HTLC, htlc.amount_sat, wscript, htlc)
    wscript = received_htlc_script(
        keys.revocation_pubkey,
        keys.local_htlc_pubkey,
        keys.remote_htlc_pubkey,
        htlc.payment_hash,
        htlc.cltv_expiry,
        anchors,
    )
    return _p2wsh_output(OutputKind.RECEIVED_HTLC, htlc.amount_sat, wscript, htlc)


def _to_remote_output(amount_sat: int, keys: CommitmentKeys, anchors: bool) -> CommitOutput:
    if anchors:
        wscript = to_remote_anchor_script(keys.remote_pubkey)
        return _p2wsh_output(OutputKind.TO_REMOTE, amount_sat, wscript)
    # BOLT #3: Otherwise, this output is a simple P2WPKH to `remotepubkey`.
    return CommitOutput(OutputKind.TO_REMOTE, amount_sat, p2wpkh(keys.remote_pubkey), None)


def _subtract_funder_fee(
    to_local_msat: int, to_remote_msat: int, fee_sat: int, local_is_opener: bool
) -> tuple[int, int]:
    # BOLT #3: base fee and anchors are "extracted from the funder's amount".
    # A funder who cannot pay it all ends with nothing (the rest goes to fees).
    fee_msat = fee_sat * 1000
    if local_is_opener:
        return max(to_local_msat - fee_msat, 0), to_remote_msat
    return to_local_msat, max(to_remote_msat - fee_msat, 0)


def _check_balances(funding_sat: int, to_local_msat: int, to_remote_msat: int, htlcs) -> None:
    if to_local_msat < 0 or to_remote_msat < 0:
        raise ValueError("negative balance")
    total = to_local_msat + to_remote_msat + sum(h.amount_msat for h in htlcs)
    if total != funding_sat * 1000:
        raise ValueError(
            f"to_local {to_local_msat} + to_remote {to_remote_msat} + htlcs msat"
            f" = {total} msat, but funding is {funding_sat} sat"
        )


def build_commitment_tx(
    *,
    funding_txid: bytes,
    funding_outnum: int,
    funding_sat: int,
    keys: CommitmentKeys,
    to_self_delay: int,
    dust_limit_sat: int,
    feerate_per_kw: int,
    to_local_msat: int,
    to_remote_msat: int,
    htlcs: Sequence[Htlc] = (),
    commitment_number: int,
    obscurer: int,
    local_is_opener: bool,
    channel_type: ChannelType,
) -> CommitmentTx:
    """Build the (unsigned) commitment tx per BOLT #3 "Commitment Transaction Construction".

    `funding_txid` is in internal byte order (as in `funding_created`);
    `to_local_msat`/`to_remote_msat` are balances before fee and anchors, with
    in-flight HTLCs already taken out; `dust_limit_sat` is the owner's.
    """
    _check_balances(funding_sat, to_local_msat, to_remote_msat, htlcs)
    anchors = channel_type.anchors
    untrimmed: list[Htlc] = []
    trimmed: list[Htlc] = []
    for h in htlcs:
        is_dust = htlc_is_trimmed(h, feerate_per_kw, dust_limit_sat, channel_type)
        (trimmed if is_dust else untrimmed).append(h)
    base_fee = commit_tx_base_fee(feerate_per_kw, len(untrimmed), channel_type)
    local_msat, remote_msat = _subtract_funder_fee(
        to_local_msat, to_remote_msat, base_fee + anchors_total_sat(channel_type), local_is_opener
    )

    outputs = [_htlc_output(h, keys, anchors) for h in untrimmed]
    # BOLT #3: add to_local / to_remote if "greater or equal to dust_limit_satoshis".
    has_local = local_msat // 1000 >= dust_limit_sat
    has_remote = remote_msat // 1000 >= dust_limit_sat
    if has_local:
        wscript = to_local_script(keys.revocation_pubkey, to_self_delay, keys.local_delayed_pubkey)
        outputs.append(_p2wsh_output(OutputKind.TO_LOCAL, local_msat // 1000, wscript))
    if has_remote:
        outputs.append(_to_remote_output(remote_msat // 1000, keys, anchors))
    if anchors:
        # BOLT #3: add to_local_anchor if to_local exists or there are untrimmed
        # HTLCs; likewise to_remote_anchor for to_remote.
        if has_local or untrimmed:
            wscript = anchor_script(keys.local_funding_pubkey)
            outputs.append(_p2wsh_output(OutputKind.LOCAL_ANCHOR, ANCHOR_OUTPUT_SAT, wscript))
        if has_remote or untrimmed:
            wscript = anchor_script(keys.remote_funding_pubkey)
            outputs.append(_p2wsh_output(OutputKind.REMOTE_ANCHOR, ANCHOR_OUTPUT_SAT, wscript))
    outputs.sort(key=CommitOutput.sort_key)

    locktime, sequence = locktime_and_sequence(commitment_number, obscurer)
    txin = CMutableTxIn(COutPoint(funding_txid, funding_outnum), nSequence=sequence)
    vout = [CMutableTxOut(o.amount_sat, o.script_pubkey) for o in outputs]
    tx = CMutableTransaction([txin], vout, nLockTime=locktime, nVersion=2)
    fund = funding_output(keys.local_funding_pubkey, keys.remote_funding_pubkey, funding_sat)
    return CommitmentTx(
        tx=tx,
        funding_witness_script=fund.witness_script,
        funding_sat=funding_sat,
        outputs=outputs,
        base_fee_sat=base_fee,
        keys=keys,
        to_self_delay=to_self_delay,
        feerate_per_kw=feerate_per_kw,
        channel_type=channel_type,
        trimmed_htlcs=trimmed,
    )


# --- the first commitment --------------------------------------------------


def check_initial_commitment(
    *,
    funding_sat: int,
    to_local_msat: int,
    to_remote_msat: int,
    feerate_per_kw: int,
    local_is_opener: bool,
    local_reserve_sat: int,
    remote_reserve_sat: int,
    channel_type: ChannelType,
) -> None:
    """Raise InitialCommitmentError if the first (HTLC-free) commitment is unacceptable.

    `local_reserve_sat` is the reserve the owner must keep (set by its peer),
    `remote_reserve_sat` the one the peer must keep.
    """
    _check_balances(funding_sat, to_local_msat, to_remote_msat, ())
    fee_sat = commit_tx_base_fee(feerate_per_kw, 0, channel_type)
    needed_sat = fee_sat + anchors_total_sat(channel_type)
    funder_msat = to_local_msat if local_is_opener else to_remote_msat
    # BOLT #2: fail if the funder's amount for the initial commitment transaction
    # is not sufficient for full fee payment.
    if funder_msat < needed_sat * 1000:
        extra = f" + {anchors_total_sat(channel_type)} sat anchors" if channel_type.anchors else ""
        raise InitialCommitmentError(
            f"funder cannot afford fee on initial commitment: funder has {funder_msat} msat,"
            f" needs {fee_sat} sat fee{extra} at {feerate_per_kw} sat/kw"
        )
    local_msat, remote_msat = _subtract_funder_fee(
        to_local_msat, to_remote_msat, needed_sat, local_is_opener
    )
    # BOLT #2: fail if both `to_local` and `to_remote` amounts for the initial
    # commitment transaction are less than or equal to `channel_reserve_satoshis`.
    if local_msat <= local_reserve_sat * 1000 and remote_msat <= remote_reserve_sat * 1000:
        raise InitialCommitmentError(
            f"neither to_local {local_msat} msat nor to_remote {remote_msat} msat exceeds"
            f" its reserve ({local_reserve_sat} sat / {remote_reserve_sat} sat)"
            " on the initial commitment"
        )


def build_initial_commitment_tx(
    *,
    funding_txid: bytes,
    funding_outnum: int,
    funding_sat: int,
    keys: CommitmentKeys,
    to_self_delay: int,
    dust_limit_sat: int,
    feerate_per_kw: int,
    to_local_msat: int,
    to_remote_msat: int,
    obscurer: int,
    local_is_opener: bool,
    local_reserve_sat: int,
    remote_reserve_sat: int,
    channel_type: ChannelType,
) -> CommitmentTx:
    """Commitment number 0, no HTLCs, after the BOLT #2 affordability/reserve checks."""
    check_initial_commitment(
        funding_sat=funding_sat,
        to_local_msat=to_local_msat,
        to_remote_msat=to_remote_msat,
        feerate_per_kw=feerate_per_kw,
        local_is_opener=local_is_opener,
        local_reserve_sat=local_reserve_sat,
        remote_reserve_sat=remote_reserve_sat,
        channel_type=channel_type,
    )
    return build_commitment_tx(
        funding_txid=funding_txid,
        funding_outnum=funding_outnum,
        funding_sat=funding_sat,
        keys=keys,
        to_self_delay=to_self_delay,
        dust_limit_sat=dust_limit_sat,
        feerate_per_kw=feerate_per_kw,
        to_local_msat=to_local_msat,
        to_remote_msat=to_remote_msat,
        htlcs=(),
        commitment_number=0,
        obscurer=obscurer,
        local_is_opener=local_is_opener,
        channel_type=channel_type,
    )


# --- signatures -------------------------------------------------------------


def sign_commitment_tx(commitment: CommitmentTx, funding_privkey: bytes) -> bytes:
    """DER signature (SIGHASH_ALL, no sighash byte) over the funding input.

    Send it compact (`common.signature.der_to_compact`) in funding/commitment messages.
    """
    return sign_segwit_input(
        funding_privkey,
        commitment.tx,
        0,
        commitment.funding_witness_script,
        commitment.funding_sat,
    )


def verify_commitment_sig(commitment: CommitmentTx, funding_pubkey: bytes, der: bytes) -> bool:
    """Check a peer's DER signature (SIGHASH_ALL) on this commitment tx."""
    return verify_segwit_input(
        funding_pubkey,
        der,
        commitment.tx,
        0,
        commitment.funding_witness_script,
        commitment.funding_sat,
    )


def add_commitment_witness(commitment: CommitmentTx, local_sig: bytes, remote_sig: bytes) -> None:
    """Attach `0 <signature_for_pubkey1> <signature_for_pubkey2>` plus the funding script.

    Signatures are DER without sighash byte; they are placed in the same
    (lexicographic) order as the pubkeys in the funding script.
    """
    keys = commitment.keys
    by_key = {keys.local_funding_pubkey: local_sig, keys.remote_funding_pubkey: remote_sig}
    sigs = [script_sig(by_key[k], SIGHASH_ALL) for k in sorted(by_key)]
    # The leading empty element feeds OP_CHECKMULTISIG's extra pop.
    stack = [b"", *sigs, bytes(commitment.funding_witness_script)]
    commitment.tx.wit.vtxinwit[0] = CMutableTxInWitness(CScriptWitness(stack))
