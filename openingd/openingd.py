"""openingd: one peer, one channel, from open_channel to the first signatures.

Descriptors (common/subdaemon.py): 0 == lightningd, 3 == the peer (BOLT #8
connection; its cipher state comes in openingd_init), 6 == our hsmd socket,
bound to this peer and channel. There is no gossipd socket yet: gossip the
peer sends while we negotiate is logged and dropped.

The story, as in Core Lightning's openingd.c:

    init -> hsmd: our basepoints and first per-commitment point
    opener:   funder_start -> open_channel -> accept_channel (checked)
              -> funder_start_reply -> funder_complete -> funding_created
              -> funding_signed (verified) -> funder_reply [+peer fd]
    accepter: open_channel (lightningd read it; checked) -> got_offer
              -> got_offer_reply -> accept_channel -> funding_created (verified)
              -> fundee [+peer fd]; lightningd stores, then sends funding_signed.

Every way out ends with one message to lightningd and exit 0: success, or
openingd_failed, which returns the peer fd while the connection is still good.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from dataclasses import dataclass, replace
from typing import NoReturn, TypeVar

from coincurve import PrivateKey

from common import channel_type as ctype
from common import subdaemon
from common.amount import AmountMsat, AmountSat
from common.commit_tx import (
    CommitmentKeys,
    CommitmentTx,
    InitialCommitmentError,
    build_initial_commitment_tx,
    commitment_number_obscurer,
    sign_commitment_tx,
    verify_commitment_sig,
)
from common.cryptomsg import STATE_LEN, CryptoState, DecryptError
from common.daemon_conn import DaemonConn, DaemonConnError
from common.features import Feature
from common.funding import derive_channel_id, funding_output
from common.key_derive import derive_revocation_pubkey, derive_simple_pubkey
from common.peer_io import ConnectionClosed, HandoverError, PeerConnection
from common.read_peer_msg import (
    ALL_CHANNELS,
    MULTIPLE_CHANNELS,
    Deliver,
    Ignored,
    PeerError,
    PeerProtocolError,
    Reply,
    check_ping_rate,
    handle_peer_msg,
    make_error,
    ping_limiter,
)
from common.signature import SignatureError, compact_to_der, der_to_compact
from common.status import FailReason, FatalError
from hsmd import hsmd_wiregen as hsm_wire
from openingd import bounds
from openingd import openingd_wiregen as wire
from openingd.bounds import BadParams, Config, Limits
from wire import peer_wiregen as peer_wire
from wire.fundamental import Message, WireError

M = TypeVar("M", bound=Message)

# Gossip (BOLT #7) goes to gossipd once there is one; until then we drop it.
GOSSIP_TYPES = frozenset({256, 257, 258, 261, 262, 263, 264, 265})
# BOLT #7: "the least-significant bit of `channel_flags`": `announce_channel`.
ANNOUNCE_CHANNEL = 1
BAD_PARAMS = "You gave bad parameters: "
# After our last word to a peer we hang up on, how long we wait for it to hang up too
# (as CLN's connectd drains a peer): closing with its bytes unread would send a reset,
# and the peer's kernel could drop our warning or error unread.
DRAIN_SECS = 5.0


class Failed(Exception):
    """The negotiation is over without a channel.

    `send` goes to the peer first (our `error`); `peer_alive` says whether the
    connection can go back to lightningd; `by_peer` whether they ended it.
    """

    def __init__(
        self,
        reason: str,
        *,
        send: bytes | None = None,
        by_peer: bool = False,
        peer_alive: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.send = send
        self.by_peer = by_peer
        self.peer_alive = peer_alive


@dataclass
class Side:
    """One side's half of the channel, as its open/accept message gives it."""

    config: Config
    funding_pubkey: bytes
    basepoints: wire.Basepoints
    first_point: bytes
    shutdown: bytes = b""


def to_config(c: wire.ChannelConfig) -> Config:
    return Config(
        dust_limit_sat=c.dust_limit.sat,
        max_htlc_value_in_flight_msat=c.max_htlc_value_in_flight.msat,
        channel_reserve_sat=c.channel_reserve.sat,
        htlc_minimum_msat=c.htlc_minimum.msat,
        to_self_delay=c.to_self_delay,
        max_accepted_htlcs=c.max_accepted_htlcs,
    )


def to_wire_config(c: Config) -> wire.ChannelConfig:
    return wire.ChannelConfig(
        dust_limit=AmountSat(c.dust_limit_sat),
        max_htlc_value_in_flight=AmountMsat(c.max_htlc_value_in_flight_msat),
        channel_reserve=AmountSat(c.channel_reserve_sat),
        htlc_minimum=AmountMsat(c.htlc_minimum_msat),
        to_self_delay=c.to_self_delay,
        max_accepted_htlcs=c.max_accepted_htlcs,
    )


def their_side(msg: peer_wire.OpenChannel | peer_wire.AcceptChannel) -> Side:
    """The peer's config and keys from its open_channel or accept_channel."""
    config = Config(
        dust_limit_sat=msg.dust_limit_satoshis,
        max_htlc_value_in_flight_msat=msg.max_htlc_value_in_flight_msat,
        channel_reserve_sat=msg.channel_reserve_satoshis,
        htlc_minimum_msat=msg.htlc_minimum_msat,
        to_self_delay=msg.to_self_delay,
        max_accepted_htlcs=msg.max_accepted_htlcs,
    )
    points = wire.Basepoints(
        revocation=msg.revocation_basepoint,
        payment=msg.payment_basepoint,
        htlc=msg.htlc_basepoint,
        delayed_payment=msg.delayed_payment_basepoint,
    )
    shutdown = msg.tlvs.upfront_shutdown_script
    return Side(config, msg.funding_pubkey, points, msg.first_per_commitment_point, shutdown or b"")


def point_names(msg: peer_wire.OpenChannel | peer_wire.AcceptChannel) -> dict[str, bytes]:
    return {
        "funding_pubkey": msg.funding_pubkey,
        "revocation_basepoint": msg.revocation_basepoint,
        "payment_basepoint": msg.payment_basepoint,
        "delayed_payment_basepoint": msg.delayed_payment_basepoint,
        "htlc_basepoint": msg.htlc_basepoint,
        "first_per_commitment_point": msg.first_per_commitment_point,
    }


class Hsm:
    """Our hsmd socket: one request, one reply; a refusal ends the daemon."""

    def __init__(self, conn: DaemonConn) -> None:
        self.conn = conn

    def request(self, msg: Message, reply_type: type[M]) -> M:
        self.send(msg)
        return self.reply(msg, reply_type)

    def send(self, msg: Message) -> None:
        """A request whose reply is read later: hsmd answers a client's requests in order."""
        try:
            self.conn.send(msg.encode())
        except DaemonConnError as exc:
            raise FatalError(FailReason.HSM_IO, f"hsmd {msg.NAME}: {exc}") from None

    def reply(self, msg: Message, reply_type: type[M]) -> M:
        try:
            reply = hsm_wire.decode(self.conn.recv())
        except (DaemonConnError, WireError) as exc:
            raise FatalError(FailReason.HSM_IO, f"hsmd {msg.NAME}: {exc}") from None
        if isinstance(reply, hsm_wire.HsmdBadRequest):
            raise FatalError(FailReason.HSM_IO, f"hsmd refused {msg.NAME}: {reply.reason}")
        if not isinstance(reply, reply_type):
            raise FatalError(FailReason.HSM_IO, f"hsmd answered {msg.NAME} with {reply.NAME}")
        return reply


class Openingd:
    def __init__(self, sub: subdaemon.Subdaemon, init: wire.OpeningdInit) -> None:
        self.sub = sub
        self.status = sub.status
        self.init = init
        state = CryptoState.from_bytes(init.cipher_state[:STATE_LEN])
        pending = init.cipher_state[STATE_LEN:]
        self.peer = PeerConnection.from_fd(subdaemon.PEER_FD, state, pending=pending)
        self.hsm = Hsm(DaemonConn.from_fd(subdaemon.HSM_FD))
        # The master's ping-flood rule holds here too (a fresh allowance per handover).
        self.pings = ping_limiter()
        self.limits = Limits(
            chain_hash=init.chain_hash,
            our_features=init.our_features,
            their_features=init.their_features,
            max_to_self_delay=init.max_to_self_delay,
            min_effective_htlc_capacity_msat=init.min_effective_htlc_capacity.msat,
            min_feerate=init.min_feerate,
            max_feerate=init.max_feerate,
            zeroconf_trusted=init.zeroconf_trusted,
        )
        # BOLT #1: errors use the temporary_channel_id until funding_created
        # (opener, inclusive) or funding_signed (accepter, exclusive); then `cid`.
        self.temp_cid = bytes(32)
        self.cid = bytes(32)
        self.our = self.our_side()
        self.their: Side | None = None
        # Set once negotiated.
        self.we_opened = False
        self.funding_sat = 0
        self.push_msat = 0
        self.feerate = 0
        self.channel_flags = 0
        self.channel_type = b""
        self.minimum_depth = 0
        self.funding_txid = bytes(32)
        self.funding_outnum = 0
        self.second_point: bytes | None = None

    # --- hsmd -------------------------------------------------------------------------

    def our_side(self) -> Side:
        """Our keys come from hsmd; our config from lightningd (reserve set per channel)."""
        # Both asked at once: one wait for hsmd, not two, before we can say anything.
        get_basepoints = hsm_wire.HsmdGetChannelBasepoints(peerid=None, dbid=0)
        get_point = hsm_wire.HsmdGetPerCommitmentPoint(n=0)
        self.hsm.send(get_basepoints)
        self.hsm.send(get_point)
        reply = self.hsm.reply(get_basepoints, hsm_wire.HsmdGetChannelBasepointsReply)
        first_point = self.hsm.reply(get_point, hsm_wire.HsmdGetPerCommitmentPointReply)
        bp = reply.basepoints
        points = wire.Basepoints(
            revocation=bp.revocation,
            payment=bp.payment,
            htlc=bp.htlc,
            delayed_payment=bp.delayed_payment,
        )
        return Side(
            to_config(self.init.our_config),
            reply.funding_pubkey,
            points,
            first_point.per_commitment_point,
        )

    def per_commitment_point(self, n: int) -> bytes:
        """Our per-commitment point for commitment `n` (BOLT #3), from hsmd."""
        reply = self.hsm.request(
            hsm_wire.HsmdGetPerCommitmentPoint(n=n), hsm_wire.HsmdGetPerCommitmentPointReply
        )
        return reply.per_commitment_point

    def prefetch_second_point(self) -> bytes:
        """Point 1, for channel_ready: asked for while the peer has the move, not after."""
        if self.second_point is None:
            self.second_point = self.per_commitment_point(1)
        return self.second_point

    def hsm_sign_theirs(self, commitment: CommitmentTx) -> bytes:
        assert self.their is not None
        reply = self.hsm.request(
            hsm_wire.HsmdSignRemoteCommitmentTx(
                tx=commitment.tx.serialize(),
                funding_txid=self.funding_txid,
                funding_outnum=self.funding_outnum,
                funding_amount=AmountSat(self.funding_sat),
                remote_funding_key=self.their.funding_pubkey,
            ),
            hsm_wire.HsmdSignTxReply,
        )
        return reply.sig

    # --- talking to the peer ------------------------------------------------------------

    def send_peer(self, msg: bytes) -> None:
        try:
            self.peer.write_message(msg)
        except OSError as exc:
            raise Failed(f"Peer connection lost: {exc}", peer_alive=False) from None

    def error(self, text: str) -> Failed:
        """Fail the channel, telling the peer why (reason == the text they get)."""
        return Failed(text, send=make_error(self.cid, text))

    def bad_params(self, exc: BadParams) -> Failed:
        return self.error(BAD_PARAMS + exc.reason)

    def read_peer(self, deadline: float | None, step: str) -> bytes:
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        self.peer.sock.settimeout(timeout)
        try:
            return self.peer.read_message()
        except TimeoutError:
            raise Failed(f"Timed out waiting for {step}", peer_alive=False) from None
        except (ConnectionClosed, OSError, DecryptError) as exc:
            raise Failed(f"Peer connection lost: {exc}", peer_alive=False) from None
        finally:
            with contextlib.suppress(OSError):
                self.peer.sock.settimeout(None)

    def ours(self, channel_id: bytes) -> bool:
        return channel_id in (ALL_CHANNELS, self.temp_cid, self.cid)

    def peer_event(self, raw: bytes) -> Message | None:
        """BOLT #1 housekeeping; the message for our protocol, or None if handled."""
        try:
            event = handle_peer_msg(raw)
            check_ping_rate(raw, self.pings)
        except PeerProtocolError as exc:
            # BOLT #1: unknown even messages and malformed ones: "MUST close the connection";
            # a ping flood: our warning, then the same.
            send = exc.warning or make_error(self.cid, exc.reason)
            raise Failed(exc.reason, send=send, peer_alive=False) from None
        if isinstance(event, Reply):
            self.send_peer(event.msg)
        elif isinstance(event, Ignored):
            self.status.debug(f"Ignored: {event.reason}")
        elif isinstance(event, PeerError):
            self.peer_error(event)
        elif isinstance(event, Deliver):
            if event.msg.TYPE in GOSSIP_TYPES:
                self.status.debug(f"Ignoring gossip {event.msg.NAME}: no gossipd yet")
                return None
            return event.msg
        return None

    def peer_error(self, event: PeerError) -> None:
        if event.is_warning:
            # BOLT #1: "upon receiving `warning`: SHOULD log the message".
            self.status.info(f"They sent warning: {event.text}")
            return
        # BOLT #1: "if no existing channel is referred to by `channel_id`: MUST ignore
        # the message."
        if not self.ours(event.channel_id):
            self.status.debug(f"Ignoring error for channel {event.channel_id.hex()}")
            return
        raise Failed(f"They sent error: {event.text}", by_peer=True)

    # --- the poll loop --------------------------------------------------------------------

    def wait(
        self,
        step: str,
        master: tuple[type[Message], ...] = (),
        peer: tuple[type[Message], ...] = (),
        timed: bool = True,
    ) -> Message:
        """The next wanted message from lightningd or the peer, handling everything else.

        `step` names what we wait for, for the timeout's reason. Only waits for
        the peer are timed: lightningd's user may take their time.
        """
        secs = self.init.peer_timeout_secs
        deadline = time.monotonic() + secs if timed and secs else None
        poller = select.poll()
        poller.register(self.sub.master.fileno(), select.POLLIN)
        poller.register(self.peer.fileno(), select.POLLIN)
        while True:
            ready = self.poll(poller, deadline, step)
            # lightningd first, as Core Lightning does.
            if self.sub.master.fileno() in ready:
                return self.master_msg(master, step)
            if self.peer.fileno() in ready:
                msg = self.peer_event(self.read_peer(deadline, step))
                if msg is None:
                    continue
                if isinstance(msg, peer):
                    return msg
                if self.another_open(msg):
                    continue
                self.unexpected(msg, step)

    def poll(self, poller: select.poll, deadline: float | None, step: str) -> set[int]:
        # Bytes handed over with the connection (PeerConnection's `pending`) are
        # already ours, so poll() would not see them: readable now.
        if self.peer.has_buffered():
            return {self.peer.fileno()}
        if deadline is None:
            return {fd for fd, _ in poller.poll()}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failed(f"Timed out waiting for {step}", peer_alive=False)
        return {fd for fd, _ in poller.poll(remaining * 1000)}

    def master_msg(self, wanted: tuple[type[Message], ...], step: str) -> Message:
        raw = self.sub.master.recv()
        try:
            msg = wire.decode(raw)
        except WireError as exc:
            raise FatalError(FailReason.MASTER_IO, f"bad message from master: {exc}") from None
        if not isinstance(msg, wanted):
            raise FatalError(FailReason.MASTER_IO, f"unexpected {msg.NAME} waiting for {step}")
        return msg

    def another_open(self, msg: Message) -> bool:
        """A second open_channel, for another channel: refuse it, keep negotiating ours."""
        if not isinstance(msg, peer_wire.OpenChannel) or self.ours(msg.temporary_channel_id):
            return False
        self.status.debug(f"Rejecting open_channel {msg.temporary_channel_id.hex()}: one at a time")
        # BOLT #1: the fundee, for errors "sent before (and not including) the
        # `funding_signed` message: MUST use `temporary_channel_id` in lieu of `channel_id`."
        self.send_peer(make_error(msg.temporary_channel_id, MULTIPLE_CHANNELS))
        return True

    def unexpected(self, msg: Message, step: str) -> NoReturn:
        raise self.error(f"Unexpected message {msg.NAME} waiting for {step}")

    # --- commitments ---------------------------------------------------------------------

    def keys(self, owner: Side, other: Side) -> CommitmentKeys:
        """BOLT #3 keys of `owner`'s first commitment (static_remotekey for every type)."""
        point = owner.first_point
        return CommitmentKeys(
            local_funding_pubkey=owner.funding_pubkey,
            remote_funding_pubkey=other.funding_pubkey,
            revocation_pubkey=derive_revocation_pubkey(other.basepoints.revocation, point),
            local_delayed_pubkey=derive_simple_pubkey(owner.basepoints.delayed_payment, point),
            # BOLT #3: with option_static_remotekey, remotepubkey is simply the
            # remote node's payment_basepoint.
            remote_pubkey=other.basepoints.payment,
            local_htlc_pubkey=derive_simple_pubkey(owner.basepoints.htlc, point),
            remote_htlc_pubkey=derive_simple_pubkey(other.basepoints.htlc, point),
        )

    def commitment(self, ours: bool) -> CommitmentTx:
        """Our (ours=True) or their first commitment transaction."""
        assert self.their is not None
        owner, other = (self.our, self.their) if ours else (self.their, self.our)
        owner_opened = ours == self.we_opened
        opener, accepter = (owner, other) if owner_opened else (other, owner)
        opener_msat = self.funding_sat * 1000 - self.push_msat
        to_local, to_remote = (
            (opener_msat, self.push_msat) if owner_opened else (self.push_msat, opener_msat)
        )
        try:
            return build_initial_commitment_tx(
                funding_txid=self.funding_txid,
                funding_outnum=self.funding_outnum,
                funding_sat=self.funding_sat,
                keys=self.keys(owner, other),
                # BOLT #2: `to_self_delay` is the delay "the other node's to-self
                # outputs must" use: the owner's outputs wait what the other asked.
                to_self_delay=other.config.to_self_delay,
                dust_limit_sat=owner.config.dust_limit_sat,
                feerate_per_kw=self.feerate,
                to_local_msat=to_local,
                to_remote_msat=to_remote,
                obscurer=commitment_number_obscurer(
                    opener.basepoints.payment, accepter.basepoints.payment
                ),
                local_is_opener=owner_opened,
                local_reserve_sat=other.config.channel_reserve_sat,
                remote_reserve_sat=owner.config.channel_reserve_sat,
                channel_type=ctype.commit_format(self.channel_type),
            )
        except InitialCommitmentError as exc:
            whose = "our" if ours else "their"
            raise self.error(f"Could not meet {whose} fees and reserve: {exc}") from None

    def check_their_sig(self, sig: bytes, ours: CommitmentTx) -> None:
        """Their signature on our first commitment `ours`, or fail with the tx in hex."""
        assert self.their is not None
        try:
            ok = verify_commitment_sig(ours, self.their.funding_pubkey, compact_to_der(sig))
        except SignatureError:
            ok = False
        if not ok:
            # BOLT #1: "when failure was caused by an invalid signature check: SHOULD
            # include the raw, hex-encoded transaction in reply to a `funding_created`,
            # `funding_signed`, `closing_signed`, or `commitment_signed` message."
            raise self.error(
                f"Bad signature {sig.hex()} on tx {ours.tx.serialize().hex()}"
                f" using key {self.their.funding_pubkey.hex()}"
            )

    def opened_channel(self, their_sig: bytes) -> wire.OpenedChannel:
        assert self.their is not None
        return wire.OpenedChannel(
            channel_id=self.cid,
            funding_txid=self.funding_txid,
            funding_outnum=self.funding_outnum,
            funding=AmountSat(self.funding_sat),
            push=AmountMsat(self.push_msat),
            opener=0 if self.we_opened else 1,
            channel_flags=self.channel_flags,
            channel_type=self.channel_type,
            feerate_per_kw=self.feerate,
            minimum_depth=self.minimum_depth,
            our_config=to_wire_config(self.our.config),
            their_config=to_wire_config(self.their.config),
            our_funding_pubkey=self.our.funding_pubkey,
            their_funding_pubkey=self.their.funding_pubkey,
            their_basepoints=self.their.basepoints,
            their_first_per_commitment_point=self.their.first_point,
            # lightningd sends these in channel_reestablish and channel_ready (BOLT #2:
            # "`second_per_commitment_point` [is] the per-commitment point to be used for
            # commitment transaction #1").
            our_first_per_commitment_point=self.our.first_point,
            our_second_per_commitment_point=self.prefetch_second_point(),
            their_commit_sig=their_sig,
            our_upfront_shutdown_script=self.our.shutdown,
            their_upfront_shutdown_script=self.their.shutdown,
        )

    # --- shared checks -------------------------------------------------------------------

    def check_their_params(self, msg: peer_wire.OpenChannel | peer_wire.AcceptChannel) -> None:
        """Checks both roles apply to the other side's message (BadParams on failure)."""
        assert self.their is not None
        bounds.check_pubkeys(point_names(msg))
        bounds.check_upfront_shutdown(
            msg.tlvs.upfront_shutdown_script, self.limits, self.channel_type
        )
        bounds.check_their_config(
            funding_sat=self.funding_sat,
            feerate_per_kw=self.feerate,
            their=self.their.config,
            our=self.our.config,
            limits=self.limits,
            channel_type=self.channel_type,
        )
        bounds.check_initial_commitments(
            funding_sat=self.funding_sat,
            push_msat=self.push_msat,
            feerate_per_kw=self.feerate,
            we_opened=self.we_opened,
            our_reserve_sat=self.our.config.channel_reserve_sat,
            their_reserve_sat=self.their.config.channel_reserve_sat,
            channel_type=self.channel_type,
        )

    def upfront_tlv(self) -> bytes:
        # BOLT #2: "if it includes `open_channel_tlvs`: MUST include
        # `upfront_shutdown_script`" (zero-length when we commit to none).
        return self.our.shutdown

    def set_our_reserve(self, dust_floor_sat: int, requested_sat: int | None) -> None:
        reserve = bounds.our_reserve(self.funding_sat, dust_floor_sat, requested_sat)
        self.our.config = replace(self.our.config, channel_reserve_sat=reserve)
        self.status.debug(f"Setting their reserve to {reserve}sat")

    # --- opener ---------------------------------------------------------------------------

    def funder(self, start: wire.OpeningdFunderStart) -> wire.OpeningdFunderReply:
        self.start_funding(start)
        self.send_open_channel()
        accept = self.wait(
            "accept_channel", master=(wire.OpeningdFunderCancel,), peer=(peer_wire.AcceptChannel,)
        )
        if isinstance(accept, wire.OpeningdFunderCancel):
            self.cancel()
        assert isinstance(accept, peer_wire.AcceptChannel)
        try:
            self.check_accept_channel(accept)
        except BadParams as exc:
            raise self.bad_params(exc) from None
        self.sub.master.send(self.funder_start_reply().encode())
        self.status.billboard("Funding channel start: awaiting funding_txid")

        done = self.wait(
            "openingd_funder_complete",
            master=(wire.OpeningdFunderComplete, wire.OpeningdFunderCancel),
            timed=False,
        )
        if isinstance(done, wire.OpeningdFunderCancel):
            self.cancel()
        assert isinstance(done, wire.OpeningdFunderComplete)
        self.funding_txid, self.funding_outnum = done.funding_txid, done.funding_outnum
        their_sig = self.send_funding_created()
        return wire.OpeningdFunderReply(channel=self.opened_channel(their_sig), cipher_state=b"")

    def start_funding(self, start: wire.OpeningdFunderStart) -> None:
        """lightningd's request, checked against what the peer negotiated."""
        self.we_opened = True
        self.funding_sat = start.funding.sat
        self.push_msat = start.push.msat
        self.feerate = start.feerate_per_kw
        self.channel_flags = start.channel_flags
        self.our.shutdown = start.upfront_shutdown_script
        # BOLT #2 (sender): "if both nodes advertised `option_support_large_channel`: MAY
        # set `funding_satoshis` greater than or equal to 2^24 satoshi. otherwise: MUST
        # set `funding_satoshis` to less than 2^24 satoshi."
        large = self.limits.negotiated(Feature.OPTION_SUPPORT_LARGE_CHANNEL)
        if self.funding_sat >= bounds.LARGE_CHANNEL_SAT and not large:
            raise Failed(
                f"funding_satoshis must be < {bounds.LARGE_CHANNEL_SAT}, not {self.funding_sat}"
            )
        # BOLT #2 (sender): "MUST set `push_msat` to equal or less than 1000 *
        # `funding_satoshis`."
        if self.push_msat > self.funding_sat * 1000:
            raise Failed(f"push_msat {self.push_msat} above funding {self.funding_sat}sat")
        try:
            self.channel_type = ctype.offer_type(
                start.channel_type,
                self.init.our_features,
                self.init.their_features,
                announce=bool(self.channel_flags & ANNOUNCE_CHANNEL),
            )
        except ValueError as exc:
            raise Failed(str(exc)) from None
        # BOLT #2 (sender): "MUST set `channel_reserve_satoshis` greater than or equal to
        # `dust_limit_satoshis`."
        requested = start.reserve.sat if start.reserve is not None else None
        self.set_our_reserve(self.our.config.dust_limit_sat, requested)
        # BOLT #2 (sender): "MUST ensure `temporary_channel_id` is unique from any other
        # channel ID with the same peer."
        self.temp_cid = self.init.dev_temporary_channel_id or os.urandom(32)
        self.cid = self.temp_cid

    def send_open_channel(self) -> None:
        c = self.our.config
        self.send_peer(
            peer_wire.OpenChannel(
                chain_hash=self.init.chain_hash,
                temporary_channel_id=self.temp_cid,
                funding_satoshis=self.funding_sat,
                push_msat=self.push_msat,
                dust_limit_satoshis=c.dust_limit_sat,
                max_htlc_value_in_flight_msat=c.max_htlc_value_in_flight_msat,
                channel_reserve_satoshis=c.channel_reserve_sat,
                htlc_minimum_msat=c.htlc_minimum_msat,
                feerate_per_kw=self.feerate,
                to_self_delay=c.to_self_delay,
                max_accepted_htlcs=c.max_accepted_htlcs,
                funding_pubkey=self.our.funding_pubkey,
                revocation_basepoint=self.our.basepoints.revocation,
                payment_basepoint=self.our.basepoints.payment,
                delayed_payment_basepoint=self.our.basepoints.delayed_payment,
                htlc_basepoint=self.our.basepoints.htlc,
                first_per_commitment_point=self.our.first_point,
                channel_flags=self.channel_flags,
                tlvs=peer_wire.OpenChannelTlvs(
                    upfront_shutdown_script=self.upfront_tlv(), channel_type=self.channel_type
                ),
            ).encode()
        )
        self.status.billboard("Funding channel start: offered, now waiting for accept_channel")

    def check_accept_channel(self, msg: peer_wire.AcceptChannel) -> None:
        bounds.check_temporary_channel_id(msg.temporary_channel_id, self.temp_cid)
        bounds.check_returned_channel_type(msg.tlvs.channel_type, self.channel_type)
        self.their = their_side(msg)
        zeroconf = ctype.has(self.channel_type, Feature.OPTION_ZEROCONF)
        bounds.check_minimum_depth(msg.minimum_depth, zeroconf)
        self.minimum_depth = msg.minimum_depth
        self.check_their_params(msg)

    def funder_start_reply(self) -> wire.OpeningdFunderStartReply:
        assert self.their is not None
        script = funding_output(self.our.funding_pubkey, self.their.funding_pubkey, 0)
        return wire.OpeningdFunderStartReply(
            funding_scriptpubkey=bytes(script.script_pubkey),
            upfront_shutdown_negotiated=self.limits.negotiated(
                Feature.OPTION_UPFRONT_SHUTDOWN_SCRIPT
            ),
            channel_type=self.channel_type,
            minimum_depth=self.minimum_depth,
        )

    def send_funding_created(self) -> bytes:
        """Sign their commitment, send funding_created; their signature on ours."""
        sig = self.hsm_sign_theirs(self.commitment(ours=False))
        self.send_peer(
            peer_wire.FundingCreated(
                temporary_channel_id=self.temp_cid,
                funding_txid=self.funding_txid,
                funding_output_index=self.funding_outnum,
                signature=sig,
            ).encode()
        )
        # BOLT #1: the funder uses temporary_channel_id "for all error messages sent
        # before (and including) the `funding_created` message"; from now on, channel_id.
        self.cid = derive_channel_id(self.funding_txid, self.funding_outnum)
        self.status.billboard("Funding channel: create first tx, now waiting for their signature")
        # What their signature is checked on, built while they sign.
        ours = self.commitment(ours=True)
        self.prefetch_second_point()
        signed = self.wait("funding_signed", peer=(peer_wire.FundingSigned,))
        assert isinstance(signed, peer_wire.FundingSigned)
        # BOLT #2: "The sender MUST set: `channel_id` by exclusive-OR of the
        # `funding_txid` and the `funding_output_index` from the `funding_created`".
        if signed.channel_id != self.cid:
            raise self.error(
                f"funding_signed ids don't match: expected {self.cid.hex()}"
                f" got {signed.channel_id.hex()}"
            )
        self.check_their_sig(signed.signature, ours)
        return signed.signature

    def cancel(self) -> NoReturn:
        # As Core Lightning: the peer hears "canceled by us", the user "canceled by RPC".
        self.send_peer(make_error(self.cid, "Channel open canceled by us"))
        raise Failed("Channel open canceled by RPC")

    # --- accepter --------------------------------------------------------------------------

    def fundee(self, raw_open: bytes) -> wire.OpeningdFundee:
        try:
            msg = peer_wire.OpenChannel.decode(raw_open)
        except WireError as exc:
            # BOLT #1: a malformed known message: "MUST close the connection".
            raise Failed(f"Parsing open_channel: {exc}", peer_alive=False) from None
        self.we_opened = False
        self.temp_cid = self.cid = msg.temporary_channel_id
        try:
            self.check_open_channel(msg)
        except BadParams as exc:
            raise self.bad_params(exc) from None
        self.ask_master(msg)
        self.send_accept_channel()
        created = self.wait("funding_created", peer=(peer_wire.FundingCreated,))
        assert isinstance(created, peer_wire.FundingCreated)
        return self.sign_funding(created)

    def check_open_channel(self, msg: peer_wire.OpenChannel) -> None:
        limits = self.limits
        bounds.check_chain_hash(msg.chain_hash, limits.chain_hash)
        # BOLT #2: "if `option_dual_fund` has been negotiated: fail the channel."
        if limits.negotiated(Feature.OPTION_DUAL_FUND):
            bounds.fail("open_channel with option_dual_fund negotiated: use open_channel2")
        self.channel_flags = msg.channel_flags
        announce = bool(msg.channel_flags & ANNOUNCE_CHANNEL)
        self.channel_type = bounds.accept_channel_type(msg.tlvs.channel_type, limits, announce)
        bounds.check_funding_size(
            msg.funding_satoshis, limits.negotiated(Feature.OPTION_SUPPORT_LARGE_CHANNEL)
        )
        bounds.check_push(msg.push_msat, msg.funding_satoshis)
        bounds.check_feerate(msg.feerate_per_kw, limits.min_feerate, limits.max_feerate)
        self.funding_sat, self.push_msat = msg.funding_satoshis, msg.push_msat
        self.feerate = msg.feerate_per_kw
        self.their = their_side(msg)
        # Our reserve: 1% of the funding, at least their dust limit (BOLT #2 accepter rule).
        self.set_our_reserve(self.their.config.dust_limit_sat, None)
        zeroconf = ctype.has(self.channel_type, Feature.OPTION_ZEROCONF)
        self.minimum_depth = 0 if zeroconf else self.init.minimum_depth
        self.check_their_params(msg)

    def ask_master(self, msg: peer_wire.OpenChannel) -> None:
        """openingd_got_offer: lightningd may refuse, and gives our shutdown script."""
        c = self.their.config if self.their else None
        assert c is not None
        self.sub.master.send(
            wire.OpeningdGotOffer(
                funding=AmountSat(msg.funding_satoshis),
                push=AmountMsat(msg.push_msat),
                dust_limit=AmountSat(c.dust_limit_sat),
                max_htlc_value_in_flight=AmountMsat(c.max_htlc_value_in_flight_msat),
                channel_reserve=AmountSat(c.channel_reserve_sat),
                htlc_minimum=AmountMsat(c.htlc_minimum_msat),
                feerate_per_kw=msg.feerate_per_kw,
                to_self_delay=c.to_self_delay,
                max_accepted_htlcs=c.max_accepted_htlcs,
                channel_flags=msg.channel_flags,
                shutdown_scriptpubkey=msg.tlvs.upfront_shutdown_script or b"",
                channel_type=self.channel_type,
            ).encode()
        )
        # As Core Lightning: a blocking read of lightningd's answer, the peer left unread.
        # Failing on a peer message meanwhile would exit under lightningd's reply.
        reply = self.master_msg((wire.OpeningdGotOfferReply,), "openingd_got_offer_reply")
        assert isinstance(reply, wire.OpeningdGotOfferReply)
        if reply.rejection is not None:
            # The reason lightningd gives is what the peer is told.
            raise self.error(reply.rejection)
        self.our.shutdown = reply.our_upfront_shutdown_script

    def send_accept_channel(self) -> None:
        c = self.our.config
        self.send_peer(
            peer_wire.AcceptChannel(
                temporary_channel_id=self.temp_cid,
                dust_limit_satoshis=c.dust_limit_sat,
                max_htlc_value_in_flight_msat=c.max_htlc_value_in_flight_msat,
                channel_reserve_satoshis=c.channel_reserve_sat,
                htlc_minimum_msat=c.htlc_minimum_msat,
                minimum_depth=self.minimum_depth,
                to_self_delay=c.to_self_delay,
                max_accepted_htlcs=c.max_accepted_htlcs,
                funding_pubkey=self.our.funding_pubkey,
                revocation_basepoint=self.our.basepoints.revocation,
                payment_basepoint=self.our.basepoints.payment,
                delayed_payment_basepoint=self.our.basepoints.delayed_payment,
                htlc_basepoint=self.our.basepoints.htlc,
                first_per_commitment_point=self.our.first_point,
                # BOLT #2: "MUST set `channel_type` to the `channel_type` from `open_channel`".
                tlvs=peer_wire.AcceptChannelTlvs(
                    upfront_shutdown_script=self.upfront_tlv(), channel_type=self.channel_type
                ),
            ).encode()
        )
        self.status.billboard(
            "Incoming channel: accepted, now waiting for them to create funding tx"
        )
        self.prefetch_second_point()

    def sign_funding(self, created: peer_wire.FundingCreated) -> wire.OpeningdFundee:
        # BOLT #2: "`temporary_channel_id` the same as the `temporary_channel_id` in
        # the `open_channel` message."
        if created.temporary_channel_id != self.temp_cid:
            raise self.error(
                f"funding_created ids don't match: sent {self.temp_cid.hex()}"
                f" got {created.temporary_channel_id.hex()}"
            )
        self.funding_txid = created.funding_txid
        self.funding_outnum = created.funding_output_index
        # BOLT #2 (recipient): "if `signature` is incorrect OR non-compliant with
        # LOW-S-standard rule: MUST send a `warning` and close the connection, or send
        # an `error` and fail the channel."
        self.check_their_sig(created.signature, self.commitment(ours=True))
        our_sig = self.hsm_sign_theirs(self.commitment(ours=False))
        # BOLT #2: funding_signed's `channel_id` is the exclusive-OR of `funding_txid`
        # and `funding_output_index`.
        self.cid = derive_channel_id(self.funding_txid, self.funding_outnum)
        signed = peer_wire.FundingSigned(channel_id=self.cid, signature=our_sig)
        return wire.OpeningdFundee(
            channel=self.opened_channel(created.signature),
            funding_signed=signed.encode(),
            cipher_state=b"",
        )

    # --- the end ------------------------------------------------------------------------

    def first_move(self) -> Message:
        """The accepter's open_channel came with init; else lightningd or the peer moves."""
        if self.init.open_channel:
            return self.fundee(self.init.open_channel)
        move = self.wait(
            "openingd_funder_start",
            master=(wire.OpeningdFunderStart,),
            peer=(peer_wire.OpenChannel,),
            timed=False,
        )
        if isinstance(move, peer_wire.OpenChannel):
            return self.fundee(move.encode())
        assert isinstance(move, wire.OpeningdFunderStart)
        return self.funder(move)

    def hand_back(self, msg: wire.OpeningdFunderReply | wire.OpeningdFundee) -> None:
        """Success: everything to store, with the peer fd and its cipher state."""
        fd, state = self.peer.detach()
        self.sub.master.send(replace(msg, cipher_state=state.to_bytes()).encode(), fds=[fd])
        os.close(fd)
        self.status.debug(f"Sent {msg.NAME} with fd")

    def failed(self, f: Failed) -> None:
        self.status.debug(f"aborted opening negotiation: {f.reason}")
        alive = f.peer_alive
        told = False
        if f.send is not None:
            try:
                self.peer.write_message(f.send)
                told = True
            except OSError:
                alive = False
        fds: list[int] = []
        state = b""
        if alive:
            try:
                fd, crypto = self.peer.detach()
                fds, state = [fd], crypto.to_bytes()
            except HandoverError:
                alive = False
        msg = wire.OpeningdFailed(
            reason=f.reason, by_peer=f.by_peer, peer_alive=alive, cipher_state=state
        )
        self.sub.master.send(msg.encode(), fds=fds)
        for fd in fds:
            os.close(fd)
        if not alive:
            self.hang_up(drain=told)

    def hang_up(self, drain: bool) -> None:
        """Close the peer; after our last message, only once it has had time to read it."""
        if drain:
            with contextlib.suppress(OSError):
                self.peer.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + DRAIN_SECS
                while (left := deadline - time.monotonic()) > 0:
                    self.peer.sock.settimeout(left)
                    if not self.peer.sock.recv(65536):
                        break
        self.peer.close()


# A public, throwaway key for the warm-up: no channel's.
WARM_UP_KEY = b"\x01" * 32


def warm_up() -> None:
    """Build, sign and check one first commitment, and seal one message, in the zygote
    before it forks (lightningd/zygote.py): what these build on first use (bitcointx's
    dispatch caches, the AEAD) is then shared by every openingd instead of made in each."""
    point = PrivateKey(WARM_UP_KEY).public_key.format()
    commitment = build_initial_commitment_tx(
        funding_txid=bytes(32),
        funding_outnum=0,
        funding_sat=100_000,
        keys=CommitmentKeys(
            local_funding_pubkey=point,
            remote_funding_pubkey=point,
            revocation_pubkey=derive_revocation_pubkey(point, point),
            local_delayed_pubkey=derive_simple_pubkey(point, point),
            remote_pubkey=point,
            local_htlc_pubkey=point,
            remote_htlc_pubkey=point,
        ),
        to_self_delay=144,
        dust_limit_sat=546,
        feerate_per_kw=253,
        to_local_msat=100_000_000,
        to_remote_msat=0,
        obscurer=commitment_number_obscurer(point, point),
        local_is_opener=True,
        local_reserve_sat=1000,
        remote_reserve_sat=1000,
        channel_type=ctype.commit_format(ctype.encode(ctype.STATIC_REMOTEKEY)),
    )
    sig = sign_commitment_tx(commitment, WARM_UP_KEY)
    verify_commitment_sig(commitment, point, sig)
    signed = peer_wire.FundingSigned(channel_id=bytes(32), signature=der_to_compact(sig))
    state = CryptoState(
        sk=WARM_UP_KEY, rk=WARM_UP_KEY, sn=0, rn=0, sck=WARM_UP_KEY, rck=WARM_UP_KEY
    )
    peer_wire.decode(state.decrypt_message(state.encrypt_message(signed.encode())))


def read_init(sub: subdaemon.Subdaemon) -> wire.OpeningdInit:
    raw = sub.master.recv()
    try:
        return wire.OpeningdInit.decode(raw)
    except WireError as exc:
        raise FatalError(FailReason.MASTER_IO, f"bad openingd_init: {exc}") from None


def main(sub: subdaemon.Subdaemon) -> None:
    init = read_init(sub)
    sub.status.peer_id = init.peer_id
    daemon = Openingd(sub, init)
    try:
        result = daemon.first_move()
    except Failed as f:
        daemon.failed(f)
        return
    assert isinstance(result, wire.OpeningdFunderReply | wire.OpeningdFundee)
    daemon.hand_back(result)


if __name__ == "__main__":
    subdaemon.run("openingd", main)
