"""BOLT #7 gossip validation (pure functions) and the network view gossipd keeps.

Two ways to refuse a message, as BOLT #7 distinguishes them:
  - BadGossip: a forgery or malformed message: "SHOULD send a `warning`", and drop it.
  - IgnoredGossip: well-formed but not for us (other chain, stale, unknown channel):
    "MUST/SHOULD ignore the message", quietly.
Nothing refused is stored or relayed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass, field

from common.features import Feature, bytes_to_bits
from common.key_derive import is_valid_pubkey
from common.scripts import funding_script, p2wsh
from common.signature import verify_hash_compact
from wire import peer_wiregen as pw
from wire.fundamental import WireError

# Offsets of the signed part, counting the 2-byte type.
CHANNEL_ANNOUNCEMENT_SIGNED_OFFSET = 2 + 4 * 64
SINGLE_SIG_SIGNED_OFFSET = 2 + 64

MSGFLAG_MUST_BE_ONE = 1
MSGFLAG_DONT_FORWARD = 2
CHANFLAG_DIRECTION = 1
CHANFLAG_DISABLE = 2

KNOWN_FEATURE_BITS = frozenset(int(f) for f in Feature)


class GossipRejected(Exception):
    """The message is dropped."""


class BadGossip(GossipRejected):
    """Invalid: warn the sender (BOLT #7 "SHOULD send a `warning`")."""


class IgnoredGossip(GossipRejected):
    """Not invalid, but not taken ("MUST/SHOULD ignore the message")."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def signed_hash(raw: bytes, offset: int) -> bytes:
    """BOLT #7: the double-SHA256 of the message from `offset` to the end."""
    return sha256d(raw[offset:])


def unknown_even_features(features: bytes) -> list[int]:
    """Even (compulsory) bits we do not know."""
    return [b for b in bytes_to_bits(features) if b % 2 == 0 and b not in KNOWN_FEATURE_BITS]


def scid_block(scid: int) -> int:
    return scid >> 40


def scid_str(scid: int) -> str:
    return f"{scid >> 40}x{(scid >> 16) & 0xFFFFFF}x{scid & 0xFFFF}"


def _decode(cls: type, raw: bytes):
    try:
        return cls.decode(raw)
    except WireError as exc:
        raise BadGossip(f"malformed {cls.NAME}: {exc}") from None


# ---------------------------------------------------------------------------
# channel_announcement


def check_channel_announcement(raw: bytes, chain_hash: bytes) -> pw.ChannelAnnouncement:
    """Everything about a channel_announcement that does not need the chain."""
    ann = _decode(pw.ChannelAnnouncement, raw)
    # BOLT #7: "if the specified `chain_hash` is unknown to the receiver: MUST ignore"
    if ann.chain_hash != chain_hash:
        raise IgnoredGossip(f"channel_announcement for chain {ann.chain_hash.hex()}")
    # BOLT #7: "MUST set `node_id_1` and `node_id_2` ... such that `node_id_1` is the
    # lexicographically-lesser of the two compressed keys"
    if ann.node_id_1 >= ann.node_id_2:
        raise BadGossip("channel_announcement: node_id_1 is not less than node_id_2")
    for name in ("node_id_1", "node_id_2", "bitcoin_key_1", "bitcoin_key_2"):
        if not is_valid_pubkey(getattr(ann, name)):
            raise BadGossip(f"channel_announcement: {name} is not a valid point")
    # BOLT #7: "MUST verify the integrity AND authenticity of the message by verifying
    # the signatures" ... "if `bitcoin_signature_1`, `bitcoin_signature_2`,
    # `node_signature_1` OR `node_signature_2` are invalid OR NOT correct: SHOULD send a
    # `warning` ... MUST ignore the message."
    h = signed_hash(raw, CHANNEL_ANNOUNCEMENT_SIGNED_OFFSET)
    for sig, key in (
        ("node_signature_1", "node_id_1"),
        ("node_signature_2", "node_id_2"),
        ("bitcoin_signature_1", "bitcoin_key_1"),
        ("bitcoin_signature_2", "bitcoin_key_2"),
    ):
        if not verify_hash_compact(getattr(ann, key), h, getattr(ann, sig)):
            raise BadGossip(f"channel_announcement {scid_str(ann.short_channel_id)}: bad {sig}")
    # BOLT #7: "if there is an unknown even bit in the `features` field: MUST NOT attempt
    # to route messages through the channel." We do not keep such a channel.
    unknown = unknown_even_features(ann.features)
    if unknown:
        raise IgnoredGossip(f"channel_announcement: unknown even feature bits {unknown}")
    return ann


def check_funding_txout(ann: pw.ChannelAnnouncement, amount_sat: int | None, script: bytes) -> int:
    """The funding output lightningd found; returns the capacity in satoshis.

    BOLT #7: "if the `short_channel_id`'s output does NOT correspond to a P2WSH (using
    `bitcoin_key_1` and `bitcoin_key_2` ...) OR the output is spent: MUST ignore the message."
    """
    scid = scid_str(ann.short_channel_id)
    if amount_sat is None:
        raise IgnoredGossip(f"channel_announcement {scid}: funding output missing or spent")
    expected = bytes(p2wsh(funding_script(ann.bitcoin_key_1, ann.bitcoin_key_2)))
    if script != expected:
        raise BadGossip(f"channel_announcement {scid}: funding output is not the 2-of-2 P2WSH")
    if amount_sat <= 0:
        raise BadGossip(f"channel_announcement {scid}: funding output has no value")
    return amount_sat


# ---------------------------------------------------------------------------
# channel_update


def update_direction(upd: pw.ChannelUpdate) -> int:
    return upd.channel_flags & CHANFLAG_DIRECTION


def check_channel_update(
    raw: bytes,
    chain_hash: bytes,
    node_ids: tuple[bytes, bytes],
    capacity_sat: int,
    prev_timestamp: int | None,
) -> pw.ChannelUpdate:
    """A channel_update for a channel we know (its two node ids and capacity)."""
    upd = _decode(pw.ChannelUpdate, raw)
    scid = scid_str(upd.short_channel_id)
    # BOLT #7: "The `node_id` for the signature verification is taken from the corresponding
    # `channel_announcement`: `node_id_1` if the least-significant bit of flags is 0 or
    # `node_id_2` otherwise." ... "if `signature` is not a valid signature ... SHOULD send a
    # `warning` and close the connection. MUST NOT process the message further."
    signer = node_ids[update_direction(upd)]
    if not verify_hash_compact(signer, signed_hash(raw, SINGLE_SIG_SIGNED_OFFSET), upd.signature):
        raise BadGossip(f"channel_update {scid}: bad signature")
    # BOLT #7: "if the specified `chain_hash` value is unknown ...: MUST ignore"
    if upd.chain_hash != chain_hash:
        raise IgnoredGossip(f"channel_update {scid} for chain {upd.chain_hash.hex()}")
    # BOLT #7: "if `timestamp` is lower than that of the last-received `channel_update` ...
    # SHOULD ignore the message"; equal with equal fields: "SHOULD ignore this message".
    if prev_timestamp is not None and upd.timestamp <= prev_timestamp:
        raise IgnoredGossip(f"channel_update {scid}: timestamp {upd.timestamp} not newer")
    # BOLT #7: "MUST set `must_be_one` in `message_flags` to 1" (ignored by receivers).
    # "if `htlc_maximum_msat` is greater than channel capacity: MAY blacklist this `node_id`;
    # SHOULD ignore this channel during route considerations." We refuse the update.
    if upd.htlc_maximum_msat > capacity_sat * 1000:
        raise BadGossip(f"channel_update {scid}: htlc_maximum_msat above capacity")
    # "if `htlc_maximum_msat` < `htlc_minimum_msat`: SHOULD ignore this channel"
    if upd.htlc_maximum_msat < upd.htlc_minimum_msat:
        raise BadGossip(f"channel_update {scid}: htlc_maximum_msat below htlc_minimum_msat")
    return upd


# ---------------------------------------------------------------------------
# node_announcement

ADDR_TYPES = {1: ("ipv4", 4), 2: ("ipv6", 16), 3: ("torv2", 10), 4: ("torv3", 35)}
ADDR_DNS = 5


@dataclass(frozen=True)
class Address:
    type: str
    address: str
    port: int


def _addr_text(kind: str, data: bytes) -> str:
    if kind == "ipv4":
        return str(ipaddress.IPv4Address(data))
    if kind == "ipv6":
        return str(ipaddress.IPv6Address(data))
    import base64

    return base64.b32encode(data).decode().lower() + ".onion"


def parse_addresses(data: bytes) -> list[Address]:
    """Address descriptors; BadGossip if one of a known type does not fit.

    BOLT #7: "SHOULD ignore the first `address descriptor` that does NOT match the types
    defined above." (so we stop there) "if `addrlen` is insufficient to hold the address
    descriptors of the known types: SHOULD send a `warning`."
    """
    out: list[Address] = []
    off = 0
    dns_seen = False
    while off < len(data):
        kind = data[off]
        off += 1
        if kind in ADDR_TYPES:
            name, n = ADDR_TYPES[kind]
            host = data[off : off + n]
            off += n
        elif kind == ADDR_DNS:
            if off >= len(data):
                raise BadGossip("node_announcement: truncated DNS address descriptor")
            n = data[off]
            host = data[off + 1 : off + 1 + n]
            off += 1 + n
            name = "dns"
        else:
            break
        if off + 2 > len(data) or len(host) != n:
            raise BadGossip(f"node_announcement: truncated {name} address descriptor")
        (port,) = struct.unpack_from(">H", data, off)
        off += 2
        if name == "dns":
            # "`hostname` bytes MUST be ASCII characters."
            if not host.isascii():
                raise BadGossip("node_announcement: non-ASCII DNS hostname")
            # "if more than one `type 5` address is announced: ... MUST not forward"
            if dns_seen:
                raise BadGossip("node_announcement: more than one DNS address")
            dns_seen = True
        # "if `port` is equal to 0: SHOULD ignore"; "SHOULD ignore Tor v2 onion services."
        if name == "torv2" or (port == 0 and name != "torv3"):
            continue
        text = host.decode() if name == "dns" else _addr_text(name, host)
        out.append(Address(name, text, port))
    return out


def check_node_announcement(
    raw: bytes, has_channel: bool, prev_timestamp: int | None
) -> tuple[pw.NodeAnnouncement, list[Address]]:
    ann = _decode(pw.NodeAnnouncement, raw)
    # BOLT #7: "if `node_id` is NOT a valid compressed public key: SHOULD send a `warning`"
    if not is_valid_pubkey(ann.node_id):
        raise BadGossip("node_announcement: node_id is not a valid point")
    # "if `signature` is NOT a valid signature ...: SHOULD send a `warning`"
    if not verify_hash_compact(
        ann.node_id, signed_hash(raw, SINGLE_SIG_SIGNED_OFFSET), ann.signature
    ):
        raise BadGossip(f"node_announcement {ann.node_id.hex()}: bad signature")
    addresses = parse_addresses(ann.addresses)
    # "if `node_id` is NOT previously known from a `channel_announcement` message, OR if
    # `timestamp` is NOT greater than the last-received `node_announcement` from this
    # `node_id`: SHOULD ignore the message."
    if not has_channel:
        raise IgnoredGossip(f"node_announcement {ann.node_id.hex()}: node has no channel")
    if prev_timestamp is not None and ann.timestamp <= prev_timestamp:
        raise IgnoredGossip(f"node_announcement {ann.node_id.hex()}: timestamp not newer")
    # "if `features` field contains _unknown even bits_: ... MUST NOT route a payment
    # _through_ the node." We keep and relay it (the bits refer to the node).
    return ann, addresses


# ---------------------------------------------------------------------------
# The network view


@dataclass
class HalfChannel:
    raw: bytes
    update: pw.ChannelUpdate
    offset: int = 0


@dataclass
class Channel:
    scid: int
    raw: bytes
    ann: pw.ChannelAnnouncement
    capacity_sat: int
    offsets: tuple[int, ...] = ()  # store records: the announcement and its amount
    half: list[HalfChannel | None] = field(default_factory=lambda: [None, None])

    @property
    def node_ids(self) -> tuple[bytes, bytes]:
        return (self.ann.node_id_1, self.ann.node_id_2)

    def timestamp(self) -> int | None:
        """BOLT #7: the `timestamp` of a channel_announcement is that of an update."""
        stamps = [h.update.timestamp for h in self.half if h]
        return max(stamps) if stamps else None


@dataclass
class Node:
    node_id: bytes
    channels: set[int] = field(default_factory=set)
    raw: bytes | None = None
    ann: pw.NodeAnnouncement | None = None
    addresses: list[Address] = field(default_factory=list)
    offset: int = 0


class Routing:
    """Channels and nodes we accepted; the caller stores and relays."""

    def __init__(self, chain_hash: bytes) -> None:
        self.chain_hash = chain_hash
        self.channels: dict[int, Channel] = {}
        self.nodes: dict[bytes, Node] = {}

    def add_channel(self, raw: bytes, ann: pw.ChannelAnnouncement, capacity_sat: int) -> Channel:
        chan = Channel(ann.short_channel_id, raw, ann, capacity_sat)
        self.channels[chan.scid] = chan
        for node_id in chan.node_ids:
            self.nodes.setdefault(node_id, Node(node_id)).channels.add(chan.scid)
        return chan

    def check_update(self, raw: bytes) -> tuple[Channel, pw.ChannelUpdate]:
        upd = _decode(pw.ChannelUpdate, raw)
        chan = self.channels.get(upd.short_channel_id)
        if chan is None:
            # BOLT #7: "if the `short_channel_id` does NOT match a previous
            # `channel_announcement`: MUST ignore"
            raise IgnoredGossip(f"channel_update for unknown {scid_str(upd.short_channel_id)}")
        prev = chan.half[update_direction(upd)]
        prev_ts = prev.update.timestamp if prev else None
        return chan, check_channel_update(
            raw, self.chain_hash, chan.node_ids, chan.capacity_sat, prev_ts
        )

    def apply_update(self, chan: Channel, raw: bytes, upd: pw.ChannelUpdate) -> HalfChannel | None:
        """Install the update; returns the one it supersedes."""
        d = update_direction(upd)
        old = chan.half[d]
        chan.half[d] = HalfChannel(raw, upd)
        return old

    def check_node(self, raw: bytes) -> tuple[pw.NodeAnnouncement, list[Address]]:
        try:
            node_id = pw.NodeAnnouncement.decode(raw).node_id
        except WireError as exc:
            raise BadGossip(f"malformed node_announcement: {exc}") from None
        node = self.nodes.get(node_id)
        has_channel = bool(node and node.channels)
        prev = node.ann.timestamp if node and node.ann else None
        return check_node_announcement(raw, has_channel, prev)

    def apply_node(self, raw: bytes, ann: pw.NodeAnnouncement, addresses: list[Address]) -> Node:
        """Install the announcement; returns the node (its old offset still set)."""
        node = self.nodes[ann.node_id]
        node.raw, node.ann, node.addresses = raw, ann, addresses
        return node

    def remove_channel(self, scid: int) -> list[int]:
        """Forget a closed channel (and nodes left without one); store offsets to delete."""
        chan = self.channels.pop(scid, None)
        if chan is None:
            return []
        offsets = list(chan.offsets) + [h.offset for h in chan.half if h]
        for node_id in chan.node_ids:
            node = self.nodes[node_id]
            node.channels.discard(scid)
            if not node.channels:
                # BOLT #7: "if there are no channels associated with the corresponding origin
                # node: MAY purge the origin node from its set of known nodes."
                if node.raw is not None:
                    offsets.append(node.offset)
                del self.nodes[node_id]
        return offsets


# ---------------------------------------------------------------------------
# Query replies


def encode_short_ids(scids: list[int]) -> bytes:
    """Encoding type 0: "uncompressed array of `short_channel_id` types, in ascending order"."""
    return b"\x00" + b"".join(struct.pack(">Q", s) for s in sorted(scids))


def decode_short_ids(encoded: bytes) -> list[int]:
    """BadGossip for an unknown encoding or a partial short_channel_id."""
    if not encoded:
        return []
    if encoded[0] != 0:
        raise BadGossip(f"encoded_short_ids: unknown encoding type {encoded[0]}")
    body = encoded[1:]
    if len(body) % 8:
        raise BadGossip("encoded_short_ids: not a whole number of short_channel_ids")
    return [s for (s,) in struct.iter_unpack(">Q", body)]


MAX_SCIDS_PER_REPLY = (0xFFFF - 1) // 8 - 100  # room left for the rest of the message


def channel_range_replies(
    chain_hash: bytes,
    first_blocknum: int,
    number_of_blocks: int,
    scids: list[int],
    max_per_reply: int = MAX_SCIDS_PER_REPLY,
) -> list[pw.ReplyChannelRange]:
    """Answer query_channel_range: the scids in range, split into several replies.

    BOLT #7: the first reply "MUST set `first_blocknum` less than or equal to the
    `first_blocknum` in `query_channel_range`"; successive ones "MUST have `first_blocknum`
    equal or greater than the previous"; "MUST set `sync_complete` to `false` if this is not
    the final `reply_channel_range`"; the final one "MUST have `first_blocknum` plus
    `number_of_blocks` equal or greater than the query's".
    """
    end = min(first_blocknum + number_of_blocks, 0xFFFFFFFF)
    inrange = sorted(s for s in scids if first_blocknum <= scid_block(s) < end)
    chunks = [inrange[i : i + max_per_reply] for i in range(0, len(inrange), max_per_reply)]
    chunks = chunks or [[]]
    replies = []
    start = first_blocknum
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        stop = end if last else max(scid_block(chunk[-1]) + 1, scid_block(chunks[i + 1][0]))
        replies.append(
            pw.ReplyChannelRange(
                chain_hash=chain_hash,
                first_blocknum=start,
                number_of_blocks=max(stop - start, 1),
                sync_complete=1 if last else 0,
                encoded_short_ids=encode_short_ids(chunk),
            )
        )
        if not last:
            start = scid_block(chunks[i + 1][0])
    return replies
