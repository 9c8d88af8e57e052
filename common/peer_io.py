"""BOLT #8 transport over sockets: blocking API for subdaemons, asyncio API for lightningd.

Both run the I/O-free handshake sequence of common/handshake.py and the
`CryptoState` packet code of common/cryptomsg.py; only the byte moving differs.

Handing a connection to another process
---------------------------------------
lightningd does the handshake, then passes the fd (SCM_RIGHTS) and the cipher
state to a subdaemon, which must see the byte stream starting exactly at the
next undecrypted packet.  So no process may hold bytes it read but did not
decrypt, or else they must travel with the fd:

* Blocking `PeerConnection` never reads ahead: `read_message` asks the kernel
  for exactly the 18 header bytes, then exactly `len + 16` body bytes (a
  `recv(n - have)` loop, never more).  If a read is interrupted (socket
  timeout, non-blocking socket) the partial bytes stay in the connection and
  the next call resumes; `detach()` refuses while such bytes exist.
* `AsyncPeerConnection` on a raw socket (`*_sock` functions) reads the same way
  with non-blocking `recv` calls, so it never reads ahead either.
* `AsyncPeerConnection` on (StreamReader, StreamWriter) cannot avoid read-ahead:
  the StreamReader buffers whatever the kernel has (a peer commonly sends its
  `init` right behind Act Three).  `detach()` therefore pauses reading, flushes
  the writer, and returns the buffered bytes as `Handover.pending`, which the
  receiver passes to `PeerConnection.from_fd(..., pending=...)` to be consumed
  before the socket.

In every case a handover is refused between a decrypted header and its body
(the cipher state would be half-way through a message).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import threading
import time
from typing import NamedTuple

from common.cryptomsg import HEADER_LEN, MAC_LEN, CryptoState
from common.handshake import (
    AsyncEcdhFn,
    Ecdh,
    EcdhFn,
    HandshakeError,
    HandshakeResult,
    HandshakeStep,
    HandshakeTimeout,
    Recv,
    Send,
    initiator_steps,
    responder_steps,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "AsyncPeerConnection",
    "ConnectionClosed",
    "Handover",
    "HandoverError",
    "PeerConnection",
    "async_handshake_initiator",
    "async_handshake_initiator_sock",
    "async_handshake_responder",
    "async_handshake_responder_sock",
    "handshake_initiator",
    "handshake_responder",
]

DEFAULT_HANDSHAKE_TIMEOUT = 60.0


class ConnectionClosed(EOFError):
    """The peer closed the connection; `mid_message` if it did so inside a packet."""

    def __init__(self, mid_message: bool = False, detail: str = "") -> None:
        self.mid_message = mid_message
        where = " in the middle of a message" if mid_message else ""
        extra = f" ({detail})" if detail else ""
        super().__init__(f"peer closed the connection{where}{extra}")


class HandoverError(RuntimeError):
    """The connection cannot be handed over now (mid-message, or a read in progress)."""


class Handover(NamedTuple):
    """What a detached connection gives to its next owner."""

    fd: int
    state: CryptoState
    # Received, not yet decrypted bytes that precede whatever is still in the socket.
    pending: bytes


def _step(steps: HandshakeStep, reply: bytes | None) -> Send | Recv | Ecdh | HandshakeResult:
    try:
        return steps.send(reply)
    except StopIteration as done:
        return done.value


# -- blocking ------------------------------------------------------------------


def _recv_upto(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes, fewer only if the peer closes (or resets) first."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _run_blocking(
    steps: HandshakeStep, sock: socket.socket, ecdh: EcdhFn, timeout: float
) -> HandshakeResult:
    deadline = time.monotonic() + timeout
    old_timeout = sock.gettimeout()
    reply: bytes | None = None
    try:
        while not isinstance(step := _step(steps, reply), HandshakeResult):
            reply = None
            if isinstance(step, Ecdh):
                reply = ecdh(step.point)
                if inspect.isawaitable(reply):
                    if inspect.iscoroutine(reply):
                        reply.close()  # no "never awaited" warning
                    raise TypeError("blocking handshake needs a synchronous ecdh")
                continue
            # One deadline for the whole handshake, not one per read.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeTimeout(f"after {timeout}s")
            sock.settimeout(remaining)
            if isinstance(step, Send):
                sock.sendall(step.data)
            else:
                reply = _recv_upto(sock, step.size)
        return step
    except HandshakeError:
        raise
    except TimeoutError as e:
        raise HandshakeTimeout(f"after {timeout}s") from e
    finally:
        sock.settimeout(old_timeout)


def handshake_initiator(
    sock: socket.socket,
    local_pubkey: bytes,
    ecdh: EcdhFn,
    remote_pubkey: bytes,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    ephemeral: bytes | None = None,
) -> PeerConnection:
    """Run the initiator handshake on a connected socket; raises HandshakeError."""
    steps = initiator_steps(local_pubkey, remote_pubkey, ephemeral)
    result = _run_blocking(steps, sock, ecdh, timeout)
    return PeerConnection(sock, result.state, result.remote_pubkey)


def handshake_responder(
    sock: socket.socket,
    local_pubkey: bytes,
    ecdh: EcdhFn,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    ephemeral: bytes | None = None,
) -> PeerConnection:
    """Run the responder handshake; the result's `remote_pubkey` is the initiator's node id."""
    result = _run_blocking(responder_steps(local_pubkey, ephemeral), sock, ecdh, timeout)
    return PeerConnection(sock, result.state, result.remote_pubkey)


class PeerConnection:
    """Blocking encrypted connection.  One reader thread and one writer thread may share it."""

    def __init__(
        self,
        sock: socket.socket,
        state: CryptoState,
        remote_pubkey: bytes | None = None,
        pending: bytes = b"",
    ) -> None:
        self.sock = sock
        self.state = state
        self.remote_pubkey = remote_pubkey
        # Bytes received but not yet decrypted: a handed-over `pending`, or a
        # packet whose read was interrupted (timeout / EAGAIN).
        self._rbuf = bytearray(pending)
        # Set between decrypting a header and reading its body.
        self._body_len: int | None = None
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()

    @classmethod
    def from_fd(
        cls,
        fd: int,
        state: CryptoState,
        remote_pubkey: bytes | None = None,
        pending: bytes = b"",
    ) -> PeerConnection:
        """Adopt a handed-over fd (see `detach` / `AsyncPeerConnection.detach`)."""
        sock = socket.socket(fileno=fd)
        # O_NONBLOCK lives on the shared file description: the sender may have left it set.
        sock.setblocking(True)
        return cls(sock, state, remote_pubkey, pending)

    def fileno(self) -> int:
        return self.sock.fileno()

    def has_buffered(self) -> bool:
        """Bytes already received (e.g. handed over) but not yet decrypted.

        A poll loop must treat the connection as readable then, even if the socket is not.
        """
        return bool(self._rbuf)

    def _take(self, n: int) -> bytes:
        """Exactly n bytes: buffered ones first, then `recv` of only what is missing."""
        while len(self._rbuf) < n:
            try:
                chunk = self.sock.recv(n - len(self._rbuf))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                mid = bool(self._rbuf) or self._body_len is not None
                raise ConnectionClosed(mid, f"had {len(self._rbuf)} of {n} bytes")
            self._rbuf += chunk
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return out

    def read_message(self) -> bytes:
        """Read and decrypt one message; ConnectionClosed on EOF, DecryptError on a bad MAC."""
        with self._rlock:
            if self._body_len is None:
                self._body_len = self.state.decrypt_header(self._take(HEADER_LEN))
            body = self._take(self._body_len + MAC_LEN)
            self._body_len = None
            return self.state.decrypt_body(body)

    def write_message(self, msg: bytes) -> None:
        """Encrypt and send one message (at most 65535 bytes)."""
        with self._wlock:
            # If sendall fails part-way the stream is broken anyway: the peer's
            # nonce no longer matches ours.
            self.sock.sendall(self.state.encrypt_message(msg))

    def detach(self) -> tuple[int, CryptoState]:
        """Give up the fd and cipher state, on a message boundary, for another process."""
        with self._rlock, self._wlock:
            if self._body_len is not None or self._rbuf:
                raise HandoverError(f"{len(self._rbuf)} undecrypted bytes held; finish the read")
            return self.sock.detach(), self.state

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PeerConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- asyncio ---------------------------------------------------------------------


class _StreamIO:
    """Over asyncio streams.  The StreamReader reads ahead; `detach` returns what it holds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_exactly(self, n: int) -> bytes:
        # readexactly leaves the buffer untouched if cancelled, so a cancelled
        # read loses nothing.
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as e:
            return e.partial
        except ConnectionResetError:
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def detach(self) -> tuple[int, bytes]:
        transport = self.writer.transport
        transport.pause_reading()
        # With a zero high-water mark drain() returns only once the buffer is empty.
        transport.set_write_buffer_limits(high=0)
        await self.writer.drain()
        if transport.get_write_buffer_size():
            raise HandoverError("could not flush outgoing data")
        # With EOF fed, read() returns exactly the buffered bytes without touching
        # the socket (reading is paused anyway).
        self.reader.feed_eof()
        pending = await self.reader.read()
        sock = transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())
        # Closing our descriptor does not shut the connection down: the dup keeps it.
        transport.abort()
        os.set_blocking(fd, True)
        return fd, pending

    def close(self) -> None:
        self.writer.close()


class _SockIO:
    """Over a raw non-blocking socket, reading only what is asked for: no read-ahead.

    recv/send are called directly (not loop.sock_recv) so that data is in our
    buffers before any await: cancelling a read or write never loses bytes.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._rbuf = bytearray()
        self._wbuf = bytearray()

    async def _wait(self, add: str, remove: str) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        getattr(loop, add)(self.sock.fileno(), lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            getattr(loop, remove)(self.sock.fileno())

    async def read_exactly(self, n: int) -> bytes:
        while len(self._rbuf) < n:
            try:
                chunk = self.sock.recv(n - len(self._rbuf))
            except BlockingIOError:
                await self._wait("add_reader", "remove_reader")
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            self._rbuf += chunk
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return out

    async def write(self, data: bytes) -> None:
        # Queue first: if cancelled half-way, the rest goes out with the next write.
        self._wbuf += data
        await self._flush()

    async def _flush(self) -> None:
        while self._wbuf:
            try:
                sent = self.sock.send(self._wbuf)
            except BlockingIOError:
                await self._wait("add_writer", "remove_writer")
                continue
            del self._wbuf[:sent]

    async def detach(self) -> tuple[int, bytes]:
        await self._flush()
        self.sock.setblocking(True)
        pending = bytes(self._rbuf)
        self._rbuf.clear()
        return self.sock.detach(), pending

    def close(self) -> None:
        self.sock.close()


_AsyncIO = _StreamIO | _SockIO


async def _run_async(
    steps: HandshakeStep, io: _AsyncIO, ecdh: AsyncEcdhFn, timeout: float
) -> HandshakeResult:
    reply: bytes | None = None
    try:
        async with asyncio.timeout(timeout):
            while not isinstance(step := _step(steps, reply), HandshakeResult):
                reply = None
                if isinstance(step, Ecdh):
                    result = ecdh(step.point)
                    reply = await result if inspect.isawaitable(result) else result
                elif isinstance(step, Send):
                    await io.write(step.data)
                else:
                    reply = await io.read_exactly(step.size)
    except HandshakeError:
        raise
    except TimeoutError as e:
        raise HandshakeTimeout(f"after {timeout}s") from e
    return step


async def async_handshake_initiator(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    local_pubkey: bytes,
    ecdh: AsyncEcdhFn,
    remote_pubkey: bytes,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    ephemeral: bytes | None = None,
) -> AsyncPeerConnection:
    """Initiator handshake over asyncio streams; `ecdh` may be sync or async."""
    io = _StreamIO(reader, writer)
    steps = initiator_steps(local_pubkey, remote_pubkey, ephemeral)
    return AsyncPeerConnection._from_result(io, await _run_async(steps, io, ecdh, timeout))


async def async_handshake_responder(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    local_pubkey: bytes,
    ecdh: AsyncEcdhFn,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    ephemeral: bytes | None = None,
) -> AsyncPeerConnection:
    io = _StreamIO(reader, writer)
    steps = responder_steps(local_pubkey, ephemeral)
    return AsyncPeerConnection._from_result(io, await _run_async(steps, io, ecdh, timeout))


async def async_handshake_initiator_sock(
    sock: socket.socket,
    local_pubkey: bytes,
    ecdh: AsyncEcdhFn,
    remote_pubkey: bytes,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    ephemeral: bytes | None = None,
) -> AsyncPeerConnection:
    """Like async_handshake_initiator over a raw socket: never reads ahead."""
    io = _SockIO(sock)
    steps = initiator_steps(local_pubkey, remote_pubkey, ephemeral)
    return AsyncPeerConnection._from_result(io, await _run_async(steps, io, ecdh, timeout))


async def async_handshake_responder_sock(
    sock: socket.socket,
    local_pubkey: bytes,
    ecdh: AsyncEcdhFn,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    ephemeral: bytes | None = None,
) -> AsyncPeerConnection:
    io = _SockIO(sock)
    steps = responder_steps(local_pubkey, ephemeral)
    return AsyncPeerConnection._from_result(io, await _run_async(steps, io, ecdh, timeout))


class AsyncPeerConnection:
    """Encrypted connection for asyncio; build with the async_handshake_* functions."""

    def __init__(self, io: _AsyncIO, state: CryptoState, remote_pubkey: bytes | None) -> None:
        self._io = io
        self.state = state
        self.remote_pubkey = remote_pubkey
        self._body_len: int | None = None
        self._rlock = asyncio.Lock()
        self._wlock = asyncio.Lock()

    @classmethod
    def _from_result(cls, io: _AsyncIO, result: HandshakeResult) -> AsyncPeerConnection:
        return cls(io, result.state, result.remote_pubkey)

    @classmethod
    def from_streams(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: CryptoState,
        remote_pubkey: bytes | None = None,
    ) -> AsyncPeerConnection:
        return cls(_StreamIO(reader, writer), state, remote_pubkey)

    @classmethod
    def from_socket(
        cls, sock: socket.socket, state: CryptoState, remote_pubkey: bytes | None = None
    ) -> AsyncPeerConnection:
        return cls(_SockIO(sock), state, remote_pubkey)

    async def _take(self, n: int) -> bytes:
        data = await self._io.read_exactly(n)
        if len(data) < n:
            mid = bool(data) or self._body_len is not None
            raise ConnectionClosed(mid, f"had {len(data)} of {n} bytes")
        return data

    async def read_message(self) -> bytes:
        """Read and decrypt one message.  Cancel-safe: a cancelled read resumes next call."""
        async with self._rlock:
            if self._body_len is None:
                self._body_len = self.state.decrypt_header(await self._take(HEADER_LEN))
            body = await self._take(self._body_len + MAC_LEN)
            self._body_len = None
            return self.state.decrypt_body(body)

    async def write_message(self, msg: bytes) -> None:
        """Encrypt, send and drain one message."""
        async with self._wlock:
            await self._io.write(self.state.encrypt_message(msg))

    async def detach(self) -> Handover:
        """Flush writes and give up the fd, cipher state and any read-ahead bytes.

        Refused while a `read_message` is running (cancel it first) or between a
        header and its body.
        """
        if self._rlock.locked():
            raise HandoverError("a read_message is in progress; cancel it first")
        if self._body_len is not None:
            raise HandoverError("in the middle of a message")
        async with self._wlock:
            fd, pending = await self._io.detach()
        return Handover(fd, self.state, pending)

    def close(self) -> None:
        self._io.close()
