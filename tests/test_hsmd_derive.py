"""hsmd secret derivation: CLN compatibility, BIP84, dev overrides."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from bitcointx.base58 import encode as b58encode
from bitcointx.core import Hash
from bitcointx.wallet import CBitcoinKey

import common.secp  # noqa: F401
from common.key_derive import is_valid_pubkey
from common.shachain import generate_from_seed, shachain_index
from hsmd.derive import (
    ChannelSecrets,
    DevOverrides,
    SecretDeriver,
    bip32_root_from_seed,
    bip84_key,
    coin_type_for_hrp,
    derive_channel_secrets,
    p2wpkh_address,
    parse_dev_force_bip32_seed,
    parse_dev_force_channel_secrets,
    parse_dev_force_privkey,
)


def cln_test_hsm_secret(n: int) -> bytes:
    """pyln-testing's hsm_secret for node n: its directory name, zero padded to 32."""
    return (f"lightning-{n}".encode() + bytes(32))[:32]


# Node ids CLN's test suite pins for l1..l4 (tests/test_misc.py, doc examples),
# and l1's private key as listed there.
CLN_NODE_IDS = {
    1: "0266e4598d1d3c415f572a8488830b60f7e744ed9235eb0b1ba93283b315c03518",
    2: "022d223620a359a47ff7f7ac447c85c46c923da53389221a0054c11c1e3ca31d59",
    3: "035d2b1192dfba134e10e540875d366ebc8bc353d5aa766b80c090b39c3a5d885d",
    4: "0382ce59ebf18be7d84677c2e35f23294b9992ceca95491fcf8a56c6cb2d9de199",
}
CLN_L1_PRIVKEY = "41bfd2660762506c9933ade59f1debf7e6495b10c14a92dbcd2d623da2507d3d"

PEER_A = bytes.fromhex(CLN_NODE_IDS[2])
PEER_B = bytes.fromhex(CLN_NODE_IDS[3])
HSM_SECRET = cln_test_hsm_secret(1)


# --- node key ---------------------------------------------------------------


@pytest.mark.parametrize("n", sorted(CLN_NODE_IDS))
def test_cln_node_ids(n: int):
    assert SecretDeriver(cln_test_hsm_secret(n)).node_id().hex() == CLN_NODE_IDS[n]


def test_cln_node_privkey():
    assert SecretDeriver(HSM_SECRET).node_privkey().hex() == CLN_L1_PRIVKEY


def test_node_key_is_hkdf_nodeid():
    # Independent restatement of CLN's node_key(): RFC 5869 with a 4-byte zero salt.
    prk = hmac.new(bytes(4), HSM_SECRET, hashlib.sha256).digest()
    okm = hmac.new(prk, b"nodeid\x01", hashlib.sha256).digest()
    assert SecretDeriver(HSM_SECRET).node_privkey() == okm


def test_hsm_secret_length_checked():
    with pytest.raises(ValueError, match="32 bytes"):
        SecretDeriver(bytes(31))


# --- determinism and separation ---------------------------------------------


def test_deterministic():
    a, b = SecretDeriver(HSM_SECRET), SecretDeriver(bytes(HSM_SECRET))
    assert a.node_id() == b.node_id()
    assert a.bip32_seed() == b.bip32_seed()
    assert a.channel_seed(PEER_A, 1) == b.channel_seed(PEER_A, 1)
    assert a.channel_secrets(PEER_A, 1) == b.channel_secrets(PEER_A, 1)
    assert a.wallet_key(7, "bcrt") == b.wallet_key(7, "bcrt")


def test_different_hsm_secrets_differ():
    a, b = SecretDeriver(HSM_SECRET), SecretDeriver(cln_test_hsm_secret(2))
    assert a.node_id() != b.node_id()
    assert a.bip32_seed() != b.bip32_seed()
    assert a.channel_seed(PEER_A, 1) != b.channel_seed(PEER_A, 1)


def test_channels_get_different_secrets():
    d = SecretDeriver(HSM_SECRET)
    seeds = {d.channel_seed(peer, dbid) for peer in (PEER_A, PEER_B) for dbid in (1, 2, 256)}
    assert len(seeds) == 6
    secrets = [d.channel_secrets(peer, dbid) for peer in (PEER_A, PEER_B) for dbid in (1, 2)]
    for field in ("funding_privkey", "revocation_basepoint_secret", "shaseed", "htlc_basepoint"):
        assert len({getattr(s, field) for s in secrets}) == 4


def test_secrets_are_distinct_and_match_their_points():
    s = SecretDeriver(HSM_SECRET).channel_secrets(PEER_A, 1)
    secrets = [
        s.funding_privkey,
        s.revocation_basepoint_secret,
        s.payment_basepoint_secret,
        s.delayed_payment_basepoint_secret,
        s.htlc_basepoint_secret,
        s.shaseed,
    ]
    assert len(set(secrets)) == 6
    assert s == ChannelSecrets.from_secrets(*secrets)
    for point in (s.funding_pubkey, s.revocation_basepoint, s.payment_basepoint):
        assert is_valid_pubkey(point)
    assert s.per_commitment_secret(0) == generate_from_seed(s.shaseed, shachain_index(0))
    assert is_valid_pubkey(s.per_commitment_point(0))


def test_channel_seed_layout():
    # Independent restatement of CLN's get_channel_seed() and derive_basepoints().
    def hkdf(ikm: bytes, info: bytes, salt: bytes, length: int) -> bytes:
        prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
        out, block = b"", b""
        for i in range(1, -(-length // 32) + 1):
            block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
            out += block
        return out[:length]

    base = hkdf(HSM_SECRET, b"peer seed", b"", 32)
    seed = hkdf(base, b"per-peer seed", PEER_A + (5).to_bytes(8, "little"), 32)
    d = SecretDeriver(HSM_SECRET)
    assert d.channel_seed(PEER_A, 5) == seed
    okm = hkdf(seed, b"c-lightning", b"", 192)
    s = d.channel_secrets(PEER_A, 5)
    # CLN's struct keys order: funding, revocation, htlc, payment, delayed, shaseed.
    assert s.funding_privkey == okm[0:32]
    assert s.revocation_basepoint_secret == okm[32:64]
    assert s.htlc_basepoint_secret == okm[64:96]
    assert s.payment_basepoint_secret == okm[96:128]
    assert s.delayed_payment_basepoint_secret == okm[128:160]
    assert s.shaseed == okm[160:192]
    assert derive_channel_secrets(seed) == s


@pytest.mark.parametrize(
    ("peer", "dbid", "match"),
    [
        (PEER_A[:32], 1, "peer_id"),
        (b"\x02" + bytes(32), 1, "peer_id"),
        (PEER_A, 0, "dbid"),
        (PEER_A, 1 << 64, "dbid"),
    ],
)
def test_channel_seed_bad_arguments(peer: bytes, dbid: int, match: str):
    with pytest.raises(ValueError, match=match):
        SecretDeriver(HSM_SECRET).channel_seed(peer, dbid)


def test_repr_hides_secrets():
    d = SecretDeriver(HSM_SECRET)
    s = d.channel_secrets(PEER_A, 1)
    for text in (repr(d), repr(s), repr(d.wallet_key(0, "bc"))):
        assert HSM_SECRET.hex() not in text
        assert s.funding_privkey.hex() not in text
        assert CLN_L1_PRIVKEY not in text


# --- BIP32 / BIP84 ----------------------------------------------------------

# BIP84 test vectors (bip-0084.mediawiki).
BIP84_MNEMONIC = "abandon " * 11 + "about"
BIP84_ROOT = (
    "zprvAWgYBBk7JR8Gjrh4UJQ2uJdG1r3WNRRfURiABBE3RvMXYSrRJL62XuezvGdPvG6GFBZduosCc1YP5wixPox7"
    "zhZLfiUm8aunE96BBa4Kei5"
)
BIP84_KEYS = [
    (
        False,
        0,
        "KyZpNDKnfs94vbrwhJneDi77V6jF64PWPF8x5cdJb8ifgg2DUc9d",
        "0330d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c",
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
    ),
    (
        False,
        1,
        "Kxpf5b8p3qX56DKEe5NqWbNUP9MnqoRFzZwHRtsFqhzuvUJsYZCy",
        "03e775fd51f0dfb8cd865d9ff1cca2a158cf651fe997fdc9fee9c1d3b5e995ea77",
        "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g",
    ),
    (
        True,
        0,
        "KxuoxufJL5csa1Wieb2kp29VNdn92Us8CoaUG3aGtPtcF3AzeXvF",
        "03025324888e429ab8e3dbaf1f7802648b9cd01e9b418485c5fa4c1b9b5700e1a6",
        "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el",
    ),
]


def _bip39_seed(mnemonic: str) -> bytes:
    # BIP39: PBKDF2-HMAC-SHA512(mnemonic, "mnemonic" + passphrase, 2048 rounds)
    return hashlib.pbkdf2_hmac("sha512", mnemonic.encode(), b"mnemonic", 2048)


def test_bip84_root_vector():
    root = bip32_root_from_seed(_bip39_seed(BIP84_MNEMONIC))
    # CExtKey bytes are the 74-byte BIP32 body: prefix zprv version bytes to compare.
    payload = bytes.fromhex("04b2430c") + bytes(root)
    assert b58encode(payload + Hash(payload)[:4]) == BIP84_ROOT


@pytest.mark.parametrize(("change", "index", "wif", "pubkey", "address"), BIP84_KEYS)
def test_bip84_key_vectors(change: bool, index: int, wif: str, pubkey: str, address: str):
    root = bip32_root_from_seed(_bip39_seed(BIP84_MNEMONIC))
    key = bip84_key(root, 0, index, change)
    assert key.path == f"m/84'/0'/0'/{int(change)}/{index}"
    assert key.privkey == CBitcoinKey(wif).secret_bytes
    assert key.pubkey.hex() == pubkey
    assert key.address("bc") == address


def test_wallet_key_uses_bip84_on_bip32_root():
    d = SecretDeriver(HSM_SECRET)
    assert d.wallet_key(3, "bc") == bip84_key(d.bip32_root(), 0, 3)
    assert d.wallet_key(3, "tb") == bip84_key(d.bip32_root(), 1, 3)
    assert d.wallet_key(3, "bcrt") == d.wallet_key(3, "tb")
    assert d.wallet_key(3, "bc") != d.wallet_key(3, "tb")
    assert d.wallet_key(3, "bc", change=True) != d.wallet_key(3, "bc")
    assert d.wallet_address(3, "bcrt").startswith("bcrt1q")
    assert d.wallet_address(3, "tb").startswith("tb1q")
    assert d.wallet_address(3, "bc") == d.wallet_key(3, "bc").address("bc")


def test_bip32_seed_is_cln_hkdf():
    prk = hmac.new(bytes(4), HSM_SECRET, hashlib.sha256).digest()
    okm = hmac.new(prk, b"bip32 seed\x01", hashlib.sha256).digest()
    d = SecretDeriver(HSM_SECRET)
    assert d.bip32_seed() == okm
    assert bytes(d.bip32_root()) == bytes(bip32_root_from_seed(okm))


def test_bip84_bad_arguments():
    root = SecretDeriver(HSM_SECRET).bip32_root()
    with pytest.raises(ValueError, match="index"):
        bip84_key(root, 0, 1 << 31)
    with pytest.raises(ValueError, match="HRP"):
        coin_type_for_hrp("ltc")
    with pytest.raises(ValueError, match="16 to 64"):
        bip32_root_from_seed(bytes(15))
    with pytest.raises(ValueError, match="compressed"):
        p2wpkh_address(bytes(33), "bc")


# --- dev overrides ----------------------------------------------------------

SIX = [bytes([i]) * 32 for i in range(1, 7)]
SIX_TEXT = "/".join(s.hex() for s in SIX)


def test_dev_force_privkey():
    key = parse_dev_force_privkey(CLN_L1_PRIVKEY)
    d = SecretDeriver(cln_test_hsm_secret(9), DevOverrides(force_privkey=key))
    assert d.node_privkey().hex() == CLN_L1_PRIVKEY
    assert d.node_id().hex() == CLN_NODE_IDS[1]
    # Only the node key is forced.
    assert d.bip32_seed() == SecretDeriver(cln_test_hsm_secret(9)).bip32_seed()


def test_dev_force_bip32_seed():
    seed = parse_dev_force_bip32_seed("0f" * 32)
    d = SecretDeriver(HSM_SECRET, DevOverrides(force_bip32_seed=seed))
    assert d.bip32_seed() == seed
    assert d.wallet_key(0, "bc") == bip84_key(bip32_root_from_seed(seed), 0, 0)
    assert d.wallet_key(0, "bc") != SecretDeriver(HSM_SECRET).wallet_key(0, "bc")
    assert d.node_id() == SecretDeriver(HSM_SECRET).node_id()


def test_dev_force_channel_secrets():
    forced = parse_dev_force_channel_secrets(SIX_TEXT)
    # Command-line order: funding/revocation/payment/delayed_payment/htlc/shachain_seed.
    assert forced.funding_privkey == SIX[0]
    assert forced.revocation_basepoint_secret == SIX[1]
    assert forced.payment_basepoint_secret == SIX[2]
    assert forced.delayed_payment_basepoint_secret == SIX[3]
    assert forced.htlc_basepoint_secret == SIX[4]
    assert forced.shaseed == SIX[5]
    d = SecretDeriver(HSM_SECRET, DevOverrides(force_channel_secrets=forced))
    assert d.channel_secrets(PEER_A, 1) == forced
    assert d.channel_secrets(PEER_B, 9) == forced
    # The channel seed itself is not forced, as in CLN.
    assert d.channel_seed(PEER_A, 1) == SecretDeriver(HSM_SECRET).channel_seed(PEER_A, 1)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "expected 64 hex digits"),
        ("00" * 31, "expected 64 hex digits"),
        ("00" * 33, "expected 64 hex digits"),
        ("zz" * 32, "not hex"),
        ("00 " * 32, "expected 64 hex digits"),
        ("00" * 32, "not a valid secp256k1 private key"),
        ("ff" * 32, "not a valid secp256k1 private key"),
    ],
)
def test_dev_force_privkey_malformed(text: str, match: str):
    with pytest.raises(ValueError, match=match) as err:
        parse_dev_force_privkey(text)
    assert "--dev-force-privkey" in str(err.value)


@pytest.mark.parametrize("text", ["", "ab" * 31, "0x" + "ab" * 31, "gg" * 32])
def test_dev_force_bip32_seed_malformed(text: str):
    with pytest.raises(ValueError, match="--dev-force-bip32-seed"):
        parse_dev_force_bip32_seed(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("/".join(s.hex() for s in SIX[:5]), "expected 6 hex secrets separated by /, got 5"),
        (SIX_TEXT + "/" + SIX[0].hex(), "got 7"),
        (SIX_TEXT + "/", "got 7"),
        (SIX_TEXT.replace(SIX[4].hex(), "12"), "htlc: expected 64 hex digits"),
        (SIX_TEXT.replace(SIX[5].hex(), "xy" * 32), "shachain_seed: .* is not hex"),
        (SIX_TEXT.replace(SIX[1].hex(), "00" * 32), "revocation secret is not a valid"),
        (SIX_TEXT.replace(SIX[0].hex(), "ff" * 32), "funding_privkey is not a valid"),
        (",".join(s.hex() for s in SIX), "got 1"),
    ],
)
def test_dev_force_channel_secrets_malformed(text: str, match: str):
    with pytest.raises(ValueError, match=match) as err:
        parse_dev_force_channel_secrets(text)
    assert str(err.value).startswith("--dev-force-channel-secrets")


def test_dev_force_channel_secrets_allows_any_shaseed():
    # The shachain seed is not a private key: all zeros is acceptable.
    text = "/".join(s.hex() for s in SIX[:5]) + "/" + "00" * 32
    assert parse_dev_force_channel_secrets(text).shaseed == bytes(32)
