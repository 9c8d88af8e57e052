"""BOLT #8 transport over real sockets: blocking and asyncio, handover, pyln-proto interop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyln.proto import wire as pyln_wire

from common.cryptomsg import (
    HEADER_LEN,
    MAX_MSG_LEN,
    STATE_LEN,
    CryptoState,
    DecryptError,
    MessageTooLong,
)
from common.handshake import (
    HandshakeError,
    HandshakeFailure,
    HandshakeTimeout,
    privkey_ecdh,
)
from common.peer_io import (
    AsyncPeerConnection,
    ConnectionClosed,
    HandoverError,
    PeerConnection,
    async_handshake_initiator,
    async_handshake_initiator_sock,
    async_handshake_responder,
    async_handshake_responder_sock,
    handshake_initiator,
    handshake_responder,
)

T = TypeVar("T")

# Guard against hangs: every blocking socket in these tests gives up after this.
IO_TIMEOUT = 10.0
# Enough messages to cross two key rotations (one every 500 messages).
MANY = 1100

INITIATOR_PRIV = bytes([0x11] * 32)
RESPONDER_PRIV = bytes([0x21] * 32)


def _pub(priv: bytes) -> bytes:
    return coincurve.PrivateKey(priv).public_key.format()


INITIATOR_PUB = _pub(INITIATOR_PRIV)
RESPONDER_PUB = _pub(RESPONDER_PRIV)


def _msg(i: int) -> bytes:
    """Varied sizes, including empty and the maximum."""
    size = (0, 1, 100, 1000, MAX_MSG_LEN)[i % 5] if i % 97 else MAX_MSG_LEN
    return i.to_bytes(4, "big")[:size] + bytes(max(0, size - 4))


def _in_thread(fn: Callable[[], T]) -> Callable[[], T]:
    """Start fn in a thread; return a function joining it and returning its result."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return lambda: future.result(timeout=IO_TIMEOUT * 3)


@contextmanager
def _socketpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(IO_TIMEOUT)
    b.settimeout(IO_TIMEOUT)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@contextmanager
def _tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=IO_TIMEOUT)
        accepted, _ = server.accept()
    accepted.settimeout(IO_TIMEOUT)
    try:
        yield client, accepted
    finally:
        client.close()
        accepted.close()


def _blocking_handshake(
    init_sock: socket.socket, resp_sock: socket.socket
) -> tuple[PeerConnection, PeerConnection]:
    responder = _in_thread(
        lambda: handshake_responder(resp_sock, RESPONDER_PUB, privkey_ecdh(RESPONDER_PRIV))
    )
    ini = handshake_initiator(init_sock, INITIATOR_PUB, privkey_ecdh(INITIATOR_PRIV), RESPONDER_PUB)
    return ini, responder()


def _exchange(a: PeerConnection, b: PeerConnection, count: int, start: int = 0) -> None:
    """a -> b and b -> a, `count` messages each way, concurrently (no deadlock on big ones)."""

    def send_all(conn: PeerConnection, offset: int) -> None:
        for i in range(start, start + count):
            conn.write_message(_msg(i + offset))

    done_a = _in_thread(lambda: send_all(a, 0))
    done_b = _in_thread(lambda: send_all(b, 7))
    for i in range(start, start + count):
        assert b.read_message() == _msg(i)
        assert a.read_message() == _msg(i + 7)
    done_a()
    done_b()


# -- CryptoState ----------------------------------------------------------------


def _state_pair() -> tuple[CryptoState, CryptoState]:
    keys = [os.urandom(32) for _ in range(3)]
    a = CryptoState(sk=keys[0], rk=keys[1], sn=0, rn=0, sck=keys[2], rck=keys[2])
    b = CryptoState(sk=keys[1], rk=keys[0], sn=0, rn=0, sck=keys[2], rck=keys[2])
    return a, b


def test_state_roundtrip_and_validation() -> None:
    a, _ = _state_pair()
    for _ in range(3):
        a.encrypt_message(b"x")
    data = a.to_bytes()
    assert len(data) == STATE_LEN == 145
    assert CryptoState.from_bytes(data) == a
    with pytest.raises(ValueError, match="bytes"):
        CryptoState.from_bytes(data[:-1])
    with pytest.raises(ValueError, match="version"):
        CryptoState.from_bytes(b"\x02" + data[1:])
    with pytest.raises(ValueError, match="middle"):
        CryptoState.from_bytes(data[:-1] + b"\x01")  # rn odd
    with pytest.raises(ValueError):
        CryptoState.from_bytes(data[:-2] + (1000).to_bytes(2, "big"))  # rn past rotation
    with pytest.raises(ValueError):
        CryptoState(sk=b"short", rk=a.rk, sn=0, rn=0, sck=a.sck, rck=a.rck)
    assert "sk=" not in repr(a)  # keys stay out of logs


def test_state_refuses_mid_message() -> None:
    a, b = _state_pair()
    packet = a.encrypt_message(b"hello")
    b.decrypt_header(packet[:HEADER_LEN])
    with pytest.raises(ValueError, match="middle"):
        b.to_bytes()
    assert b.decrypt_body(packet[HEADER_LEN:]) == b"hello"
    assert CryptoState.from_bytes(b.to_bytes()) == b


def test_max_message_length() -> None:
    a, b = _state_pair()
    assert b.decrypt_message(a.encrypt_message(bytes(MAX_MSG_LEN))) == bytes(MAX_MSG_LEN)
    with pytest.raises(MessageTooLong):
        a.encrypt_message(bytes(MAX_MSG_LEN + 1))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40), st.integers(0, 499))
def test_roundtrip_any_messages(msgs: list[bytes], skip: int) -> None:
    a, b = _state_pair()
    for _ in range(skip):  # start anywhere relative to a rotation
        b.decrypt_message(a.encrypt_message(b""))
    for m in msgs:
        packet = a.encrypt_message(m)
        assert len(packet) == 18 + len(m) + 16
        assert b.decrypt_message(packet) == m


def test_tampered_packet() -> None:
    a, b = _state_pair()
    packet = bytearray(a.encrypt_message(b"hello"))
    packet[HEADER_LEN] ^= 0x80
    with pytest.raises(DecryptError):
        b.decrypt_message(bytes(packet))


# -- blocking -------------------------------------------------------------------


@pytest.mark.parametrize("pair", [_socketpair, _tcp_pair], ids=["socketpair", "tcp"])
def test_blocking_handshake_and_rotation(pair) -> None:
    with pair() as (s1, s2):
        ini, resp = _blocking_handshake(s1, s2)
        assert ini.remote_pubkey == RESPONDER_PUB
        assert resp.remote_pubkey == INITIATOR_PUB
        assert ini.state.sk == resp.state.rk and ini.state.rk == resp.state.sk
        _exchange(ini, resp, MANY)
        assert ini.fileno() == s1.fileno()
    # Other direction: the accepting end of the TCP connection initiates.
    with pair() as (s1, s2):
        ini, resp = _blocking_handshake(s2, s1)
        assert resp.remote_pubkey == INITIATOR_PUB
        _exchange(ini, resp, 10)


def test_wrong_node_id() -> None:
    """An initiator with the wrong node id fails the responder's act-one MAC check."""
    with _socketpair() as (s1, s2):
        wrong = _pub(bytes([0x33] * 32))

        def responder() -> HandshakeError:
            with pytest.raises(HandshakeError) as e:
                handshake_responder(s2, RESPONDER_PUB, privkey_ecdh(RESPONDER_PRIV))
            s2.close()  # BOLT #8: "terminate the connection without any further messages"
            return e.value

        join = _in_thread(responder)
        with pytest.raises(HandshakeError) as e:
            handshake_initiator(s1, INITIATOR_PUB, privkey_ecdh(INITIATOR_PRIV), wrong)
        assert join().failure is HandshakeFailure.ACT1_BAD_TAG
        assert e.value.failure is HandshakeFailure.ACT2_READ_FAILED


def test_blocking_handshake_timeout() -> None:
    with _socketpair() as (s1, _silent):
        with pytest.raises(HandshakeTimeout):
            handshake_initiator(
                s1, INITIATOR_PUB, privkey_ecdh(INITIATOR_PRIV), RESPONDER_PUB, timeout=0.2
            )
        assert s1.gettimeout() == IO_TIMEOUT  # restored
    with _socketpair() as (s1, _silent), pytest.raises(TimeoutError):
        handshake_responder(s1, RESPONDER_PUB, privkey_ecdh(RESPONDER_PRIV), timeout=0.2)


def _send_raw_then_close(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("cut", [0, 5, HEADER_LEN, HEADER_LEN + 3])
def test_blocking_peer_closes(cut: int) -> None:
    """EOF on a boundary, mid-header, right after the header, mid-body: error, no hang."""
    with _socketpair() as (s1, s2):
        ini, resp = _blocking_handshake(s1, s2)
        packet = ini.state.encrypt_message(b"hello world")
        _send_raw_then_close(s1, packet[:cut])
        with pytest.raises(ConnectionClosed) as e:
            resp.read_message()
        assert e.value.mid_message == (cut > 0)
        assert isinstance(e.value, EOFError)


def test_blocking_interrupted_read_resumes_and_blocks_detach() -> None:
    with _socketpair() as (s1, s2):
        ini, resp = _blocking_handshake(s1, s2)
        packet = ini.state.encrypt_message(b"resumed")
        s1.sendall(packet[: HEADER_LEN + 2])
        s2.settimeout(0.1)
        with pytest.raises(TimeoutError):
            resp.read_message()
        with pytest.raises(HandoverError):
            resp.detach()
        s1.sendall(packet[HEADER_LEN + 2 :])
        assert resp.read_message() == b"resumed"


def _reopen(conn: PeerConnection) -> PeerConnection:
    """Hand a connection over the way lightningd does: fd + serialised state."""
    fd, state = conn.detach()
    blob = state.to_bytes()
    return PeerConnection.from_fd(fd, CryptoState.from_bytes(blob), conn.remote_pubkey)


def test_blocking_handover_mid_stream() -> None:
    with _socketpair() as (s1, s2):
        ini, resp = _blocking_handshake(s1, s2)
        _exchange(ini, resp, MANY)
        # Queue messages in the kernel before the handover: none may be lost.
        ini.write_message(b"in flight")
        ini2, resp2 = _reopen(ini), _reopen(resp)
        assert resp2.state.sk != resp2.state.sck  # rotated at least once
        assert resp2.read_message() == b"in flight"
        _exchange(ini2, resp2, 600, start=MANY)
        ini2.close()
        resp2.close()


# -- asyncio ----------------------------------------------------------------------


async def _async_ecdh_of(priv: bytes) -> Callable[[bytes], object]:
    ecdh = privkey_ecdh(priv)

    async def hsm_ecdh(point: bytes) -> bytes:
        await asyncio.sleep(0)  # as if asking hsmd
        return ecdh(point)

    return hsm_ecdh


async def _async_exchange(a: AsyncPeerConnection, b: AsyncPeerConnection, count: int) -> None:
    async def send_all(conn: AsyncPeerConnection, offset: int) -> None:
        for i in range(count):
            await conn.write_message(_msg(i + offset))

    async def recv_all(conn: AsyncPeerConnection, offset: int) -> None:
        for i in range(count):
            assert await conn.read_message() == _msg(i + offset)

    await asyncio.gather(send_all(a, 0), send_all(b, 3), recv_all(b, 0), recv_all(a, 3))


async def _streams(sock: socket.socket):
    return await asyncio.open_connection(sock=sock, limit=2**20)


async def _async_pair(s1: socket.socket, s2: socket.socket, mode: str):
    ini_ecdh = await _async_ecdh_of(INITIATOR_PRIV)
    resp_ecdh = privkey_ecdh(RESPONDER_PRIV)  # a sync ecdh works too
    if mode == "streams":
        r1, w1 = await _streams(s1)
        r2, w2 = await _streams(s2)
        return await asyncio.gather(
            async_handshake_initiator(r1, w1, INITIATOR_PUB, ini_ecdh, RESPONDER_PUB),
            async_handshake_responder(r2, w2, RESPONDER_PUB, resp_ecdh),
        )
    return await asyncio.gather(
        async_handshake_initiator_sock(s1, INITIATOR_PUB, ini_ecdh, RESPONDER_PUB),
        async_handshake_responder_sock(s2, RESPONDER_PUB, resp_ecdh),
    )


@pytest.mark.parametrize("mode", ["streams", "sock"])
@pytest.mark.parametrize("pair", [_socketpair, _tcp_pair], ids=["socketpair", "tcp"])
def test_async_handshake_and_rotation(pair, mode: str) -> None:
    async def main() -> None:
        with pair() as (s1, s2):
            ini, resp = await _async_pair(s1, s2, mode)
            assert resp.remote_pubkey == INITIATOR_PUB
            assert ini.remote_pubkey == RESPONDER_PUB
            await _async_exchange(ini, resp, MANY)
            ini.close()
            resp.close()

    asyncio.run(asyncio.wait_for(main(), IO_TIMEOUT * 3))


def test_async_tcp_server() -> None:
    """lightningd's shape: asyncio.start_server accepting, open_connection dialling."""

    async def main() -> None:
        accepted: asyncio.Future[AsyncPeerConnection] = asyncio.get_running_loop().create_future()

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ecdh = await _async_ecdh_of(RESPONDER_PRIV)
            accepted.set_result(await async_handshake_responder(r, w, RESPONDER_PUB, ecdh))

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        async with server:
            r, w = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            ecdh = privkey_ecdh(INITIATOR_PRIV)
            ini = await async_handshake_initiator(r, w, INITIATOR_PUB, ecdh, RESPONDER_PUB)
            resp = await accepted
            await _async_exchange(resp, ini, MANY)
            ini.close()
            resp.close()

    asyncio.run(asyncio.wait_for(main(), IO_TIMEOUT * 3))


def test_async_initiator_blocking_responder() -> None:
    async def main() -> None:
        with _tcp_pair() as (s1, s2):
            join = _in_thread(
                lambda: handshake_responder(s2, RESPONDER_PUB, privkey_ecdh(RESPONDER_PRIV))
            )
            r, w = await _streams(s1)
            ini = await async_handshake_initiator(
                r, w, INITIATOR_PUB, privkey_ecdh(INITIATOR_PRIV), RESPONDER_PUB
            )
            resp = await asyncio.to_thread(join)
            echo = _in_thread(lambda: [resp.write_message(resp.read_message()) for _ in range(50)])
            for i in range(50):
                await ini.write_message(_msg(i))
                assert await ini.read_message() == _msg(i)
            echo()
            ini.close()

    asyncio.run(asyncio.wait_for(main(), IO_TIMEOUT * 3))


@pytest.mark.parametrize("mode", ["streams", "sock"])
def test_async_handshake_timeout(mode: str) -> None:
    async def main() -> None:
        with _socketpair() as (s1, _silent):
            ecdh = privkey_ecdh(RESPONDER_PRIV)
            if mode == "streams":
                r, w = await _streams(s1)
                with pytest.raises(HandshakeTimeout):
                    await async_handshake_responder(r, w, RESPONDER_PUB, ecdh, timeout=0.2)
                w.close()
            else:
                with pytest.raises(HandshakeTimeout):
                    await async_handshake_responder_sock(s1, RESPONDER_PUB, ecdh, timeout=0.2)

    asyncio.run(asyncio.wait_for(main(), IO_TIMEOUT))


@pytest.mark.parametrize("mode", ["streams", "sock"])
@pytest.mark.parametrize("cut", [0, 5, HEADER_LEN + 3])
def test_async_peer_closes(mode: str, cut: int) -> None:
    async def main() -> None:
        with _socketpair() as (s1, s2):
            ini, resp = _blocking_handshake(s1, s2)
            packet = ini.state.encrypt_message(b"hello world")
            _send_raw_then_close(s1, packet[:cut])
            if mode == "streams":
                conn = AsyncPeerConnection.from_streams(*await _streams(s2), resp.state)
            else:
                conn = AsyncPeerConnection.from_socket(s2, resp.state)
            with pytest.raises(ConnectionClosed) as e:
                await conn.read_message()
            assert e.value.mid_message == (cut > 0)
            conn.close()

    asyncio.run(asyncio.wait_for(main(), IO_TIMEOUT))


@pytest.mark.parametrize("mode", ["streams", "sock"])
def test_async_read_is_cancel_safe(mode: str) -> None:
    async def main() -> None:
        with _socketpair() as (s1, s2):
            ini, resp = _blocking_handshake(s1, s2)
            if mode == "streams":
                conn = AsyncPeerConnection.from_streams(*await _streams(s2), resp.state)
            else:
                conn = AsyncPeerConnection.from_socket(s2, resp.state)
            packet = ini.state.encrypt_message(b"patience")
            s1.sendall(packet[: HEADER_LEN + 3])
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.read_message(), 0.1)
            with pytest.raises(HandoverError):
                await conn.detach()
            s1.sendall(packet[HEADER_LEN + 3 :])
            assert await conn.read_message() == b"patience"
            conn.close()

    asyncio.run(asyncio.wait_for(main(), IO_TIMEOUT))


@pytest.mark.parametrize("mode", ["streams", "sock"])
def test_async_handover_to_blocking(mode: str) -> None:
    """lightningd (asyncio) hands a live connection to a subdaemon (blocking) mid-stream.

    The peer has pipelined messages the master never read: with streams they may
    sit in the StreamReader and must travel as `pending`; with raw sockets the
    master never reads them at all.
    """

    async def main() -> None:
        with _socketpair() as (s1, s2):
            peer_join = _in_thread(
                lambda: handshake_initiator(
                    s1, INITIATOR_PUB, privkey_ecdh(INITIATOR_PRIV), RESPONDER_PUB
                )
            )
            ecdh = privkey_ecdh(RESPONDER_PRIV)
            if mode == "streams":
                master = await async_handshake_responder(*await _streams(s2), RESPONDER_PUB, ecdh)
            else:
                master = await async_handshake_responder_sock(s2, RESPONDER_PUB, ecdh)
            peer = await asyncio.to_thread(peer_join)
            # Cross a rotation first, then pipeline 20 more messages.
            for i in range(MANY):
                peer.write_message(_msg(i % 4))
                assert await master.read_message() == _msg(i % 4)
            for i in range(20):
                peer.write_message(b"queued %d" % i)
            assert await master.read_message() == b"queued 0"
            await asyncio.sleep(0.05)  # let the StreamReader read ahead
            await master.write_message(b"from master")
            fd, state, pending = await master.detach()
            # The StreamReader read ahead into the 19 packets the master never
            # decrypted; the raw-socket master read none of them.
            unread = sum(18 + len(b"queued %d" % i) + 16 for i in range(1, 20))
            if mode == "sock":
                assert pending == b""
            else:
                assert 0 < len(pending) <= unread
            blob = state.to_bytes()

            def subdaemon() -> None:
                conn = PeerConnection.from_fd(fd, CryptoState.from_bytes(blob), pending=pending)
                for i in range(1, 20):
                    assert conn.read_message() == b"queued %d" % i
                conn.write_message(b"from subdaemon")
                conn.close()

            await asyncio.to_thread(subdaemon)
            assert peer.read_message() == b"from master"
            assert peer.read_message() == b"from subdaemon"
            with pytest.raises(ConnectionClosed):
                peer.read_message()

    asyncio.run(asyncio.wait_for(main(), IO_TIMEOUT * 3))


# -- interop with pyln-proto ------------------------------------------------------


def _pyln_exchange_with(ours: PeerConnection, theirs: pyln_wire.LightningConnection) -> None:
    """Ping-pong across rotations; pyln reads with recv(18) so keep messages small."""
    # pyln sends header and body with two send() calls: without NODELAY, Nagle
    # plus delayed ACKs cost 40ms per round trip.
    theirs.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(MANY):
        msg = os.urandom(i % 300)
        ours.write_message(msg)
        assert theirs.read_message() == msg
        theirs.send_message(msg[::-1])
        assert ours.read_message() == msg[::-1]


def test_interop_our_initiator_pyln_responder() -> None:
    server = pyln_wire.LightningServerSocket(pyln_wire.PrivateKey(RESPONDER_PRIV))
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(IO_TIMEOUT)
    join = _in_thread(lambda: server.accept()[0])
    try:
        with socket.create_connection(server.getsockname(), timeout=IO_TIMEOUT) as sock:
            ours = handshake_initiator(
                sock, INITIATOR_PUB, privkey_ecdh(INITIATOR_PRIV), RESPONDER_PUB
            )
            theirs = join()
            assert theirs.remote_pubkey.serializeCompressed() == INITIATOR_PUB
            _pyln_exchange_with(ours, theirs)
            theirs.connection.close()
    finally:
        server.close()


def test_interop_pyln_initiator_our_responder() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(IO_TIMEOUT)
        host, port = server.getsockname()
        join = _in_thread(
            lambda: pyln_wire.connect(
                pyln_wire.PrivateKey(INITIATOR_PRIV), RESPONDER_PUB, host, port
            )
        )
        sock, _ = server.accept()
        sock.settimeout(IO_TIMEOUT)
        with sock:
            ours = handshake_responder(sock, RESPONDER_PUB, privkey_ecdh(RESPONDER_PRIV))
            theirs = join()
            assert ours.remote_pubkey == INITIATOR_PUB
            _pyln_exchange_with(ours, theirs)
            # Continue after a handover: pyln keeps talking to the restored state.
            ours = _reopen(ours)
            _pyln_exchange_with(ours, theirs)
            theirs.connection.close()
            ours.close()
