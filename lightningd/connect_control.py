"""Making connections: listening sockets, the `connect` command, handshake and init.

Every connection, in or out, goes through the same steps before it becomes a
Peer: BOLT #8 handshake (hsmd does the node-key ECDH; lightningd never holds
the key), then the BOLT #1 `init` exchange with feature checks. A failure at
any step closes the socket and, for `connect`, tells the caller which step
failed and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from typing import TYPE_CHECKING

from common.features import our_features
from common.handshake import HandshakeError
from common.peer_io import (
    AsyncPeerConnection,
    ConnectionClosed,
    async_handshake_initiator_sock,
    async_handshake_responder_sock,
)
from common.read_peer_msg import PeerProtocolError, check_init, make_init
from lightningd.jsonrpc import Param, RpcError, param_node_id_or_uri, param_string, param_u32
from lightningd.jsonrpc_errors import (
    CONNECT_ALL_ADDRESSES_FAILED,
    CONNECT_DISCONNECTED_DURING,
    CONNECT_NO_KNOWN_ADDRESS,
)
from lightningd.peer_control import NetAddress, Peer

if TYPE_CHECKING:
    from lightningd.lightningd import LightningD

SOURCE = "connectd"
CONNECT_TIMEOUT = 30.0
# Incoming connections between accept and `init` (BOLT #8 handshake, then init): each
# holds a descriptor for up to --dev-timeout-secs. At the cap, accept waits for one to
# end (the kernel's listen backlog holds later peers meanwhile), so a flood of silent
# connections cannot use up our descriptors. A handshake takes milliseconds: 256 at once
# is far above honest load.
MAX_HANDSHAKES_IN_FLIGHT = 256
# accept() failures that last while resources are short: retrying at once would spin.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A connection that went away before we took it: just take the next one.
GONE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
ACCEPT_BACKOFF = 1.0
# Each of these conditions is logged at most once a minute, however long it lasts.
LOG_INTERVAL = 60.0


class ConnectFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_host_port(text: str, default_port: int) -> NetAddress:
    """host, host:port, [v6]:port or a bare v6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in '{text}'")
    return NetAddress(host, int(port))


class RateLimitedLog:
    """An unusual log line for a recurring condition: written at most once an interval,
    saying how many times it happened unlogged since."""

    def __init__(self, ld: LightningD, interval: float = LOG_INTERVAL) -> None:
        self.ld = ld
        self.interval = interval
        self.last: float | None = None
        self.unlogged = 0

    def unusual(self, text: str) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval:
            self.unlogged += 1
            return
        self.last = now
        more = f" ({self.unlogged} more times since last logged)" if self.unlogged else ""
        self.unlogged = 0
        self.ld.log.unusual(SOURCE, text + more)


class ConnectControl:
    def __init__(self, ld: LightningD) -> None:
        self.ld = ld
        self.listeners: list[socket.socket] = []
        self.accepting: list[asyncio.Task[None]] = []
        self.bindings: list[NetAddress] = []
        # Incoming connections still in handshake or init (see MAX_HANDSHAKES_IN_FLIGHT).
        self.pending: set[asyncio.Task[None]] = set()
        self.slot_freed = asyncio.Event()
        self.full_log = RateLimitedLog(ld)
        self.accept_error_log = RateLimitedLog(ld)

    @property
    def peer_timeout(self) -> float:
        """As CLN (--dev-timeout-secs, 60 s): for the BOLT #8 handshake, then for `init`."""
        return float(self.ld.config.dev_timeout_secs)

    # -- listening -----------------------------------------------------------------
    # Raw sockets, not asyncio streams: a stream reader would buffer the peer's first
    # bytes, and the connection must be able to move to a subdaemon with nothing left
    # behind in this process.

    async def listen(self, addresses: list[NetAddress]) -> None:
        loop = asyncio.get_running_loop()
        for addr in addresses:
            family = socket.AF_INET6 if addr.kind == "ipv6" else socket.AF_INET
            try:
                lsock = socket.create_server((addr.host, addr.port), family=family, backlog=128)
            except OSError as exc:
                raise RuntimeError(f"Could not bind to {addr}: {exc.strerror}") from None
            lsock.setblocking(False)
            host, port = lsock.getsockname()[:2]
            self.bindings.append(NetAddress(host, port))
            self.listeners.append(lsock)
            self.accepting.append(loop.create_task(self._accept_loop(lsock)))
            self.ld.log.debug(SOURCE, f"Listening on {NetAddress(host, port)}")

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_slot()
            try:
                sock, peername = await loop.sock_accept(lsock)
            except OSError as exc:
                await self._accept_failed(exc)
                continue
            sock.setblocking(False)
            task = loop.create_task(self._incoming(sock, NetAddress(*peername[:2])))
            self.pending.add(task)
            task.add_done_callback(self._handshake_over)

    def _handshake_over(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        self.slot_freed.set()

    async def _wait_for_slot(self) -> None:
        """Return once fewer than MAX_HANDSHAKES_IN_FLIGHT incoming handshakes are running."""
        if len(self.pending) < MAX_HANDSHAKES_IN_FLIGHT:
            return
        self.full_log.unusual(
            f"{MAX_HANDSHAKES_IN_FLIGHT} handshakes in progress: not accepting connections"
            " until one ends"
        )
        while len(self.pending) >= MAX_HANDSHAKES_IN_FLIGHT:
            self.slot_freed.clear()
            await self.slot_freed.wait()

    async def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in GONE_ERRNOS:
            self.ld.log.debug(SOURCE, f"accept failed: {exc.strerror}")
            return
        # Out of descriptors (EMFILE/ENFILE) or memory, or something unexpected: the
        # listening socket stays readable, so retrying at once would spin and log forever.
        self.accept_error_log.unusual(
            f"accept failed: {exc.strerror}: retrying when a handshake ends or in"
            f" {ACCEPT_BACKOFF:g}s"
        )
        self.slot_freed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACCEPT_BACKOFF):
                await self.slot_freed.wait()

    async def _incoming(self, sock: socket.socket, address: NetAddress) -> None:
        try:
            conn = await async_handshake_responder_sock(
                sock, self.ld.node_id, self.ld.hsm.ecdh, timeout=self.peer_timeout
            )
        except (HandshakeError, ConnectionError, OSError) as exc:
            self.ld.log.debug(SOURCE, f"Handshake from {address} failed: {exc}")
            sock.close()
            return
        assert conn.remote_pubkey is not None
        try:
            peer = await self._exchange_init(conn, conn.remote_pubkey, "in", address)
        except ConnectFailed as exc:
            self.ld.log.info(SOURCE, f"Incoming connection failed: {exc}", conn.remote_pubkey)
            return
        except Exception as exc:  # whatever a stranger's bytes did, hang up on them only
            conn.close()
            self.ld.log.unusual(SOURCE, f"Incoming connection failed: {exc!r}", conn.remote_pubkey)
            return
        await self.ld.peers.peer_connected(peer)

    # -- both directions -------------------------------------------------------------

    async def _exchange_init(
        self, conn: AsyncPeerConnection, node_id: bytes, direction: str, address: NetAddress
    ) -> Peer:
        ours = our_features()
        chain_hash = self.ld.config.chain.chain_hash
        try:
            async with asyncio.timeout(self.peer_timeout):
                await conn.write_message(make_init(ours, chain_hash))
                init = check_init(await conn.read_message(), ours, chain_hash)
        except PeerProtocolError as exc:
            if exc.warning is not None:
                self.ld.peers.hang_up(conn, exc.warning)
            else:
                conn.close()
            raise ConnectFailed(CONNECT_DISCONNECTED_DURING, exc.reason) from None
        except TimeoutError:
            conn.close()
            raise ConnectFailed(CONNECT_DISCONNECTED_DURING, "timed out waiting for init") from None
        except (ConnectionClosed, ConnectionError, OSError) as exc:
            conn.close()
            raise ConnectFailed(
                CONNECT_DISCONNECTED_DURING, f"peer closed connection during init: {exc}"
            ) from None
        return Peer(node_id, conn, direction, address, init)

    # -- connect -----------------------------------------------------------------------

    async def connect(self, node_id: bytes, address: NetAddress) -> Peer:
        try:
            sock = await self._open_socket(address)
        except TimeoutError:
            raise ConnectFailed(
                CONNECT_ALL_ADDRESSES_FAILED,
                f"All addresses failed: {address}: Connection establishment: timed out. ",
            ) from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConnectFailed(
                CONNECT_ALL_ADDRESSES_FAILED,
                f"All addresses failed: {address}: Connection establishment: {reason}. ",
            ) from None
        try:
            conn = await async_handshake_initiator_sock(
                sock, self.ld.node_id, self.ld.hsm.ecdh, node_id, timeout=self.peer_timeout
            )
        except (HandshakeError, ConnectionError, OSError) as exc:
            sock.close()
            raise ConnectFailed(
                CONNECT_ALL_ADDRESSES_FAILED,
                f"All addresses failed: {address}: Cryptographic handshake: {exc}. ",
            ) from None
        peer = await self._exchange_init(conn, node_id, "out", address)
        await self.ld.peers.peer_connected(peer)
        return peer

    def register_commands(self) -> None:
        self.ld.rpc.register(
            "connect",
            self.json_connect,
            [
                Param("id", param_node_id_or_uri),
                Param("host", param_string, required=False),
                Param("port", param_u32, required=False),
            ],
            category="network",
            description="Connect to {id} at {host} (which can end in ':port' if not default). "
            "{id} can also be of the form id@host",
        )

    async def json_connect(
        self, id: tuple[bytes, str | None], host: str | None = None, port: int | None = None
    ) -> dict:
        node_id, uri_host = id
        if uri_host is not None and host is not None:
            raise RpcError(-32602, "id@host:port and a separate host: give only one")
        existing = self.ld.peers.peers.get(node_id)
        if existing is not None:
            return existing.connect_result()
        address = self._address_for(node_id, uri_host or host, port)
        try:
            peer = await self.connect(node_id, address)
        except ConnectFailed as exc:
            raise RpcError(exc.code, str(exc)) from None
        return peer.connect_result()

    def _address_for(self, node_id: bytes, host: str | None, port: int | None) -> NetAddress:
        default_port = self.ld.config.chain.default_port
        if host is None:
            known = self.ld.db.get_peer(node_id)
            if known is None or not known.address:
                raise RpcError(
                    CONNECT_NO_KNOWN_ADDRESS, "Unable to connect, no address known for peer"
                )
            return parse_host_port(known.address, default_port)
        try:
            address = parse_host_port(host, default_port)
        except ValueError as exc:
            raise RpcError(-32602, f"host: {exc}") from None
        return NetAddress(address.host, port) if port is not None else address

    async def _open_socket(self, address: NetAddress) -> socket.socket:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, sockaddr)
            except BaseException:
                sock.close()
                raise
        return sock

    async def shutdown(self) -> None:
        for task in [*self.accepting, *self.pending]:
            task.cancel()
        await asyncio.gather(*self.accepting, *self.pending, return_exceptions=True)
        for lsock in self.listeners:
            lsock.close()
