"""common/scripts.py's RIPEMD160 (hashlib's when it works, else bitcointx's pure Python) and
the wallet's own BIP32 public derivation: both must agree with what they replace."""

from __future__ import annotations

import hashlib

import pytest
from bitcointx.core import Hash160
from bitcointx.core._ripemd160 import ripemd160 as pure_ripemd160
from bitcointx.wallet import CBitcoinExtKey
from coincurve import PublicKey

from common import scripts
from lightningd.wallet import bip32_child_pubkey, parse_account_xpub

# The RIPEMD-160 authors' test vectors.
KNOWN = {
    b"": "9c1185a5c5e9fc54612808977ee8f548b2258d31",
    b"abc": "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc",
    b"message digest": "5d0689ef49d2fae572b881b123a85ffa21595f36",
    b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq": (
        "12a053384a9c0c88e405a06c27dcf49ada62eb2b"
    ),
}
# BOLT #3 Appendix C: htlc N's payment_preimage is 32 bytes of N, and the HTLC scripts carry
# OP_HASH160 <RIPEMD160(payment_hash)> OP_EQUALVERIFY ("a914...88").
BOLT3_HTLC_RIPEMD = {
    0: "b8bcb07f6344b42ab04250c86a6e8b75d3fdbbc6",
    1: "4b6b2e5444c2639cc0fb7bcea5afba3f3cdce239",
    2: "b43e1b38138a41b37f7cd9a1d274bc63e3a9b5d1",
    3: "8a486ff2e31d6158bf39e2608864d63fefd09d5b",
    4: "18bc1a114ccf9c052d3d23e28d3b0a9d12274342",
}


def hashlib_has_ripemd160() -> bool:
    try:
        hashlib.new("ripemd160")
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("impl", [scripts.ripemd160, pure_ripemd160])
def test_known_vectors(impl):
    for data, digest in KNOWN.items():
        assert impl(data).hex() == digest


@pytest.mark.parametrize("impl", [scripts.ripemd160, pure_ripemd160])
def test_bolt3_payment_hash_vectors(impl):
    for n, digest in BOLT3_HTLC_RIPEMD.items():
        payment_hash = hashlib.sha256(bytes([n]) * 32).digest()
        assert impl(payment_hash).hex() == digest


def test_hashlib_and_pure_python_agree():
    if not hashlib_has_ripemd160():
        pytest.skip("this OpenSSL has no ripemd160: scripts uses the pure-Python one")
    assert scripts.ripemd160 is scripts._hashlib_ripemd160
    for n in range(300):  # every length across a few 64-byte blocks
        data = hashlib.sha512(n.to_bytes(2, "big")).digest() * 5
        data = data[: n % 200 + n // 200]
        assert scripts._hashlib_ripemd160(data) == pure_ripemd160(data)


def test_fallback_when_hashlib_lacks_ripemd160(monkeypatch):
    def no_ripemd(name: str, *args):
        raise ValueError(f"unsupported hash type {name}")

    monkeypatch.setattr(scripts.hashlib, "new", no_ripemd)
    assert scripts._pick_ripemd160() is pure_ripemd160


def test_hash160_is_bitcointx_hash160():
    for n in range(50):
        key = PublicKey.from_secret(hashlib.sha256(bytes([n])).digest()).format()
        assert scripts.hash160(key) == Hash160(key)


def test_bip32_child_pubkey_is_bitcointx_derive():
    account = CBitcoinExtKey.from_seed(b"\x07" * 32)
    for step in (0x80000054, 0x80000001, 0x80000000):
        account = account.derive(step)
    receive = parse_account_xpub(str(account.neuter())).derive(0)
    parent = PublicKey(bytes(receive.pub))
    for index in [*range(250), 2**31 - 1]:
        ours = bip32_child_pubkey(parent, bytes(receive.chaincode), index)
        assert ours == bytes(receive.derive(index).pub)
    with pytest.raises(ValueError):
        bip32_child_pubkey(parent, bytes(receive.chaincode), 2**31)  # hardened: needs a secret
