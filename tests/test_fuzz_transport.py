"""Hostile peers: fuzzing the BOLT #8 transport (issue 9).

Mutated, truncated and random act one/two/three bytes go to the responder and initiator
state machines and to the socket drivers (blocking, asyncio on a raw socket, asyncio on
streams); after a good handshake, mutated ciphertext, forged length prefixes and truncated
frames go to the message readers.  The only acceptable outcomes are the transport's own
errors (HandshakeError, DecryptError, ConnectionClosed), never a hang (every socket has a
timeout; the writer always closes), and never a forged message accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import time
from collections.abc import Awaitable, Callable

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.cryptomsg import HEADER_LEN, MAC_LEN, MAX_MSG_LEN, CryptoState, DecryptError
from common.cryptomsg import encrypt_with_ad as seal
from common.handshake import (
    ACT_ONE_SIZE,
    ACT_THREE_SIZE,
    ACT_TWO_SIZE,
    HandshakeError,
    HandshakeFailure,
    InitiatorHandshake,
    ResponderHandshake,
    privkey_ecdh,
)
from common.peer_io import (
    AsyncPeerConnection,
    ConnectionClosed,
    PeerConnection,
    _recv_upto,
    async_handshake_initiator,
    async_handshake_initiator_sock,
    async_handshake_responder,
    async_handshake_responder_sock,
    handshake_initiator,
    handshake_responder,
)
from tests.scripted_peer import ScriptedPeer, init_msg
from tests.test_fuzz_wire import mutate
from tests.test_peer_io import (
    INITIATOR_PRIV,
    INITIATOR_PUB,
    IO_TIMEOUT,
    RESPONDER_PRIV,
    RESPONDER_PUB,
    _in_thread,
    _send_raw_then_close,
    _socketpair,
    _state_pair,
    _streams,
)

F = HandshakeFailure
FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
STRESS_CASES = 200_000
# Fixed ephemeral keys make every act reproducible, so a good act can be mutated.
INITIATOR_EPHEMERAL = bytes([0x12] * 32)
RESPONDER_EPHEMERAL = bytes([0x22] * 32)
ECDH_I = privkey_ecdh(INITIATOR_PRIV)
ECDH_R = privkey_ecdh(RESPONDER_PRIV)


def _responder() -> ResponderHandshake:
    return ResponderHandshake(RESPONDER_PUB, RESPONDER_EPHEMERAL)


def _initiator() -> InitiatorHandshake:
    return InitiatorHandshake(INITIATOR_PUB, RESPONDER_PUB, INITIATOR_EPHEMERAL)


def _good_acts() -> tuple[bytes, bytes, bytes]:
    ini, resp = _initiator(), _responder()
    act1 = ini.act_one()
    act2 = resp.act_two(ECDH_R(resp.read_act_one(act1)))
    ini.read_act_two(act2)
    assert ini.remote_ephemeral is not None
    act3 = ini.act_three(ECDH_I(ini.remote_ephemeral))
    assert resp.read_act_three(act3).remote_pubkey == INITIATOR_PUB
    return act1, act2, act3


ACT1, ACT2, ACT3 = _good_acts()


# ------------------------------------------------------------------ state machines


def feed_act_one(m: bytes) -> None:
    resp = _responder()
    resp.act_two(ECDH_R(resp.read_act_one(m)))


def feed_act_two(m: bytes) -> None:
    ini = _initiator()
    ini.act_one()
    ini.read_act_two(m)


def feed_act_three(m: bytes) -> None:
    resp = _responder()
    resp.act_two(ECDH_R(resp.read_act_one(ACT1)))
    resp.read_act_three(m)


def _is_point(data: bytes) -> bool:
    try:
        return data[0] in (2, 3) and coincurve.PublicKey(data) is not None
    except ValueError:
        return False


def expected_failure(act: int, good: bytes, m: bytes) -> HandshakeFailure | None:
    """How the receiver of act `m` (instead of `good`) must fail, by BOLT #8."""
    if m == good:
        return None
    # BOLT #8: "Read _exactly_ 50 bytes from the network buffer." (66 for act three)
    if len(m) != len(good):
        return F[f"ACT{act}_READ_FAILED"]
    # BOLT #8: "If `v` is an unrecognized handshake version, then the responder MUST abort"
    if m[0] != 0:
        return F[f"ACT{act}_BAD_VERSION"]
    if act == 3:
        # The encrypted static key comes first; its MAC fails before the final one is read.
        return F.ACT3_BAD_CIPHERTEXT if m[1:50] != good[1:50] else F.ACT3_BAD_TAG
    # BOLT #8: "`re` ... deserialized into a point on the curve": no point, no ECDH.
    return F[f"ACT{act}_BAD_TAG"] if _is_point(m[1:34]) else F[f"ACT{act}_BAD_PUBKEY"]


ACTS = {
    1: (feed_act_one, ACT1),
    2: (feed_act_two, ACT2),
    3: (feed_act_three, ACT3),
}


def check_act(act: int, m: bytes) -> HandshakeFailure | None:
    """Feed act `m` to its receiver; it must fail exactly as BOLT #8 says, or succeed."""
    feed, good = ACTS[act]
    want = expected_failure(act, good, m)
    try:
        feed(m)
    except HandshakeError as e:
        assert e.failure is want, f"act {act} {m.hex()}: {e.failure} instead of {want}"
        return want
    assert want is None, f"act {act} accepted {m.hex()}"
    return None


def hostile_act(good: bytes, rng: random.Random) -> bytes:
    """A random act of the right size, a short read, bit flips, or any mutation."""
    kind = rng.randrange(4)
    if kind == 0:
        return b"\x00" + rng.randbytes(len(good) - 1)
    if kind == 1:
        return good[: rng.randrange(len(good))]
    if kind == 2:  # same length: past the read, to the version, point and MAC checks
        m = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
        return bytes(m)
    return mutate(good, rng, keep=0)


@pytest.mark.parametrize("act", ACTS)
@FAST
@given(rng=st.randoms(use_true_random=False))
def test_act_state_machine(act: int, rng: random.Random) -> None:
    for _ in range(10):
        check_act(act, hostile_act(ACTS[act][1], rng))


@pytest.mark.parametrize("act", ACTS)
@FAST
@given(pos=st.integers(0, ACT_THREE_SIZE - 1), bit=st.integers(0, 7))
def test_act_any_bit_flip_fails(act: int, pos: int, bit: int) -> None:
    good = ACTS[act][1]
    m = bytearray(good)
    m[pos % len(good)] ^= 1 << bit
    assert check_act(act, bytes(m)) is not None


@pytest.mark.parametrize(
    ("act", "size"), [(1, ACT_ONE_SIZE), (2, ACT_TWO_SIZE), (3, ACT_THREE_SIZE)]
)
def test_act_exact_failures(act: int, size: int) -> None:
    good = ACTS[act][1]
    assert len(good) == size
    assert check_act(act, good) is None
    assert check_act(act, b"") is F[f"ACT{act}_READ_FAILED"]
    assert check_act(act, good + b"\x00") is F[f"ACT{act}_READ_FAILED"]
    assert check_act(act, b"\x01" + good[1:]) is F[f"ACT{act}_BAD_VERSION"]
    assert check_act(act, good[:-1] + bytes([good[-1] ^ 1])) is not None
    if act != 3:
        # A well-formed prefix, but an x with no point on the curve (x = 5 has none).
        not_on_curve = good[:1] + b"\x02" + (5).to_bytes(32, "big") + good[34:]
        assert check_act(act, not_on_curve) is F[f"ACT{act}_BAD_PUBKEY"]


# ---------------------------------------------------------------- socket drivers


def _blocking_victim(act: int, sock: socket.socket) -> None:
    """The real blocking driver that receives act `act` on `sock`."""
    if act == 2:
        handshake_initiator(
            sock, INITIATOR_PUB, ECDH_I, RESPONDER_PUB, IO_TIMEOUT, ephemeral=INITIATOR_EPHEMERAL
        )
    else:
        handshake_responder(sock, RESPONDER_PUB, ECDH_R, IO_TIMEOUT, ephemeral=RESPONDER_EPHEMERAL)


async def _async_victim(act: int, sock: socket.socket, mode: str) -> None:
    """The real asyncio driver (raw socket or streams) that receives act `act`."""
    writer = None
    if mode == "sock":
        io: tuple = (sock,)
        initiator, responder = async_handshake_initiator_sock, async_handshake_responder_sock
    else:
        reader, writer = await _streams(sock)
        io = (reader, writer)
        initiator, responder = async_handshake_initiator, async_handshake_responder
    try:
        if act == 2:
            await initiator(
                *io, INITIATOR_PUB, ECDH_I, RESPONDER_PUB, IO_TIMEOUT, ephemeral=INITIATOR_EPHEMERAL
            )
        else:
            await responder(*io, RESPONDER_PUB, ECDH_R, IO_TIMEOUT, ephemeral=RESPONDER_EPHEMERAL)
    finally:
        if writer is not None:
            writer.close()


def _hostile_peer(sock: socket.socket, act: int, m: bytes) -> None:
    """Play the other side honestly up to act `act`, send `m` instead, and hang up."""
    if act == 2:
        _recv_upto(sock, ACT_ONE_SIZE)
    elif act == 3:
        sock.sendall(ACT1)
        _recv_upto(sock, ACT_TWO_SIZE)
    sock.sendall(m)
    # The victim must then fail, never wait for more.
    sock.shutdown(socket.SHUT_WR)


def run_driver(act: int, m: bytes, mode: str) -> HandshakeFailure | None:
    """Deliver act `m` over a socketpair to a real driver; return how it failed."""
    with _socketpair() as (hostile, victim):
        done = _in_thread(lambda: _hostile_peer(hostile, act, m))
        try:
            if mode == "blocking":
                _blocking_victim(act, victim)
            else:
                asyncio.run(asyncio.wait_for(_async_victim(act, victim, mode), IO_TIMEOUT))
        except HandshakeError as e:
            return e.failure
        finally:
            done()
    return None


def driver_outcome(act: int, m: bytes) -> HandshakeFailure | None:
    good = ACTS[act][1]
    # BOLT #8: "Read _exactly_ 50 bytes from the network buffer": extra bytes are not this act.
    want = expected_failure(act, good, m[: len(good)])
    # After a good act one the responder waits for act three: the hang-up is a short read.
    return F.ACT3_READ_FAILED if want is None and act == 1 else want


DRIVER_MODES = ["blocking", "sock", "streams"]


@pytest.mark.parametrize("mode", DRIVER_MODES)
@pytest.mark.parametrize("act", ACTS)
@settings(FAST, max_examples=8)
@given(rng=st.randoms(use_true_random=False))
def test_act_over_socket(act: int, mode: str, rng: random.Random) -> None:
    m = hostile_act(ACTS[act][1], rng)
    assert run_driver(act, m, mode) is driver_outcome(act, m)


@pytest.mark.parametrize("mode", DRIVER_MODES)
def test_act_over_socket_exact(mode: str) -> None:
    assert run_driver(1, ACT1[:20], mode) is F.ACT1_READ_FAILED
    assert run_driver(1, ACT1, mode) is F.ACT3_READ_FAILED
    assert run_driver(2, b"\x01" + ACT2[1:], mode) is F.ACT2_BAD_VERSION
    assert run_driver(2, ACT2, mode) is None
    assert run_driver(3, ACT3[:-1] + b"\x00", mode) is F.ACT3_BAD_TAG
    assert run_driver(3, b"", mode) is F.ACT3_READ_FAILED
    assert run_driver(3, ACT3, mode) is None


# --------------------------------------------------------------- message readers


MESSAGES = [b"\x00\x10hello", b"", bytes(300), b"\x00\x12" + bytes(range(256))]


def _packets(state: CryptoState) -> bytes:
    return b"".join(state.encrypt_message(m) for m in MESSAGES)


def _forged(state: CryptoState, claimed: int, body_len: int, cut: int | None) -> bytes:
    """A packet under the right key whose header claims `claimed` bytes, with `body_len`."""
    header = seal(state.sk, state.sn, b"", claimed.to_bytes(2, "big"))
    body = seal(state.sk, state.sn + 1, b"", bytes(body_len))
    return (header + body)[:cut]


def _read_all_blocking(sock: socket.socket, state: CryptoState) -> tuple[list[bytes], Exception]:
    conn = PeerConnection(sock, state)
    got = []
    while True:
        try:
            got.append(conn.read_message())
        except (DecryptError, ConnectionClosed) as e:
            return got, e


async def _read_all_async(
    sock: socket.socket, state: CryptoState, mode: str
) -> tuple[list[bytes], Exception]:
    if mode == "sock":
        conn = AsyncPeerConnection.from_socket(sock, state)
    else:
        conn = AsyncPeerConnection.from_streams(*await _streams(sock), state)
    got = []
    try:
        while True:
            try:
                got.append(await conn.read_message())
            except (DecryptError, ConnectionClosed) as e:
                return got, e
    finally:
        conn.close()


READERS: dict[str, Callable[[socket.socket, CryptoState], tuple[list[bytes], Exception]]] = {
    "blocking": _read_all_blocking,
    "sock": lambda s, st_: _run(_read_all_async(s, st_, "sock")),
    "streams": lambda s, st_: _run(_read_all_async(s, st_, "streams")),
}


def _run(coro: Awaitable[tuple[list[bytes], Exception]]) -> tuple[list[bytes], Exception]:
    return asyncio.run(asyncio.wait_for(coro, IO_TIMEOUT))


def read_stream(data: bytes, receiver: CryptoState, mode: str) -> tuple[list[bytes], Exception]:
    """Send `data` then hang up; the reader decrypts until it fails (it always must)."""
    with _socketpair() as (hostile, victim):
        _send_raw_then_close(hostile, data)
        return READERS[mode](victim, receiver)


def check_stream(data: bytes, good: bytes, receiver: CryptoState, mode: str) -> Exception:
    got, err = read_stream(data, receiver, mode)
    # Authentication: only a prefix of what was really sent can ever come out.
    assert got == MESSAGES[: len(got)]
    if data == good:
        assert got == MESSAGES
        assert isinstance(err, ConnectionClosed) and not err.mid_message
    return err


READER_MODES = list(READERS)


@pytest.mark.parametrize("mode", READER_MODES)
@FAST
@given(rng=st.randoms(use_true_random=False))
def test_mutated_ciphertext(mode: str, rng: random.Random) -> None:
    sender, receiver = _state_pair()
    good = _packets(sender)
    check_stream(mutate(good, rng, keep=0), good, receiver, mode)


def _states_at(rn: int) -> tuple[CryptoState, CryptoState]:
    """A sender/receiver pair `rn` nonces in, e.g. right before a key rotation."""
    sender, receiver = _state_pair()
    for _ in range(rn // 2):
        receiver.decrypt_message(sender.encrypt_message(b""))
    return sender, receiver


def check_packet(receiver: CryptoState, good: bytes, m: bytes, msg: bytes) -> None:
    """decrypt_message on a hostile packet: all or nothing."""
    before = dataclasses.replace(receiver)
    try:
        assert receiver.decrypt_message(m) == msg
    except DecryptError:
        assert m != good
        assert receiver == before  # nothing half-consumed: the real packet still decrypts
        assert receiver.decrypt_message(good) == msg
        return
    assert m == good


@FAST
@given(rng=st.randoms(use_true_random=False), rn=st.sampled_from([0, 996, 998]))
def test_mutated_packet_in_memory(rng: random.Random, rn: int) -> None:
    sender, receiver = _states_at(rn)
    msg = rng.randbytes(rng.choice((0, 2, 40)))
    good = sender.encrypt_message(msg)
    check_packet(receiver, good, mutate(good, rng, keep=0), msg)


@pytest.mark.parametrize(
    ("cut", "error"),
    [
        (0, "packet of 0 bytes is shorter than two MACs"),
        (HEADER_LEN, "packet of 18 bytes is shorter than two MACs"),
        (HEADER_LEN + MAC_LEN, "packet body is 16 bytes, header says 18"),
        (-1, "packet body is 17 bytes, header says 18"),
    ],
)
def test_short_packet_in_memory(cut: int, error: str) -> None:
    """Before: ValueError for a short packet, and the nonce left mid-message on a bad length."""
    sender, receiver = _states_at(998)
    good = sender.encrypt_message(b"hi")
    before = dataclasses.replace(receiver)
    with pytest.raises(DecryptError) as e:
        receiver.decrypt_message(good[:cut])
    assert str(e.value) == error
    assert receiver == before
    assert receiver.decrypt_message(good) == b"hi"


def _boundaries() -> list[int]:
    sizes = [HEADER_LEN + len(m) + MAC_LEN for m in MESSAGES]
    return [sum(sizes[:i]) for i in range(len(sizes) + 1)]


@pytest.mark.parametrize("mode", READER_MODES)
def test_truncated_frames(mode: str) -> None:
    """Cut anywhere: the messages before the cut, then EOF, mid-message unless on a boundary."""
    bounds = _boundaries()
    cuts = sorted({*bounds, *(b + d for b in bounds[:-1] for d in (1, HEADER_LEN - 1, HEADER_LEN))})
    for cut in cuts:
        sender, receiver = _state_pair()
        got, err = read_stream(_packets(sender)[:cut], receiver, mode)
        assert got == MESSAGES[: sum(b <= cut for b in bounds) - 1]
        assert isinstance(err, ConnectionClosed)
        assert err.mid_message == (cut not in bounds)


@pytest.mark.parametrize("mode", READER_MODES)
@pytest.mark.parametrize(
    ("claimed", "body_len", "cut", "outcome"),
    [
        # A length prefix larger than what follows: wait for it, then EOF mid-message.
        (MAX_MSG_LEN, 100, None, "eof"),
        (101, 100, None, "eof"),
        (MAX_MSG_LEN, 0, HEADER_LEN, "eof"),
        # Smaller than the body: the body's MAC is checked over the wrong bytes.
        (99, 100, None, "mac"),
        (0, 100, None, "mac"),
        # Exact: accepted, including the largest message BOLT #8 allows.
        (100, 100, None, "ok"),
        (MAX_MSG_LEN, MAX_MSG_LEN, None, "ok"),
    ],
)
def test_forged_length_prefix(
    mode: str, claimed: int, body_len: int, cut: int | None, outcome: str
) -> None:
    sender, receiver = _state_pair()
    got, err = read_stream(_forged(sender, claimed, body_len, cut), receiver, mode)
    if outcome == "ok":
        assert got == [bytes(body_len)]
        assert isinstance(err, ConnectionClosed) and not err.mid_message
    elif outcome == "eof":
        assert got == []
        assert isinstance(err, ConnectionClosed) and err.mid_message
    else:
        assert got == []
        assert isinstance(err, DecryptError)
        assert str(err) == f"bad MAC on incoming packet (rn={receiver.rn})"


def test_bad_header_mac() -> None:
    """A header under the wrong key is refused before any body byte is awaited."""
    sender, receiver = _state_pair()
    packet = bytearray(sender.encrypt_message(b"hi"))
    packet[0] ^= 1
    for mode in READER_MODES:
        got, err = read_stream(bytes(packet), receiver, mode)
        assert (got, type(err), str(err)) == ([], DecryptError, "bad MAC on incoming packet (rn=0)")
        # A refused packet does not move the nonce.
        assert receiver.rn == 0


# ------------------------------------------------------------ a real lightningd


def _drain_until_hangup(sock: socket.socket) -> None:
    """Read until lightningd closes the connection (a timeout fails the test)."""
    sock.settimeout(IO_TIMEOUT)
    with contextlib.suppress(ConnectionResetError):  # closed with our garbage unread
        while sock.recv(4096):
            pass


def _check_alive_and_clean(node) -> None:
    assert node.rpc.getinfo()["id"] == node.id
    assert node.rpc.listpeers()["peers"] == []
    for bad in ("Traceback", "BROKEN", "Task exception"):
        assert bad not in node.logs()


def test_lightningd_hangs_up_on_hostile_peers(node_factory) -> None:
    """Over real connections: a bad act one, a bad act three, a bad packet before and
    after init.  lightningd hangs up each time, logs it plainly and stays up."""
    l1 = node_factory.get_node()
    node_id = bytes.fromhex(l1.id)

    with socket.create_connection(("127.0.0.1", l1.port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"\x01" + bytes(ACT_ONE_SIZE - 1))
        _drain_until_hangup(sock)
    l1.wait_for_log(r"Handshake from 127\.0\.0\.1:\d+ failed: ACT1_BAD_VERSION")

    with socket.create_connection(("127.0.0.1", l1.port), timeout=IO_TIMEOUT) as sock:
        ini = InitiatorHandshake(INITIATOR_PUB, node_id)
        sock.sendall(ini.act_one())
        ini.read_act_two(_recv_upto(sock, ACT_TWO_SIZE))
        assert ini.remote_ephemeral is not None
        act3 = bytearray(ini.act_three(ECDH_I(ini.remote_ephemeral)))
        act3[-1] ^= 1
        sock.sendall(act3)
        _drain_until_hangup(sock)
    l1.wait_for_log(r"Handshake from 127\.0\.0\.1:\d+ failed: ACT3_BAD_TAG")

    # Garbage instead of init, then garbage in the parked peer's loop.
    for send_init in (False, True):
        peer = ScriptedPeer()
        conn = peer.connect(l1.id, l1.port)
        if send_init:
            peer.send(init_msg())
            assert peer.recv().NAME == "init"
        conn.sock.sendall(bytes(HEADER_LEN + MAC_LEN))
        _drain_until_hangup(conn.sock)
        conn.close()
    l1.wait_for_log(r"peer closed connection during init: bad MAC on incoming packet \(rn=0\)")
    l1.wait_for_log(r"Peer disconnected: connection closed: bad MAC on incoming packet")
    _check_alive_and_clean(l1)
    assert l1.stop() == 0


# ------------------------------------------------------------------------ long run


@pytest.mark.stress
def test_stress_transport() -> None:
    """Plain seeded fuzzing: state machines in memory, then the readers over sockets."""
    rng = random.Random(8)
    start = time.perf_counter()
    for act, (_, good) in ACTS.items():
        failures: dict[str, int] = {}
        for _ in range(STRESS_CASES):
            failure = check_act(act, hostile_act(good, rng))
            name = failure.name if failure else "accepted"
            failures[name] = failures.get(name, 0) + 1
        print(f"\nact {act}: {STRESS_CASES} cases {failures}")
    sender, receiver = _states_at(0)
    for i in range(STRESS_CASES):
        msg = rng.randbytes(i % 50)
        good = sender.encrypt_message(msg)
        check_packet(receiver, good, mutate(good, rng, keep=0), msg)
    print(f"decrypt_message: {STRESS_CASES} mutated packets")
    socket_cases = STRESS_CASES // 20
    for mode in READER_MODES:
        for _ in range(socket_cases):
            sender, receiver = _state_pair()
            good = _packets(sender)
            check_stream(mutate(good, rng, keep=0), good, receiver, mode)
        print(f"reader {mode}: {socket_cases} mutated streams")
    for mode in DRIVER_MODES:
        for _ in range(socket_cases // 10):
            act = rng.choice(list(ACTS))
            m = hostile_act(ACTS[act][1], rng)
            assert run_driver(act, m, mode) is driver_outcome(act, m)
        print(f"driver {mode}: {socket_cases // 10} hostile acts")
    print(f"transport stress: {time.perf_counter() - start:.0f}s")
