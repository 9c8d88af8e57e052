"""ECDSA signatures for Lightning: DER for Bitcoin scripts, 64-byte compact on the wire.

BOLT #1 `signature` fields are 64-byte compact (r || s, big-endian); Bitcoin
witnesses carry strict DER plus a sighash byte.  Signing is RFC6979 through
libsecp256k1 (coincurve), which always yields low-S.  Verification here is
deliberately strict: only canonical DER, only low-S (BOLT #2: a signature
"non-compliant with LOW-S-standard rule" must be rejected).
"""

from __future__ import annotations

from bitcointx.core import CTransaction
from bitcointx.core.script import (
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    CScript,
    SIGHASH_Type,
    SignatureHash,
)
from coincurve import PrivateKey, PublicKey
from coincurve.ecdsa import (
    cdata_to_der,
    der_to_cdata,
    deserialize_compact,
    serialize_compact,
    signature_normalize,
)

import common.secp  # noqa: F401  (before any bitcointx key operation)

COMPACT_SIG_LEN = 64
HASH_LEN = 32


class SignatureError(ValueError):
    """A signature that is malformed or not in the canonical form we require."""


def _check_hash(msg_hash: bytes) -> None:
    if len(msg_hash) != HASH_LEN:
        raise ValueError(f"message hash must be 32 bytes, got {len(msg_hash)}")


def sign_hash(privkey: bytes, msg_hash: bytes) -> bytes:
    """Sign a 32-byte hash; returns low-S strict DER (no sighash byte)."""
    _check_hash(msg_hash)
    return PrivateKey(privkey).sign(msg_hash, hasher=None)


def sign_hash_compact(privkey: bytes, msg_hash: bytes) -> bytes:
    """Sign a 32-byte hash; returns the 64-byte compact form used on the wire."""
    return der_to_compact(sign_hash(privkey, msg_hash))


def parse_der(der: bytes):
    """Parse strict DER; reject any encoding libsecp256k1 would not emit itself."""
    try:
        cdata = der_to_cdata(der)
    except ValueError as e:
        raise SignatureError(f"invalid DER signature {der.hex()}") from e
    # libsecp256k1's parser tolerates a few non-minimal forms; requiring an exact
    # re-serialisation round trip gives the BIP66 "strict DER" we want.
    if cdata_to_der(cdata) != der:
        raise SignatureError(f"non-canonical DER signature {der.hex()}")
    return cdata


def is_low_s(der: bytes) -> bool:
    """True if the (canonical DER) signature's S is in the lower half of the order."""
    was_high, _ = signature_normalize(parse_der(der))
    return not was_high


def der_to_compact(der: bytes) -> bytes:
    """Strict DER -> 64-byte r||s."""
    return serialize_compact(parse_der(der))


def compact_to_der(compact: bytes) -> bytes:
    """64-byte r||s -> strict DER; rejects r or s out of range."""
    if len(compact) != COMPACT_SIG_LEN:
        raise SignatureError(f"compact signature must be 64 bytes, got {len(compact)}")
    try:
        return cdata_to_der(deserialize_compact(compact))
    except ValueError as e:
        raise SignatureError(f"invalid compact signature {compact.hex()}") from e


def verify_hash(pubkey: bytes, msg_hash: bytes, der: bytes) -> bool:
    """Verify a DER signature over a 32-byte hash.

    False for a wrong key or message, and for malformed, non-canonical or
    high-S signatures (libsecp256k1's verify also refuses high-S).
    """
    _check_hash(msg_hash)
    try:
        cdata = parse_der(der)
        key = PublicKey(pubkey)
    except ValueError:
        return False
    was_high, _ = signature_normalize(cdata)
    if was_high:
        return False
    return key.verify(der, msg_hash, hasher=None)


def verify_hash_compact(pubkey: bytes, msg_hash: bytes, compact: bytes) -> bool:
    """Verify a 64-byte compact signature (as received in a BOLT message)."""
    try:
        der = compact_to_der(compact)
    except SignatureError:
        return False
    return verify_hash(pubkey, msg_hash, der)


def segwit_sighash(
    tx: CTransaction,
    input_index: int,
    witness_script: bytes,
    amount_sat: int,
    hashtype: SIGHASH_Type = SIGHASH_ALL,
) -> bytes:
    """BIP143 signature hash of one input spending a P2WSH output."""
    return SignatureHash(
        CScript(witness_script),
        tx,
        input_index,
        hashtype,
        amount=amount_sat,
        sigversion=SIGVERSION_WITNESS_V0,
    )


def sign_segwit_input(
    privkey: bytes,
    tx: CTransaction,
    input_index: int,
    witness_script: bytes,
    amount_sat: int,
    hashtype: SIGHASH_Type = SIGHASH_ALL,
) -> bytes:
    """DER signature (no sighash byte) for a P2WSH input."""
    sighash = segwit_sighash(tx, input_index, witness_script, amount_sat, hashtype)
    return sign_hash(privkey, sighash)


def verify_segwit_input(
    pubkey: bytes,
    der: bytes,
    tx: CTransaction,
    input_index: int,
    witness_script: bytes,
    amount_sat: int,
    hashtype: SIGHASH_Type = SIGHASH_ALL,
) -> bool:
    sighash = segwit_sighash(tx, input_index, witness_script, amount_sat, hashtype)
    return verify_hash(pubkey, sighash, der)


def script_sig(der: bytes, hashtype: SIGHASH_Type | int = SIGHASH_ALL) -> bytes:
    """The witness/scriptSig element: DER followed by the sighash type byte."""
    return der + bytes([int(hashtype)])
