"""Our own gossip: building BOLT #7 announcements and the hashes their signatures cover.

Pure code: no keys here. hsmd signs the hashes (hsmd/hsmd.py), lightningd builds the
messages (lightningd/channel_control.py), tests verify with coincurve.

BOLT #7 signs each message's double-SHA256 "of the message, beginning at offset 256"
(channel_announcement: after its four signatures) or "of the entire remaining packet after
`signature`" (channel_update, node_announcement). Offsets below count the 2-byte type.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from common.signature import verify_hash_compact
from wire import peer_wiregen as wire

T = TypeVar("T", wire.ChannelUpdate, wire.NodeAnnouncement)

SIG_LEN = 64
NO_SIG = bytes(SIG_LEN)
# Type (2 bytes) + the signatures in front of the signed part.
CHANNEL_ANNOUNCEMENT_SIGNED_FROM = 2 + 4 * SIG_LEN
SINGLE_SIG_SIGNED_FROM = 2 + SIG_LEN

# Core Lightning's default routing policy (lightningd/options.c: cltv-delta, fee-base,
# fee-per-satoshi).
DEFAULT_CLTV_EXPIRY_DELTA = 34
DEFAULT_FEE_BASE_MSAT = 1000
DEFAULT_FEE_PPM = 10

# channel_update flags (BOLT #7).
MESSAGE_FLAG_MUST_BE_ONE = 1
MESSAGE_FLAG_DONT_FORWARD = 2
CHANNEL_FLAG_DIRECTION = 1
CHANNEL_FLAG_DISABLE = 2

# BOLT #7 address descriptor types.
ADDR_IPV4, ADDR_IPV6, ADDR_TORV3, ADDR_DNS = 1, 2, 4, 5


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


# -- channel_announcement ------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Both ends of a channel in BOLT #7 order, and which one is us."""

    node_id_1: bytes
    node_id_2: bytes
    bitcoin_key_1: bytes
    bitcoin_key_2: bytes
    local_is_1: bool

    @property
    def direction(self) -> int:
        """channel_update's direction bit for our side: "if the origin node is `node_id_1`:
        MUST set the `direction` bit of `channel_flags` to 0", otherwise 1."""
        return 0 if self.local_is_1 else 1


def order_endpoints(
    local_node: bytes, remote_node: bytes, local_bitcoin: bytes, remote_bitcoin: bytes
) -> Endpoints:
    """BOLT #7: "MUST set `node_id_1` and `node_id_2` to the public keys of the two nodes
    operating the channel, such that `node_id_1` is the lexicographically-lesser of the two
    compressed keys sorted in ascending lexicographic order" and "MUST set `bitcoin_key_1`
    and `bitcoin_key_2` to `node_id_1` and `node_id_2`'s respective `funding_pubkey`s"."""
    if local_node == remote_node:
        raise ValueError("a channel's two node ids must differ")
    if local_node < remote_node:
        return Endpoints(local_node, remote_node, local_bitcoin, remote_bitcoin, True)
    return Endpoints(remote_node, local_node, remote_bitcoin, local_bitcoin, False)


def channel_announcement(
    chain_hash: bytes, scid: int, ends: Endpoints, features: bytes = b""
) -> wire.ChannelAnnouncement:
    """Unsigned (zero signatures): enough to compute the hash every signer signs."""
    return wire.ChannelAnnouncement(
        node_signature_1=NO_SIG,
        node_signature_2=NO_SIG,
        bitcoin_signature_1=NO_SIG,
        bitcoin_signature_2=NO_SIG,
        features=features,
        chain_hash=chain_hash,
        short_channel_id=scid,
        node_id_1=ends.node_id_1,
        node_id_2=ends.node_id_2,
        bitcoin_key_1=ends.bitcoin_key_1,
        bitcoin_key_2=ends.bitcoin_key_2,
    )


def channel_announcement_hash(raw: bytes) -> bytes:
    """BOLT #7: "MUST compute the double-SHA256 hash `h` of the message, beginning at offset
    256, up to the end of the message" (the four signatures are not covered)."""
    _check_type(raw, wire.ChannelAnnouncement.TYPE)
    return sha256d(raw[CHANNEL_ANNOUNCEMENT_SIGNED_FROM:])


@dataclass(frozen=True)
class SidePair:
    """One side's node_signature and bitcoin_signature (as announcement_signatures carries)."""

    node_signature: bytes
    bitcoin_signature: bytes


def with_signatures(
    ann: wire.ChannelAnnouncement, ends: Endpoints, local: SidePair, remote: SidePair
) -> wire.ChannelAnnouncement:
    """The full announcement: each side's signatures in its node_id's slot."""
    one, two = (local, remote) if ends.local_is_1 else (remote, local)
    return dataclasses.replace(
        ann,
        node_signature_1=one.node_signature,
        node_signature_2=two.node_signature,
        bitcoin_signature_1=one.bitcoin_signature,
        bitcoin_signature_2=two.bitcoin_signature,
    )


def check_side_signatures(h: bytes, node_id: bytes, bitcoin_key: bytes, sigs: SidePair) -> str:
    """'' if both signatures of one side sign `h`, else what is wrong."""
    if not verify_hash_compact(node_id, h, sigs.node_signature):
        return "bad node_signature"
    if not verify_hash_compact(bitcoin_key, h, sigs.bitcoin_signature):
        return "bad bitcoin_signature"
    return ""


def check_channel_announcement(ann: wire.ChannelAnnouncement) -> str:
    """'' if all four signatures are valid (BOLT #7 receiver rules), else the first fault."""
    h = channel_announcement_hash(ann.encode())
    for name, key, sig in (
        ("node_signature_1", ann.node_id_1, ann.node_signature_1),
        ("node_signature_2", ann.node_id_2, ann.node_signature_2),
        ("bitcoin_signature_1", ann.bitcoin_key_1, ann.bitcoin_signature_1),
        ("bitcoin_signature_2", ann.bitcoin_key_2, ann.bitcoin_signature_2),
    ):
        if not verify_hash_compact(key, h, sig):
            return f"bad {name}"
    return ""


# -- channel_update ------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    cltv_expiry_delta: int = DEFAULT_CLTV_EXPIRY_DELTA
    htlc_minimum_msat: int = 0
    htlc_maximum_msat: int = 0
    fee_base_msat: int = DEFAULT_FEE_BASE_MSAT
    fee_proportional_millionths: int = DEFAULT_FEE_PPM


def channel_update(
    chain_hash: bytes,
    scid: int,
    timestamp: int,
    direction: int,
    policy: Policy,
    disabled: bool = False,
    dont_forward: bool = False,
) -> wire.ChannelUpdate:
    """Unsigned. BOLT #7: "MUST set `must_be_one` in `message_flags` to 1", the
    `direction` bit as Endpoints.direction says, "MUST set `htlc_minimum_msat` to less than
    or equal to `htlc_maximum_msat`", and `timestamp` "greater than 0"."""
    if timestamp <= 0:
        raise ValueError("channel_update timestamp must be greater than 0")
    if policy.htlc_minimum_msat > policy.htlc_maximum_msat:
        raise ValueError("htlc_minimum_msat above htlc_maximum_msat")
    message_flags = MESSAGE_FLAG_MUST_BE_ONE | (MESSAGE_FLAG_DONT_FORWARD if dont_forward else 0)
    channel_flags = (direction & CHANNEL_FLAG_DIRECTION) | (CHANNEL_FLAG_DISABLE if disabled else 0)
    return wire.ChannelUpdate(
        signature=NO_SIG,
        chain_hash=chain_hash,
        short_channel_id=scid,
        timestamp=timestamp,
        message_flags=message_flags,
        channel_flags=channel_flags,
        cltv_expiry_delta=policy.cltv_expiry_delta,
        htlc_minimum_msat=policy.htlc_minimum_msat,
        fee_base_msat=policy.fee_base_msat,
        fee_proportional_millionths=policy.fee_proportional_millionths,
        htlc_maximum_msat=policy.htlc_maximum_msat,
    )


def channel_update_hash(raw: bytes) -> bytes:
    """BOLT #7: "the signature of the double-SHA256 of the entire remaining packet after
    `signature`"."""
    _check_type(raw, wire.ChannelUpdate.TYPE)
    return sha256d(raw[SINGLE_SIG_SIGNED_FROM:])


# -- node_announcement ---------------------------------------------------------------------


def encode_address(kind: str, host: str, port: int) -> bytes:
    """One BOLT #7 address descriptor: ipv4, ipv6, torv3 or dns."""
    if port == 0 and kind in ("ipv4", "ipv6", "dns"):
        raise ValueError("MUST NOT create a type 1, 2 or 5 descriptor with port 0")
    port_bytes = port.to_bytes(2, "big")
    if kind == "ipv4":
        return bytes([ADDR_IPV4]) + ipaddress.IPv4Address(host).packed + port_bytes
    if kind == "ipv6":
        return bytes([ADDR_IPV6]) + ipaddress.IPv6Address(host).packed + port_bytes
    if kind == "torv3":
        onion = base64.b32decode(host.removesuffix(".onion").upper())
        if len(onion) != 35:
            raise ValueError(f"{host} is not a Tor v3 address")
        return bytes([ADDR_TORV3]) + onion + port_bytes
    if kind == "dns":
        name = host.encode("ascii")
        if not 0 < len(name) < 256:
            raise ValueError(f"hostname {host!r} length out of range")
        return bytes([ADDR_DNS, len(name)]) + name + port_bytes
    raise ValueError(f"cannot announce a {kind} address")


def encode_addresses(addrs: Iterable[tuple[str, str, int]]) -> bytes:
    """BOLT #7: "MUST place address descriptors in ascending order" and "MUST NOT announce
    more than one `type 5` DNS hostname" (the first one given is kept)."""
    descriptors = []
    seen_dns = False
    for kind, host, port in addrs:
        if kind == "dns":
            if seen_dns:
                continue
            seen_dns = True
        descriptors.append(encode_address(kind, host, port))
    # A stable sort by type keeps the operator's order within a type.
    return b"".join(sorted(descriptors, key=lambda d: d[0]))


def pad_alias(alias: str) -> bytes:
    """BOLT #7: "MUST set `alias` to a valid UTF-8 string, with any `alias` trailing-bytes
    equal to 0"."""
    raw = alias.encode("utf-8")
    if len(raw) > 32:
        raise ValueError(f"alias {alias!r} is over 32 bytes")
    return raw.ljust(32, b"\0")


def node_announcement(
    node_id: bytes,
    timestamp: int,
    rgb: bytes,
    alias: str,
    addresses: bytes,
    features: bytes,
) -> wire.NodeAnnouncement:
    """Unsigned."""
    return wire.NodeAnnouncement(
        signature=NO_SIG,
        features=features,
        timestamp=timestamp,
        node_id=node_id,
        rgb_color=rgb,
        alias=pad_alias(alias),
        addresses=addresses,
    )


def node_announcement_hash(raw: bytes) -> bytes:
    """BOLT #7: "the signature of the double-SHA256 of the entire remaining packet after
    `signature`"."""
    _check_type(raw, wire.NodeAnnouncement.TYPE)
    return sha256d(raw[SINGLE_SIG_SIGNED_FROM:])


def with_signature(msg: T, sig: bytes) -> T:
    """A channel_update or node_announcement with its one signature set."""
    return dataclasses.replace(msg, signature=sig)


# -- helpers -------------------------------------------------------------------------------


def _check_type(raw: bytes, msgtype: int) -> None:
    if len(raw) < 2 or int.from_bytes(raw[:2], "big") != msgtype:
        raise ValueError(f"not a message of type {msgtype}")
