"""BOLT #8 Appendix A, parsed from doc/bolts/08-transport.md and run against our code.

Each handshake vector is a script of `output:` (what we must send, or the
ERROR we must raise) and `input:` (what the peer sends) lines, replayed in
order through the same step generator the real socket drivers use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import coincurve
import pytest

from common.cryptomsg import CryptoState, DecryptError
from common.handshake import (
    Ecdh,
    HandshakeError,
    HandshakeFailure,
    Recv,
    Send,
    initiator_steps,
    privkey_ecdh,
    responder_steps,
)

SPEC = Path(__file__).resolve().parent.parent / "doc" / "bolts" / "08-transport.md"


@dataclass
class Vector:
    name: str
    params: dict[str, bytes] = field(default_factory=dict)
    # ("input" | "output", value) in spec order
    script: list[tuple[str, str]] = field(default_factory=list)


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _hex(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def _parse_vectors(section: str) -> list[Vector]:
    vectors: list[Vector] = []
    for raw in section.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("```"):
            continue
        m = re.match(r"([\w.]+)\s*[:=]\s*(.*)$", line)
        if not m:
            continue
        key, value = m.groups()
        if key == "name":
            vectors.append(Vector(value))
        elif not vectors:
            continue
        elif key in ("input", "output"):
            vectors[-1].script.append((key, value))
        else:
            vectors[-1].params[key] = _hex(value)
    return vectors


TEXT = SPEC.read_text()
INITIATOR_VECTORS = _parse_vectors(_section(TEXT, "Initiator Tests"))
RESPONDER_VECTORS = _parse_vectors(_section(TEXT, "Responder Tests"))


def _run(steps, vector: Vector, ecdh) -> None:
    """Replay `vector.script` against a handshake step generator."""
    script = list(vector.script)
    reply: bytes | None = None
    try:
        while True:
            step = steps.send(reply)
            reply = None
            if isinstance(step, Ecdh):
                reply = ecdh(step.point)
                continue
            kind, value = script.pop(0)
            if isinstance(step, Send):
                assert kind == "output", f"sent {step.data.hex()} where spec expects {kind}"
                assert step.data == _hex(value)
            else:
                assert isinstance(step, Recv)
                assert kind == "input"
                reply = _hex(value)
    except HandshakeError as e:
        kind, value = script.pop(0)
        assert kind == "output"
        m = re.fullmatch(r"ERROR \((\w+).*\)", value)
        assert m, f"unexpected failure {e}"
        assert e.failure is HandshakeFailure[m.group(1)]
        assert not script
        return
    except StopIteration as done:
        result = done.value
    kind, value = script.pop(0)
    assert not script
    m = re.fullmatch(r"(sk|rk),(sk|rk)=(0x\w+),(0x\w+)", value)
    assert kind == "output" and m, value
    keys = {m.group(1): _hex(m.group(3)), m.group(2): _hex(m.group(4))}
    assert result.state.sk == keys["sk"]
    assert result.state.rk == keys["rk"]
    assert (result.state.sn, result.state.rn) == (0, 0)
    assert result.state.sck == result.state.rck


def test_vectors_parsed() -> None:
    # The spec has 5 initiator vectors and 10 responder vectors; fail loudly if parsing drifts.
    assert len(INITIATOR_VECTORS) == 5
    assert len(RESPONDER_VECTORS) == 10
    assert all(v.script and v.script[-1][0] == "output" for v in INITIATOR_VECTORS)


def _pub(priv: bytes) -> bytes:
    return coincurve.PrivateKey(priv).public_key.format()


@pytest.mark.parametrize("vector", INITIATOR_VECTORS, ids=lambda v: v.name)
def test_initiator(vector: Vector) -> None:
    p = vector.params
    assert _pub(p["ls.priv"]) == p["ls.pub"]
    assert _pub(p["e.priv"]) == p["e.pub"]
    steps = initiator_steps(p["ls.pub"], p["rs.pub"], ephemeral=p["e.priv"])
    _run(steps, vector, privkey_ecdh(p["ls.priv"]))


@pytest.mark.parametrize("vector", RESPONDER_VECTORS, ids=lambda v: v.name)
def test_responder(vector: Vector) -> None:
    p = vector.params
    assert _pub(p["ls.priv"]) == p["ls.pub"]
    assert _pub(p["e.priv"]) == p["e.pub"]
    steps = responder_steps(p["ls.pub"], ephemeral=p["e.priv"])
    _run(steps, vector, privkey_ecdh(p["ls.priv"]))


def test_responder_learns_initiator_key() -> None:
    p = RESPONDER_VECTORS[0].params
    steps = responder_steps(p["ls.pub"], ephemeral=p["e.priv"])
    inputs = [_hex(v) for k, v in RESPONDER_VECTORS[0].script if k == "input"]
    ecdh = privkey_ecdh(p["ls.priv"])
    reply = None
    try:
        while True:
            step = steps.send(reply)
            reply = ecdh(step.point) if isinstance(step, Ecdh) else None
            if isinstance(step, Recv):
                reply = inputs.pop(0)
    except StopIteration as done:
        assert done.value.remote_pubkey == INITIATOR_VECTORS[0].params["ls.pub"]


# -- Message Encryption Tests ------------------------------------------------

MSG_SECTION = _section(TEXT, "Message Encryption Tests")
MSG_KEYS = {k: _hex(v) for k, v in re.findall(r"^\s*(ck|sk|rk)=(0x[0-9a-f]+)", MSG_SECTION, re.M)}
MSG_OUTPUTS = {int(n): _hex(v) for n, v in re.findall(r"output (\d+): (0x[0-9a-f]+)", MSG_SECTION)}


def _message_state() -> CryptoState:
    ck = MSG_KEYS["ck"]
    return CryptoState(sk=MSG_KEYS["sk"], rk=MSG_KEYS["rk"], sn=0, rn=0, sck=ck, rck=ck)


def _mirror(state: CryptoState) -> CryptoState:
    return CryptoState(
        sk=state.rk, rk=state.sk, sn=state.rn, rn=state.sn, sck=state.rck, rck=state.sck
    )


def test_message_vectors_parsed() -> None:
    assert sorted(MSG_OUTPUTS) == [0, 1, 500, 501, 1000, 1001]
    assert set(MSG_KEYS) == {"ck", "sk", "rk"}


def test_message_encryption() -> None:
    """BOLT #8: "the initiator sends length 5 messages containing "hello" 1001 times"."""
    state = _message_state()
    receiver = _mirror(state)
    for i in range(max(MSG_OUTPUTS) + 1):
        packet = state.encrypt_message(b"hello")
        assert len(packet) == 18 + 5 + 16
        if i in MSG_OUTPUTS:
            assert packet == MSG_OUTPUTS[i], f"output {i}"
        assert receiver.decrypt_message(packet) == b"hello"
    # Two rotations each way, and both sides agree on where they are.
    assert state.sk == receiver.rk and state.sck == receiver.rck and state.sn == receiver.rn


def test_message_rotation_keys_match_spec_comments() -> None:
    """The HKDF comments in the spec give the keys after each rotation."""
    rotations = re.findall(
        r"# (0x[0-9a-f]+), (0x[0-9a-f]+) = HKDF\((0x[0-9a-f]+), (0x[0-9a-f]+)\)", MSG_SECTION
    )
    state = _message_state()
    seen = []
    for _ in range(1002):
        before = (state.sck, state.sk)
        state.encrypt_message(b"hello")
        if state.sk != before[1]:
            seen.append((state.sck, state.sk, *before))
    expected = list(dict.fromkeys(tuple(_hex(x) for x in r) for r in rotations))
    assert seen == expected


def test_message_bad_mac() -> None:
    state = _message_state()
    receiver = _mirror(state)
    packet = bytearray(state.encrypt_message(b"hello"))
    packet[-1] ^= 1
    with pytest.raises(DecryptError):
        receiver.decrypt_message(bytes(packet))
    header = bytearray(MSG_OUTPUTS[0][:18])
    header[0] ^= 1
    with pytest.raises(DecryptError):
        _mirror(_message_state()).decrypt_header(bytes(header))
