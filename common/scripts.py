"""BOLT #3 witness scripts and the P2WSH / P2WPKH scriptPubKeys that wrap them.

Every key argument is a 33-byte compressed public key; hashes are raw bytes.
The scripts are built with python-bitcointx so integer pushes get Bitcoin's
minimal script-number encoding (e.g. a `to_self_delay` of 144 is `029000`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from bitcointx.core._ripemd160 import ripemd160 as _pure_ripemd160
from bitcointx.core.script import (
    OP_0,
    OP_16,
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKMULTISIG,
    OP_CHECKSEQUENCEVERIFY,
    OP_CHECKSIG,
    OP_CHECKSIGVERIFY,
    OP_DROP,
    OP_DUP,
    OP_ELSE,
    OP_ENDIF,
    OP_EQUAL,
    OP_EQUALVERIFY,
    OP_HASH160,
    OP_IF,
    OP_IFDUP,
    OP_NOTIF,
    OP_SIZE,
    OP_SWAP,
    CScript,
)

import common.secp  # noqa: F401  (before any bitcointx key operation)

PUBKEY_LEN = 33


def _check_pubkey(key: bytes) -> None:
    if len(key) != PUBKEY_LEN or key[0] not in (2, 3):
        raise ValueError(f"expected a 33-byte compressed pubkey, got {key.hex()}")


def _hashlib_ripemd160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", data).digest()


def _pick_ripemd160() -> Callable[[bytes], bytes]:
    # hashlib's ripemd160 is missing on OpenSSL 3 builds without the legacy provider;
    # bitcointx ships a pure-Python one, ~100x slower (a wallet derives hundreds of
    # scripts at start-up). Probed once: hashlib's, when it works.
    try:
        _hashlib_ripemd160(b"")
    except ValueError:
        return _pure_ripemd160
    return _hashlib_ripemd160


ripemd160 = _pick_ripemd160()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash160(data: bytes) -> bytes:
    """RIPEMD160(SHA256(data)), as bitcointx's Hash160 but with the fast ripemd160."""
    return ripemd160(hashlib.sha256(data).digest())


def funding_script(pubkey_a: bytes, pubkey_b: bytes) -> CScript:
    """2-of-2 multisig for the funding output.

    BOLT #3: `pubkey1` is the lexicographically lesser of the two
    `funding_pubkey` in compressed format, and `pubkey2` is the
    lexicographically greater of the two.
    """
    _check_pubkey(pubkey_a)
    _check_pubkey(pubkey_b)
    key1, key2 = sorted((pubkey_a, pubkey_b))
    return CScript([2, key1, key2, 2, OP_CHECKMULTISIG])


def to_local_script(
    revocation_pubkey: bytes, to_self_delay: int, local_delayed_pubkey: bytes
) -> CScript:
    """Revocable, CSV-delayed output; also the output script of HTLC txs."""
    _check_pubkey(revocation_pubkey)
    _check_pubkey(local_delayed_pubkey)
    return CScript(
        [
            OP_IF,
            revocation_pubkey,
            OP_ELSE,
            to_self_delay,
            OP_CHECKSEQUENCEVERIFY,
            OP_DROP,
            local_delayed_pubkey,
            OP_ENDIF,
            OP_CHECKSIG,
        ]
    )


def to_remote_anchor_script(remote_pubkey: bytes) -> CScript:
    # BOLT #3: with option_anchors the to_remote output is encumbered by a
    # one block csv lock: <remotepubkey> OP_CHECKSIGVERIFY 1 OP_CHECKSEQUENCEVERIFY
    _check_pubkey(remote_pubkey)
    return CScript([remote_pubkey, OP_CHECKSIGVERIFY, 1, OP_CHECKSEQUENCEVERIFY])


def anchor_script(funding_pubkey: bytes) -> CScript:
    """`to_local_anchor` / `to_remote_anchor`: funding key now, anyone after 16 blocks."""
    _check_pubkey(funding_pubkey)
    return CScript(
        [
            funding_pubkey,
            OP_CHECKSIG,
            OP_IFDUP,
            OP_NOTIF,
            OP_16,
            OP_CHECKSEQUENCEVERIFY,
            OP_ENDIF,
        ]
    )


def _revocation_hash_prefix(revocation_pubkey: bytes, remote_htlc_pubkey: bytes) -> list:
    # Shared head of both HTLC scripts: the revocation branch, then the
    # remote key and the preimage-size test.
    _check_pubkey(revocation_pubkey)
    _check_pubkey(remote_htlc_pubkey)
    return [
        OP_DUP,
        OP_HASH160,
        hash160(revocation_pubkey),
        OP_EQUAL,
        OP_IF,
        OP_CHECKSIG,
        OP_ELSE,
        remote_htlc_pubkey,
        OP_SWAP,
        OP_SIZE,
        32,
        OP_EQUAL,
    ]


def _anchor_csv_tail(anchors: bool) -> list:
    # BOLT #3 (option_anchors): `1 OP_CHECKSEQUENCEVERIFY OP_DROP` before the
    # final OP_ENDIF, so the remote's HTLC spends carry a 1-block CSV too.
    return [1, OP_CHECKSEQUENCEVERIFY, OP_DROP] if anchors else []


def _check_hash(payment_hash: bytes) -> None:
    if len(payment_hash) != 32:
        raise ValueError("payment_hash must be 32 bytes")


def offered_htlc_script(
    revocation_pubkey: bytes,
    local_htlc_pubkey: bytes,
    remote_htlc_pubkey: bytes,
    payment_hash: bytes,
    anchors: bool = False,
) -> CScript:
    """HTLC offered by the commitment owner (spent by HTLC-timeout or remote preimage)."""
    _check_pubkey(local_htlc_pubkey)
    _check_hash(payment_hash)
    return CScript(
        [
            *_revocation_hash_prefix(revocation_pubkey, remote_htlc_pubkey),
            OP_NOTIF,
            OP_DROP,
            2,
            OP_SWAP,
            local_htlc_pubkey,
            2,
            OP_CHECKMULTISIG,
            OP_ELSE,
            OP_HASH160,
            ripemd160(payment_hash),
            OP_EQUALVERIFY,
            OP_CHECKSIG,
            OP_ENDIF,
            *_anchor_csv_tail(anchors),
            OP_ENDIF,
        ]
    )


def received_htlc_script(
    revocation_pubkey: bytes,
    local_htlc_pubkey: bytes,
    remote_htlc_pubkey: bytes,
    payment_hash: bytes,
    cltv_expiry: int,
    anchors: bool = False,
) -> CScript:
    """HTLC received by the commitment owner (spent by HTLC-success or remote timeout)."""
    _check_pubkey(local_htlc_pubkey)
    _check_hash(payment_hash)
    return CScript(
        [
            *_revocation_hash_prefix(revocation_pubkey, remote_htlc_pubkey),
            OP_IF,
            OP_HASH160,
            ripemd160(payment_hash),
            OP_EQUALVERIFY,
            2,
            OP_SWAP,
            local_htlc_pubkey,
            2,
            OP_CHECKMULTISIG,
            OP_ELSE,
            OP_DROP,
            cltv_expiry,
            OP_CHECKLOCKTIMEVERIFY,
            OP_DROP,
            OP_CHECKSIG,
            OP_ENDIF,
            *_anchor_csv_tail(anchors),
            OP_ENDIF,
        ]
    )


def p2wsh(witness_script: bytes) -> CScript:
    """Version-0 P2WSH scriptPubKey: OP_0 <sha256(witness_script)>."""
    return CScript([OP_0, sha256(bytes(witness_script))])


def p2wpkh(pubkey: bytes) -> CScript:
    """Version-0 P2WPKH scriptPubKey: OP_0 <hash160(pubkey)>."""
    _check_pubkey(pubkey)
    return CScript([OP_0, hash160(pubkey)])
