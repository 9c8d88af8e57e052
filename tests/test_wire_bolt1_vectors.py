"""BOLT #1 Appendices A-D, parsed from doc/bolts/01-messaging.md so the tests follow the spec."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from wire import extract_bolts, generate
from wire.fundamental import WireError, decode_bigsize, encode_bigsize
from wire.peer_wiregen import Init

BOLT1 = Path(__file__).resolve().parents[1] / "doc" / "bolts" / "01-messaging.md"
TEXT = BOLT1.read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = TEXT.index(f"## {title}")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start:end]


def load_generated(csv_text: str, name: str, tmp: Path) -> ModuleType:
    """Compile a CSV with wire.generate and import the result."""
    path = tmp / f"{name}.py"
    path.write_text(generate.generate(csv_text, f"{name}.csv"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves string annotations (ClassVar) through sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- Appendix A: BigSize


def _json_blocks(section: str) -> list[list[dict]]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S)]


BIGSIZE_DECODE, BIGSIZE_ENCODE = _json_blocks(_section("Appendix A: BigSize Test Vectors"))


def test_appendix_a_parsed() -> None:
    assert len(BIGSIZE_DECODE) == 18 and len(BIGSIZE_ENCODE) == 8


@pytest.mark.parametrize("vec", BIGSIZE_DECODE, ids=lambda v: v["name"])
def test_bigsize_decode(vec: dict) -> None:
    raw = bytes.fromhex(vec["bytes"])
    if "exp_error" in vec:
        with pytest.raises(WireError):
            decode_bigsize(raw, 0)
    else:
        assert decode_bigsize(raw, 0) == (vec["value"], len(raw))


@pytest.mark.parametrize("vec", BIGSIZE_ENCODE, ids=lambda v: v["name"])
def test_bigsize_encode(vec: dict) -> None:
    assert encode_bigsize(vec["value"]) == bytes.fromhex(vec["bytes"])


def test_bigsize_decode_at_offset_and_range() -> None:
    assert decode_bigsize(b"\xaa\xfd\x01\x00\xbb", 1) == (256, 4)
    for bad in (-1, 1 << 64):
        with pytest.raises(WireError):
            encode_bigsize(bad)


# ---------------------------------------------------------------- Appendix B: TLV streams

APPENDIX_B = _section("Appendix B: Type-Length-Value Test Vectors")


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, type]:
    """The n1 and n2 streams, extracted from the appendix and compiled."""
    records = extract_bolts.extract(APPENDIX_B, "appendix-b", appendix=True)
    assert {r.stream for r in records} == {"n1", "n2"}
    module = load_generated(
        extract_bolts.to_csv(records), "bolt1_appendix_b_wiregen", tmp_path_factory.mktemp("b")
    )
    return {"n1": module.N1, "n2": module.N2}


def _namespaces(paragraph: str) -> list[str]:
    named = [ns for ns in ("n1", "n2") if f"`{ns}`" in paragraph]
    return named or ["n1", "n2"]


def _stream_vectors(kind: str) -> list[tuple[str, bytes, str]]:
    """(namespace, stream bytes, reason/values) for every `kind` stream in Appendix B.

    The namespace comes from the prose paragraph introducing each group of vectors.
    """
    out = []
    paragraph: list[str] = []
    in_prose = False
    lines = APPENDIX_B.splitlines()
    for i, line in enumerate(lines):
        m = re.match(rf"1\. {kind} stream: 0x([0-9a-f ]*)$", line)
        if m:
            note = lines[i + 1].split(":", 1)[1].strip()
            for ns in _namespaces(" ".join(paragraph)):
                out.append((ns, bytes.fromhex(m.group(1).replace(" ", "")), note))
        if not line or line.startswith(("1.", "2.", "#")):
            in_prose = False
            continue
        if not in_prose:
            paragraph, in_prose = [], True
        paragraph.append(line)
    return out


INVALID = _stream_vectors("Invalid")
VALID = _stream_vectors("Valid")


def test_appendix_b_parsed() -> None:
    # Counts per namespace as listed in the spec (shared vectors appear under both).
    assert len([v for v in INVALID if v[0] == "n1"]) == 9 + 4 + 20 + 4
    assert len([v for v in INVALID if v[0] == "n2"]) == 9 + 4 + 1
    assert len([v for v in VALID if v[0] == "n1"]) == 7 + 12
    assert len([v for v in VALID if v[0] == "n2"]) == 7


def _id(v: object) -> str:
    return v.hex() if isinstance(v, bytes) else str(v)


@pytest.mark.parametrize("ns,raw,reason", INVALID, ids=_id)
def test_tlv_invalid(streams: dict[str, type], ns: str, raw: bytes, reason: str) -> None:
    with pytest.raises(WireError):
        streams[ns].decode(raw)


def _value(text: str) -> int | bytes:
    # A short_channel_id is written BLOCKxTXxOUTPUT, e.g. 0x0x550.
    scid = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text)
    if scid:
        block, tx, out = map(int, scid.groups())
        return block << 40 | tx << 16 | out
    if re.fullmatch(r"\d+", text):
        return int(text)
    return bytes.fromhex(text)


@pytest.mark.parametrize("ns,raw,values", VALID, ids=_id)
def test_tlv_valid(streams: dict[str, type], ns: str, raw: bytes, values: str) -> None:
    decoded = streams[ns].decode(raw)
    # Canonical streams re-encode byte for byte, unknown odd records included.
    assert decoded.encode() == raw
    if not values.startswith("`"):
        # "empty message" / "Unknown odd type": nothing known is set.
        assert all(getattr(decoded, n) is None for n in ("tlv1", "tlv2"))
        return
    record, *assignments = values.split()
    value = getattr(decoded, record.strip("`"))
    pairs = [a.split("=") for a in assignments]
    if len(pairs) == 1:
        assert value == _value(pairs[0][1])
    else:
        for name, text in pairs:
            assert getattr(value, name.strip("`")) == _value(text)


def test_tlv_append_invalid_to_valid(streams: dict[str, type]) -> None:
    """Any appending of an invalid stream to a valid stream should trigger a failure."""
    for ns, good, _ in VALID:
        for ns2, bad, _ in INVALID:
            if ns == ns2:
                with pytest.raises(WireError):
                    streams[ns].decode(good + bad)


def test_tlv_append_higher_valid(streams: dict[str, type]) -> None:
    """Appending a higher-numbered valid stream to a lower-numbered one still decodes."""
    checked = 0
    for ns, low, _ in VALID:
        for ns2, high, _ in VALID:
            if ns != ns2 or not (low and high):
                continue
            if decode_bigsize(low, 0)[0] < decode_bigsize(high, 0)[0]:
                assert streams[ns].decode(low + high).encode() == low + high
                checked += 1
    assert checked > 50


# ---------------------------------------------------------------- Appendix C: extensions

APPENDIX_C = _section("Appendix C: Message Extension")
_VALID_C, _INVALID_C = APPENDIX_C.split("are invalid:")
VALID_INIT = [bytes.fromhex(h) for h in re.findall(r"- `0x([0-9a-f]+)`", _VALID_C)]
INVALID_INIT = [bytes.fromhex(h) for h in re.findall(r"- `0x([0-9a-f]+)`", _INVALID_C)]


def test_appendix_c_parsed() -> None:
    assert len(VALID_INIT) == 2 and len(INVALID_INIT) == 3


@pytest.mark.parametrize("raw", VALID_INIT, ids=bytes.hex)
def test_init_extension_valid(raw: bytes) -> None:
    msg = Init.decode(raw)
    assert msg.features == b"" and msg.globalfeatures == b""
    # Appendix C: nodes should store the extension bytes even if they don't understand them.
    assert msg.encode() == raw


def test_init_extension_unknown_odd_kept() -> None:
    msg = Init.decode(VALID_INIT[1])
    assert msg.tlvs.unknown == ((0xC9, b"\x2a"), (0xCB, b"\x04"))


@pytest.mark.parametrize("raw", INVALID_INIT, ids=bytes.hex)
def test_init_extension_invalid(raw: bytes) -> None:
    with pytest.raises(WireError):
        Init.decode(raw)


# ---------------------------------------------------------------- Appendix D: signed ints

SIGNED = _json_blocks(_section("Appendix D: Signed Integers Test Vectors"))[0]
SIGNED_CSV = """\
msgtype,signed,1
msgdata,signed,s8,s8,
msgdata,signed,s16,s16,
msgdata,signed,s32,s32,
msgdata,signed,s64,s64,
"""


@pytest.fixture(scope="module")
def signed_msg(tmp_path_factory: pytest.TempPathFactory) -> type:
    module = load_generated(SIGNED_CSV, "bolt1_signed_wiregen", tmp_path_factory.mktemp("d"))
    return module.Signed


@pytest.mark.parametrize("vec", SIGNED, ids=lambda v: str(v["value"]))
def test_signed_integers(signed_msg: type, vec: dict) -> None:
    raw = bytes.fromhex(vec["bytes"])
    width = {1: "s8", 2: "s16", 4: "s32", 8: "s64"}[len(raw)]
    values = {"s8": 0, "s16": 0, "s32": 0, "s64": 0, width: vec["value"]}
    encoded = signed_msg(**values).encode()
    offsets = {"s8": (2, 3), "s16": (3, 5), "s32": (5, 9), "s64": (9, 17)}
    start, end = offsets[width]
    assert encoded[start:end] == raw
    assert signed_msg.decode(encoded) == signed_msg(**values)


def test_signed_out_of_range(signed_msg: type) -> None:
    with pytest.raises(WireError):
        signed_msg(128, 0, 0, 0).encode()
