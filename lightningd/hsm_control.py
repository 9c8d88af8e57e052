"""lightningd's half of hsmd: start it, initialise it, and ask it things.

lightningd never sees a private key. It gets the node id and the wallet's
account xpub from hsmd_init, asks hsmd for ECDH during BOLT #8 handshakes,
for wallet signatures, and for a fresh, capability-limited client socket
for each subdaemon it starts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from common.daemon_conn import DaemonConnError
from hsmd import hsmd_wiregen as wire
from hsmd.capabilities import Capability
from lightningd.log import NodeLog
from lightningd.subd import Subd
from wire.fundamental import Message, WireError

T = TypeVar("T", bound=Message)


class HsmError(Exception):
    """hsmd refused a request, died, or answered nonsense."""


@dataclass(frozen=True)
class HsmInfo:
    node_id: bytes
    bip32_account_xpub: str


class HsmControl:
    """The master's connection to hsmd: one request in flight at a time."""

    def __init__(
        self, log: NodeLog, on_death: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        self.log = log
        self.on_death = on_death
        self.subd: Subd | None = None
        self.info: HsmInfo | None = None
        self._lock = asyncio.Lock()
        self._replies: asyncio.Queue[tuple[bytes, list[int]] | Exception] = asyncio.Queue()
        self._stopping = False

    @property
    def pid(self) -> int:
        return self.subd.pid if self.subd else 0

    @property
    def exit_status(self) -> int | None:
        return self.subd.exit_code if self.subd else None

    async def start(
        self, hsm_secret_path: str, chain_hash: bytes, hsmd_args: list[str] | None = None
    ) -> HsmInfo:
        self.subd = await Subd.start(
            "hsmd", "hsmd.hsmd", {}, hsmd_args or [], self.log, None, self._reply, self._died
        )
        reply = await self.request(
            wire.HsmdInit(hsm_secret_path=hsm_secret_path, chain_hash=chain_hash),
            wire.HsmdInitReply,
        )
        self.info = HsmInfo(reply.node_id, reply.bip32_account_xpub)
        return self.info

    async def _reply(self, msg: bytes, fds: list[int]) -> None:
        await self._replies.put((msg, fds))

    async def _died(self, subd: Subd) -> None:
        if subd.fail_desc:
            reason = f"hsmd failed: {subd.fail_desc}"
        else:
            reason = f"hsmd died (exit {subd.exit_code})"
        await self._replies.put(HsmError(reason))
        if self.on_death is not None and not self._stopping:
            await self.on_death(reason)

    async def _exchange(self, raw: bytes) -> tuple[bytes, list[int]]:
        """Send one request and take its reply, under the lock: replies come in order."""
        assert self.subd is not None
        async with self._lock:
            try:
                await self.subd.send(raw)
            except DaemonConnError as exc:
                raise HsmError(f"hsmd is gone: {exc}") from None
            got = await self._replies.get()
            if isinstance(got, Exception):
                self._replies.put_nowait(got)  # every later request fails the same way
                raise got
            return got

    async def request_with_fds(self, msg: Message, reply_type: type[T]) -> tuple[T, list[int]]:
        if self.subd is None:
            raise HsmError("hsmd is not running")
        # Shielded: a caller cancelled mid-request (a failed open cancels its funding
        # signature) must not leave its reply in the queue for the next request to take.
        exchange = asyncio.ensure_future(self._exchange(msg.encode()))
        try:
            raw, fds = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            exchange.add_done_callback(_drop_reply)
            raise
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

    async def sign_channel_announcement(
        self, announcement: bytes, peer_id: bytes, dbid: int
    ) -> tuple[bytes, bytes]:
        """Our node_signature and bitcoin_signature on a channel_announcement."""
        reply = await self.request(
            wire.HsmdCannouncementSigReq(ca=announcement, peerid=peer_id, dbid=dbid),
            wire.HsmdCannouncementSigReply,
        )
        return reply.node_signature, reply.bitcoin_signature

    async def sign_channel_update(self, update: bytes) -> bytes:
        """The channel_update, signed."""
        reply = await self.request(wire.HsmdCupdateSigReq(cu=update), wire.HsmdCupdateSigReply)
        return reply.cu

    async def sign_node_announcement(self, announcement: bytes) -> bytes:
        """The node_announcement's signature."""
        reply = await self.request(
            wire.HsmdNodeAnnouncementSigReq(announcement=announcement),
            wire.HsmdNodeAnnouncementSigReply,
        )
        return reply.signature

    async def stop(self) -> None:
        """Close hsmd's socket; it exits when it sees the master has gone."""
        if self.subd is not None:
            self._stopping = True
            await self.subd.stop()


def _drop_reply(exchange: asyncio.Future[tuple[bytes, list[int]]]) -> None:
    """The reply to a request whose caller went away: its descriptors are nobody's."""
    if not exchange.cancelled() and exchange.exception() is None:
        for fd in exchange.result()[1]:
            os.close(fd)
