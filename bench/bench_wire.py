"""Messages/second for the generated codec vs pyln-proto's interpreted one.

Run: .venv/bin/python bench/bench_wire.py [seconds-per-case]
Each case is one encode plus one decode of the same message.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pyln.proto.message import Message as PylnMessage
from pyln.proto.message import MessageNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wire import peer_wiregen as gen  # noqa: E402

CID = bytes(range(32))
CHAIN = bytes(32)
SIG = bytes(range(64))
POINTS = [bytes([2]) + bytes([i]) * 32 for i in range(6)]
SCRIPT = bytes.fromhex("0014") + bytes(20)

OURS = {
    "open_channel": gen.OpenChannel(
        CHAIN, CID, 1_000_000, 0, 546, 2**40, 10_000, 1, 253, 144, 483, *POINTS, 1,
        gen.OpenChannelTlvs(upfront_shutdown_script=SCRIPT, channel_type=b"\x10\x00"),
    ),
    "accept_channel": gen.AcceptChannel(
        CID, 546, 2**40, 10_000, 1, 3, 144, 483, *POINTS,
        gen.AcceptChannelTlvs(upfront_shutdown_script=SCRIPT, channel_type=b"\x10\x00"),
    ),
    "funding_created": gen.FundingCreated(CID, CID, 0, SIG),
}  # fmt: skip


def _pyln_fields(name: str) -> dict:
    msg = OURS[name]
    fields = {}
    for key in (f.name for f in dataclasses.fields(msg) if f.name != "extra"):
        value = getattr(msg, key)
        if key == "tlvs":
            value = {
                "upfront_shutdown_script": {"shutdown_scriptpubkey": list(SCRIPT)},
                "channel_type": {"type": [0x10, 0x00]},
            }
        elif key == "temporary_channel_id":
            value = list(value)  # pyln represents byte arrays as lists of ints
        fields[key] = value
    return fields


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of fn, measured over about `seconds`."""
    n, start = 0, time.perf_counter()
    batch = 100
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed
        batch *= 2


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    rows = (ROOT / "wire" / "peer_wire.csv").read_text().splitlines()
    owners = set(OURS) | {f"{n}_tlvs" for n in OURS}
    ns = MessageNamespace([r for r in rows if r.split(",")[1] in owners])
    print(f"{'message':<16} {'ours msg/s':>12} {'pyln msg/s':>12} {'ratio':>8}")
    for name, msg in OURS.items():
        cls = type(msg)
        raw = msg.encode()
        pyln_msg = PylnMessage(ns.get_msgtype(name), **_pyln_fields(name))
        check = BytesIO()
        pyln_msg.write(check)
        assert check.getvalue() == raw, f"{name}: codecs disagree"

        def ours(msg: object = msg, cls: type = cls) -> object:
            return cls.decode(msg.encode())

        def pyln(pyln_msg: PylnMessage = pyln_msg) -> object:
            buf = BytesIO()
            pyln_msg.write(buf)
            return PylnMessage.read(ns, BytesIO(buf.getvalue()))

        a, b = rate(ours, seconds), rate(pyln, seconds)
        print(f"{name:<16} {a:>12,.0f} {b:>12,.0f} {a / b:>7.1f}x")


if __name__ == "__main__":
    main()
