"""A stateful fuzzer: a scripted peer plays both sides of a v1 channel open against a
live lightningd, misbehaving on purpose.

Roles: NODE_ACCEPTS (the fuzzer sends open_channel, funding_created, channel_ready)
and NODE_OPENS (lightningd runs `fundchannel` to the fuzzer, which answers
accept_channel, funding_signed, channel_ready). A case is a script of steps over
that flow: each flow message is sent valid, with one field mutated (random,
boundary, invalid pubkey, wrong chain_hash or channel id), truncated, oversized,
dripped a byte at a time or duplicated; before any of them the fuzzer may inject an
unknown odd or even message, an out-of-order message, or hang up (cleanly or
mid-frame).

After every step the node's answer is judged against what BOLT #1/#2 ask; after
every case: lightningd answers getinfo, logged no traceback and never had to time
out, stored a complete channel only if the funding exchange completed, reserved no
wallet input for a failed open, and `fundchannel` ended with a clear result.

The fast slice runs a fixed set of cases covering every kind of step in both roles
on one node (each case is a fresh peer identity and connection); the stress test
runs random cases from a seeded generator and prints how many ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pytest
from coincurve import PrivateKey
from pyln.client import RpcError

from common.chainparams import CHAINS
from common.key_derive import is_valid_pubkey
from common.shachain import per_commitment_point
from lightningd.jsonrpc_errors import LIGHTNINGD
from openingd.bounds import MAX_MONEY_SAT
from tests.node import Node, NodeFactory, wait_for
from tests.opening_peer import Background, OpeningPeer, error_text, high_s, off_curve_point
from tests.scripted_peer import REGTEST
from tests.test_fundchannel import ELSEWHERE, funded_node
from wire import peer_wiregen as wire
from wire.fundamental import WireError

NODE_ACCEPTS, NODE_OPENS = "node_accepts", "node_opens"
# The messages the fuzzer sends, in protocol order, per role.
FLOW = {
    NODE_ACCEPTS: ("open_channel", "funding_created", "channel_ready"),
    NODE_OPENS: ("accept_channel", "funding_signed", "channel_ready"),
}
CLASSES = {
    cls.NAME: cls
    for cls in (
        wire.OpenChannel,
        wire.AcceptChannel,
        wire.FundingCreated,
        wire.FundingSigned,
        wire.ChannelReady,
    )
}
# How a flow message is sent.
VALID, MUTATE, TRUNCATE, OVERSIZE, DRIP, DUPLICATE = (
    "valid",
    "mutate",
    "truncate",
    "oversize",
    "drip",
    "duplicate",
)
# What may come before one (position 3: after the last).
UNKNOWN_ODD, UNKNOWN_EVEN, OUT_OF_ORDER, DISCONNECT, PARTIAL = (
    "unknown_odd",
    "unknown_even",
    "out_of_order",
    "disconnect",
    "partial_frame",
)
FORMS = (VALID, MUTATE, TRUNCATE, OVERSIZE, DRIP, DUPLICATE)
INJECTIONS = (UNKNOWN_ODD, UNKNOWN_EVEN, OUT_OF_ORDER, DISCONNECT, PARTIAL)
TERMINAL = (DISCONNECT, PARTIAL)
# Where a channel stored by an open may be once its peer has gone.
STORED_STATES = {"CHANNELD_AWAITING_LOCKIN", "CHANNELD_NORMAL"}
# The fast slice mutates every field this many times, each with its own value.
MUTATIONS_PER_FIELD = 3

AMOUNT = 100_000  # what lightningd opens to the fuzzer with
OPENING_TIMEOUT = 10  # --dev-opening-timeout: a fuzzer never goes silent, so never hit
READ_TIMEOUT = OPENING_TIMEOUT + 30
MAX_MESSAGE = 65535  # BOLT #8: the largest message a frame carries
ZERO = bytes(32)
TLV_FIELDS = ("upfront_shutdown_script", "channel_type")
# Fixed-size wire types and their lengths, for splicing a field's bytes in place.
SIZES = {
    "chain_hash": 32,
    "sha256": 32,
    "channel_id": 32,
    "point": 33,
    "signature": 64,
    "u64": 8,
    "u32": 4,
    "u16": 2,
    "byte": 1,
}
INT_BOUNDS = {
    1: (0, 1, 0xFE, 0xFF),
    2: (0, 1, 483, 484, 2016, 2017, 0xFFFF),
    4: (0, 1, 252, 253, 2016, 2017, 0xFFFFFFFF),
    8: (0, 1, 353, 354, (1 << 24) - 1, 1 << 24, MAX_MONEY_SAT + 1, 1 << 63, (1 << 64) - 1),
}


class Expect(Enum):
    """What the node must do after one step."""

    REPLY = "the next protocol message"
    REFUSE = "an error or warning"
    CLOSE = "to close the connection"
    QUIET = "nothing (the ping is answered)"
    ANY = "anything but silence"


def shown(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Step:
    kind: str
    position: int  # index into FLOW[role]; an injection comes before that message
    field: str = ""  # MUTATE: which field
    value: Any = None  # MUTATE: a TLV override; for a fixed field, the seed of its value
    other: str = ""  # OUT_OF_ORDER: which message
    msgtype: int = 0  # UNKNOWN_*: its type
    cut: float = 0.5  # TRUNCATE / PARTIAL: how much is kept

    def __str__(self) -> str:
        detail = {
            MUTATE: f"{self.field}:{shown(self.value)}",
            OUT_OF_ORDER: self.other,
            UNKNOWN_ODD: str(self.msgtype),
            UNKNOWN_EVEN: str(self.msgtype),
            TRUNCATE: f"{self.cut:.2f}",
            PARTIAL: f"{self.cut:.2f}",
        }.get(self.kind, "")
        return f"{self.position}:{self.kind}" + (f"({detail})" if detail else "")


@dataclass(frozen=True)
class Case:
    role: str
    seed: int
    steps: tuple[Step, ...]

    def __str__(self) -> str:
        return f"{self.role}#{self.seed} [{', '.join(map(str, self.steps))}]"


# --- field layout and mutation values -----------------------------------------------


def layout(cls: type) -> dict[str, tuple[int, int]]:
    """Offset and length of each fixed-size field in the encoded message."""
    offset, out = 2, {}
    for f in dataclasses.fields(cls):
        size = SIZES.get(f.metadata.get("type", ""))
        if size is None:  # the TLV stream (or trailing bytes): the variable tail
            break
        size *= int(f.metadata.get("count") or 1)
        out[f.name] = (offset, size)
        offset += size
    return out


def fields_of(name: str) -> list[str]:
    extra = list(TLV_FIELDS) if name in ("open_channel", "accept_channel") else []
    return [*layout(CLASSES[name]), *extra]


def field_bytes(raw: bytes, cls: type, field: str) -> bytes:
    offset, size = layout(cls)[field]
    return raw[offset : offset + size]


def splice(raw: bytes, cls: type, field: str, value: bytes) -> bytes:
    offset, size = layout(cls)[field]
    assert len(value) == size
    return raw[:offset] + value + raw[offset + size :]


def field_kind(cls: type, field: str) -> str:
    return next(f.metadata["type"] for f in dataclasses.fields(cls) if f.name == field)


def flip(value: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(value) * 8)
    return value[: i // 8] + bytes([value[i // 8] ^ (1 << (i % 8))]) + value[i // 8 + 1 :]


def point_value(original: bytes, rng: random.Random) -> bytes:
    """An invalid pubkey (off the curve, bad prefix, x >= p, zero), one bit off the
    original, or a stranger's pubkey."""
    return rng.choice(
        [
            off_curve_point(),
            b"\x04" + rng.randbytes(32),
            b"\x03" + b"\xff" * 32,
            bytes(33),
            flip(original, rng),
            PrivateKey(rng.randbytes(32)).public_key.format(),
        ]
    )


def int_value(size: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        n = rng.choice(INT_BOUNDS[size])
    else:
        n = rng.getrandbits(size * 8) >> rng.randrange(size * 8)
    return n.to_bytes(size, "big")


def bytes_value(kind: str, original: bytes, rng: random.Random) -> bytes:
    """A new value for a fixed-size field: random, boundary, or near the original."""
    size = len(original)
    if kind == "point":
        return point_value(original, rng)
    if kind == "signature":
        return rng.choice([rng.randbytes(64), bytes(64), high_s(original), flip(original, rng)])
    if size == 32:
        others = [CHAINS["bitcoin"].chain_hash] if kind == "chain_hash" else []
        return rng.choice([rng.randbytes(32), ZERO, flip(original, rng), *others])
    return int_value(size, rng)


def tlv_value(field: str, rng: random.Random) -> Any:
    """An override for open_channel_msg / accept_channel_msg (None leaves the TLV out)."""
    if field == "channel_type":
        bits = [rng.randrange(256) for _ in range(rng.randrange(4))]
        return rng.choice([None, [], [12], [22], [12, 22], [12, 22, 50], [12, 22, 46], bits])
    p2wpkh = b"\x00\x14" + rng.randbytes(20)
    return rng.choice([None, b"", p2wpkh, rng.randbytes(rng.randrange(1, 80))])


def mutation(field: str, rng: random.Random) -> Step:
    """A MUTATE step. A fixed field's value is drawn when the message is built, since
    some are made from the original (a high-S copy of the real signature, one bit off
    the real channel id)."""
    value = tlv_value(field, rng) if field in TLV_FIELDS else rng.getrandbits(32)
    return Step(MUTATE, 0, field, value)


def unknown_type(rng: random.Random, odd: bool) -> int:
    while True:
        t = rng.randrange(32, 65536) | 1 if odd else rng.randrange(32, 65536) & ~1
        if t not in wire.MESSAGES:
            return t


# --- case generation ---------------------------------------------------------------------


def injection(kind: str, position: int, role: str, rng: random.Random) -> Step:
    if kind in (UNKNOWN_ODD, UNKNOWN_EVEN):
        return Step(kind, position, msgtype=unknown_type(rng, kind == UNKNOWN_ODD))
    if kind == OUT_OF_ORDER:
        expected = FLOW[role][position] if position < 3 else ""
        return Step(kind, position, other=rng.choice([n for n in CLASSES if n != expected]))
    return Step(kind, position, cut=rng.uniform(0.05, 0.95))


def form(kind: str, position: int, role: str, rng: random.Random) -> Step:
    name = FLOW[role][position]
    if kind == MUTATE:
        return dataclasses.replace(mutation(rng.choice(fields_of(name)), rng), position=position)
    return Step(kind, position, cut=rng.uniform(0.0, 0.99))


def random_case(role: str, seed: int) -> Case:
    """Per flow message: maybe an injection, then the message in some form."""
    rng = random.Random(seed)
    steps: list[Step] = []
    for position in range(4):
        if rng.random() < 0.3:
            steps.append(injection(rng.choice(INJECTIONS), position, role, rng))
            if steps[-1].kind in TERMINAL:
                break
        if position < 3:
            weights = (6, 6, 1, 1, 1, 1)
            steps.append(form(rng.choices(FORMS, weights)[0], position, role, rng))
    return Case(role, seed, tuple(steps))


def valid_flow(role: str, **at: Step) -> list[Step]:
    return [at.get(str(p), Step(VALID, p)) for p in range(3)]


def coverage_cases(role: str) -> Iterator[Case]:
    """The fast slice: every kind of step at least once per role, at every position."""
    rng = random.Random(role)
    seeds = iter(range(1_000_000 if role == NODE_ACCEPTS else 2_000_000, 3_000_000))

    def case(steps: list[Step]) -> Case:
        return Case(role, next(seeds), tuple(steps))

    yield case(valid_flow(role))
    for kind in (OVERSIZE, DRIP):
        yield case([Step(kind, p) for p in range(3)])
    odd = [injection(UNKNOWN_ODD, p, role, rng) for p in range(4)]
    yield case([s for p in range(3) for s in (odd[p], Step(VALID, p))] + [odd[3]])
    for p in range(3):
        for kind in (TRUNCATE, DUPLICATE):
            yield case(valid_flow(role, **{str(p): form(kind, p, role, rng)}))
        for name in fields_of(FLOW[role][p]) * MUTATIONS_PER_FIELD:
            step = dataclasses.replace(mutation(name, rng), position=p)
            yield case(valid_flow(role, **{str(p): step}))
    for p in range(4):
        flow = valid_flow(role)
        injections = [injection(kind, p, role, rng) for kind in (UNKNOWN_EVEN, DISCONNECT)]
        if p < 3:
            injections.append(injection(PARTIAL, p, role, rng))
        expected = FLOW[role][p] if p < 3 else ""
        injections += [Step(OUT_OF_ORDER, p, other=n) for n in CLASSES if n != expected]
        for step in injections:
            yield case([*flow[:p], step, *flow[p:]])


# --- one case against the node -----------------------------------------------------------


def tagged(seed: int, what: str) -> bytes:
    return hashlib.sha256(f"fuzz {seed} {what}".encode()).digest()


def tlv_class(kind: str) -> type:
    """The generated class of a TLV stream type, e.g. open_channel_tlvs -> OpenChannelTlvs."""
    return getattr(wire, "".join(part.title() for part in kind.split("_")))


class Run:
    """One case: a fresh fuzzing peer, its script, and the judgement after each step."""

    def __init__(self, node: Node, case: Case) -> None:
        self.node, self.case = node, case
        self.peer = OpeningPeer(seed=tagged(case.seed, "peer"))
        self.opens = case.role == NODE_OPENS
        self.ours: set[bytes] = set()  # this negotiation's channel ids
        self.ids = {ZERO}  # ... and every other one an error or warning may name
        self.sent_ids: set[bytes] = set()  # the ids our mutated messages named
        self.tainted = False  # the node took an odd step: later outcomes may differ
        self.over = False  # the channel failed or the connection is gone
        self.closed = False
        self.may_store = False  # the node may have stored a channel
        self.must_store = False  # ... and must have: the funding exchange completed
        self.signed_sent = False  # NODE_OPENS: a funding_signed the node may take went out
        self.fund: Background | None = None
        self.fund_result: dict | RpcError | None = None
        self.trace: list[str] = []  # expectation -> outcome, step by step

    def fail(self, why: str) -> None:
        pytest.fail(f"{self.case}: {why} (so far: {self.trace})")

    def saw(self, expect: Expect, outcome: object) -> None:
        name = outcome if isinstance(outcome, str) else type(outcome).NAME
        self.trace.append(f"{expect.name}->{name}")

    def our_id(self, channel_id: bytes) -> None:
        self.ours.add(channel_id)
        self.ids.add(channel_id)

    # -- setup -----------------------------------------------------------------------

    def start(self) -> None:
        """Connect; as NODE_OPENS, lightningd connects and starts `fundchannel` (minconf 0:
        the change of the last open will do)."""
        if self.opens:
            self.peer.connected_from(self.node)
        else:
            self.peer.connect_to(self.node)
        self.peer.set_timeout(READ_TIMEOUT)
        if self.opens:
            params = {"id": self.peer.node_id.hex(), "amount": AMOUNT, "minconf": 0}
            self.fund = Background(self.node.rpc.call, "fundchannel", params)
            self.our_id(self.peer.read_open_channel().temporary_channel_id)

    # -- building messages --------------------------------------------------------------

    def build(self, position: int, step: Step) -> bytes:
        """The flow message at `position`, correct unless `step` mutates a TLV."""
        name = FLOW[self.case.role][position]
        tlv = {step.field: step.value} if step.kind == MUTATE and step.field in TLV_FIELDS else {}
        if name == "open_channel":
            tmp = tagged(self.case.seed, "tmp")
            self.our_id(tmp)
            return self.peer.open_channel_msg(temporary_channel_id=tmp, **tlv).encode()
        if name == "accept_channel":
            return self.peer.accept_channel_msg(**tlv).encode()
        if name == "funding_created":
            txid = tagged(self.case.seed, "txid")
            msg = self.peer.funding_created_msg(funding_txid=txid)
            self.our_id(self.peer.channel_id())
            return msg.encode()
        if name == "funding_signed":
            return self.peer.funding_signed_msg().encode()
        point = per_commitment_point(self.peer.keys.shachain_seed, 1)
        return wire.ChannelReady(
            channel_id=self.current_id(),
            second_per_commitment_point=point,
            tlvs=wire.ChannelReadyTlvs(),
        ).encode()

    def current_id(self) -> bytes:
        return self.peer.channel_id() if self.peer.funding_txid else tagged(0, "no channel yet")

    def stray(self, name: str) -> bytes:
        """A well-formed `name` about this negotiation, where the protocol has none."""
        channel_id = self.current_id()
        self.ids.add(channel_id)
        points = self.peer.keys.points()
        values: dict[str, Any] = {}
        lengths = {field: size for field, (_, size) in layout(CLASSES[name]).items()}
        for f in dataclasses.fields(CLASSES[name]):
            kind, size = f.metadata.get("type", ""), lengths.get(f.name)
            if f.name in points or kind == "point":
                values[f.name] = points.get(f.name, points["first_per_commitment_point"])
            elif kind == "chain_hash":
                values[f.name] = REGTEST
            elif size in (32, 64):
                values[f.name] = (channel_id * 2)[:size]
            elif size is not None:
                values[f.name] = 1
            elif kind.endswith("_tlvs"):
                values[f.name] = tlv_class(kind)()
        return CLASSES[name](**values).encode()

    # -- the steps --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.play()
        except Exception as exc:  # the peer's own checks, a failed connect: say which case
            self.fail(repr(exc))

    def play(self) -> None:
        self.start()
        for step in self.case.steps:
            if self.over:
                break
            if step.kind in FORMS:
                self.flow_step(step)
            else:
                self.inject(step)
        if not self.over and self.case.steps[-1].kind == UNKNOWN_ODD:
            self.sync(Expect.QUIET)
        self.finish()

    def inject(self, step: Step) -> None:
        peer = self.peer
        if step.kind in TERMINAL:
            if step.kind == PARTIAL:
                peer.send_partial(self.stray(FLOW[self.case.role][min(step.position, 2)]), step.cut)
            peer.close()
            self.over = self.closed = True
        elif step.kind in (UNKNOWN_ODD, UNKNOWN_EVEN):
            peer.send(step.msgtype.to_bytes(2, "big") + tagged(step.msgtype, "payload"))
            # BOLT #1: unknown odd: "MUST ignore the received message"; even: "MUST close
            # the connection".
            if step.kind == UNKNOWN_EVEN:
                self.judge(Expect.CLOSE, self.response())
        else:
            peer.send(self.stray(step.other))
            # In negotiation BOLT #2 allows no other message: the channel fails. With no
            # channel, BOLT #1: "SHOULD send error with the unknown channel_id".
            quiet_ok = self.must_store or self.tainted
            self.sync(Expect.ANY if quiet_ok else Expect.REFUSE)

    def flow_step(self, step: Step) -> None:
        raw = self.build(step.position, step)
        cls = CLASSES[FLOW[self.case.role][step.position]]
        value = original = b""
        if step.kind == MUTATE and step.field not in TLV_FIELDS:
            original = field_bytes(raw, cls, step.field)
            value = bytes_value(field_kind(cls, step.field), original, random.Random(step.value))
            raw = splice(raw, cls, step.field, value)
            self.trace.append(f"{step.field}={value.hex()}")
            if step.field in ("temporary_channel_id", "channel_id"):
                self.ids.add(value)
                self.sent_ids.add(value)
        expect = self.expectation(step, cls, raw, value != original)
        self.send(step, raw)
        self.tainted |= step.kind == DUPLICATE
        self.after_send(step, expect, raw)

    def send(self, step: Step, raw: bytes) -> None:
        peer = self.peer
        if step.kind == TRUNCATE:
            fixed = max(o + n for o, n in layout(type(wire.decode(raw))).values())
            peer.send(raw[: 2 + int((fixed - 2) * step.cut)])
        elif step.kind == OVERSIZE:
            # An unknown odd TLV record (type 65535) filling the frame: BOLT #1 "MUST
            # ignore" it, and a message may be as long as 65535 bytes.
            pad = MAX_MESSAGE - len(raw) - 6
            peer.send(raw + b"\xfd\xff\xff\xfd" + pad.to_bytes(2, "big") + bytes(pad))
        elif step.kind == DRIP:
            peer.send_slowly(raw)
        else:
            peer.send(raw)
            if step.kind == DUPLICATE:
                peer.send(raw)

    def expectation(self, step: Step, cls: type, raw: bytes, changed: bool) -> Expect:
        if step.kind == TRUNCATE:
            # BOLT #1: "upon receiving a known message with insufficient length for the
            # contents: MUST close the connection."
            return Expect.CLOSE
        if step.kind == DUPLICATE or self.tainted:
            return Expect.ANY
        if step.kind != MUTATE:
            return Expect.QUIET if cls is wire.ChannelReady else Expect.REPLY
        try:
            wire.decode(raw)
        except WireError:
            return Expect.CLOSE  # not even parseable: BOLT #1 closes
        if step.field in TLV_FIELDS or not changed:
            return Expect.ANY
        return Expect.REFUSE if self.must_refuse(cls, step.field, raw) else Expect.ANY

    @staticmethod
    def must_refuse(cls: type, field: str, raw: bytes) -> bool:
        """Whether BOLT #1/#2 leave the node no choice but to refuse this changed field."""
        if field_kind(cls, field) == "point":
            # BOLT #2: "MUST fail the channel if ... not valid secp256k1 pubkeys".
            return not is_valid_pubkey(field_bytes(raw, cls, field))
        if cls is wire.OpenChannel:
            # BOLT #2: "the `chain_hash` value is set to a hash of a chain that is
            # unknown to the receiver".
            return field == "chain_hash"
        if cls is wire.AcceptChannel:
            # BOLT #2: "The `temporary_channel_id` MUST be the same as the
            # `temporary_channel_id` in the `open_channel` message."
            return field == "temporary_channel_id"
        if cls is wire.ChannelReady and field == "channel_id":
            # BOLT #1: "SHOULD send error with the unknown channel_id", unless that id is
            # all-zero, which would fail every channel: then a warning, or nothing.
            return field_bytes(raw, cls, field) != ZERO
        # funding_created / funding_signed: any change breaks the id or the signature
        # (BOLT #2: "if `signature` is incorrect ... MUST send a `warning` and close the
        # connection, or send an `error`").
        return True

    def after_send(self, step: Step, expect: Expect, raw: bytes) -> None:
        name = FLOW[self.case.role][step.position]
        if name == "channel_ready":
            self.sync(expect)
            return
        if name == "funding_created" and expect is not Expect.REFUSE:
            self.may_store = True
        if name == "funding_signed":
            self.signed_sent = expect in (Expect.REPLY, Expect.ANY)
            self.judge_funding_signed(expect)
            return
        reply = self.judge(expect, self.response())
        if reply is not None:
            # The node went on: what it saw is what we sent (decoded), mutated or not.
            self.tainted |= expect is not Expect.REPLY
            self.progress(name, reply, wire.decode(raw))

    def progress(self, name: str, reply: Any, sent: Any) -> None:
        """The node answered `name` with the next message: check it, keep it."""
        peer = self.peer
        if name == "open_channel":
            peer.open_msg, peer.is_opener = sent, True
            assert isinstance(reply, wire.AcceptChannel), f"{self.case}: {reply}"
            # BOLT #2: accept_channel's temporary_channel_id is open_channel's.
            assert reply.temporary_channel_id == sent.temporary_channel_id, self.case
            peer.accept_msg = reply
        elif name == "accept_channel":
            peer.accept_msg = sent
            assert isinstance(reply, wire.FundingCreated), f"{self.case}: {reply}"
            assert reply.temporary_channel_id == peer.open_msg.temporary_channel_id, self.case
            peer.funding_txid, peer.funding_outnum = reply.funding_txid, reply.funding_output_index
            self.our_id(peer.channel_id())
            self.check_signature(reply.signature)
        else:
            assert isinstance(reply, wire.FundingSigned), f"{self.case}: {reply}"
            # BOLT #2: funding_signed's channel_id is funding_txid XOR the output index.
            assert reply.channel_id == peer.channel_id(), self.case
            self.check_signature(reply.signature)
            self.must_store = True

    def check_signature(self, signature: bytes) -> None:
        """The node's signature completes the 2-of-2 spend of our first commitment; unless
        we gave it a funding pubkey we hold no key for (a mutation it accepted)."""
        ours = self.peer.open_msg if self.peer.is_opener else self.peer.accept_msg
        assert ours is not None
        if ours.funding_pubkey == self.peer.keys.points()["funding_pubkey"]:
            self.peer.check_their_signature(signature)

    # -- reading and judging the node's answers ----------------------------------------

    def response(self) -> Any:
        """The node's next protocol message; None once it has closed the connection."""
        try:
            return self.peer.recv_protocol()
        except TimeoutError:
            self.fail(f"lightningd neither answered nor hung up in {READ_TIMEOUT}s")
        except (EOFError, OSError):
            self.closed = True
            return None

    def judge(self, expect: Expect, msg: Any) -> Any:
        """Check the node's answer against `expect`; the protocol message if it is one."""
        self.saw(expect, "closed" if msg is None else msg)
        if msg is None:
            self.over = True
            if expect not in (Expect.CLOSE, Expect.ANY):
                self.fail(f"expected {expect.value}, lightningd hung up")
            return None
        if isinstance(msg, wire.Error | wire.Warning):
            self.check_refusal(msg, expect)
            if expect in (Expect.REPLY, Expect.QUIET):
                self.fail(f"expected {expect.value}, got {msg}")
            if expect is Expect.CLOSE:
                # An error or warning may come first; the connection must still end.
                return self.judge(expect, self.response())
            return None
        if expect not in (Expect.REPLY, Expect.ANY):
            self.fail(f"expected {expect.value}, got {msg}")
        return msg

    def check_refusal(self, msg: wire.Error | wire.Warning, expect: Expect) -> None:
        # BOLT #1: the channel_id names the channel (the temporary one, the final one, or
        # the one the message was about), or is all-zero for the whole connection. A
        # channel failure (BOLT #2's "fail the channel") names the channel.
        if msg.channel_id not in self.ids:
            self.fail(f"{type(msg).NAME} names channel {msg.channel_id.hex()}: {msg.data!r}")
        # An error on the all-zero id fails every channel, unless the peer chose that id
        # for this channel itself (BOLT #2 does not forbid it).
        if isinstance(msg, wire.Error) and msg.channel_id == ZERO and ZERO not in self.sent_ids:
            self.fail(f"an error on the all-zero channel_id fails every channel: {msg}")
        if isinstance(msg, wire.Error) and msg.channel_id in self.ours | {ZERO}:
            self.over = True

    def sync(self, expect: Expect) -> None:
        """Ping; what comes back before the pong (or a hang-up) is the node's answer."""
        refused = False
        try:
            self.peer.send(wire.Ping(num_pong_bytes=4, ignored=b"").encode())
            while not isinstance(msg := self.peer.recv_skipping_pings(), wire.Pong):
                if not isinstance(msg, wire.Error | wire.Warning):
                    self.fail(f"expected {expect.value}, got {msg}")
                self.check_refusal(msg, expect)
                refused = True
        except TimeoutError:
            self.fail("lightningd did not answer a ping")
        except (EOFError, OSError):
            self.over = self.closed = True
        self.saw(expect, "closed" if self.closed else "refused" if refused else "quiet")
        if expect is Expect.QUIET and (refused or self.closed):
            self.fail("lightningd refused or hung up on a harmless message")
        if expect is Expect.REFUSE and not refused:
            self.fail("lightningd sent no error or warning where BOLT #1/#2 want one")
        if expect is Expect.CLOSE and not self.closed:
            self.fail("lightningd kept a connection BOLT #1 wants closed")

    def judge_funding_signed(self, expect: Expect) -> None:
        """NODE_OPENS: fundchannel's own answer says how funding_signed went."""
        result = self.fund_outcome()
        self.saw(expect, "rpc_error" if isinstance(result, RpcError) else "funded")
        if isinstance(result, RpcError):
            if expect is Expect.REPLY:
                self.fail(f"fundchannel failed on a valid funding_signed: {result.error}")
            if not self.closed:
                self.judge(Expect.ANY if expect is Expect.ANY else expect, self.response())
            self.over = True
        elif expect in (Expect.REFUSE, Expect.CLOSE):
            self.fail(f"fundchannel succeeded on a bad funding_signed: {result}")
        else:
            self.must_store = self.may_store = True

    def fund_outcome(self) -> dict | RpcError:
        assert self.fund is not None
        if self.fund_result is None:
            try:
                self.fund_result = self.fund.result(timeout=READ_TIMEOUT)
            except RpcError as exc:
                self.fund_result = exc
            except TimeoutError:
                self.fail("fundchannel hung")
        return self.fund_result

    # -- after the case ------------------------------------------------------------------

    def finish(self) -> None:
        self.peer.close()
        if self.opens:
            result = self.fund_outcome()
            if isinstance(result, RpcError):
                self.check_rpc_error(result)
            elif not self.signed_sent:
                self.fail(f"fundchannel succeeded without a funding_signed: {result}")
        self.check_node()

    def check_rpc_error(self, exc: RpcError) -> None:
        """A clear error: CLN's code for a failed open, and a reason a user can read."""
        error = exc.error
        if not (isinstance(error.get("message"), str) and error["message"]):
            self.fail(f"fundchannel error without a reason: {error}")
        if error.get("code") != LIGHTNINGD:
            self.fail(f"fundchannel error with an unexpected code: {error}")

    def check_node(self) -> None:
        """Alive; only complete channels stored, and only after the exchange; no reservation."""
        node = self.node
        assert node.rpc.getinfo()["id"] == node.id
        peer_id = self.peer.node_id.hex()

        def settled() -> tuple[list[dict]] | None:
            chans = node.rpc.call("listpeerchannels", {"id": peer_id})["channels"]
            return None if any(c["state"] == "OPENINGD" for c in chans) else (chans,)

        (chans,) = wait_for(settled, timeout=READ_TIMEOUT, what="openingd to finish")
        if self.must_store and len(chans) != 1:
            self.fail(f"the funding exchange completed, but {len(chans)} channels are stored")
        if not self.may_store and chans:
            self.fail(f"a channel was stored without a funding exchange: {chans}")
        for chan in chans:
            self.check_stored(chan)
        # Every case before this one has settled too: no channel anywhere is half-made.
        states = {c["state"] for c in node.rpc.listpeerchannels()["channels"]}
        if not states <= STORED_STATES:
            self.fail(f"channels in states {states}")
        reserved = [o for o in node.rpc.listfunds()["outputs"] if o["reserved"]]
        if reserved:
            self.fail(f"wallet inputs left reserved: {reserved}")

    def check_stored(self, chan: dict) -> None:
        peer = self.peer
        assert peer.open_msg is not None and peer.funding_txid is not None
        want = {
            "state": "CHANNELD_AWAITING_LOCKIN",
            "opener": "local" if self.opens else "remote",
            "channel_id": peer.channel_id().hex(),
            "funding_txid": peer.funding_txid[::-1].hex(),
            "funding_outnum": peer.funding_outnum,
            "total_msat": peer.open_msg.funding_satoshis * 1000,
        }
        got = {key: chan.get(key) for key in want}
        if got != want:
            self.fail(f"stored channel {got} is not the one negotiated: {want}")


# --- the tests ---------------------------------------------------------------------------


class LogWatch:
    """lightningd's log since the last look: no traceback, nothing broken, no timeout."""

    BAD = ("Traceback", "**BROKEN**", "Timed out waiting")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.offset = node.log_path.stat().st_size

    def check(self, case: object) -> None:
        with open(self.node.log_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        text = data.decode("utf-8", "replace")
        bad = [line for line in text.splitlines() if any(b in line for b in self.BAD)]
        assert not bad, f"{case}: lightningd logged {bad}"


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory, bitcoind):
    """One funded node for every case: each case is a new peer, so nothing carries over."""
    factory = NodeFactory(tmp_path_factory.mktemp("fuzz"), bitcoind)
    node, _ = funded_node(factory, bitcoind, f"--dev-opening-timeout={OPENING_TIMEOUT}")
    yield node
    factory.teardown()


# The first failed case, which may have left the shared node unusable.
BROKEN: list[str] = []
# Opens the node funded so far; a block confirms their change every UNCONFIRMED_OPENS.
FUNDED = itertools.count(1)
UNCONFIRMED_OPENS = 20


def play(node: Node, bitcoind, case: Case) -> Run:
    if BROKEN:
        # A node that lost its hsmd or event loop would make every later case wait for its
        # timeouts: one failure is the finding.
        pytest.fail(f"the shared node failed an earlier case: {BROKEN[0]}")
    watch = LogWatch(node)
    run = Run(node, case)
    BROKEN.append(str(case))
    run.run()
    watch.check(case)
    BROKEN.remove(str(case))
    if run.opens and run.must_store and next(FUNDED) % UNCONFIRMED_OPENS == 0:
        # Each open spends the last one's unconfirmed change (minconf 0): confirm the chain
        # before it outgrows the mempool's ancestor limit (25).
        bitcoind.generate(1, ELSEWHERE)
    return run


COVERAGE = [*coverage_cases(NODE_ACCEPTS), *coverage_cases(NODE_OPENS)]


def test_fixed_cases_cover_every_kind_and_field():
    for role in (NODE_ACCEPTS, NODE_OPENS):
        cases = [c for c in COVERAGE if c.role == role]
        kinds = {s.kind for c in cases for s in c.steps}
        assert kinds == {*FORMS, *INJECTIONS}, role
        for position, name in enumerate(FLOW[role]):
            steps = [s for c in cases for s in c.steps if s.position == position]
            mutated = {s.field for s in steps if s.kind == MUTATE}
            assert mutated == set(fields_of(name)), name
        disconnects = {s.position for c in cases for s in c.steps if s.kind == DISCONNECT}
        assert disconnects == {0, 1, 2, 3}


@pytest.mark.parametrize("case", COVERAGE, ids=[f"{c.role}-{c.seed}" for c in COVERAGE])
def test_opening_fuzz_fixed(fuzz_node, bitcoind, case):
    play(fuzz_node, bitcoind, case)


# --- regressions: what the fuzzer found, pinned down --------------------------------------


def refused_open(node: Node, seed: bytes, **overrides: Any) -> str:
    """Open with `overrides`: lightningd must answer `error` on the temporary_channel_id,
    keep the connection and store nothing; returns the error's text."""
    peer = OpeningPeer(seed=seed)
    peer.connect_to(node)
    sent = peer.send_open_channel(**overrides)
    error = peer.expect_error()
    assert error.channel_id == sent.temporary_channel_id
    assert peer.ping_pong()
    assert node.rpc.call("listpeerchannels", {"id": peer.node_id.hex()})["channels"] == []
    assert node.rpc.getinfo()["id"] == node.id
    return error_text(error)


def test_refuses_funding_above_max_money(fuzz_node):
    """Was: with option_support_large_channel openingd took any u64 funding_satoshis, so
    lightningd stored the channel and listpeerchannels failed for good ("millisatoshi
    amount 550614251907789118000 out of range")."""
    funding = MAX_MONEY_SAT + 1
    text = refused_open(
        fuzz_node,
        b"fuzz regression: funding above max money",
        funding_satoshis=funding,
        max_htlc_value_in_flight_msat=(1 << 64) - 1,
    )
    assert text == f"You gave bad parameters: funding_satoshis {funding} too large"


def test_duplicate_open_channel_fails_after_accept_channel(fuzz_node):
    """Was: openingd read the copy while lightningd judged the offer, failed the open and
    exited under lightningd's answer (**BROKEN** "openingd is gone"), and the peer got
    an error in place of accept_channel. Now, as in Core Lightning, openingd waits for
    lightningd without reading the peer, and refuses the copy after accept_channel."""
    watch = LogWatch(fuzz_node)
    peer = OpeningPeer(seed=b"fuzz regression: duplicate open_channel")
    peer.connect_to(fuzz_node)
    raw = peer.open_channel_msg().encode()
    peer.send(raw)
    peer.send(raw)
    tmp = wire.OpenChannel.decode(raw).temporary_channel_id
    assert peer.expect(wire.AcceptChannel).temporary_channel_id == tmp
    error = peer.expect_error()
    assert error.channel_id == tmp
    assert error_text(error) == "Unexpected message open_channel waiting for funding_created"
    assert peer.ping_pong()
    assert fuzz_node.rpc.call("listpeerchannels", {"id": peer.node_id.hex()})["channels"] == []
    watch.check("duplicate open_channel")


def test_all_zero_channel_id_gets_no_error(fuzz_node):
    """BOLT #1: an `error` on the all-zero channel_id "MUST fail all channels with the
    sending node". lightningd answers a channel message for an unknown channel with an
    error on its channel_id ("SHOULD send error with the unknown channel_id"), but a peer's
    channel_ready on the all-zero id gets a `warning`: an error would tell the peer to
    fail all its channels with us."""
    peer = OpeningPeer(seed=b"fuzz regression: all-zero channel_ready")
    peer.connect_to(fuzz_node)
    point = peer.keys.points()["first_per_commitment_point"]
    ready = wire.ChannelReady(ZERO, point, wire.ChannelReadyTlvs())
    peer.send(ready.encode())
    peer.send(wire.Ping(num_pong_bytes=1, ignored=b"").encode())
    before_pong = []
    while not isinstance(msg := peer.recv_skipping_pings(), wire.Pong):
        before_pong.append(msg)
    assert before_pong == [wire.Warning(ZERO, b"Unknown channel for channel_ready")]
    assert fuzz_node.rpc.getinfo()["id"] == fuzz_node.id


@pytest.mark.stress
def test_opening_fuzz_random(fuzz_node, bitcoind):
    """Random cases from a seeded generator; OPENING_FUZZ_CASES, _SEED (the first seed)
    and _ROLES (comma-separated) choose the run."""
    count = int(os.environ.get("OPENING_FUZZ_CASES", "3000"))
    first = int(os.environ.get("OPENING_FUZZ_SEED", "10000000"))
    roles = os.environ.get("OPENING_FUZZ_ROLES", f"{NODE_ACCEPTS},{NODE_ACCEPTS},{NODE_OPENS}")
    cycle = roles.split(",")
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for seed in range(first, first + count):
        case = random_case(cycle[seed % len(cycle)], seed)
        outcomes.update(t for t in play(fuzz_node, bitcoind, case).trace if "->" in t)
        kinds.update(step.kind for step in case.steps)
    elapsed = time.monotonic() - started
    print(f"\nopening fuzz: {count} cases in {elapsed:.0f}s from seed {first}, steps {dict(kinds)}")
    print(f"expected -> observed: {dict(outcomes)}")
