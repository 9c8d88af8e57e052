"""BOLT #3 Appendix C (static_remotekey) and Appendix F (anchors) test vectors.

The vectors are parsed from doc/bolts/03-transactions.md so the tests follow
the spec text: every commitment tx and every HTLC tx is rebuilt, signed with
the appendix's keys, and compared byte for byte.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bitcointx.core.script import SIGHASH_ALL, CScript
from bitcointx.core.scripteval import SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS, VerifyScript
from coincurve import PrivateKey

from common.commit_tx import (
    ChannelType,
    CommitmentKeys,
    CommitmentTx,
    Htlc,
    InitialCommitmentError,
    OutputKind,
    add_commitment_witness,
    build_commitment_tx,
    build_initial_commitment_tx,
    check_initial_commitment,
    commit_tx_base_fee,
    commitment_number_obscurer,
    htlc_is_trimmed,
    locktime_and_sequence,
    sign_commitment_tx,
    verify_commitment_sig,
)
from common.htlc_tx import (
    add_htlc_witness,
    htlc_txs_for_commitment,
    sign_htlc_tx,
    sign_remote_htlc_sig,
    verify_remote_htlc_sig,
)
from common.scripts import p2wsh, sha256

BOLT3 = Path(__file__).resolve().parent.parent / "doc" / "bolts" / "03-transactions.md"


# --- parsing the spec ---------------------------------------------------------


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def _privkey(value: str) -> bytes:
    # Appendix C: "Private keys are displayed as 32 bytes plus a trailing 1".
    raw = bytes.fromhex(value)
    assert len(raw) == 33 and raw[-1] == 1
    return raw[:32]


@dataclass
class HtlcVector:
    htlc_index: int | None  # "htlc #K" (Appendix C only)
    remote_sig: bytes
    local_sig: bytes | None  # Appendix C gives it in a comment
    tx_hex: str


@dataclass
class CommitVector:
    appendix: str
    name: str
    to_local_msat: int
    to_remote_msat: int
    feerate_per_kw: int
    dust_limit_sat: int
    use_htlcs: bool
    remote_sig: bytes
    local_sig: bytes | None
    commit_tx_hex: str
    num_htlcs: int | None = None
    base_fee: int | None = None
    htlc_txs: list[HtlcVector] = field(default_factory=list)


def _parse_params(appendix_c: str) -> dict[str, str]:
    """`key: value` lines before the first test case, INTERNAL comment lines included."""
    head = appendix_c[: appendix_c.index("name: ")]
    params: dict[str, str] = {}
    for line in head.splitlines():
        m = re.match(r"^\s*(?:INTERNAL: )?([a-z0-9_ ]+?): ([0-9a-f]+|\S+->\S+)\s*$", line)
        if m:
            params[m.group(1)] = m.group(2)
    return params


def _parse_htlc_lines(block: str) -> list[HtlcVector]:
    vectors = []
    pattern = (
        r"remote_htlc_signature = ([0-9a-f]+)\n"
        r"\s*# local_htlc_signature = ([0-9a-f]+)\n"
        r"\s*htlc_(?:success|timeout)_tx \(htlc #(\d+)\): ([0-9a-f]+)"
    )
    for m in re.finditer(pattern, block):
        vectors.append(
            HtlcVector(
                htlc_index=int(m.group(3)),
                remote_sig=bytes.fromhex(m.group(1)),
                local_sig=bytes.fromhex(m.group(2)),
                tx_hex=m.group(4),
            )
        )
    return vectors


def _optional_field(block: str, key: str, sep: str = ":") -> str | None:
    m = re.search(rf"^\s*{re.escape(key)} ?{sep} ?(\S+)\s*$", block, re.M)
    return m.group(1) if m else None


def _field(block: str, key: str, sep: str = ":") -> str:
    value = _optional_field(block, key, sep)
    assert value is not None, f"{key} missing"
    return value


def _optional_int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _parse_appendix_c(text: str, params: dict[str, str]) -> list[CommitVector]:
    appendix = _section(text, "# Appendix C", "# Appendix D")
    blocks = re.split(r"\n\s*name: ", appendix)[1:]
    vectors = []
    for block in blocks:
        name = block.splitlines()[0].strip()
        vectors.append(
            CommitVector(
                appendix="C",
                name=name,
                to_local_msat=int(_field(block, "to_local_msat")),
                to_remote_msat=int(_field(block, "to_remote_msat")),
                feerate_per_kw=int(_field(block, "local_feerate_per_kw")),
                dust_limit_sat=int(params["local_dust_limit_satoshi"]),
                use_htlcs=name != "simple commitment tx with no HTLCs",
                remote_sig=bytes.fromhex(_field(block, "remote_signature", "=")),
                local_sig=bytes.fromhex(_field(block, "# local_signature", "=")),
                commit_tx_hex=_field(block, "output commit_tx"),
                num_htlcs=int(_field(block, "num_htlcs")),
                base_fee=_optional_int(
                    _optional_field(block, "# base commitment transaction fee", "=")
                ),
                htlc_txs=_parse_htlc_lines(block),
            )
        )
    return vectors


def _parse_appendix_f(text: str) -> list[CommitVector]:
    appendix = _section(text, "# Appendix F", "# Appendix G")
    body = appendix[appendix.index("```yaml") + len("```yaml") : appendix.rindex("```")]
    vectors = []
    for case in json.loads(body):
        htlcs = [
            HtlcVector(None, bytes.fromhex(d["RemoteSigHex"]), None, d["ResolutionTxHex"])
            for d in case["HtlcDescs"]
        ]
        vectors.append(
            CommitVector(
                appendix="F",
                name=case["Name"],
                to_local_msat=case["LocalBalance"],
                to_remote_msat=case["RemoteBalance"],
                feerate_per_kw=case["FeePerKw"],
                dust_limit_sat=case["DustLimitSatoshis"],
                use_htlcs=case["UseTestHtlcs"],
                remote_sig=bytes.fromhex(case["RemoteSigHex"]),
                local_sig=None,
                commit_tx_hex=case["ExpectedCommitmentTxHex"],
                htlc_txs=htlcs,
            )
        )
    return vectors


def _parse_htlcs(params: dict[str, str]) -> dict[int, Htlc]:
    htlcs = {}
    i = 0
    while f"htlc {i} direction" in params:
        preimage = bytes.fromhex(params[f"htlc {i} payment_preimage"])
        htlcs[i] = Htlc(
            # The vectors are *local* transactions: local->remote HTLCs are offered.
            offered=params[f"htlc {i} direction"] == "local->remote",
            amount_msat=int(params[f"htlc {i} amount_msat"]),
            payment_hash=sha256(preimage),
            cltv_expiry=int(params[f"htlc {i} expiry"]),
            htlc_id=i,
        )
        i += 1
    return htlcs


TEXT = BOLT3.read_text()
PARAMS = _parse_params(_section(TEXT, "# Appendix C", "# Appendix D"))
HTLCS = _parse_htlcs(PARAMS)
PREIMAGES = {i: bytes.fromhex(PARAMS[f"htlc {i} payment_preimage"]) for i in HTLCS}
VECTORS_C = _parse_appendix_c(TEXT, PARAMS)
VECTORS_F = _parse_appendix_f(TEXT)
ALL_VECTORS = VECTORS_C + VECTORS_F


def _pub(hexkey: str) -> bytes:
    return bytes.fromhex(hexkey)


KEYS = CommitmentKeys(
    local_funding_pubkey=_pub(PARAMS["local_funding_pubkey"]),
    remote_funding_pubkey=_pub(PARAMS["remote_funding_pubkey"]),
    revocation_pubkey=_pub(PARAMS["local_revocation_pubkey"]),
    local_delayed_pubkey=_pub(PARAMS["local_delayedpubkey"]),
    # option_static_remotekey: remotepubkey is the remote payment_basepoint
    # (the vectors' to_remote is "P2WPKH(<remote_payment_basepoint>)").
    remote_pubkey=_pub(PARAMS["remote_payment_basepoint"]),
    local_htlc_pubkey=_pub(PARAMS["local_htlcpubkey"]),
    remote_htlc_pubkey=_pub(PARAMS["remote_htlcpubkey"]),
)
LOCAL_FUNDING_PRIV = _privkey(PARAMS["local_funding_privkey"])
REMOTE_FUNDING_PRIV = _privkey(PARAMS["remote_funding_privkey"])
# "We use the same values for the HTLC basepoints" as the payment basepoints,
# so local_privkey signs for local_htlcpubkey and remote_privkey for remote_htlcpubkey.
LOCAL_HTLC_PRIV = _privkey(PARAMS["local_privkey"])
REMOTE_HTLC_PRIV = _privkey(PARAMS["remote_privkey"])


def _vector_htlcs(vector: CommitVector) -> list[Htlc]:
    if not vector.use_htlcs:
        return []
    # BOLT #3 Appendix C: "HTLCs 5 and 6 are only used in the 'same amount and
    # preimage' test" (which uses HTLCs 1, 5 and 6); the others use 0-4.
    if "same amount and preimage" in vector.name:
        return [HTLCS[1], HTLCS[5], HTLCS[6]]
    return [HTLCS[i] for i in range(5)]


def _build(vector: CommitVector) -> CommitmentTx:
    channel_type = ChannelType.ANCHORS if vector.appendix == "F" else ChannelType.STATIC_REMOTEKEY
    return build_commitment_tx(
        funding_txid=bytes.fromhex(PARAMS["funding_tx_id"])[::-1],
        funding_outnum=int(PARAMS["funding_output_index"]),
        funding_sat=int(PARAMS["funding_amount_satoshi"]),
        keys=KEYS,
        to_self_delay=int(PARAMS["local_delay"]),
        dust_limit_sat=vector.dust_limit_sat,
        feerate_per_kw=vector.feerate_per_kw,
        to_local_msat=vector.to_local_msat,
        to_remote_msat=vector.to_remote_msat,
        htlcs=_vector_htlcs(vector),
        commitment_number=int(PARAMS["commitment_number"]),
        obscurer=commitment_number_obscurer(
            _pub(PARAMS["local_payment_basepoint"]), _pub(PARAMS["remote_payment_basepoint"])
        ),
        local_is_opener=True,
        channel_type=channel_type,
    )


def _verify_spend(tx, spent_witness_script: CScript, amount_sat: int) -> None:
    """Run the spent P2WSH script against input 0's witness (raises if invalid).

    bitcointx's interpreter cannot enforce CLTV/CSV, so those run as NOPs;
    signatures, hashes and branch structure are still checked.
    """
    flags = {SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS}
    VerifyScript(
        CScript(),
        p2wsh(spent_witness_script),
        tx,
        0,
        flags=flags,
        amount=amount_sat,
        witness=tx.wit.vtxinwit[0].scriptWitness,
    )


def _id(vector: CommitVector) -> str:
    return f"{vector.appendix}: {vector.name}"


HTLC_CASES = [(v, i) for v in ALL_VECTORS for i in range(len(v.htlc_txs))]


# --- sanity of the parsed material ------------------------------------------------


def test_vector_counts() -> None:
    # If parsing silently drops cases, the parametrised tests would pass vacuously.
    assert len(VECTORS_C) == _section(TEXT, "# Appendix C", "# Appendix D").count("name: ")
    assert len(VECTORS_F) == _section(TEXT, "# Appendix F", "# Appendix G").count('"Name"')
    assert len(VECTORS_C) >= 15 and len(VECTORS_F) >= 9
    for v in VECTORS_C:
        assert len(v.htlc_txs) == v.num_htlcs, v.name
    assert len(HTLC_CASES) > 40


def test_private_keys_match_vector_pubkeys() -> None:
    def pub(priv: bytes) -> bytes:
        return PrivateKey(priv).public_key.format(compressed=True)

    assert pub(LOCAL_FUNDING_PRIV) == KEYS.local_funding_pubkey
    assert pub(REMOTE_FUNDING_PRIV) == KEYS.remote_funding_pubkey
    assert pub(LOCAL_HTLC_PRIV) == KEYS.local_htlc_pubkey
    assert pub(REMOTE_HTLC_PRIV) == KEYS.remote_htlc_pubkey


def test_obscured_commitment_number() -> None:
    # Appendix C: "# obscured commitment number = 0x2bb038521914 ^ 42"
    m = re.search(r"obscured commitment number = 0x([0-9a-f]+) \^ (\d+)", TEXT)
    assert m
    obscurer = commitment_number_obscurer(
        _pub(PARAMS["local_payment_basepoint"]), _pub(PARAMS["remote_payment_basepoint"])
    )
    assert obscurer == int(m.group(1), 16)
    locktime, sequence = locktime_and_sequence(int(m.group(2)), obscurer)
    obscured = int(m.group(1), 16) ^ int(m.group(2))
    assert locktime >> 24 == 0x20 and locktime & 0xFFFFFF == obscured & 0xFFFFFF
    assert sequence >> 24 == 0x80 and sequence & 0xFFFFFF == obscured >> 24


# --- the vectors -------------------------------------------------------------------


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=_id)
def test_commitment_tx(vector: CommitVector) -> None:
    commitment = _build(vector)
    if vector.base_fee is not None:
        assert commitment.base_fee_sat == vector.base_fee
    local_sig = sign_commitment_tx(commitment, LOCAL_FUNDING_PRIV)
    remote_sig = sign_commitment_tx(commitment, REMOTE_FUNDING_PRIV)
    assert remote_sig == vector.remote_sig
    if vector.local_sig is not None:
        assert local_sig == vector.local_sig
    assert verify_commitment_sig(commitment, KEYS.remote_funding_pubkey, vector.remote_sig)
    assert not verify_commitment_sig(commitment, KEYS.local_funding_pubkey, vector.remote_sig)
    add_commitment_witness(commitment, local_sig, remote_sig)
    assert commitment.tx.serialize().hex() == vector.commit_tx_hex
    _verify_spend(commitment.tx, commitment.funding_witness_script, commitment.funding_sat)


@pytest.mark.parametrize(
    ("vector", "n"), HTLC_CASES, ids=[f"{_id(v)} htlc-tx {n}" for v, n in HTLC_CASES]
)
def test_htlc_tx(vector: CommitVector, n: int) -> None:
    commitment = _build(vector)
    htlc_txs = htlc_txs_for_commitment(commitment)
    assert len(htlc_txs) == len(vector.htlc_txs)
    expected = vector.htlc_txs[n]
    htlc_tx = htlc_txs[n]
    if expected.htlc_index is not None:
        assert htlc_tx.htlc.htlc_id == expected.htlc_index
    remote_sig = sign_remote_htlc_sig(htlc_tx, REMOTE_HTLC_PRIV)
    assert remote_sig == expected.remote_sig
    assert verify_remote_htlc_sig(htlc_tx, KEYS.remote_htlc_pubkey, expected.remote_sig)
    local_sig = sign_htlc_tx(htlc_tx, LOCAL_HTLC_PRIV, SIGHASH_ALL)
    if expected.local_sig is not None:
        assert local_sig == expected.local_sig
    add_htlc_witness(htlc_tx, remote_sig, local_sig, PREIMAGES[htlc_tx.htlc.htlc_id])
    assert htlc_tx.tx.serialize().hex() == expected.tx_hex
    _verify_spend(htlc_tx.tx, htlc_tx.htlc_witness_script, htlc_tx.htlc_amount_sat)


# --- rules not pinned down by a single vector ---------------------------------------


def test_fee_example_from_spec() -> None:
    # BOLT #3 "Fees" example: feerate 5000, dust 546; 5000 and 1000 sat offered,
    # 7000 and 800 sat received; base fee 5340 (weight 1068).
    ct = ChannelType.STATIC_REMOTEKEY
    h = [
        Htlc(True, 5_000_000, bytes(32), 500),
        Htlc(True, 1_000_000, bytes(32), 500),
        Htlc(False, 7_000_000, bytes(32), 500),
        Htlc(False, 800_000, bytes(32), 500),
    ]
    trimmed = [htlc_is_trimmed(x, 5000, 546, ct) for x in h]
    assert trimmed == [False, True, False, True]
    assert commit_tx_base_fee(5000, 2, ct) == 5340


def test_anchor_htlcs_are_trimmed_without_second_stage_fee() -> None:
    # BOLT #3: with option_anchors HTLC transactions don't include a fee.
    htlc = Htlc(True, 600_000, bytes(32), 500)
    assert not htlc_is_trimmed(htlc, 10_000, 546, ChannelType.ANCHORS)
    assert htlc_is_trimmed(htlc, 10_000, 546, ChannelType.STATIC_REMOTEKEY)


def test_anchor_present_only_for_existing_side() -> None:
    vector = next(v for v in VECTORS_F if v.to_remote_msat == 0)
    kinds = [o.kind for o in _build(vector).outputs]
    assert OutputKind.REMOTE_ANCHOR not in kinds
    assert kinds.count(OutputKind.LOCAL_ANCHOR) == 1


def test_funder_fee_clamped_when_unaffordable() -> None:
    vector = next(
        v for v in VECTORS_C if v.name == "commitment tx with fee greater than funder amount"
    )
    commitment = _build(vector)
    assert [o.kind for o in commitment.outputs] == [OutputKind.TO_REMOTE]
    assert commitment.fee_sat == 7_000_000


def test_balances_must_add_up() -> None:
    vector = VECTORS_C[0]
    bad = CommitVector(**{**vector.__dict__, "to_local_msat": vector.to_local_msat + 1})
    with pytest.raises(ValueError, match="funding"):
        _build(bad)


def _initial(**overrides: object) -> dict:
    args: dict = {
        "funding_sat": 1_000_000,
        "to_local_msat": 1_000_000_000,
        "to_remote_msat": 0,
        "feerate_per_kw": 2500,
        "local_is_opener": True,
        "local_reserve_sat": 10_000,
        "remote_reserve_sat": 10_000,
        "channel_type": ChannelType.STATIC_REMOTEKEY,
    }
    args.update(overrides)
    return args


def test_initial_commitment_ok() -> None:
    check_initial_commitment(**_initial())
    commitment = build_initial_commitment_tx(
        funding_txid=bytes(32),
        funding_outnum=0,
        keys=KEYS,
        to_self_delay=144,
        dust_limit_sat=546,
        obscurer=0,
        **_initial(),
    )
    assert [o.kind for o in commitment.outputs] == [OutputKind.TO_LOCAL]
    assert commitment.outputs[0].amount_sat == 1_000_000 - 2500 * 724 // 1000


def test_initial_commitment_funder_cannot_afford_fee() -> None:
    # 724 weight at 253 sat/kw = 183 sat; the funder has 150 sat.
    args = _initial(funding_sat=20_000, to_local_msat=150_000, to_remote_msat=19_850_000)
    args["feerate_per_kw"] = 253
    with pytest.raises(InitialCommitmentError, match=r"150000 msat.*183 sat fee"):
        check_initial_commitment(**args)


def test_initial_commitment_anchors_need_660_more() -> None:
    # 1124 weight at 253 sat/kw = 284 sat; 284 + 660 = 944 > 900 available.
    args = _initial(
        funding_sat=20_000,
        to_local_msat=900_000,
        to_remote_msat=19_100_000,
        feerate_per_kw=253,
        channel_type=ChannelType.ANCHORS,
    )
    with pytest.raises(InitialCommitmentError, match="660 sat anchors"):
        check_initial_commitment(**args)
    args["channel_type"] = ChannelType.STATIC_REMOTEKEY
    check_initial_commitment(**args)


def test_initial_commitment_both_at_or_below_reserve() -> None:
    # Funder keeps exactly its reserve after the fee, the other side has nothing.
    fee = 2500 * 724 // 1000
    args = _initial(funding_sat=10_000 + fee, to_local_msat=(10_000 + fee) * 1000)
    with pytest.raises(InitialCommitmentError, match="neither to_local 10000000 msat"):
        check_initial_commitment(**args)
    args["local_reserve_sat"] = 9_999
    check_initial_commitment(**args)


def test_initial_commitment_non_opener_pays_nothing() -> None:
    # The accepter's side: the fee comes out of to_remote (the opener's).
    check_initial_commitment(
        **_initial(to_local_msat=0, to_remote_msat=1_000_000_000, local_is_opener=False)
    )
    with pytest.raises(InitialCommitmentError, match="funder cannot afford"):
        check_initial_commitment(
            **_initial(to_local_msat=1_000_000_000, to_remote_msat=0, local_is_opener=False)
        )


@pytest.mark.parametrize("local_is_opener", [True, False])
def test_both_anchors_when_htlcs_untrimmed(local_is_opener: bool) -> None:
    # BOLT #3: add to_local_anchor "if to_local exists or there are untrimmed
    # HTLCs" (likewise to_remote_anchor): here the non-opener has no balance.
    htlc = Htlc(
        offered=not local_is_opener, amount_msat=5_000_000, payment_hash=bytes(32), cltv_expiry=500
    )
    opener_msat = 10_000_000_000 - htlc.amount_msat
    commitment = build_commitment_tx(
        funding_txid=bytes(32),
        funding_outnum=0,
        funding_sat=10_000_000,
        keys=KEYS,
        to_self_delay=144,
        dust_limit_sat=546,
        feerate_per_kw=253,
        to_local_msat=opener_msat if local_is_opener else 0,
        to_remote_msat=0 if local_is_opener else opener_msat,
        htlcs=[htlc],
        commitment_number=1,
        obscurer=0,
        local_is_opener=local_is_opener,
        channel_type=ChannelType.ANCHORS,
    )
    kinds = {o.kind for o in commitment.outputs}
    assert {OutputKind.LOCAL_ANCHOR, OutputKind.REMOTE_ANCHOR} <= kinds
    assert len(commitment.outputs) == 4
    # Without HTLCs the empty side gets no anchor.
    no_htlc = build_commitment_tx(
        funding_txid=bytes(32),
        funding_outnum=0,
        funding_sat=10_000_000,
        keys=KEYS,
        to_self_delay=144,
        dust_limit_sat=546,
        feerate_per_kw=253,
        to_local_msat=10_000_000_000 if local_is_opener else 0,
        to_remote_msat=0 if local_is_opener else 10_000_000_000,
        commitment_number=1,
        obscurer=0,
        local_is_opener=local_is_opener,
        channel_type=ChannelType.ANCHORS,
    )
    assert len(no_htlc.outputs) == 2
