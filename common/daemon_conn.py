"""Framed messages, with file descriptors, between our own processes.

A frame is a big-endian u32 length then the message (u16 type + fields).
File descriptors travel with SCM_RIGHTS attached to the first byte of the
frame they belong to, sent with `socket.send_fds`. The reader takes each
frame exactly (the 4-byte header, then exactly the body) with
`socket.recv_fds`, never reading ahead: a descriptor is delivered by the
kernel with the first read that touches its byte, so a reader that never
crosses a frame boundary always knows which frame the descriptors came with,
and never swallows a later frame's descriptors with a plain recv().
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

# Our own daemons exchange transactions, PSBTs and per-peer state: generous,
# but bounded so that a confused peer process cannot make us allocate at will.
MAX_FRAME_LEN = 16 * 1024 * 1024
MAX_FDS_PER_FRAME = 8
_HEADER = struct.Struct(">I")


class DaemonConnError(ConnectionError):
    """The other process closed the socket, or broke the framing."""


class DaemonConnClosed(DaemonConnError):
    """Clean end of stream at a frame boundary: the other side went away."""


def _connection_error(exc: ConnectionError) -> DaemonConnError:
    """A send refused, or a read reset, because the other side closed its end (or died with
    our data unread) is its going away, as EOF is (a subdaemon whose master has gone exits
    quietly); other errors are not."""
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return DaemonConnClosed(f"connection closed: {exc.strerror}")
    return DaemonConnError(f"connection lost: {exc.strerror}")


def encode_frame(msg: bytes) -> bytes:
    if len(msg) > MAX_FRAME_LEN:
        raise DaemonConnError(f"message of {len(msg)} bytes exceeds {MAX_FRAME_LEN}")
    return _HEADER.pack(len(msg)) + msg


def _check_length(length: int) -> int:
    if length > MAX_FRAME_LEN:
        raise DaemonConnError(f"frame length {length} exceeds {MAX_FRAME_LEN}")
    return length


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _recv_some(sock: socket.socket, want: int, fds: list[int]) -> bytes:
    """Up to `want` bytes, adding any descriptors that came with them to `fds`."""
    try:
        data, got, flags, _ = socket.recv_fds(sock, want, MAX_FDS_PER_FRAME)
    except ConnectionError as exc:  # reset: the other process died with our data unread
        _close_all(fds)
        raise _connection_error(exc) from None
    fds.extend(got)
    if flags & socket.MSG_CTRUNC:
        _close_all(fds)
        raise DaemonConnError("too many file descriptors in one frame")
    return data


def _closed_error(have: int, want: int, at_boundary: bool, fds: list[int]) -> DaemonConnError:
    _close_all(fds)
    if at_boundary and not have:
        return DaemonConnClosed("connection closed")
    return DaemonConnError(f"connection closed after {have} of {want} bytes")


class DaemonConn:
    """Blocking framed connection, as a subdaemon uses with its master or hsmd."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def from_fd(cls, fd: int) -> DaemonConn:
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        frame = encode_frame(msg)
        if len(fds) > MAX_FDS_PER_FRAME:
            raise DaemonConnError(f"{len(fds)} fds exceed {MAX_FDS_PER_FRAME} per frame")
        try:
            if fds:
                sent = socket.send_fds(self.sock, [frame], list(fds))
                frame = frame[sent:]
            if frame:
                self.sock.sendall(frame)
        except ConnectionError as exc:
            raise _connection_error(exc) from None

    def _recv_exact(self, n: int, fds: list[int], at_boundary: bool) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = _recv_some(self.sock, n - len(buf), fds)
            if not data:
                raise _closed_error(len(buf), n, at_boundary, fds)
            buf += data
        return bytes(buf)

    def recv_with_fds(self) -> tuple[bytes, list[int]]:
        """The next message and the descriptors that came with it (caller owns them)."""
        fds: list[int] = []
        (length,) = _HEADER.unpack(self._recv_exact(4, fds, at_boundary=True))
        body = self._recv_exact(_check_length(length), fds, at_boundary=False)
        return body, fds

    def recv(self) -> bytes:
        """The next message; a message that unexpectedly carries fds is an error."""
        msg, fds = self.recv_with_fds()
        if fds:
            _close_all(fds)
            raise DaemonConnError("unexpected file descriptors with message")
        return msg

    def close(self) -> None:
        self.sock.close()


class AsyncDaemonConn:
    """The master's side: the same framing on a non-blocking socket in asyncio.

    asyncio's streams buffer ahead and drop ancillary data, so this reads with
    recv_fds when the loop says the socket is readable, frame-exact as above.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    async def _wait(self, add: str, remove: str) -> None:
        fut = self._loop.create_future()
        fd = self.sock.fileno()
        getattr(self._loop, add)(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            getattr(self._loop, remove)(fd)

    async def _recv_exact(self, n: int, fds: list[int], at_boundary: bool) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                data = _recv_some(self.sock, n - len(buf), fds)
            except BlockingIOError:
                await self._wait("add_reader", "remove_reader")
                continue
            if not data:
                raise _closed_error(len(buf), n, at_boundary, fds)
            buf += data
        return bytes(buf)

    async def recv_with_fds(self) -> tuple[bytes, list[int]]:
        async with self._recv_lock:
            fds: list[int] = []
            (length,) = _HEADER.unpack(await self._recv_exact(4, fds, at_boundary=True))
            body = await self._recv_exact(_check_length(length), fds, at_boundary=False)
            return body, fds

    async def recv(self) -> bytes:
        msg, fds = await self.recv_with_fds()
        if fds:
            _close_all(fds)
            raise DaemonConnError("unexpected file descriptors with message")
        return msg

    async def _send_all(self, data: bytes, fds: list[int]) -> None:
        view = memoryview(data)
        while view:
            try:
                if fds:
                    sent = socket.send_fds(self.sock, [view], fds)
                    fds = []
                else:
                    sent = self.sock.send(view)
            except BlockingIOError:
                await self._wait("add_writer", "remove_writer")
                continue
            except ConnectionError as exc:
                raise _connection_error(exc) from None
            view = view[sent:]

    async def send(self, msg: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        if len(fds) > MAX_FDS_PER_FRAME:
            raise DaemonConnError(f"{len(fds)} fds exceed {MAX_FDS_PER_FRAME} per frame")
        frame = encode_frame(msg)
        async with self._send_lock:
            await self._send_all(frame, list(fds))

    def close(self) -> None:
        self.sock.close()
