"""Starting subdaemons with their sockets at the documented descriptor numbers.

Every subdaemon lightningd runs is started here, so that one function decides
how processes are made (see common/subdaemon.py for the descriptor table).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from common import status_wiregen as status_wire
from common.daemon_conn import AsyncDaemonConn, DaemonConnError
from common.status import LogLevel, reason_from_exit_code
from common.subdaemon import REQ_FD
from lightningd.log import NodeLog
from lightningd.zygote import (
    ZygoteError,
    fork_zygote,
    start_zygote,
    stop_zygote,
    zygote_spawn,
)
from wire.fundamental import WireError

__all__ = [
    "Subd",
    "fork_zygote",
    "posix_spawn_subdaemon",
    "spawn_subdaemon",
    "start_zygote",
    "stop_zygote",
]

# Above every fixed number a subdaemon expects, so placing one never
# overwrites another that is still to be placed.
_STAGING_MIN_FD = 100


def spawn_subdaemon(module: str, fds: dict[int, int], args: list[str] | None = None) -> int:
    """Start `python -m module args` with fds[n] at descriptor n; returns the pid.

    The caller keeps ownership of the descriptors it passed; nothing else of
    the master's leaks into the child (Python opens everything close-on-exec).
    The process is forked from the zygote when it can be (lightningd/zygote.py:
    a few milliseconds instead of a fresh interpreter), else posix_spawned; it
    is this process's child either way, to be reaped with os.waitpid().
    """
    try:
        return zygote_spawn(module, fds, list(args or []))
    except ZygoteError:
        return posix_spawn_subdaemon(module, fds, args)


def posix_spawn_subdaemon(module: str, fds: dict[int, int], args: list[str] | None = None) -> int:
    """spawn_subdaemon the slow way: a fresh interpreter."""
    staged = {
        target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _STAGING_MIN_FD)
        for target, fd in fds.items()
    }
    try:
        actions = [(os.POSIX_SPAWN_DUP2, high, target) for target, high in staged.items()]
        argv = [sys.executable, "-m", module, *(args or [])]
        return os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)
    finally:
        for high in staged.values():
            os.close(high)


class Subd:
    """A running subdaemon, seen from lightningd: its socket, its log lines, its death.

    Status messages (logs, billboard, status_fail) are routed to the node log
    here; every other message goes to `on_message`. When the daemon's socket
    closes, the process is reaped and `on_death` learns how it ended, so the
    owner can clean up; lightningd itself never dies with a subdaemon.
    """

    def __init__(
        self,
        name: str,
        pid: int,
        conn: AsyncDaemonConn,
        log: NodeLog,
        node_id: bytes | None,
        on_message: Callable[[bytes, list[int]], Awaitable[None]],
        on_death: Callable[[Subd], Awaitable[None]],
    ) -> None:
        self.name = name
        self.pid = pid
        self.conn = conn
        self.log = log
        self.node_id = node_id
        self.on_message = on_message
        self.on_death = on_death
        self.exit_code: int | None = None
        self.fail_desc: str | None = None
        self.billboard: list[str] = []
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def start(
        cls,
        name: str,
        module: str,
        fds: dict[int, int],
        args: list[str],
        log: NodeLog,
        node_id: bytes | None,
        on_message: Callable[[bytes, list[int]], Awaitable[None]],
        on_death: Callable[[Subd], Awaitable[None]],
    ) -> Subd:
        """Spawn `module` with a fresh master socket at fd 0 and `fds` at theirs.

        In a worker thread: the zygote's fork and reply take milliseconds, which the
        event loop spends on everybody else (under load, 50 opens' worth a second).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = await asyncio.get_running_loop().run_in_executor(
                None, spawn_subdaemon, module, {REQ_FD: theirs.fileno(), **fds}, args
            )
        finally:
            theirs.close()
        log.debug(name, f"started, pid {pid}", node_id)
        return cls(name, pid, AsyncDaemonConn(ours), log, node_id, on_message, on_death)

    async def send(self, msg: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        await self.conn.send(msg, fds)

    def _handle_status(self, msg: bytes) -> bool:
        try:
            status = status_wire.decode(msg)
        except WireError:
            return False
        if isinstance(status, status_wire.StatusLog):
            self.log.log(
                LogLevel(min(status.level, LogLevel.BROKEN)), self.name, status.entry, self.node_id
            )
        elif isinstance(status, status_wire.StatusFail):
            self.fail_desc = status.desc
            self.log.broken(self.name, f"failed: {status.desc}", self.node_id)
        elif isinstance(status, status_wire.StatusPeerBillboard):
            self.billboard = (
                [status.happenings] if not status.perm else [*self.billboard, status.happenings]
            )
        return True

    async def _read_loop(self) -> None:
        try:
            while True:
                msg, fds = await self.conn.recv_with_fds()
                if not self._handle_status(msg):
                    await self.on_message(msg, fds)
        except DaemonConnError:
            pass
        except Exception as exc:  # a bug in our handler must not leave the daemon unreaped
            self.log.broken(self.name, f"handling its message: {exc!r}", self.node_id)
        finally:
            self.conn.close()
            await self._reap()
            await self.on_death(self)

    async def _reap(self) -> None:
        _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, self.pid, 0)
        self.exit_code = os.waitstatus_to_exitcode(status)
        reason = reason_from_exit_code(self.exit_code)
        how = f"failed ({reason.name})" if reason else f"exited with {self.exit_code}"
        level = LogLevel.DEBUG if self.exit_code == 0 else LogLevel.UNUSUAL
        self.log.log(level, self.name, f"pid {self.pid} {how}", self.node_id)

    async def stop(self) -> None:
        """Tell the subdaemon to go (it sees EOF) and wait until it is reaped.

        shutdown() rather than close(): our own pending read must see the EOF too;
        closing a descriptor under a waiting reader would leave it waiting forever.
        """
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        await self.wait()

    def kill(self) -> None:
        """Closing its socket tells a subdaemon to go; this makes sure it does."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)
