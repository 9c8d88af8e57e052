"""BOLT #3 Appendix B (funding transaction), funding script ordering, BOLT #2 channel_id."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bitcointx.core import CTransaction, lx
from bitcointx.core.script import CScript
from bitcointx.core.scripteval import SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS, VerifyScript
from coincurve import PrivateKey

from common.funding import (
    WalletInput,
    build_funding_tx,
    derive_channel_id,
    funding_output,
    sign_wallet_input,
)
from common.scripts import funding_script, p2wpkh, p2wsh

BOLT3 = Path(__file__).resolve().parent.parent / "doc" / "bolts" / "03-transactions.md"
TEXT = BOLT3.read_text()
APPENDIX_B = TEXT[TEXT.index("# Appendix B") : TEXT.index("# Appendix C")]


def _value(key: str) -> str:
    m = re.search(rf"^\s*#? ?{re.escape(key)}\s*[:=]\s*(\S+)\s*$", APPENDIX_B, re.M)
    assert m, f"{key} missing from Appendix B"
    return m.group(1)


LOCAL_FUNDING_PUBKEY = bytes.fromhex(_value("local_funding_pubkey"))
REMOTE_FUNDING_PUBKEY = bytes.fromhex(_value("remote_funding_pubkey"))


def test_funding_witness_script_matches_appendix_b() -> None:
    expected = _value("funding witness script")
    assert funding_script(LOCAL_FUNDING_PUBKEY, REMOTE_FUNDING_PUBKEY).hex() == expected


def test_funding_script_sorts_keys() -> None:
    # BOLT #3: pubkey1 is the lexicographically lesser of the two funding_pubkey.
    a = funding_script(LOCAL_FUNDING_PUBKEY, REMOTE_FUNDING_PUBKEY)
    b = funding_script(REMOTE_FUNDING_PUBKEY, LOCAL_FUNDING_PUBKEY)
    assert a == b
    lesser, greater = sorted((LOCAL_FUNDING_PUBKEY, REMOTE_FUNDING_PUBKEY))
    assert bytes(a) == b"\x52\x21" + lesser + b"\x21" + greater + b"\x52\xae"
    # Sorting is on the full compressed key, so the 02/03 prefix decides first.
    k02 = bytes.fromhex("02" + "ff" * 32)
    k03 = bytes.fromhex("03" + "00" * 32)
    assert bytes(funding_script(k03, k02))[2:35] == k02


def test_funding_script_rejects_uncompressed_key() -> None:
    with pytest.raises(ValueError):
        funding_script(b"\x04" + bytes(64), REMOTE_FUNDING_PUBKEY)


def test_funding_output_is_p2wsh() -> None:
    out = funding_output(LOCAL_FUNDING_PUBKEY, REMOTE_FUNDING_PUBKEY, 1234)
    assert out.script_pubkey == p2wsh(out.witness_script)
    assert bytes(out.script_pubkey)[:2] == b"\x00\x20" and len(out.script_pubkey) == 34
    assert out.amount_sat == 1234


def test_appendix_b_funding_tx() -> None:
    coinbase = CTransaction.deserialize(bytes.fromhex(_value("Block 1 coinbase transaction")))
    privkey = bytes.fromhex(_value("Block 1 coinbase privkey"))
    assert len(privkey) == 33 and privkey[-1] == 1  # trailing "compressed" marker
    privkey = privkey[:32]
    input_txid = lx(_value("input txid"))
    assert coinbase.GetTxid() == input_txid
    index = int(_value("input index"))
    utxo = WalletInput(
        input_txid, index, int(_value("input satoshis")), coinbase.vout[index].scriptPubKey
    )
    assert coinbase.vout[index].nValue == utxo.amount_sat

    funding = funding_output(
        LOCAL_FUNDING_PUBKEY, REMOTE_FUNDING_PUBKEY, int(_value("funding satoshis"))
    )
    # The change goes back to the coinbase key, as P2WPKH.
    change_key = PrivateKey(privkey).public_key.format(compressed=True)
    ftx = build_funding_tx([utxo], funding, p2wpkh(change_key), int(_value("change satoshis")))
    sign_wallet_input(ftx, 0, privkey)

    assert ftx.funding_outnum == int(_value("funding output"))
    assert ftx.tx.serialize().hex() == _value("funding tx")
    assert ftx.tx.GetTxid() == lx(_value("txid"))


def test_funding_tx_bip69_orders_inputs_and_outputs() -> None:
    funding = funding_output(LOCAL_FUNDING_PUBKEY, REMOTE_FUNDING_PUBKEY, 5000)
    spk = p2wpkh(LOCAL_FUNDING_PUBKEY)
    # BIP69 compares txids as displayed (reversed internal bytes).
    ins = [
        WalletInput(lx("ff" + "00" * 31), 0, 10_000, spk),
        WalletInput(lx("00" * 31 + "ff"), 1, 10_000, spk),
        WalletInput(lx("00" * 31 + "ff"), 0, 10_000, spk),
    ]
    ftx = build_funding_tx(ins, funding, spk, 20_000)
    order = [(i.prevout.hash, i.prevout.n) for i in ftx.tx.vin]
    assert order == [(ins[2].txid, 0), (ins[1].txid, 1), (ins[0].txid, 0)]
    assert ftx.funding_outnum == 0
    ftx = build_funding_tx(ins, funding, spk, 1000)
    assert ftx.funding_outnum == 1
    with pytest.raises(ValueError, match="exceed"):
        build_funding_tx(ins, funding, spk, 30_000)


def test_p2wpkh_wallet_input_signature_verifies() -> None:
    privkey = bytes(31) + b"\x07"
    pub = PrivateKey(privkey).public_key.format(compressed=True)
    utxo = WalletInput(bytes(32), 0, 50_000, p2wpkh(pub))
    ftx = build_funding_tx(
        [utxo], funding_output(LOCAL_FUNDING_PUBKEY, REMOTE_FUNDING_PUBKEY, 40_000)
    )
    sign_wallet_input(ftx, 0, privkey)
    VerifyScript(
        CScript(),
        utxo.script_pubkey,
        ftx.tx,
        0,
        flags={SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS},
        amount=utxo.amount_sat,
        witness=ftx.tx.wit.vtxinwit[0].scriptWitness,
    )
    with pytest.raises(ValueError, match="not ours"):
        sign_wallet_input(ftx, 0, bytes(31) + b"\x08")


# --- BOLT #2 channel_id ------------------------------------------------------------


def test_channel_id_uses_wire_byte_order() -> None:
    # funding_created carries funding_txid in internal order: the Appendix B txid
    # 8984...f6be appears as bef6...8489 in the commitment input's outpoint.
    txid = lx(_value("txid"))
    assert txid.hex().startswith("bef67e4e")
    assert derive_channel_id(txid, 0) == txid


def test_channel_id_xors_output_index_into_last_two_bytes() -> None:
    # BOLT #2: big-endian exclusive-OR, funding_output_index alters the last 2 bytes.
    txid = bytes(range(32))
    cid = derive_channel_id(txid, 0x0102)
    assert cid[:30] == txid[:30]
    assert cid[30] == txid[30] ^ 0x01 and cid[31] == txid[31] ^ 0x02
    assert derive_channel_id(txid, 1)[31] == txid[31] ^ 1
    assert derive_channel_id(cid, 0x0102) == txid  # XOR is its own inverse


def test_channel_id_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        derive_channel_id(bytes(32), 0x10000)
    with pytest.raises(ValueError):
        derive_channel_id(bytes(31), 0)
