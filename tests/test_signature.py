"""common.signature: low-S signing, DER <-> compact, strict verification."""

from __future__ import annotations

import hashlib

import pytest
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from common.signature import (
    SignatureError,
    compact_to_der,
    der_to_compact,
    is_low_s,
    script_sig,
    sign_hash,
    sign_hash_compact,
    verify_hash,
    verify_hash_compact,
)

# secp256k1 group order.
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

PRIV = hashlib.sha256(b"signature test key").digest()
PUB = PrivateKey(PRIV).public_key.format(compressed=True)
OTHER_PUB = PrivateKey(hashlib.sha256(b"another key").digest()).public_key.format()
MSG = hashlib.sha256(b"a sighash").digest()


def _split(compact: bytes) -> tuple[int, int]:
    return int.from_bytes(compact[:32], "big"), int.from_bytes(compact[32:], "big")


def _compact(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _der_int(x: int) -> bytes:
    raw = x.to_bytes(32, "big").lstrip(b"\x00") or b"\x00"
    if raw[0] & 0x80:
        raw = b"\x00" + raw
    return b"\x02" + bytes([len(raw)]) + raw


def _der(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def _high_s(der: bytes) -> bytes:
    r, s = _split(der_to_compact(der))
    return _der(r, N - s)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_sign_is_low_s_and_round_trips(msg: bytes) -> None:
    der = sign_hash(PRIV, msg)
    assert is_low_s(der)
    _, s = _split(der_to_compact(der))
    assert s <= N // 2
    compact = der_to_compact(der)
    assert len(compact) == 64
    assert compact_to_der(compact) == der
    assert verify_hash(PUB, msg, der)
    assert verify_hash_compact(PUB, msg, compact)


def test_signing_is_deterministic_rfc6979() -> None:
    assert sign_hash(PRIV, MSG) == sign_hash(PRIV, MSG)
    assert sign_hash_compact(PRIV, MSG) == der_to_compact(sign_hash(PRIV, MSG))


def test_our_der_encoder_matches_libsecp() -> None:
    # Guards the helper used to forge high-S signatures below.
    der = sign_hash(PRIV, MSG)
    assert _der(*_split(der_to_compact(der))) == der


def test_high_s_rejected() -> None:
    der = sign_hash(PRIV, MSG)
    high = _high_s(der)
    assert high != der
    assert not is_low_s(high)
    assert not verify_hash(PUB, MSG, high)
    r, s = _split(der_to_compact(der))
    assert not verify_hash_compact(PUB, MSG, _compact(r, N - s))


def test_wrong_key_or_message_rejected() -> None:
    der = sign_hash(PRIV, MSG)
    assert not verify_hash(OTHER_PUB, MSG, der)
    assert not verify_hash(PUB, hashlib.sha256(b"other").digest(), der)
    assert not verify_hash_compact(OTHER_PUB, MSG, der_to_compact(der))


def test_bad_pubkey_rejected() -> None:
    der = sign_hash(PRIV, MSG)
    assert not verify_hash(b"\x02" + bytes(32), MSG, der)
    assert not verify_hash(PUB[:-1], MSG, der)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\x00",  # trailing garbage
        lambda d: b"\x31" + d[1:],  # wrong sequence tag
        lambda d: d[:1] + bytes([d[1] + 1]) + d[2:],  # wrong total length
        lambda d: b"",
        lambda d: d + b"\x01",  # sighash byte left on
    ],
    ids=["truncated", "trailing", "tag", "length", "empty", "sighash-byte"],
)
def test_malformed_der_rejected(mangle) -> None:
    bad = mangle(sign_hash(PRIV, MSG))
    assert not verify_hash(PUB, MSG, bad)
    with pytest.raises(SignatureError):
        der_to_compact(bad)


def test_non_minimal_der_rejected() -> None:
    # A needless 0x00 padding byte on r: valid BER, not strict DER (BIP66).
    r, s = _split(der_to_compact(sign_hash(PRIV, MSG)))
    r_raw = r.to_bytes(32, "big").lstrip(b"\x00")
    padded_r = b"\x02" + bytes([len(r_raw) + 2]) + b"\x00\x00" + r_raw
    body = padded_r + _der_int(s)
    bad = b"\x30" + bytes([len(body)]) + body
    assert not verify_hash(PUB, MSG, bad)
    with pytest.raises(SignatureError):
        der_to_compact(bad)


def test_compact_out_of_range_rejected() -> None:
    with pytest.raises(SignatureError):
        compact_to_der(_compact(N, 1))  # r >= n
    with pytest.raises(SignatureError):
        compact_to_der(bytes(63))
    assert not verify_hash_compact(PUB, MSG, _compact(0, 1))
    assert not verify_hash_compact(PUB, MSG, bytes(65))


def test_message_hash_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        sign_hash(PRIV, b"short")
    with pytest.raises(ValueError):
        verify_hash(PUB, b"short", sign_hash(PRIV, MSG))


def test_script_sig_appends_sighash_type() -> None:
    der = sign_hash(PRIV, MSG)
    assert script_sig(der) == der + b"\x01"
    assert script_sig(der, 0x83) == der + b"\x83"
