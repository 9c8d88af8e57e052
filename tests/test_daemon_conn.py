"""Framing and descriptor passing between processes over Unix sockets."""

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from common.daemon_conn import (
    MAX_FRAME_LEN,
    AsyncDaemonConn,
    DaemonConn,
    DaemonConnClosed,
    DaemonConnError,
    encode_frame,
)


def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return DaemonConn(a), DaemonConn(b)


def test_frames_and_fds_stay_together():
    a, b = pair()
    r, w = os.pipe()
    try:
        a.send(b"first")
        a.send(b"with-fd", fds=[r])
        a.send(b"third")
        assert b.recv() == b"first"
        msg, fds = b.recv_with_fds()
        assert msg == b"with-fd" and len(fds) == 1
        os.write(w, b"through the passed fd")
        assert os.read(fds[0], 100) == b"through the passed fd"
        os.close(fds[0])
        assert b.recv() == b"third"
    finally:
        os.close(r)
        os.close(w)


def test_unexpected_fds_rejected_and_closed():
    a, b = pair()
    r, w = os.pipe()
    a.send(b"x", fds=[r])
    with pytest.raises(DaemonConnError, match="unexpected file descriptors"):
        b.recv()
    os.close(r)
    os.close(w)


def test_clean_eof_and_short_read():
    a, b = pair()
    a.close()
    with pytest.raises(DaemonConnClosed):
        b.recv()
    a, b = pair()
    a.sock.sendall(encode_frame(b"hello")[:6])
    a.close()
    with pytest.raises(DaemonConnError, match="closed after 2 of 5 bytes"):
        b.recv()


def test_oversized_frame_rejected():
    a, b = pair()
    a.sock.sendall((MAX_FRAME_LEN + 1).to_bytes(4, "big"))
    with pytest.raises(DaemonConnError, match="exceeds"):
        b.recv()
    with pytest.raises(DaemonConnError):
        encode_frame(b"\0" * (MAX_FRAME_LEN + 1))


def test_async_side_interleaves_fds():
    async def main():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sync_side, async_side = DaemonConn(a), AsyncDaemonConn(b)
        r, w = os.pipe()
        big = os.urandom(3 * 1024 * 1024)
        # Write from a thread: the big frame cannot fit the socket buffer at once.
        loop = asyncio.get_running_loop()
        sending = loop.run_in_executor(
            None, lambda: (sync_side.send(big), sync_side.send(b"fd", [r]), sync_side.send(b"z"))
        )
        assert await async_side.recv() == big
        msg, fds = await async_side.recv_with_fds()
        assert msg == b"fd" and len(fds) == 1
        assert await async_side.recv() == b"z"
        await sending
        await async_side.send(b"back", fds=[fds[0]])
        back, back_fds = sync_side.recv_with_fds()
        assert back == b"back" and len(back_fds) == 1
        os.write(w, b"!")
        assert os.read(back_fds[0], 1) == b"!"
        for fd in (r, w, fds[0], back_fds[0]):
            os.close(fd)
        sync_side.close()
        with pytest.raises(DaemonConnClosed):
            await async_side.recv()

    asyncio.run(main())


def test_fd_crosses_process_boundary(tmp_path):
    """A child process receives a descriptor over its socket and uses it."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    code = textwrap.dedent(
        """
        import os, sys
        from common.daemon_conn import DaemonConn
        conn = DaemonConn.from_fd(int(sys.argv[1]))
        msg, fds = conn.recv_with_fds()
        os.write(fds[0], b"child wrote: " + msg)
        conn.send(b"done")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(child.fileno())],
        pass_fds=[child.fileno()],
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    child.close()
    r, w = os.pipe()
    conn = DaemonConn(parent)
    conn.send(b"hello", fds=[w])
    os.close(w)
    assert conn.recv() == b"done"
    assert os.read(r, 100) == b"child wrote: hello"
    assert proc.wait(timeout=10) == 0
    os.close(r)


def test_peer_death_is_a_daemon_conn_error():
    """A process that dies with our data unread resets the socket: it went away, as with
    EOF (so a subdaemon whose master was killed exits quietly, not with a traceback)."""
    a, b = pair()
    a.send(b"never read")
    b.close()
    with pytest.raises(DaemonConnClosed, match="connection closed: Connection reset"):
        a.recv()
    with pytest.raises(DaemonConnError):
        for _ in range(100):
            a.send(b"x" * 65536)


def test_send_after_other_side_closed_is_closed():
    """Writing to a socket whose other end has gone is that side going away (as EOF is for
    a read), so a subdaemon whose master left mid-send exits quietly (common/subdaemon)."""
    a, b = pair()
    b.close()
    with pytest.raises(DaemonConnClosed, match="connection closed"):
        a.send(b"to nobody")

    async def main():
        x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        conn = AsyncDaemonConn(x)
        y.close()
        with pytest.raises(DaemonConnClosed, match="connection closed"):
            await conn.send(b"to nobody")
        conn.close()

    asyncio.run(main())
