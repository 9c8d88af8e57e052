"""lightningd's half of hsmd: start it, initialise it, and ask it things.

lightningd never sees a private key. It gets the node id and the wallet's
account xpub from hsmd_init, asks hsmd for ECDH during BOLT #8 handshakes,
for wallet signatures, and for a fresh, capability-limited client socket
for each subdaemon it starts.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from common import status_wiregen as status_wire
from common.daemon_conn import AsyncDaemonConn, DaemonConnError
from common.status import LogLevel, reason_from_exit_code
from common.subdaemon import REQ_FD
from hsmd import hsmd_wiregen as wire
from hsmd.capabilities import Capability
from lightningd.subd import spawn_subdaemon
from wire.fundamental import Message, WireError

LogFn = Callable[[LogLevel, str], None]
T = TypeVar("T", bound=Message)


class HsmError(Exception):
    """hsmd refused a request, died, or answered nonsense."""


@dataclass(frozen=True)
class HsmInfo:
    node_id: bytes
    bip32_account_xpub: str


class HsmControl:
    """The master's connection to hsmd: one request in flight at a time."""

    def __init__(self, log: LogFn) -> None:
        self.log = log
        self.conn: AsyncDaemonConn | None = None
        self.pid = 0
        self.info: HsmInfo | None = None
        self._lock = asyncio.Lock()
        self._replies: asyncio.Queue[tuple[bytes, list[int]] | Exception] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.exit_status: int | None = None
        self._fail_desc: str | None = None

    async def start(
        self, hsm_secret_path: str, chain_hash: bytes, hsmd_args: list[str] | None = None
    ) -> HsmInfo:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = spawn_subdaemon("hsmd.hsmd", {REQ_FD: theirs.fileno()}, hsmd_args)
        finally:
            theirs.close()
        self.conn = AsyncDaemonConn(ours)
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        reply = await self.request(
            wire.HsmdInit(hsm_secret_path=hsm_secret_path, chain_hash=chain_hash),
            wire.HsmdInitReply,
        )
        self.info = HsmInfo(reply.node_id, reply.bip32_account_xpub)
        return self.info

    async def _read_loop(self) -> None:
        """Route hsmd's status lines to the log and everything else to the waiter."""
        assert self.conn is not None
        try:
            while True:
                msg, fds = await self.conn.recv_with_fds()
                if self._handle_status(msg):
                    continue
                await self._replies.put((msg, fds))
        except DaemonConnError as exc:
            await self._replies.put(HsmError(await self._death_reason(exc)))

    def _handle_status(self, msg: bytes) -> bool:
        try:
            status = status_wire.decode(msg)
        except WireError:
            return False
        if isinstance(status, status_wire.StatusLog):
            self.log(LogLevel(status.level), f"hsmd: {status.entry}")
        elif isinstance(status, status_wire.StatusFail):
            self.log(LogLevel.BROKEN, f"hsmd failed: {status.desc}")
            self._fail_desc = status.desc
        return True

    async def _death_reason(self, exc: Exception) -> str:
        desc = self._fail_desc
        await self._reap()
        reason = reason_from_exit_code(self.exit_status or 0)
        if desc:
            return f"hsmd failed: {desc}"
        return f"hsmd died (exit {self.exit_status}, {reason}): {exc}"

    async def request_with_fds(self, msg: Message, reply_type: type[T]) -> tuple[T, list[int]]:
        if self.conn is None:
            raise HsmError("hsmd is not running")
        async with self._lock:
            await self.conn.send(msg.encode())
            got = await self._replies.get()
            if isinstance(got, Exception):
                self._replies.put_nowait(got)  # every later request fails the same way
                raise got
            raw, fds = got
        try:
            reply = wire.decode(raw)
        except WireError as exc:
            raise HsmError(f"bad reply from hsmd: {exc}") from None
        if isinstance(reply, wire.HsmdBadRequest):
            raise HsmError(f"hsmd refused {msg.NAME}: {reply.reason}")
        if not isinstance(reply, reply_type):
            raise HsmError(f"hsmd answered {msg.NAME} with {reply.NAME}")
        return reply, fds

    async def request(self, msg: Message, reply_type: type[T]) -> T:
        reply, fds = await self.request_with_fds(msg, reply_type)
        for fd in fds:
            os.close(fd)
        return reply

    async def client_fd(self, peer_id: bytes, dbid: int, capabilities: Capability) -> int:
        """A new hsmd socket for a subdaemon, limited to one channel and these powers."""
        _, fds = await self.request_with_fds(
            wire.HsmdClientHsmfd(id=peer_id, dbid=dbid, capabilities=int(capabilities)),
            wire.HsmdClientHsmfdReply,
        )
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise HsmError(f"hsmd sent {len(fds)} descriptors with a client socket")
        return fds[0]

    async def ecdh(self, point: bytes) -> bytes:
        reply = await self.request(wire.HsmdEcdhReq(point=point), wire.HsmdEcdhResp)
        return reply.ss

    async def stop(self) -> None:
        """Close hsmd's socket; it exits when it sees the master has gone."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        await self._reap()

    async def _reap(self) -> None:
        """Wait for hsmd's exit (it follows the closing of its socket) and keep its code."""
        if self.pid:
            _, code = await asyncio.get_running_loop().run_in_executor(
                None, os.waitpid, self.pid, 0
            )
            self.exit_status = os.waitstatus_to_exitcode(code)
            self.pid = 0
