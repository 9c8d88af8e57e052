"""Hostile peers: fuzzing every generated wire decoder (issue 9).

Every message type of every generated module gets arbitrary bytes after its type prefix and
mutations of valid encodings (bit flips, inserted/deleted/truncated bytes, altered length
fields, reordered/duplicated/retyped/resized TLV records).  A decoder may only raise
WireError; whatever it accepts must be canonical: it re-encodes to exactly the bytes
received, which decode to an equal message.

The fast slice uses hypothesis with small example counts.  The long run
(`make stress`) is a plain seeded mutation fuzzer, far faster than hypothesis, running
200,000 cases per message type and printing what it ran.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import status_wiregen
from common.amount import AmountMsat, AmountSat
from gossipd import gossipd_wiregen
from hsmd import hsmd_wiregen
from openingd import openingd_wiregen
from tests.test_wire_generator import load_generated
from tests.test_wire_roundtrip import BYTE_SIZES, INT_BITS, MAX_ARRAY, SIGNED_BITS
from wire import peer_wiregen
from wire.fundamental import (
    Message,
    UnknownMessageError,
    WireError,
    encode_bigsize,
    read_tlv_records,
)
from wire.generate import GenerateError, generate

MODULES: dict[str, ModuleType] = {
    "peer": peer_wiregen,
    "status": status_wiregen,
    "hsmd": hsmd_wiregen,
    "openingd": openingd_wiregen,
    "gossipd": gossipd_wiregen,
}
CASES = [
    (name, mod, cls)
    for name, mod in MODULES.items()
    for cls in sorted(mod.MESSAGES.values(), key=lambda c: c.TYPE)
]
CASE_IDS = [f"{name}-{cls.NAME}" for name, _, cls in CASES]

# Explicit counts, so the fast slice stays fast even under the "stress" profile.
FAST = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
STRESS_CASES_PER_TYPE = 200_000
# Valid encodings each type's plain fuzzer mutates (drawn once, reused round robin).
SEED_POOL = 48

# Values near the edges of every length and BigSize encoding.
EDGE_INTS = [0, 1, 2, 0x7F, 0x80, 0xFC, 0xFD, 0xFE, 0xFF, 0x100, 0xFFFF, 0x10000]
EDGE_INTS += [0xFFFFFFFF, 0x100000000, 2**63, 2**64 - 1]
EDGE_BYTES = [0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFC, 0xFD, 0xFE, 0xFF]


# ------------------------------------------------------------------ valid instances


class Maker:
    """Random valid instances of one generated module's classes, from field metadata."""

    def __init__(self, module: ModuleType, rng: random.Random) -> None:
        self.module = module
        self.rng = rng

    def _int(self, bits: int, signed: bool = False) -> int:
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if self.rng.random() < 0.5:
            # Boundaries are where codecs break: favour them (offset from the type's minimum).
            return min(self.rng.choice(EDGE_INTS) + lo, hi)
        return self.rng.randint(lo, hi)

    def _bytes(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def element(self, typename: str) -> Any:
        """One value of a wire type, as the generated code represents it."""
        if typename in INT_BITS:
            return self._int(INT_BITS[typename])
        if typename in SIGNED_BITS:
            return self._int(SIGNED_BITS[typename], signed=True)
        if typename in ("point", "pubkey", "node_id"):
            return self.rng.choice((b"\x02", b"\x03")) + self._bytes(32)
        if typename in BYTE_SIZES:
            return self._bytes(BYTE_SIZES[typename])
        if typename == "bool":
            return self.rng.random() < 0.5
        if typename == "amount_sat":
            return AmountSat(self._int(64))
        if typename == "amount_msat":
            return AmountMsat(self._int(64))
        if typename == "wirestring":
            chars = "aé€\U0001f600\x00"
            return "".join(self.rng.choice(chars) for _ in range(self.rng.randint(0, 12)))
        if typename in ("bitcoin_tx", "psbt", "blob"):
            return self._bytes(self.rng.randint(0, 40))
        if typename in self.module.SUBTYPES:
            return self.instance(self.module.SUBTYPES[typename])
        if typename in self.module.TLV_STREAMS:
            return self.stream(self.module.TLV_STREAMS[typename])
        raise AssertionError(f"no generator for {typename}")

    def field_value(self, meta: dict[str, Any], size: int | None) -> Any:
        """A field's value; `size` fixes the length of arrays sharing a length field."""
        typename, count = meta["type"], meta["count"]
        if not count:
            if meta["optional"] and self.rng.random() < 0.3:
                return None
            return self.element(typename)
        if count.isdigit():
            size = int(count)
        if size is None:
            size = self.rng.randint(0, MAX_ARRAY)
        if typename == "byte":
            return self._bytes(size)
        return tuple(self.element(typename) for _ in range(size))

    def instance(self, cls: type) -> Any:
        sizes: dict[str, int] = {}
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("type") == "extra":
                kwargs[f.name] = self._bytes(self.rng.choice((0, 0, 0, 1, 7)))
                continue
            size = None
            count = meta["count"]
            if count and count != "..." and not count.isdigit():
                if count not in sizes:
                    sizes[count] = self.rng.randint(0, min(MAX_ARRAY, meta["maxlen"]))
                size = sizes[count]
            kwargs[f.name] = self.field_value(meta, size)
        return cls(**kwargs)

    def stream(self, cls: type) -> Any:
        kwargs: dict[str, Any] = {}
        known = set()
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.name == "unknown":
                continue
            known.add(meta["tlv_type"])
            if self.rng.random() < 0.4:
                kwargs[f.name] = None
            elif "record" in meta:
                kwargs[f.name] = self.instance(getattr(self.module, meta["record"]))
            elif meta.get("flag"):
                kwargs[f.name] = True
            else:
                kwargs[f.name] = self.field_value(meta, None)
        odd = {self._int(64) | 1 for _ in range(self.rng.choice((0, 0, 1, 3)))} - known
        kwargs["unknown"] = tuple((t, self._bytes(self.rng.randint(0, 8))) for t in sorted(odd))
        return cls(**kwargs)


# ------------------------------------------------------------------------ mutations


def _noncanonical_bigsize(value: int) -> bytes:
    """A BigSize longer than needed: BOLT #1 says it MUST fail to parse."""
    if value <= 0xFFFF:
        return b"\xfe" + value.to_bytes(4, "big")
    return b"\xff" + value.to_bytes(8, "big")


def _stream_offset(msg: Message) -> int | None:
    """Where a message's trailing TLV stream starts in its encoding, if it has one."""
    for f in dataclasses.fields(msg):
        stream = getattr(msg, f.name)
        if f.name != "unknown" and hasattr(stream, "unknown"):
            empty = dataclasses.replace(msg, **{f.name: type(stream)()})
            return len(empty.encode())
    return None


def mutate_tlv(stream: bytes, rng: random.Random) -> bytes:
    """Break a valid TLV stream's framing: order, duplicates, types, lengths, encodings."""
    recs = [[t, stream[s:e]] for t, s, e in read_tlv_records(stream, 0)]
    op = rng.randrange(7)
    if op == 0 and len(recs) > 1:  # out of order
        i = rng.randrange(len(recs) - 1)
        recs[i], recs[i + 1] = recs[i + 1], recs[i]
    elif op == 1 and recs:  # duplicate
        i = rng.randrange(len(recs))
        recs.insert(i, list(recs[i]))
    elif op == 2:  # unknown or other known type, odd or even
        recs.append([rng.choice([*EDGE_INTS, rng.randrange(2**16)]), rng.randbytes(3)])
        recs.sort(key=lambda r: r[0])
    elif op == 3 and recs:  # value one byte short or long, length unchanged
        rec = rng.choice(recs)
        rec[1] = rec[1][:-1] if rec[1] and rng.random() < 0.5 else rec[1] + b"\x00"
    out = bytearray()
    lie = rng.randrange(len(recs)) if recs and op >= 4 else -1
    for i, (typ, value) in enumerate(recs):
        t_enc, l_enc = encode_bigsize(typ), encode_bigsize(len(value))
        if i == lie and op == 4:  # length field off by one
            l_enc = encode_bigsize(len(value) + rng.choice((-1, 1)) if value else 1)
        elif i == lie and op == 5:
            l_enc = _noncanonical_bigsize(len(value))
        elif i == lie and op == 6:
            t_enc = _noncanonical_bigsize(typ)
        out += t_enc + l_enc + value
    return bytes(out)


def mutate(raw: bytes, rng: random.Random, stream_at: int | None = None, keep: int = 2) -> bytes:
    """1-4 random mutations of raw[keep:] (by default all but a message's type prefix)."""
    buf = bytearray(raw[keep:])
    if stream_at is not None and rng.random() < 0.3:
        buf[stream_at - keep :] = mutate_tlv(bytes(buf[stream_at - keep :]), rng)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf[pos:]:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and buf[pos:]:
            buf[pos] = rng.choice(EDGE_BYTES)
        elif op == 2:  # a length field set to an edge value
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(EDGE_INTS) % (1 << (8 * width))
            buf[pos : pos + width] = value.to_bytes(width, "big")
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 4:
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 5:
            del buf[pos:]
        elif op == 6:
            buf += rng.randbytes(rng.randint(1, 16))
        elif op == 7:  # duplicate a chunk
            buf[pos:pos] = buf[pos : pos + rng.randint(1, 40)]
        else:
            buf[pos:pos] = encode_bigsize(rng.choice(EDGE_INTS))
    return raw[:keep] + bytes(buf)


# --------------------------------------------------------------------------- oracle


def check_decode(decode: Callable[[bytes], Any], raw: bytes) -> bool:
    """Decode hostile bytes: WireError, or a canonical message.  True if it decoded."""
    try:
        msg = decode(raw)
    except WireError:
        return False
    again = msg.encode()
    assert again == raw, f"accepted non-canonical {raw.hex()}: re-encodes to {again.hex()}"
    assert decode(again) == msg
    return True


def valid_encodings(module: ModuleType, cls: type, rng: random.Random, n: int) -> list[bytes]:
    maker = Maker(module, rng)
    out = []
    for _ in range(n):
        msg = maker.instance(cls)
        raw = msg.encode()
        assert cls.decode(raw) == msg, f"{cls.NAME} does not round-trip {raw.hex()}"
        out.append(raw)
    return out


def fuzz_type(module: ModuleType, cls: type, cases: int, seed: int) -> tuple[int, int, float]:
    """The plain seeded fuzzer: returns (cases run, cases that decoded, slowest case in s)."""
    rng = random.Random(seed)
    maker = Maker(module, rng)
    pool = []
    for _ in range(SEED_POOL):
        msg = maker.instance(cls)
        pool.append((msg.encode(), _stream_offset(msg)))
    prefix = cls.TYPE.to_bytes(2, "big")
    decoded, slowest = 0, 0.0
    for i in range(cases):
        if i % 8 == 0:  # arbitrary bytes after the type prefix
            raw = prefix + rng.randbytes(rng.choice((0, 1, 2, 8, 33, 64, 200)))
        else:
            base, stream_at = pool[i % SEED_POOL]
            raw = mutate(base, rng, stream_at)
        start = time.perf_counter()
        try:
            decoded += check_decode(cls.decode, raw)
        except Exception as e:
            raise AssertionError(f"{cls.NAME}: {raw.hex()} raised {e!r}") from e
        slowest = max(slowest, time.perf_counter() - start)
    return cases, decoded, slowest


# ------------------------------------------------------------------------ fast slice


def test_every_generated_module_is_covered() -> None:
    assert len(CASES) == sum(len(m.MESSAGES) for m in MODULES.values()) >= 99
    assert {name for name, _, _ in CASES} == set(MODULES)


@pytest.mark.parametrize(("name", "module", "cls"), CASES, ids=CASE_IDS)
@FAST
@given(body=st.binary(max_size=300))
def test_arbitrary_body(name: str, module: ModuleType, cls: type, body: bytes) -> None:
    check_decode(cls.decode, cls.TYPE.to_bytes(2, "big") + body)


@pytest.mark.parametrize(("name", "module", "cls"), CASES, ids=CASE_IDS)
@FAST
@given(rng=st.randoms(use_true_random=False))
def test_mutated_encoding(name: str, module: ModuleType, cls: type, rng: random.Random) -> None:
    msg = Maker(module, rng).instance(cls)
    raw = msg.encode()
    assert check_decode(cls.decode, raw)
    for _ in range(20):
        check_decode(cls.decode, mutate(raw, rng, _stream_offset(msg)))


# Subtypes and TLV streams have public decoders of their own.
PARTS = [
    (mod, cls, kind)
    for mod in MODULES.values()
    for kind, table in (("subtype", mod.SUBTYPES), ("stream", mod.TLV_STREAMS))
    for cls in table.values()
]


@pytest.mark.parametrize(("module", "cls", "kind"), PARTS, ids=[c.__name__ for _, c, _ in PARTS])
@FAST
@given(rng=st.randoms(use_true_random=False), body=st.binary(max_size=100))
def test_subtype_and_stream_decoders(
    module: ModuleType, cls: type, kind: str, rng: random.Random, body: bytes
) -> None:
    maker = Maker(module, rng)
    value = maker.instance(cls) if kind == "subtype" else maker.stream(cls)
    raw = value.encode()
    assert check_decode(cls.decode, raw)
    check_decode(cls.decode, body)
    for _ in range(10):
        check_decode(cls.decode, mutate(raw, rng, 0 if kind == "stream" else None, keep=0))


@pytest.mark.parametrize("module", MODULES.values(), ids=MODULES.keys())
@settings(FAST, max_examples=200)
@given(data=st.data(), body=st.binary(max_size=120))
def test_dispatch(module: ModuleType, data: st.DataObject, body: bytes) -> None:
    msgtype = data.draw(st.sampled_from(sorted(module.MESSAGES)) | st.integers(0, 0xFFFF))
    raw = msgtype.to_bytes(2, "big") + body
    if msgtype not in module.MESSAGES:
        with pytest.raises(UnknownMessageError) as e:
            module.decode(raw)
        assert (e.value.msgtype, str(e.value)) == (msgtype, f"unknown message type {msgtype}")
    elif check_decode(module.decode, raw):
        assert type(module.decode(raw)) is module.MESSAGES[msgtype]


@pytest.mark.parametrize("module", MODULES.values(), ids=MODULES.keys())
@pytest.mark.parametrize("raw", [b"", b"\x00"])
def test_dispatch_shorter_than_type(module: ModuleType, raw: bytes) -> None:
    with pytest.raises(WireError, match=r"^message shorter than its type$"):
        module.decode(raw)


def test_plain_fuzzer_short_run() -> None:
    """The stress fuzzer itself, briefly over every type, so CI exercises it too."""
    for _, module, cls in CASES:
        cases, _, _ = fuzz_type(module, cls, 200, seed=cls.TYPE)
        assert cases == 200


# A decoder spends a loop turn per array element: elements that can take no bytes would
# let a hostile count (or a `...` array) spin it for ever, so the generator refuses them.
ZERO_SIZE_ELEMENTS = [
    ("subtype,nothing\nmsgtype,m,1\nmsgdata,m,items,nothing,...\n", "bad.csv:3: array of nothing"),
    (
        "subtype,rest\nsubtypedata,rest,data,byte,...\n"
        "msgtype,m,1\nmsgdata,m,n,u64,\nmsgdata,m,items,rest,n\n",
        "bad.csv:5: array of rest",
    ),
]


@pytest.mark.parametrize(("csv", "where"), ZERO_SIZE_ELEMENTS)
def test_generator_refuses_arrays_of_empty_elements(csv: str, where: str) -> None:
    with pytest.raises(GenerateError) as e:
        generate(csv, "bad.csv")
    assert str(e.value) == f"{where}, which can be empty on the wire"


def test_huge_count_of_small_elements_fails_fast(tmp_path: Path) -> None:
    """One presence byte is enough: a count of 2**64 - 1 runs out of bytes at once."""
    csv = "subtype,opt\nsubtypedata,opt,x,?u8,\n"
    csv += "msgtype,m,1\nmsgdata,m,n,bigsize,\nmsgdata,m,items,opt,n\n"
    gen = load_generated(csv, "opt_array_wiregen", tmp_path)
    msg = gen.M(items=(gen.Opt(None), gen.Opt(7)))
    assert check_decode(gen.decode, b"\x00\x01\x02\x00\x01\x07")
    assert gen.decode(msg.encode()) == msg
    with pytest.raises(WireError, match=r"^m: truncated or invalid: index out of range$"):
        gen.decode(b"\x00\x01" + encode_bigsize(2**64 - 1))


# ------------------------------------------------------------------------- long run


@pytest.mark.stress
def test_stress_every_type() -> None:
    total, start = 0, time.perf_counter()
    print(f"\n{'type':<48} {'cases':>8} {'decoded':>8} {'slowest':>9}")
    for case_id, (_, module, cls) in zip(CASE_IDS, CASES, strict=True):
        cases, decoded, slowest = fuzz_type(module, cls, STRESS_CASES_PER_TYPE, seed=cls.TYPE)
        print(f"{case_id:<48} {cases:>8} {decoded:>8} {slowest * 1000:>7.1f}ms")
        assert cases >= STRESS_CASES_PER_TYPE
        # Hang guard: no single hostile message may take long to reject.
        assert slowest < 2.0
        total += cases
    elapsed = time.perf_counter() - start
    print(f"{len(CASES)} types, {total} cases in {elapsed:.0f}s ({total / elapsed:.0f}/s)")
