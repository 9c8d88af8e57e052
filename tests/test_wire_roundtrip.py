"""Property tests over every message class in wire/peer_wiregen.py.

Strategies are built from the generated dataclasses' field metadata, so a message added to
the BOLTs is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.amount import AmountMsat, AmountSat
from wire import peer_wiregen as gen
from wire.fundamental import WireError

INT_BITS = {"byte": 8, "u8": 8, "u16": 16, "u32": 32, "u64": 64, "short_channel_id": 64}
INT_BITS |= {"bigsize": 64, "tu16": 16, "tu32": 32, "tu64": 64}
SIGNED_BITS = {"s8": 8, "s16": 16, "s32": 32, "s64": 64}
BYTE_SIZES = {"chain_hash": 32, "channel_id": 32, "sha256": 32, "signature": 64, "point": 33}
BYTE_SIZES |= {"bitcoin_txid": 32, "secret": 32, "privkey": 32, "preimage": 32, "pubkey": 33}
BYTE_SIZES |= {"node_id": 33, "bip340sig": 64}
MAX_ARRAY = 8  # keeps messages small; sizes near limits are covered by the generator tests

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def element(typename: str) -> st.SearchStrategy[Any]:
    """Values of one wire type, as the generated code represents them."""
    if typename in INT_BITS:
        return st.integers(0, 2 ** INT_BITS[typename] - 1)
    if typename in SIGNED_BITS:
        bits = SIGNED_BITS[typename]
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if typename in ("point", "pubkey", "node_id"):
        # Compressed points: decoders reject any other prefix.
        prefix = st.sampled_from([b"\x02", b"\x03"])
        return st.builds(bytes.__add__, prefix, st.binary(min_size=32, max_size=32))
    if typename in BYTE_SIZES:
        size = BYTE_SIZES[typename]
        return st.binary(min_size=size, max_size=size)
    if typename == "bool":
        return st.booleans()
    if typename == "amount_sat":
        return st.builds(AmountSat, st.integers(0, 2**64 - 1))
    if typename == "amount_msat":
        return st.builds(AmountMsat, st.integers(0, 2**64 - 1))
    if typename == "wirestring":
        return st.text(max_size=20)
    if typename in ("bitcoin_tx", "psbt", "blob"):
        return st.binary(max_size=40)
    if typename in gen.SUBTYPES:
        return instance(gen.SUBTYPES[typename])
    if typename in gen.TLV_STREAMS:
        return tlv_stream(gen.TLV_STREAMS[typename])
    raise AssertionError(f"no strategy for {typename}")


def field_value(meta: dict[str, Any], size: int | None) -> st.SearchStrategy[Any]:
    """A field's value; `size` fixes the length of arrays sharing a length field."""
    typename, count = meta["type"], meta["count"]
    if not count:
        value = element(typename)
        return st.none() | value if meta["optional"] else value
    if count.isdigit():
        size = int(count)
    lo, hi = (size, size) if size is not None else (0, MAX_ARRAY)
    if typename == "byte":
        return st.binary(min_size=lo, max_size=hi if size is not None else 40)
    return st.lists(element(typename), min_size=lo, max_size=hi).map(tuple)


@st.composite
def _instance(draw: st.DrawFn, cls: type) -> Any:
    sizes: dict[str, int] = {}
    kwargs = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("type") == "extra":
            kwargs[f.name] = draw(st.binary(max_size=10))
            continue
        size = None
        count = meta["count"]
        if count and count != "..." and not count.isdigit():
            if count not in sizes:
                sizes[count] = draw(st.integers(0, min(MAX_ARRAY, meta["maxlen"])))
            size = sizes[count]
        kwargs[f.name] = draw(field_value(meta, size))
    return cls(**kwargs)


def instance(cls: type) -> st.SearchStrategy[Any]:
    return _instance(cls)


@st.composite
def _tlv_stream(draw: st.DrawFn, cls: type) -> Any:
    kwargs: dict[str, Any] = {}
    known = set()
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name == "unknown":
            continue
        known.add(meta["tlv_type"])
        if "record" in meta:
            value = instance(getattr(gen, meta["record"]))
        elif meta.get("flag"):
            value = st.just(True)
        else:
            value = field_value(meta, None)
        kwargs[f.name] = draw(st.none() | value)
    odd = st.integers(0, 2**64 - 1).map(lambda t: t | 1).filter(lambda t: t not in known)
    types = draw(st.lists(odd, max_size=3, unique=True))
    kwargs["unknown"] = tuple((t, draw(st.binary(max_size=8))) for t in sorted(types))
    return cls(**kwargs)


def tlv_stream(cls: type) -> st.SearchStrategy[Any]:
    return _tlv_stream(cls)


MESSAGE_CLASSES = sorted(gen.MESSAGES.values(), key=lambda c: c.TYPE)


def test_every_bolt_message_is_generated() -> None:
    assert len(MESSAGE_CLASSES) >= 49
    assert {c.NAME for c in MESSAGE_CLASSES} >= {
        "init", "error", "warning", "ping", "pong", "open_channel", "accept_channel",
        "funding_created", "funding_signed", "channel_ready", "shutdown", "closing_signed",
        "update_add_htlc", "commitment_signed", "revoke_and_ack", "channel_reestablish",
        "channel_announcement", "node_announcement", "channel_update", "tx_signatures",
    }  # fmt: skip


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.NAME)
@SETTINGS
@given(data=st.data())
def test_roundtrip(cls: type, data: st.DataObject) -> None:
    msg = data.draw(instance(cls))
    raw = msg.encode()
    assert raw[:2] == cls.TYPE.to_bytes(2, "big")
    assert cls.decode(raw) == msg
    assert gen.decode(raw) == msg


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "append"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            buf += data.draw(st.binary(min_size=1, max_size=12))
    return bytes(buf)


def _decode_only_wireerror(raw: bytes) -> None:
    try:
        msg = gen.decode(raw)
    except WireError:
        return
    # Whatever decodes is canonical: it re-encodes to exactly the bytes received.
    assert msg.encode() == raw


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.NAME)
@SETTINGS
@given(data=st.data())
def test_mutated_bytes_raise_only_wireerror(cls: type, data: st.DataObject) -> None:
    raw = data.draw(instance(cls)).encode()
    _decode_only_wireerror(_mutate(raw, data))


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.NAME)
@SETTINGS
@given(body=st.binary(max_size=400))
def test_random_bytes_raise_only_wireerror(cls: type, body: bytes) -> None:
    _decode_only_wireerror(cls.TYPE.to_bytes(2, "big") + body)


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_random_messages_raise_only_wireerror(raw: bytes) -> None:
    _decode_only_wireerror(raw)
