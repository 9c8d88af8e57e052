"""common/gossip_sign.py: BOLT #7 field order, signed ranges, and signatures made and checked
independently with coincurve."""

from __future__ import annotations

import hashlib

import pytest
from coincurve import PrivateKey, PublicKey

from common.chainparams import CHAINS
from common.gossip_sign import (
    Policy,
    SidePair,
    channel_announcement,
    channel_announcement_hash,
    channel_update,
    channel_update_hash,
    check_channel_announcement,
    check_side_signatures,
    encode_addresses,
    node_announcement,
    node_announcement_hash,
    order_endpoints,
    with_signature,
    with_signatures,
)
from common.signature import compact_to_der, der_to_compact
from wire import peer_wiregen as wire

REGTEST = CHAINS["regtest"].chain_hash
KEYS = {name: PrivateKey(hashlib.sha256(name.encode()).digest()) for name in ("a", "b", "fa", "fb")}
PUB = {name: key.public_key.format() for name, key in KEYS.items()}
SCID = (103 << 40) | (1 << 16) | 0


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def sign(name: str, h: bytes) -> bytes:
    return der_to_compact(KEYS[name].sign(h, hasher=None))


def verify(pubkey: bytes, h: bytes, sig: bytes) -> bool:
    return PublicKey(pubkey).verify(compact_to_der(sig), h, hasher=None)


@pytest.mark.parametrize("local, remote", [("a", "b"), ("b", "a")])
def test_channel_announcement_order_and_signatures(local, remote):
    ends = order_endpoints(PUB[local], PUB[remote], PUB["f" + local], PUB["f" + remote])
    lesser = min(PUB["a"], PUB["b"])
    assert ends.node_id_1 == lesser and ends.node_id_1 < ends.node_id_2
    # bitcoin_key_N is node_id_N's funding key.
    owner = {PUB["a"]: PUB["fa"], PUB["b"]: PUB["fb"]}
    assert (owner[ends.node_id_1], owner[ends.node_id_2]) == (
        ends.bitcoin_key_1,
        ends.bitcoin_key_2,
    )
    assert ends.local_is_1 == (PUB[local] == lesser)
    assert ends.direction == (0 if ends.local_is_1 else 1)

    ann = channel_announcement(REGTEST, SCID, ends)
    raw = ann.encode()
    # BOLT #7 layout: type, 4 signatures, len, features, chain_hash, scid, 4 points.
    assert raw[:2] == (256).to_bytes(2, "big")
    assert raw[258:260] == b"\0\0"
    assert raw[260:292] == REGTEST
    assert raw[292:300] == SCID.to_bytes(8, "big")
    assert raw[300:] == ends.node_id_1 + ends.node_id_2 + ends.bitcoin_key_1 + ends.bitcoin_key_2
    h = channel_announcement_hash(raw)
    assert h == sha256d(raw[258:])

    sides = {n: SidePair(sign(n, h), sign("f" + n, h)) for n in ("a", "b")}
    assert check_side_signatures(h, PUB[local], PUB["f" + local], sides[local]) == ""
    assert "node_signature" in check_side_signatures(h, PUB[remote], PUB["f" + local], sides[local])
    wrong = SidePair(sides[local].node_signature, sides[remote].bitcoin_signature)
    assert "bitcoin_signature" in check_side_signatures(h, PUB[local], PUB["f" + local], wrong)

    full = with_signatures(ann, ends, sides[local], sides[remote])
    assert check_channel_announcement(full) == ""
    # Signatures do not change the signed part, and each sits in its node's slot.
    assert channel_announcement_hash(full.encode()) == h
    assert verify(full.node_id_1, h, full.node_signature_1)
    assert verify(full.node_id_2, h, full.node_signature_2)
    assert verify(full.bitcoin_key_1, h, full.bitcoin_signature_1)
    assert verify(full.bitcoin_key_2, h, full.bitcoin_signature_2)
    swapped = with_signatures(ann, ends, sides[remote], sides[local])
    assert check_channel_announcement(swapped) == "bad node_signature_1"


def test_channel_update_fields_and_hash():
    policy = Policy(htlc_minimum_msat=1, htlc_maximum_msat=990_000_000)
    update = channel_update(REGTEST, SCID, 1_700_000_000, 1, policy)
    raw = update.encode()
    assert raw[66:98] == REGTEST
    assert raw[98:106] == SCID.to_bytes(8, "big")
    assert raw[106:110] == (1_700_000_000).to_bytes(4, "big")
    assert (raw[110], raw[111]) == (1, 1)  # must_be_one; direction 1, enabled
    assert raw[112:114] == (34).to_bytes(2, "big")  # CLN's default cltv-delta
    assert int.from_bytes(raw[122:126], "big") == 1000  # fee_base_msat
    assert int.from_bytes(raw[126:130], "big") == 10  # fee_proportional_millionths
    assert int.from_bytes(raw[130:138], "big") == 990_000_000
    h = channel_update_hash(raw)
    assert h == sha256d(raw[66:])
    signed = with_signature(update, sign("a", h))
    assert channel_update_hash(signed.encode()) == h
    assert verify(PUB["a"], h, signed.signature)
    with pytest.raises(ValueError):
        channel_update(REGTEST, SCID, 1, 0, Policy(htlc_minimum_msat=5, htlc_maximum_msat=4))
    with pytest.raises(ValueError):
        channel_update_hash(signed.encode()[:1] + b"\x03" + signed.encode()[2:])


def test_node_announcement_fields_and_hash():
    addrs = encode_addresses(
        [
            ("dns", "example.com", 9735),
            ("ipv6", "2001:db8::1", 9736),
            ("ipv4", "1.2.3.4", 9735),
            ("dns", "second.example.com", 1),
        ]
    )
    # Ascending types; one DNS name only.
    assert addrs == (
        b"\x01" + bytes([1, 2, 3, 4]) + (9735).to_bytes(2, "big")
        + b"\x02" + bytes.fromhex("20010db8000000000000000000000001") + (9736).to_bytes(2, "big")
        + b"\x05" + bytes([11]) + b"example.com" + (9735).to_bytes(2, "big")
    )  # fmt: skip
    ann = node_announcement(PUB["a"], 1_700_000_000, b"\x01\x02\x03", "ALIAS", addrs, b"\x08")
    raw = ann.encode()
    decoded = wire.decode(raw)
    assert decoded.alias == b"ALIAS" + bytes(27)
    assert decoded.addresses == addrs and decoded.rgb_color == b"\x01\x02\x03"
    h = node_announcement_hash(raw)
    assert h == sha256d(raw[66:])
    signed = with_signature(ann, sign("a", h))
    assert verify(PUB["a"], h, signed.signature)
    with pytest.raises(ValueError):
        node_announcement(PUB["a"], 1, b"\0\0\0", "x" * 33, b"", b"")
    with pytest.raises(ValueError):
        encode_addresses([("ipv4", "1.2.3.4", 0)])
