"""hsmd's secret derivation: everything secret comes from the 32-byte hsm_secret.

Only hsmd may import this module.  The derivations follow CLN's hsmd
(hsmd/libhsmd.c and common/derive_basepoints.c) byte for byte, so the same
hsm_secret yields the same node id and channel keys as a CLN node would:

  node key      HKDF-SHA256(salt=u32le counter, ikm=hsm_secret, info="nodeid"),
                counter bumped from 0 until the key is a valid scalar
  bip32 seed    HKDF-SHA256(salt=u32le counter, ikm=hsm_secret, info="bip32 seed"),
                counter bumped from 0 until BIP32 accepts it as a master seed
  channel base  HKDF-SHA256(salt=none, ikm=hsm_secret, info="peer seed")
  channel seed  HKDF-SHA256(salt=peer_id(33) || dbid(u64 little-endian),
                ikm=channel base, info="per-peer seed")
  channel keys  HKDF-SHA256(salt=none, ikm=channel seed, info="c-lightning"), 192 bytes:
                funding, revocation, htlc, payment, delayed_payment, shachain seed

CLN's own on-chain wallet derives m/0/0/k from the BIP32 root; this node's
wallet uses BIP84 (m/84'/coin'/0'/change/k) instead, by design.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from bitcointx import segwit_addr
from bitcointx.core import Hash160
from bitcointx.core.key import CExtKey
from coincurve import PrivateKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import common.secp  # noqa: F401  (bitcointx must find libsecp256k1 before key operations)
from common.key_derive import is_valid_pubkey
from common.shachain import per_commitment_point, per_commitment_secret

SECRET_LEN = 32
# secp256k1 group order: valid private keys are 1..N-1.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HARDENED = 0x80000000
# BIP84: m / purpose' / coin_type' / account' / change / address_index
BIP84_PURPOSE = 84
# SLIP-44 coin types: 0 for Bitcoin mainnet, 1 for every test network.
COIN_TYPE_BY_HRP = {"bc": 0, "tb": 1, "bcrt": 1}


# ---------------------------------------------------------------------------
# Channel secrets


@dataclass(frozen=True)
class ChannelSecrets:
    """The six per-channel secrets and the public keys peers see."""

    funding_privkey: bytes
    revocation_basepoint_secret: bytes
    payment_basepoint_secret: bytes
    delayed_payment_basepoint_secret: bytes
    htlc_basepoint_secret: bytes
    shaseed: bytes
    funding_pubkey: bytes
    revocation_basepoint: bytes
    payment_basepoint: bytes
    delayed_payment_basepoint: bytes
    htlc_basepoint: bytes

    @classmethod
    def from_secrets(
        cls,
        funding_privkey: bytes,
        revocation_basepoint_secret: bytes,
        payment_basepoint_secret: bytes,
        delayed_payment_basepoint_secret: bytes,
        htlc_basepoint_secret: bytes,
        shaseed: bytes,
    ) -> ChannelSecrets:
        """Compute the public side; ValueError if a secret is not a valid key."""
        _check_len(shaseed, "shaseed")
        return cls(
            funding_privkey=bytes(funding_privkey),
            revocation_basepoint_secret=bytes(revocation_basepoint_secret),
            payment_basepoint_secret=bytes(payment_basepoint_secret),
            delayed_payment_basepoint_secret=bytes(delayed_payment_basepoint_secret),
            htlc_basepoint_secret=bytes(htlc_basepoint_secret),
            shaseed=bytes(shaseed),
            funding_pubkey=_pubkey(funding_privkey, "funding_privkey"),
            revocation_basepoint=_pubkey(revocation_basepoint_secret, "revocation secret"),
            payment_basepoint=_pubkey(payment_basepoint_secret, "payment secret"),
            delayed_payment_basepoint=_pubkey(
                delayed_payment_basepoint_secret, "delayed_payment secret"
            ),
            htlc_basepoint=_pubkey(htlc_basepoint_secret, "htlc secret"),
        )

    def per_commitment_secret(self, commitment_number: int) -> bytes:
        return per_commitment_secret(self.shaseed, commitment_number)

    def per_commitment_point(self, commitment_number: int) -> bytes:
        return per_commitment_point(self.shaseed, commitment_number)

    def __repr__(self) -> str:
        # Never let a secret reach a log line through repr().
        return f"ChannelSecrets(funding_pubkey={self.funding_pubkey.hex()}, ...)"


# ---------------------------------------------------------------------------
# Dev overrides (CLN's --dev-force-* testing options)


@dataclass(frozen=True)
class DevOverrides:
    """--dev-force-privkey, --dev-force-bip32-seed, --dev-force-channel-secrets."""

    force_privkey: bytes | None = None
    force_bip32_seed: bytes | None = None
    force_channel_secrets: ChannelSecrets | None = None

    def __repr__(self) -> str:
        fields = ("force_privkey", "force_bip32_seed", "force_channel_secrets")
        present = [f for f in fields if getattr(self, f) is not None]
        return f"DevOverrides({', '.join(present)})"


def parse_dev_force_privkey(text: str) -> bytes:
    """--dev-force-privkey=<64 hex>: the node private key."""
    key = _parse_hex32(text, "--dev-force-privkey")
    _pubkey(key, "--dev-force-privkey")
    return key


def parse_dev_force_bip32_seed(text: str) -> bytes:
    """--dev-force-bip32-seed=<64 hex>: the 32-byte BIP32 master seed."""
    seed = _parse_hex32(text, "--dev-force-bip32-seed")
    if not _bip32_seed_ok(seed):
        raise ValueError("--dev-force-bip32-seed: not a valid BIP32 master seed")
    return seed


def parse_dev_force_channel_secrets(text: str) -> ChannelSecrets:
    """--dev-force-channel-secrets=<funding>/<revocation>/<payment>/<delayed_payment>/
    <htlc>/<shachain_seed>: six 32-byte hex values used for every channel.
    """
    option = "--dev-force-channel-secrets"
    parts = text.split("/")
    if len(parts) != 6:
        raise ValueError(f"{option}: expected 6 hex secrets separated by /, got {len(parts)}")
    names = ("funding", "revocation", "payment", "delayed_payment", "htlc", "shachain_seed")
    values = [_parse_hex32(p, f"{option} {n}") for p, n in zip(parts, names, strict=True)]
    try:
        return ChannelSecrets.from_secrets(*values)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None


# ---------------------------------------------------------------------------
# The deriver


@dataclass(frozen=True)
class WalletKey:
    """One BIP84 P2WPKH key of the on-chain wallet."""

    path: str
    privkey: bytes
    pubkey: bytes

    def address(self, hrp: str) -> str:
        return p2wpkh_address(self.pubkey, hrp)

    def __repr__(self) -> str:
        return f"WalletKey(path={self.path!r}, pubkey={self.pubkey.hex()})"


class SecretDeriver:
    """All of hsmd's secrets, derived from hsm_secret as CLN's hsmd does."""

    def __init__(self, hsm_secret: bytes, dev_overrides: DevOverrides | None = None) -> None:
        _check_len(hsm_secret, "hsm_secret")
        self._hsm_secret = bytes(hsm_secret)
        self._dev = dev_overrides or DevOverrides()
        self._node_privkey: bytes | None = None
        self._bip32_root: CExtKey | None = None
        self._bip84_accounts: dict[int, CExtKey] = {}

    def __repr__(self) -> str:
        return f"SecretDeriver(node_id={self.node_id().hex()}, {self._dev!r})"

    # Node identity

    def node_privkey(self) -> bytes:
        """The node's private key (--dev-force-privkey wins when given)."""
        if self._dev.force_privkey is not None:
            return self._dev.force_privkey
        if self._node_privkey is None:
            self._node_privkey = _hkdf_until(self._hsm_secret, b"nodeid", _privkey_ok)
        return self._node_privkey

    def node_id(self) -> bytes:
        """The 33-byte compressed node public key."""
        return _pubkey(self.node_privkey(), "node key")

    # On-chain wallet

    def bip32_seed(self) -> bytes:
        """The 32-byte BIP32 master seed (--dev-force-bip32-seed wins when given)."""
        if self._dev.force_bip32_seed is not None:
            return self._dev.force_bip32_seed
        return _hkdf_until(self._hsm_secret, b"bip32 seed", _bip32_seed_ok)

    def bip32_root(self) -> CExtKey:
        """The BIP32 master extended private key m."""
        if self._bip32_root is None:
            self._bip32_root = bip32_root_from_seed(self.bip32_seed())
        return self._bip32_root

    def wallet_key(self, index: int, hrp: str, change: bool = False) -> WalletKey:
        """BIP84 key m/84'/coin'/0'/change/index; coin is 0 for "bc", 1 for test networks."""
        return bip84_key_in(self.wallet_account(hrp), coin_type_for_hrp(hrp), index, change)

    def wallet_account(self, hrp: str) -> CExtKey:
        """The BIP84 account key m/84'/coin'/0' (three hardened steps: derived once)."""
        coin_type = coin_type_for_hrp(hrp)
        account = self._bip84_accounts.get(coin_type)
        if account is None:
            account = self._bip84_accounts[coin_type] = bip84_account(self.bip32_root(), coin_type)
        return account

    def wallet_address(self, index: int, hrp: str, change: bool = False) -> str:
        return self.wallet_key(index, hrp, change).address(hrp)

    # Channels

    def channel_seed(self, peer_id: bytes, dbid: int) -> bytes:
        """CLN's get_channel_seed(): one seed per (peer node id, channel dbid)."""
        if not is_valid_pubkey(peer_id):
            raise ValueError(f"peer_id is not a valid compressed pubkey: {peer_id.hex()}")
        if not 0 < dbid < 1 << 64:
            raise ValueError(f"channel dbid must be a non-zero u64, got {dbid}")
        # "peer seed"/"per-peer seed" are historical names kept by CLN for
        # compatibility: the seed is per channel.  The dbid is copied in host
        # byte order in CLN, which is little-endian on every platform it runs on.
        base = _hkdf(self._hsm_secret, b"peer seed")
        salt = bytes(peer_id) + dbid.to_bytes(8, "little")
        return _hkdf(base, b"per-peer seed", salt=salt)

    def channel_secrets(self, peer_id: bytes, dbid: int) -> ChannelSecrets:
        """CLN's derive_basepoints() on the channel seed, or the forced secrets."""
        if self._dev.force_channel_secrets is not None:
            return self._dev.force_channel_secrets
        return derive_channel_secrets(self.channel_seed(peer_id, dbid))


def derive_channel_secrets(channel_seed: bytes) -> ChannelSecrets:
    """CLN's derive_basepoints(): one 192-byte HKDF output, split in six."""
    _check_len(channel_seed, "channel_seed")
    okm = _hkdf(channel_seed, b"c-lightning", length=6 * SECRET_LEN)
    # CLN's struct keys { f, r, h, p, d, shaseed }: htlc comes before payment.
    f, r, h, p, d, shaseed = (okm[i : i + SECRET_LEN] for i in range(0, len(okm), SECRET_LEN))
    return ChannelSecrets.from_secrets(f, r, p, d, h, shaseed)


# ---------------------------------------------------------------------------
# BIP32 / BIP84


def bip32_root_from_seed(seed: bytes) -> CExtKey:
    """The BIP32 master key for a seed (16 to 64 bytes)."""
    if not 16 <= len(seed) <= 64:
        raise ValueError(f"BIP32 seed must be 16 to 64 bytes, got {len(seed)}")
    if not _bip32_seed_ok(seed):
        raise ValueError("seed does not give a valid BIP32 master key")
    return CExtKey.from_seed(bytes(seed))


def bip84_key(root: CExtKey, coin_type: int, index: int, change: bool = False) -> WalletKey:
    """m/84'/coin_type'/0'/change/index from the master key."""
    return bip84_key_in(bip84_account(root, coin_type), coin_type, index, change)


def bip84_account(root: CExtKey, coin_type: int) -> CExtKey:
    """The account key m/84'/coin_type'/0'."""
    if not 0 <= coin_type < HARDENED:
        raise ValueError(f"coin type must be 0..2^31-1, got {coin_type}")
    return root.derive(BIP84_PURPOSE | HARDENED).derive(coin_type | HARDENED).derive(HARDENED)


def bip84_key_in(account: CExtKey, coin_type: int, index: int, change: bool) -> WalletKey:
    """m/84'/coin_type'/0'/change/index from its account key (bip84_account)."""
    if not 0 <= index < HARDENED:
        raise ValueError(f"address index must be 0..2^31-1, got {index}")
    key = account.derive(int(change)).derive(index)
    path = f"m/{BIP84_PURPOSE}'/{coin_type}'/0'/{int(change)}/{index}"
    return WalletKey(path=path, privkey=bytes(key.priv.secret_bytes), pubkey=bytes(key.pub))


def coin_type_for_hrp(hrp: str) -> int:
    """BIP44 coin type for a bech32 HRP: 0 on mainnet ("bc"), 1 on test networks."""
    try:
        return COIN_TYPE_BY_HRP[hrp]
    except KeyError:
        raise ValueError(
            f"unknown network HRP {hrp!r}: expected one of {sorted(COIN_TYPE_BY_HRP)}"
        ) from None


def p2wpkh_address(pubkey: bytes, hrp: str) -> str:
    """BIP173 bech32 address for witness v0 program HASH160(pubkey)."""
    if not is_valid_pubkey(pubkey):
        raise ValueError(f"not a compressed pubkey: {pubkey.hex()}")
    address = segwit_addr.encode(hrp, 0, Hash160(pubkey))
    if address is None:
        raise ValueError(f"cannot encode a bech32 address with HRP {hrp!r}")
    return address


# ---------------------------------------------------------------------------
# Helpers


def _hkdf(ikm: bytes, info: bytes, salt: bytes | None = None, length: int = SECRET_LEN) -> bytes:
    """RFC 5869 HKDF-SHA256, as ccan/crypto/hkdf_sha256 (CLN's) computes it."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _hkdf_until(ikm: bytes, info: bytes, acceptable: Callable[[bytes], bool]) -> bytes:
    """HKDF with a u32 counter salt, bumped from 0 until the output is acceptable.

    CLN passes `&salt, sizeof(salt)` for a u32, i.e. 4 little-endian bytes.
    The retry essentially never happens (chance about 2^-128).
    """
    for counter in range(1 << 32):
        out = _hkdf(ikm, info, salt=counter.to_bytes(4, "little"))
        if acceptable(out):
            return out
    raise AssertionError("unreachable: no valid key in 2^32 HKDF outputs")


def _privkey_ok(secret: bytes) -> bool:
    return 0 < int.from_bytes(secret, "big") < SECP256K1_N


def _bip32_seed_ok(seed: bytes) -> bool:
    # BIP32: "In case parse256(IL) is 0 or parse256(IL) >= n, the master key is invalid."
    il = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()[:32]
    return _privkey_ok(il)


def _pubkey(secret: bytes, what: str) -> bytes:
    _check_len(secret, what)
    if not _privkey_ok(secret):
        raise ValueError(f"{what} is not a valid secp256k1 private key")
    return PrivateKey(bytes(secret)).public_key.format(compressed=True)


def _parse_hex32(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not hex") from None
    if len(value) != SECRET_LEN or len(text) != 2 * SECRET_LEN:
        raise ValueError(f"{what}: expected {2 * SECRET_LEN} hex digits, got {len(text)}")
    return value


def _check_len(value: bytes, what: str) -> None:
    if len(value) != SECRET_LEN:
        raise ValueError(f"{what} must be {SECRET_LEN} bytes, got {len(value)}")
