"""BOLT #7 validation: real, correctly signed gossip passes; every forgery fails."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import pytest
from coincurve import PrivateKey

from common.chainparams import CHAINS
from common.scripts import funding_script, p2wsh
from common.signature import sign_hash_compact
from gossipd.gossipd import TokenBucket
from gossipd.routing import (
    CHANNEL_ANNOUNCEMENT_SIGNED_OFFSET,
    SINGLE_SIG_SIGNED_OFFSET,
    BadGossip,
    IgnoredGossip,
    Routing,
    channel_range_replies,
    check_channel_announcement,
    check_channel_update,
    check_funding_txout,
    check_node_announcement,
    decode_short_ids,
    encode_short_ids,
    parse_addresses,
    scid_block,
    sha256d,
)
from wire import peer_wiregen as pw

REGTEST = CHAINS["regtest"].chain_hash
MAINNET = CHAINS["bitcoin"].chain_hash
SCID = (103 << 40) | (1 << 16) | 0
CAPACITY = 500_000
ZERO_SIG = bytes(64)


def key(n: int) -> bytes:
    return bytes([n]) * 32


def pub(secret: bytes) -> bytes:
    return PrivateKey(secret).public_key.format()


@dataclass
class Keys:
    """Two nodes (node 1 the lesser id) and their funding keys."""

    node1: bytes
    node2: bytes
    fund1: bytes
    fund2: bytes


def make_keys(a: int = 1, b: int = 2) -> Keys:
    n1, n2 = key(a), key(b)
    if pub(n1) > pub(n2):
        n1, n2 = n2, n1
    return Keys(n1, n2, key(a + 10), key(b + 10))


KEYS = make_keys()


def sign_channel_announcement(ann: pw.ChannelAnnouncement, k: Keys) -> pw.ChannelAnnouncement:
    h = sha256d(ann.encode()[CHANNEL_ANNOUNCEMENT_SIGNED_OFFSET:])
    return replace(
        ann,
        node_signature_1=sign_hash_compact(k.node1, h),
        node_signature_2=sign_hash_compact(k.node2, h),
        bitcoin_signature_1=sign_hash_compact(k.fund1, h),
        bitcoin_signature_2=sign_hash_compact(k.fund2, h),
    )


def channel_announcement(
    k: Keys = KEYS, scid: int = SCID, chain: bytes = REGTEST, features: bytes = b""
) -> pw.ChannelAnnouncement:
    ann = pw.ChannelAnnouncement(
        node_signature_1=ZERO_SIG,
        node_signature_2=ZERO_SIG,
        bitcoin_signature_1=ZERO_SIG,
        bitcoin_signature_2=ZERO_SIG,
        features=features,
        chain_hash=chain,
        short_channel_id=scid,
        node_id_1=pub(k.node1),
        node_id_2=pub(k.node2),
        bitcoin_key_1=pub(k.fund1),
        bitcoin_key_2=pub(k.fund2),
    )
    return sign_channel_announcement(ann, k)


def sign_single(msg: pw.ChannelUpdate | pw.NodeAnnouncement, secret: bytes):
    h = sha256d(msg.encode()[SINGLE_SIG_SIGNED_OFFSET:])
    return replace(msg, signature=sign_hash_compact(secret, h))


def channel_update(
    direction: int = 0,
    timestamp: int = 1000,
    k: Keys = KEYS,
    scid: int = SCID,
    chain: bytes = REGTEST,
    htlc_max: int = CAPACITY * 1000,
    signer: bytes | None = None,
    fee_base: int = 1000,
    channel_flags: int | None = None,
) -> pw.ChannelUpdate:
    upd = pw.ChannelUpdate(
        signature=ZERO_SIG,
        chain_hash=chain,
        short_channel_id=scid,
        timestamp=timestamp,
        message_flags=1,
        channel_flags=direction if channel_flags is None else channel_flags,
        cltv_expiry_delta=6,
        htlc_minimum_msat=1,
        fee_base_msat=fee_base,
        fee_proportional_millionths=10,
        htlc_maximum_msat=htlc_max,
    )
    if signer is None:
        signer = (k.node1, k.node2)[direction]
    return sign_single(upd, signer)


def ipv4(addr: str, port: int) -> bytes:
    return b"\x01" + bytes(int(x) for x in addr.split(".")) + struct.pack(">H", port)


def node_announcement(
    secret: bytes = KEYS.node1,
    timestamp: int = 1000,
    addresses: bytes = b"",
    alias: str = "alice",
) -> pw.NodeAnnouncement:
    ann = pw.NodeAnnouncement(
        signature=ZERO_SIG,
        features=b"",
        timestamp=timestamp,
        node_id=pub(secret),
        rgb_color=b"\x01\x02\x03",
        alias=alias.encode().ljust(32, b"\0"),
        addresses=addresses if addresses else ipv4("127.0.0.1", 9735),
    )
    return sign_single(ann, secret)


def funding_spk(k: Keys = KEYS) -> bytes:
    return bytes(p2wsh(funding_script(pub(k.fund1), pub(k.fund2))))


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


# --- channel_announcement -----------------------------------------------------------


def test_valid_channel_announcement_passes() -> None:
    ann = channel_announcement()
    got = check_channel_announcement(ann.encode(), REGTEST)
    assert got.short_channel_id == SCID
    assert check_funding_txout(got, CAPACITY, funding_spk()) == CAPACITY


@pytest.mark.parametrize(
    "sig", ["node_signature_1", "node_signature_2", "bitcoin_signature_1", "bitcoin_signature_2"]
)
def test_each_bad_signature_fails(sig: str) -> None:
    ann = channel_announcement()
    forged = replace(ann, **{sig: flip_byte(getattr(ann, sig), 40)})
    with pytest.raises(BadGossip, match=sig):
        check_channel_announcement(forged.encode(), REGTEST)


@pytest.mark.parametrize("sig", ["node_signature_1", "bitcoin_signature_2"])
def test_signature_by_another_key_fails(sig: str) -> None:
    ann = channel_announcement()
    h = sha256d(ann.encode()[CHANNEL_ANNOUNCEMENT_SIGNED_OFFSET:])
    forged = replace(ann, **{sig: sign_hash_compact(key(99), h)})
    with pytest.raises(BadGossip, match=sig):
        check_channel_announcement(forged.encode(), REGTEST)


def test_tampered_body_fails() -> None:
    ann = channel_announcement()
    tampered = replace(ann, short_channel_id=SCID + 1)
    with pytest.raises(BadGossip):
        check_channel_announcement(tampered.encode(), REGTEST)


def test_wrong_chain_hash_is_ignored() -> None:
    ann = channel_announcement(chain=MAINNET)
    with pytest.raises(IgnoredGossip, match="chain"):
        check_channel_announcement(ann.encode(), REGTEST)


def test_node_ids_out_of_order_fail() -> None:
    swapped = Keys(KEYS.node2, KEYS.node1, KEYS.fund2, KEYS.fund1)
    ann = channel_announcement(swapped)  # correctly signed, but the order is wrong
    with pytest.raises(BadGossip, match="node_id_1"):
        check_channel_announcement(ann.encode(), REGTEST)


def test_unknown_even_feature_is_ignored_odd_accepted() -> None:
    with pytest.raises(IgnoredGossip, match="feature"):
        unknown = channel_announcement(features=(1 << 100).to_bytes(13, "big"))
        check_channel_announcement(unknown.encode(), REGTEST)
    odd = channel_announcement(features=(1 << 101).to_bytes(13, "big"))
    check_channel_announcement(odd.encode(), REGTEST)


def test_wrong_funding_script_fails() -> None:
    ann = check_channel_announcement(channel_announcement().encode(), REGTEST)
    other = make_keys(3, 4)
    with pytest.raises(BadGossip, match="P2WSH"):
        check_funding_txout(ann, CAPACITY, funding_spk(other))
    with pytest.raises(BadGossip, match="P2WSH"):
        check_funding_txout(ann, CAPACITY, bytes(funding_script(pub(KEYS.fund1), pub(KEYS.fund2))))


def test_spent_or_missing_output_is_ignored() -> None:
    ann = check_channel_announcement(channel_announcement().encode(), REGTEST)
    with pytest.raises(IgnoredGossip, match="spent"):
        check_funding_txout(ann, None, b"")


def test_zero_amount_fails() -> None:
    ann = check_channel_announcement(channel_announcement().encode(), REGTEST)
    with pytest.raises(BadGossip):
        check_funding_txout(ann, 0, funding_spk())


# --- channel_update ------------------------------------------------------------------

NODE_IDS = (pub(KEYS.node1), pub(KEYS.node2))


@pytest.mark.parametrize("direction", [0, 1])
def test_valid_update_each_direction(direction: int) -> None:
    raw = channel_update(direction).encode()
    upd = check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, None)
    assert upd.channel_flags & 1 == direction
    # the disable bit is kept
    raw = channel_update(direction, channel_flags=direction | 2).encode()
    assert check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, None).channel_flags & 2


def test_update_signed_by_wrong_node_fails() -> None:
    raw = channel_update(0, signer=KEYS.node2).encode()
    with pytest.raises(BadGossip, match="signature"):
        check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, None)


def test_update_with_bad_signature_fails() -> None:
    raw = flip_byte(channel_update(0).encode(), 50)
    with pytest.raises(BadGossip, match="signature"):
        check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, None)


def test_older_or_replayed_update_is_ignored() -> None:
    raw = channel_update(0, timestamp=1000).encode()
    with pytest.raises(IgnoredGossip, match="not newer"):
        check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, 1000)
    with pytest.raises(IgnoredGossip, match="not newer"):
        check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, 1001)
    assert check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, 999).timestamp == 1000


def test_update_wrong_chain_is_ignored() -> None:
    raw = channel_update(0, chain=MAINNET).encode()
    with pytest.raises(IgnoredGossip, match="chain"):
        check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, None)


def test_htlc_maximum_above_capacity_fails() -> None:
    raw = channel_update(0, htlc_max=CAPACITY * 1000 + 1).encode()
    with pytest.raises(BadGossip, match="capacity"):
        check_channel_update(raw, REGTEST, NODE_IDS, CAPACITY, None)


def test_routing_update_flow() -> None:
    r = Routing(REGTEST)
    with pytest.raises(IgnoredGossip, match="unknown"):
        r.check_update(channel_update(0).encode())
    ann = channel_announcement()
    chan = r.add_channel(ann.encode(), ann, CAPACITY)
    raw = channel_update(0, timestamp=5).encode()
    chan2, upd = r.check_update(raw)
    assert chan2 is chan and r.apply_update(chan, raw, upd) is None
    with pytest.raises(IgnoredGossip):
        r.check_update(raw)  # replay
    newer = channel_update(0, timestamp=6).encode()
    old = r.apply_update(chan, newer, r.check_update(newer)[1])
    assert old is not None and old.raw == raw
    assert r.remove_channel(SCID) == [0]  # the one update (no store offsets for the ann)
    assert SCID not in r.channels and not r.nodes


# --- node_announcement ---------------------------------------------------------------


def test_valid_node_announcement() -> None:
    ann, addrs = check_node_announcement(node_announcement().encode(), True, None)
    assert ann.node_id == pub(KEYS.node1)
    assert [(a.type, a.address, a.port) for a in addrs] == [("ipv4", "127.0.0.1", 9735)]


def test_node_announcement_without_channel_is_ignored() -> None:
    with pytest.raises(IgnoredGossip, match="no channel"):
        check_node_announcement(node_announcement().encode(), False, None)
    r = Routing(REGTEST)
    with pytest.raises(IgnoredGossip, match="no channel"):
        r.check_node(node_announcement().encode())


def test_node_announcement_bad_signature_fails() -> None:
    raw = flip_byte(node_announcement().encode(), 90)
    with pytest.raises(BadGossip, match="signature"):
        check_node_announcement(raw, True, None)


def test_node_announcement_old_timestamp_is_ignored() -> None:
    with pytest.raises(IgnoredGossip, match="timestamp"):
        check_node_announcement(node_announcement(timestamp=10).encode(), True, 10)


def test_bad_address_descriptor_fails() -> None:
    truncated = ipv4("10.0.0.1", 9735)[:-1]
    with pytest.raises(BadGossip, match="truncated"):
        check_node_announcement(node_announcement(addresses=truncated).encode(), True, None)
    with pytest.raises(BadGossip, match="truncated"):
        parse_addresses(b"\x02" + bytes(10))
    two_dns = (b"\x05\x03abc\x00\x01") * 2
    with pytest.raises(BadGossip, match="DNS"):
        parse_addresses(two_dns)


def test_address_parsing() -> None:
    data = (
        ipv4("1.2.3.4", 1)
        + b"\x02"
        + bytes(15)
        + b"\x01"
        + struct.pack(">H", 2)
        + b"\x05\x0bexample.com"
        + struct.pack(">H", 3)
        + b"\x09garbage"  # unknown type: ignored from here on
    )
    got = [(a.type, a.address, a.port) for a in parse_addresses(data)]
    assert got == [("ipv4", "1.2.3.4", 1), ("ipv6", "::1", 2), ("dns", "example.com", 3)]
    assert parse_addresses(ipv4("1.2.3.4", 0)) == []  # port 0 ignored


# --- queries and rate limits -----------------------------------------------------------


def test_short_ids_encoding() -> None:
    assert decode_short_ids(encode_short_ids([3, 1, 2])) == [1, 2, 3]
    with pytest.raises(BadGossip):
        decode_short_ids(b"\x01" + bytes(8))
    with pytest.raises(BadGossip):
        decode_short_ids(b"\x00" + bytes(7))


def test_channel_range_split() -> None:
    scids = [(b << 40) | (i << 16) for b in range(100, 110) for i in range(3)]
    replies = channel_range_replies(REGTEST, 0, 1000, scids, max_per_reply=4)
    got: list[int] = []
    prev_first = -1
    for r in replies[:-1]:
        assert r.sync_complete == 0
    assert replies[-1].sync_complete == 1
    assert replies[0].first_blocknum <= 0
    for r in replies:
        ids = decode_short_ids(r.encoded_short_ids)
        assert len(ids) <= 4 and r.first_blocknum >= prev_first
        prev_first = r.first_blocknum
        for s in ids:
            assert r.first_blocknum <= scid_block(s) < r.first_blocknum + r.number_of_blocks
        got += ids
    assert got == sorted(scids)
    last = replies[-1]
    assert last.first_blocknum + last.number_of_blocks >= 1000
    only = channel_range_replies(REGTEST, 105, 2, scids)
    assert len(only) == 1 and len(decode_short_ids(only[0].encoded_short_ids)) == 6


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(3, 1.0, lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 2.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]
