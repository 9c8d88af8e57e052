"""BOLT #1 housekeeping every process that holds a peer connection does.

Pure functions over raw messages, so the master's event loop and the
blocking subdaemons apply the same rules: the `init` exchange and feature
checks, answering `ping`, surfacing `error`/`warning`, ignoring unknown odd
messages and refusing unknown even ones; and the token bucket that holds a
peer to a message rate (pings in lightningd and openingd, gossip in gossipd).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from common import features as feat
from wire import peer_wiregen as wire
from wire.fundamental import Message, UnknownMessageError, WireError

ALL_CHANNELS = bytes(32)
# BOLT #1: "if num_pong_bytes is less than 65532: MUST respond by sending a pong"
MAX_PONG_BYTES = 65531
# BOLT #1: "Limited precautions are recommended against `ping` flooding, however some
# latitude is given because of network delays." Ten at once, then one a second.
PING_BURST = 10
PING_PER_SEC = 1.0
PING_FLOOD = "Peer sent too many pings"
_PING_TYPE = wire.Ping.TYPE.to_bytes(2, "big")


class PeerProtocolError(Exception):
    """The peer broke BOLT #1: we close the connection after sending `warning`, if any."""

    def __init__(self, reason: str, warning: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.warning = warning


class TokenBucket:
    """`take` is False when the peer has used up its allowance: `burst` at once, refilled
    at `rate` per second."""

    def __init__(
        self, burst: float, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.rate, self.clock = burst, rate, clock
        self.tokens = burst
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def ping_limiter() -> TokenBucket:
    """The allowance of pings one peer gets, in every process that answers them."""
    return TokenBucket(PING_BURST, PING_PER_SEC)


def check_ping_rate(raw: bytes, pings: TokenBucket) -> None:
    """PeerProtocolError, with our warning, if `raw` is a ping beyond the allowance."""
    if raw[:2] == _PING_TYPE and not pings.take():
        raise PeerProtocolError(PING_FLOOD, make_warning(ALL_CHANNELS, PING_FLOOD))


@dataclass(frozen=True)
class PeerInit:
    """What the peer's `init` told us."""

    features: bytes
    networks: tuple[bytes, ...] | None
    remote_addr: bytes | None


@dataclass(frozen=True)
class Reply:
    """Send this to the peer and carry on (a `pong`)."""

    msg: bytes


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class PeerError:
    """The peer sent `error` (fail the channel) or `warning` (log it)."""

    channel_id: bytes
    text: str
    is_warning: bool

    @property
    def all_channels(self) -> bool:
        return self.channel_id == ALL_CHANNELS


@dataclass(frozen=True)
class Deliver:
    """A known message for the daemon's own protocol logic."""

    msg: Message


PeerEvent = Reply | Ignored | PeerError | Deliver


def make_init(our_features: bytes, chain_hash: bytes) -> bytes:
    """Our `init`: all features in `features`, none in `globalfeatures`."""
    # BOLT #1: "SHOULD set `networks` to all chains it will gossip or open channels for."
    tlvs = wire.InitTlvs(networks=(chain_hash,))
    return wire.Init(globalfeatures=b"", features=our_features, tlvs=tlvs).encode()


def check_init(raw: bytes, our_features: bytes, chain_hash: bytes) -> PeerInit:
    """Validate the peer's first message; PeerProtocolError says why we must close."""
    try:
        init = wire.decode(raw)
    except WireError as exc:
        raise PeerProtocolError(f"bad init: {exc}") from None
    if not isinstance(init, wire.Init):
        raise PeerProtocolError(f"first message was {type(init).NAME}, not init")
    # BOLT #1: "MUST combine (bitwise OR) the two feature bitmaps into one logical features map."
    features = feat.merge_init_features(init.globalfeatures, init.features)
    # BOLT #1: "upon receiving unknown even feature bits that are non-zero: MUST close"
    unknown = feat.unknown_compulsory(features, our_features)
    if unknown:
        bits = ", ".join(str(b) for b in unknown)
        reason = f"Unsupported feature {bits}"
        raise PeerProtocolError(reason, make_warning(ALL_CHANNELS, reason))
    # BOLT #1: "if the feature vector does not set all known, transitive dependencies:
    # MUST close the connection."
    missing = feat.missing_dependencies(features)
    if missing:
        f, dep = missing[0]
        reason = f"Feature {f.name.lower()} set without {dep.name.lower()}"
        raise PeerProtocolError(reason, make_warning(ALL_CHANNELS, reason))
    networks = init.tlvs.networks
    # BOLT #1: "upon receiving networks containing no common chains: MAY close the connection."
    if networks is not None and chain_hash not in networks:
        reason = f"No common chain: we are on {chain_hash.hex()}"
        raise PeerProtocolError(reason, make_warning(ALL_CHANNELS, reason))
    return PeerInit(features, networks, init.tlvs.remote_addr)


# What a second open_channel (another temporary_channel_id) is told, as Core Lightning's
# openingd says it: one open per peer at a time, and the open in flight goes on.
MULTIPLE_CHANNELS = "Multiple channels unsupported"


def make_error(channel_id: bytes, text: str) -> bytes:
    return wire.Error(channel_id=channel_id, data=text.encode()).encode()


def make_warning(channel_id: bytes, text: str) -> bytes:
    return wire.Warning(channel_id=channel_id, data=text.encode()).encode()


def printable(data: bytes) -> str:
    """BOLT #1: data that is not printable ASCII "SHOULD NOT" be printed verbatim."""
    if all(32 <= b <= 126 for b in data):
        return data.decode("ascii")
    return f"(non-printable) {data.hex()}"


def handle_peer_msg(raw: bytes) -> PeerEvent:
    """Apply BOLT #1's generic rules to one message received after `init`."""
    try:
        msg = wire.decode(raw)
    except UnknownMessageError as exc:
        # BOLT #1: odd, unknown type: "MUST ignore"; even, unknown: "MUST close the connection."
        if exc.msgtype % 2:
            return Ignored(f"unknown odd message type {exc.msgtype}")
        raise PeerProtocolError(f"unknown even message type {exc.msgtype}") from None
    except WireError as exc:
        # BOLT #1: "upon receiving a known message with insufficient length ... MUST close"
        raise PeerProtocolError(f"malformed message: {exc}") from None
    if isinstance(msg, wire.Ping):
        if msg.num_pong_bytes > MAX_PONG_BYTES:
            return Ignored(f"ping asking for {msg.num_pong_bytes} pong bytes")
        return Reply(wire.Pong(ignored=bytes(msg.num_pong_bytes)).encode())
    if isinstance(msg, wire.Pong):
        return Ignored("pong")
    if isinstance(msg, wire.Error | wire.Warning):
        return PeerError(msg.channel_id, printable(msg.data), isinstance(msg, wire.Warning))
    if isinstance(msg, wire.Init):
        raise PeerProtocolError("init received twice")
    return Deliver(msg)
