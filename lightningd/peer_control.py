"""Connected peers, parked in lightningd's event loop while no subdaemon needs them.

A peer arrives here after the BOLT #8 handshake and the `init` exchange
(connect_control.py). While it has no work in flight it costs one socket and
one small task: this module answers pings, sends our own, logs errors and
warnings, and applies BOLT #1's rules for unknown messages. Channel messages
will be handed, with the connection, to a subdaemon (openingd, channeld).

It also keeps one peer from hurting the node: a ping flood closes the
connection, and an open_channel beyond the node-wide cap on opens in flight
is refused before any openingd starts (gossipd caps each peer's gossip rate).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common.cryptomsg import CryptoState
from common.features import feature_names
from common.peer_io import AsyncPeerConnection, ConnectionClosed, Handover, HandoverError
from common.read_peer_msg import (
    ALL_CHANNELS,
    MULTIPLE_CHANNELS,
    Deliver,
    Ignored,
    PeerError,
    PeerInit,
    PeerProtocolError,
    Reply,
    TokenBucket,
    check_ping_rate,
    handle_peer_msg,
    make_error,
    make_warning,
    ping_limiter,
)
from lightningd.channel import REMOTE
from lightningd.gossip_control import GOSSIP_TYPES
from lightningd.jsonrpc import Param, ParamError, RpcError, param_bool, param_node_id
from lightningd.jsonrpc_errors import LIGHTNINGD
from wire import peer_wiregen as wire

if TYPE_CHECKING:
    from lightningd.lightningd import LightningD

# Returned by _handle when the connection has moved to a subdaemon.
HANDED_OVER = object()
# Core Lightning pings an idle peer about once a minute and gives it 30 seconds to answer.
PING_INTERVAL = 60.0
PONG_TIMEOUT = 30.0
# Peers' opens in flight at once, node-wide: each one holds an openingd process (~6 MB
# private). Above the 100 simultaneous inbound opens the performance targets ask for.
MAX_OPENS_IN_FLIGHT = 128
TOO_MANY_OPENS = "Too many channel opens in flight: try again later"
# After our last message (a warning) we stop writing and read until the peer closes, this
# long at most: closing with its bytes unread would reset the connection, and a reset can
# destroy the warning before the peer reads it.
HANG_UP_DRAIN_SECS = 5.0
SOURCE = "lightningd"


@dataclass(frozen=True)
class NetAddress:
    host: str
    port: int

    @property
    def kind(self) -> str:
        return "ipv6" if ":" in self.host else "ipv4"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.kind == "ipv6" else f"{self.host}:{self.port}"

    def to_json(self) -> dict:
        return {"type": self.kind, "address": self.host, "port": self.port}


@dataclass
class Peer:
    node_id: bytes
    # None while a subdaemon (openingd) owns the connection.
    conn: AsyncPeerConnection | None
    direction: str  # "in" or "out", as Core Lightning reports it
    address: NetAddress
    init: PeerInit
    connected_at: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    pong_expected: int | None = None
    disconnect_reason: str | None = None
    pings: TokenBucket = field(default_factory=ping_limiter)

    def connect_result(self) -> dict:
        """What `connect` returns for this peer."""
        return {
            "id": self.node_id.hex(),
            "features": self.init.features.hex(),
            "direction": self.direction,
            "address": self.address.to_json(),
        }


async def hang_up_after(conn: AsyncPeerConnection, msg: bytes) -> None:
    """Send `msg`, stop writing, and drop what the peer still sends until it closes (or
    HANG_UP_DRAIN_SECS pass); then close. As openingd's hang_up does."""
    sock = None
    try:
        async with asyncio.timeout(HANG_UP_DRAIN_SECS):
            await conn.write_message(msg)
            sock = socket.socket(fileno=(await conn.detach()).fd)
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            loop = asyncio.get_running_loop()
            while await loop.sock_recv(sock, 65536):
                pass
    except (TimeoutError, OSError, HandoverError):  # ConnectionError is an OSError
        pass
    finally:
        if sock is not None:
            sock.close()
        else:
            conn.close()


class PeerControl:
    def __init__(self, ld: LightningD) -> None:
        self.ld = ld
        self.peers: dict[bytes, Peer] = {}
        self.hanging_up: set[asyncio.Task[None]] = set()  # connections given last words

    # -- arrival and departure -------------------------------------------------

    async def peer_connected(self, peer: Peer) -> None:
        """A new, authenticated connection; a reconnect replaces the old one."""
        old = self.peers.get(peer.node_id)
        if old is not None:
            await self.disconnect(old, "reconnected")
        self.peers[peer.node_id] = peer
        if peer.direction == "out":
            # The address we dialled, for a later `connect <id>`. An incoming peer's is an
            # ephemeral port, and storing it would give every stranger a row and an fsync
            # that stalls the event loop (a channel stores its peer's address anyway).
            self.ld.db.add_peer(peer.node_id, str(peer.address))
        self.ld.log.info(
            SOURCE,
            f"Peer connected ({peer.direction}) from {peer.address}, features "
            f"{', '.join(feature_names(peer.init.features)) or 'none'}",
            peer.node_id,
        )
        peer.task = asyncio.get_running_loop().create_task(self._serve(peer))
        await self.ld.channel_control.peer_connected(peer)
        await self.ld.gossip.peer_connected(peer)

    async def disconnect(self, peer: Peer, reason: str, last_words: bytes | None = None) -> None:
        """End the connection; `last_words` (a warning) is sent first, and given time to
        arrive (hang_up_after)."""
        if peer.conn is None:
            # A subdaemon holds the connection: ending it ends the connection too.
            await self.ld.opening.abort(peer.node_id)
        await self._stop_serving(peer)
        if peer.conn is not None:
            conn, peer.conn = peer.conn, None
            if last_words is None:
                conn.close()
            else:
                self.hang_up(conn, last_words)
        await self.lost(peer, reason)

    def hang_up(self, conn: AsyncPeerConnection, last_words: bytes) -> None:
        """Send `last_words` and close, in the background (hang_up_after: up to
        HANG_UP_DRAIN_SECS); cut short at shutdown."""
        task = asyncio.get_running_loop().create_task(hang_up_after(conn, last_words))
        self.hanging_up.add(task)
        task.add_done_callback(self.hanging_up.discard)

    async def lost(self, peer: Peer, reason: str) -> None:
        """The peer is gone (its connection closed here, or with a subdaemon)."""
        if self.peers.get(peer.node_id) is peer:
            del self.peers[peer.node_id]
            peer.disconnect_reason = reason
            self.ld.log.info(SOURCE, f"Peer disconnected: {reason}", peer.node_id)
            await self.ld.gossip.peer_gone(peer.node_id)

    async def _stop_serving(self, peer: Peer) -> None:
        # Stop the peer's reader before touching its socket: a descriptor closed under
        # a waiting reader never wakes it.
        task, peer.task = peer.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- handing the connection to a subdaemon and back --------------------------------

    async def take(self, peer: Peer) -> Handover:
        """Stop serving the peer here and give up its socket and cipher state."""
        await self._stop_serving(peer)
        assert peer.conn is not None
        handover = await peer.conn.detach()
        peer.conn = None
        if handover.pending:
            # Our raw-socket reader never reads ahead; this would be a bug, not a peer's doing.
            os.close(handover.fd)
            raise RuntimeError("peer connection had unread bytes at handover")
        return handover

    async def give_back(self, peer: Peer, fd: int, cipher_state: bytes) -> None:
        """A subdaemon returned the connection: park the peer here again."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        peer.conn = AsyncPeerConnection.from_socket(
            sock, CryptoState.from_bytes(cipher_state), peer.node_id
        )
        if self.peers.get(peer.node_id) is peer:
            peer.task = asyncio.get_running_loop().create_task(self._serve(peer))
        else:  # disconnected meanwhile (e.g. a `disconnect` command)
            peer.conn.close()
            peer.conn = None

    async def shutdown(self) -> None:
        for peer in list(self.peers.values()):
            await self.disconnect(peer, "lightningd shutting down")
        for task in list(self.hanging_up):
            task.cancel()
        await asyncio.gather(*self.hanging_up, return_exceptions=True)

    # -- the parked peer's loop ------------------------------------------------

    async def _serve(self, peer: Peer) -> None:
        pinger = asyncio.get_running_loop().create_task(self._ping_loop(peer))
        try:
            while peer.conn is not None:
                raw = await peer.conn.read_message()
                if await self._handle(peer, raw) is HANDED_OVER:
                    return
        except PeerProtocolError as exc:
            await self.disconnect(peer, exc.reason, exc.warning)
        except (ConnectionClosed, ConnectionError, OSError) as exc:
            await self.disconnect(peer, f"connection closed: {exc}")
        except Exception as exc:  # a bug here must cost one peer, never the node
            self.ld.log.broken(SOURCE, f"peer loop failed: {exc!r}", peer.node_id)
            await self.disconnect(peer, f"internal error: {exc}")
        finally:
            pinger.cancel()

    async def _handle(self, peer: Peer, raw: bytes) -> object:
        event = handle_peer_msg(raw)
        check_ping_rate(raw, peer.pings)
        if isinstance(event, Deliver) and isinstance(event.msg, wire.OpenChannel):
            if peer.node_id in self.ld.opening.opens:
                # Core Lightning's openingd: the open in flight goes on, the new one is refused.
                await self._refuse_open(peer, event.msg, MULTIPLE_CHANNELS)
                return None
            if self._opens_in_flight() >= MAX_OPENS_IN_FLIGHT:
                await self._refuse_open(peer, event.msg, TOO_MANY_OPENS)
                return None
            await self.ld.opening.peer_open_channel(peer, raw)
            return HANDED_OVER if peer.conn is None else None
        if isinstance(event, Deliver) and isinstance(event.msg, wire.AnnouncementSignatures):
            # In the gossip range, but about our own channel: lightningd's, not gossipd's.
            await self.ld.channel_control.channel_message(peer, event.msg.channel_id, event.msg)
            return None
        if isinstance(event, Deliver) and event.msg.TYPE in GOSSIP_TYPES:
            await self.ld.gossip.peer_gossip(peer, raw)
            return None
        if isinstance(event, Reply):
            await peer.conn.write_message(event.msg)
        elif isinstance(event, Ignored):
            if event.reason == "pong":
                self._got_pong(peer, raw)
            else:
                self.ld.log.debug(SOURCE, f"Ignoring {event.reason}", peer.node_id)
        elif isinstance(event, PeerError):
            kind = "warning" if event.is_warning else "error"
            self.ld.log.info(SOURCE, f"Peer sent {kind}: {event.text}", peer.node_id)
            if not event.is_warning:
                self.ld.channel_control.peer_error(peer.node_id, event.channel_id)
        elif isinstance(event, Deliver):
            await self._unexpected_channel_message(peer, event)

    def _opens_in_flight(self) -> int:
        """Opens peers started that are still negotiating (ours are the user's business)."""
        return sum(
            p.uncommitted.opener == REMOTE and not p.done for p in self.ld.opening.opens.values()
        )

    async def _refuse_open(self, peer: Peer, msg: wire.OpenChannel, why: str) -> None:
        self.ld.log.unusual(SOURCE, f"Refusing open_channel: {why}", peer.node_id)
        # BOLT #1: the fundee, for errors "sent before (and not including) the
        # `funding_signed` message: MUST use `temporary_channel_id` in lieu of `channel_id`."
        await peer.conn.write_message(make_error(msg.temporary_channel_id, TOO_MANY_OPENS))

    async def _unexpected_channel_message(self, peer: Peer, event: Deliver) -> None:
        """A message about a channel we do not have (no channel subdaemon yet)."""
        channel_id = getattr(event.msg, "channel_id", None) or getattr(
            event.msg, "temporary_channel_id", None
        )
        if channel_id is None or not 32 <= event.msg.TYPE <= 255:
            self.ld.log.debug(SOURCE, f"Ignoring {event.msg.NAME}", peer.node_id)
            return
        if any(c.opened.channel_id == channel_id for c in self.ld.channels_of(peer.node_id)):
            await self.ld.channel_control.channel_message(peer, channel_id, event.msg)
            return
        # BOLT #1: "SHOULD send error with the unknown channel_id in reply to messages of
        # type 32-255 related to unknown channels." Not for the all-zero id: an error there
        # "MUST fail all channels with the sending node"; a warning says it without that.
        self.ld.log.unusual(SOURCE, f"{event.msg.NAME} for unknown channel", peer.node_id)
        text = f"Unknown channel for {event.msg.NAME}"
        reply = make_warning if channel_id == ALL_CHANNELS else make_error
        await peer.conn.write_message(reply(channel_id, text))

    # -- keepalive ---------------------------------------------------------------

    async def _ping_loop(self, peer: Peer) -> None:
        while True:
            await asyncio.sleep(self.ld.ping_interval)
            if peer.conn is None:
                return
            size = secrets.randbelow(64)
            peer.pong_expected = size
            # BOLT #1: a ping's ignored bytes "SHOULD" be 0s.
            await peer.conn.write_message(wire.Ping(num_pong_bytes=size, ignored=b"").encode())
            await asyncio.sleep(PONG_TIMEOUT)
            if peer.pong_expected is not None:
                await self.disconnect(peer, "Ping timeout")
                return

    def _got_pong(self, peer: Peer, raw: bytes) -> None:
        pong = wire.Pong.decode(raw)
        if peer.pong_expected == len(pong.ignored):
            peer.pong_expected = None

    # -- RPC -----------------------------------------------------------------------

    def register_commands(self) -> None:
        rpc = self.ld.rpc
        rpc.register(
            "listpeers",
            self.json_listpeers,
            [
                Param("id", param_node_id, required=False),
                Param("level", param_loglevel, required=False),
            ],
            category="network",
            description="Show current peers, if {level} is set, include logs for {id}",
        )
        rpc.register(
            "disconnect",
            self.json_disconnect,
            [Param("id", param_node_id), Param("force", param_bool, required=False, default=False)],
            category="network",
            description="Disconnect from {id} that has previously been connected to",
        )
        rpc.register(
            "listpeerchannels",
            self.json_listpeerchannels,
            [Param("id", param_node_id, required=False)],
            category="network",
            description="Show channels with direct peers.",
        )

    def peer_json(self, peer: Peer) -> dict:
        out = {
            "id": peer.node_id.hex(),
            "connected": True,
            "num_channels": len(self.ld.channels_of(peer.node_id)),
            "netaddr": [str(peer.address)],
            "features": peer.init.features.hex(),
        }
        if peer.init.remote_addr:
            out["remote_addr"] = peer.init.remote_addr.hex()
        return out

    async def json_listpeers(self, id: bytes | None = None, level: str | None = None) -> dict:
        peers = [p for p in self.peers.values() if id is None or p.node_id == id]
        return {"peers": [self.peer_json(p) for p in peers]}

    async def json_disconnect(self, id: bytes, force: bool = False) -> dict:
        peer = self.peers.get(id)
        if peer is None:
            raise RpcError(LIGHTNINGD, "Peer not connected")
        await self.disconnect(peer, "disconnect command")
        return {}

    async def json_listpeerchannels(self, id: bytes | None = None) -> dict:
        stored = [
            c.to_json(c.peer_id in self.peers)
            for c in self.ld.channels
            if id is None or c.peer_id == id
        ]
        return {"channels": self.ld.opening.uncommitted_json(id) + stored}


def param_loglevel(value: object) -> str:
    """listpeers' `level`, as CLN's param_loglevel takes it."""
    if value in ("io", "debug", "info", "unusual"):
        return str(value)
    raise ParamError("should be 'io', 'debug', 'info', or 'unusual'")
