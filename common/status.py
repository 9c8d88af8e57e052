"""Status and log messages from a subdaemon to its master.

A subdaemon has no log file of its own: it sends each line to lightningd over
its request socket (status_log), and lightningd writes it into the node log,
tagged with the daemon and the peer. A fatal error is reported once
(status_fail) and ends the process with exit code 0x80 | reason, so the
master can tell a deliberate failure from a crash.
"""

from __future__ import annotations

import asyncio
import enum
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from common import status_wiregen as wire
from common.daemon_conn import AsyncDaemonConn, DaemonConnError


class LogLevel(enum.IntEnum):
    """Core Lightning's levels, in the order --log-level compares them."""

    IO = 0
    TRACE = 1
    DEBUG = 2
    INFO = 3
    UNUSUAL = 4
    BROKEN = 5

    @classmethod
    def parse(cls, name: str) -> LogLevel:
        try:
            return cls[name.upper()]
        except KeyError:
            names = ", ".join(level.name.lower() for level in cls)
            raise ValueError(f"unknown log level '{name}' (one of {names})") from None


class FailReason(enum.IntEnum):
    """Why a subdaemon gave up; its exit code is 0x80 | reason."""

    MASTER_IO = 1
    HSM_IO = 2
    GOSSIP_IO = 3
    INTERNAL_ERROR = 4
    # A file or setting only the operator can fix (e.g. an unreadable hsm_secret).
    FATAL_CONFIG = 5


class FatalError(Exception):
    """Raised anywhere in a subdaemon to end it with status_fail(reason, desc).

    An asyncio daemon cannot report synchronously from inside its loop, so it
    raises this; common.subdaemon.run reports it once the loop has stopped.
    """

    def __init__(self, reason: FailReason, desc: str) -> None:
        super().__init__(desc)
        self.reason = reason
        self.desc = desc


def exit_code(reason: FailReason) -> int:
    return 0x80 | reason


def reason_from_exit_code(code: int) -> FailReason | None:
    """The FailReason a subdaemon's exit code reports, or None for other exits."""
    if code & 0x80 and (code & 0x7F) in FailReason._value2member_map_:
        return FailReason(code & 0x7F)
    return None


class Status:
    """The one channel a subdaemon's logging goes through.

    `send` writes one message to the master: a blocking DaemonConn's send, or
    for an asyncio daemon a function that queues the write on its loop.
    """

    def __init__(self, send: Callable[[bytes], None], peer_id: bytes | None = None) -> None:
        self.send = send
        self.peer_id = peer_id

    def log(self, level: LogLevel, entry: str) -> None:
        msg = wire.StatusLog(level=int(level), peer=self.peer_id, entry=entry)
        try:
            self.send(msg.encode())
        except (DaemonConnError, OSError):
            # The master is gone; nobody is left to tell. Exit as quietly as it left.
            os._exit(exit_code(FailReason.MASTER_IO))

    def debug(self, entry: str) -> None:
        self.log(LogLevel.DEBUG, entry)

    def info(self, entry: str) -> None:
        self.log(LogLevel.INFO, entry)

    def unusual(self, entry: str) -> None:
        self.log(LogLevel.UNUSUAL, entry)

    def broken(self, entry: str) -> None:
        self.log(LogLevel.BROKEN, entry)

    def billboard(self, happenings: str, perm: bool = False) -> None:
        self.send(wire.StatusPeerBillboard(perm=perm, happenings=happenings).encode())

    def failed(self, reason: FailReason, desc: str) -> NoReturn:
        """Report a fatal error to the master, then exit with 0x80 | reason."""
        try:
            self.send(wire.StatusFail(failreason=int(reason), desc=desc).encode())
        except (DaemonConnError, OSError):
            print(f"status_failed({reason.name}): {desc}", file=sys.stderr)
        os._exit(exit_code(reason))


def async_sender(conn: AsyncDaemonConn) -> Callable[[bytes], None]:
    """A Status `send` for an asyncio daemon: each line is queued as a write on its loop.

    The pending writes are held here: asyncio keeps only weak references to tasks, and a
    log line must not vanish before it is written.
    """
    pending: set[asyncio.Task[None]] = set()

    def written(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        # A line the master did not take (it has gone) is dropped: the daemon's next read
        # of the master socket sees the EOF and exits. Retrieved, so asyncio stays quiet.
        if not task.cancelled():
            task.exception()

    def send(msg: bytes) -> None:
        task = asyncio.get_running_loop().create_task(conn.send(msg))
        pending.add(task)
        task.add_done_callback(written)

    return send
