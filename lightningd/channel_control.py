"""Channel lock-in, in the master's event loop: the part of channeld a new channel needs.

From funding_signed until both sides have sent `channel_ready`, a channel waits for its
funding transaction to be buried; on reconnection it only exchanges `channel_reestablish`.
Core Lightning runs a channeld per peer for this; here such a channel is idle work: one txid
watch (lightningd/chaintopology.py) and, now and then, a message of fewer than 200 bytes to
a peer that lightningd already keeps parked in its event loop (peer_control.py). A process
per channel would need its own hsmd socket and a connection handover to send two messages,
and would hold the connection hostage from the other subdaemons. The messages need nothing
secret: our per-commitment points 0 and 1 are public and openingd, which may ask hsmd for
them, reported them with the channel (`opened_channel`); lightningd itself has no
COMMITMENT_POINT capability and needs none. Once channels carry HTLCs (commitment_signed,
revoke_and_ack need hsmd signatures) a real channeld takes the connection; this module
then keeps only the funding watch, as Core Lightning's channel_control.c does.

What it does, as BOLT #2 "The `channel_ready` Message" and "Message Retransmission" say:

- watches each AWAITING_LOCKIN (and NORMAL) channel's funding txid; the depth updates the
  status, and at `minimum_depth` the short_channel_id is stored and `channel_ready` sent
  (with a random `alias` where scid_alias applies) if the peer is connected and in sync;
- stores the peer's `channel_ready` whenever it comes (early ones are kept, duplicates
  ignored); with both sent and the funding buried the channel becomes CHANNELD_NORMAL;
  a reorg that unburies the funding before that sends it back to waiting;
- on reconnection sends `channel_reestablish` for a channel without updates, checks
  theirs, and then retransmits `channel_ready` (both next_commitment_numbers are 1).
- forgets a channel opened to us whose funding tx it has not seen 2016 blocks after
  storing it ("A non-funding node (fundee): SHOULD forget the channel"), as CLN does;
  and one we opened whose funding tx will never be sent (`cancel_unfunded`), with an
  `error` to the peer.

And, for a public channel, BOLT #7 "The `announcement_signatures` Message": once NORMAL with
the funding six deep, our node and bitcoin signatures (from hsmd) go to the peer, once per
connection; theirs are verified against the channel_announcement we build and stored; with
both, the full channel_announcement, our channel_update and our node_announcement go to
`on_local_gossip` (gossip_control hands them to gossipd).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from coincurve import PublicKey

from common import channel_type as ctype
from common.features import Feature, negotiated, our_features
from common.gossip_sign import (
    Endpoints,
    Policy,
    SidePair,
    channel_announcement,
    channel_announcement_hash,
    channel_update,
    check_channel_announcement,
    check_side_signatures,
    encode_addresses,
    node_announcement,
    order_endpoints,
    with_signature,
    with_signatures,
)
from common.read_peer_msg import ALL_CHANNELS, make_error, make_warning
from lightningd.chaintopology import Block, TxCallback
from lightningd.channel import (
    REMOTE,
    Channel,
    ChannelState,
    display_txid,
    forget_channel,
    save_first_blocknum,
    save_lockin,
    save_remote_ann_sigs,
    scid_to_str,
    set_channel_state,
    str_to_scid,
)
from lightningd.hsm_control import HsmError
from wire import peer_wiregen as wire

if TYPE_CHECKING:
    from lightningd.lightningd import LightningD
    from lightningd.peer_control import Peer

# Channels this module looks after: no channeld takes them yet.
_OURS = (ChannelState.CHANNELD_AWAITING_LOCKIN, ChannelState.CHANNELD_NORMAL)
# Random aliases take block heights no chain will reach for centuries, so an alias can never
# be a real short_channel_id of ours (BOLT #2: "MUST NOT ... use an alias which collides
# with a `short_channel_id` of a channel on the same node").
_ALIAS_MIN_BLOCK = 1 << 23
_MAX_BLOCK = 1 << 24
# BOLT #7: "MUST NOT send `announcement_signatures` messages until `channel_ready` has been
# sent and received AND the funding transaction has at least six confirmations."
ANNOUNCE_DEPTH = 6
# BOLT #2: "A non-funding node (fundee): SHOULD forget the channel if it does not see the
# correct funding transaction after a timeout of 2016 blocks."
FUNDEE_FORGET_BLOCKS = 2016

# Takes one signed gossip message of ours (channel_announcement, channel_update,
# node_announcement), as it goes on the wire.
LocalGossipHook = Callable[[bytes], Awaitable[None]]


def make_scid(blockheight: int, txindex: int, outnum: int) -> int:
    return (blockheight << 40) | (txindex << 16) | outnum


def valid_point(point: bytes) -> bool:
    try:
        PublicKey(point)
    except ValueError:
        return False
    return True


class ReestablishError(Exception):
    """Their channel_reestablish does not fit our channel: the error text for them."""


def check_reestablish(msg: wire.ChannelReestablish) -> None:
    """BOLT #2 receiver rules for a channel with no updates yet: we have sent no
    `commitment_signed` after funding_created/funding_signed (commitment 0) and no
    `revoke_and_ack`."""
    # "if `next_commitment_number` is zero: MUST immediately fail the channel".
    if msg.next_commitment_number == 0:
        raise ReestablishError("bad reestablish: next_commitment_number 0")
    # "if `next_commitment_number` is not equal to the commitment number of the next
    # `commitment_signed` that the receiving node would send: SHOULD send an `error`".
    if msg.next_commitment_number != 1:
        raise ReestablishError(
            f"bad reestablish commitment_number: {msg.next_commitment_number} vs 1"
        )
    # "if it has not sent `revoke_and_ack`, AND `next_revocation_number` is not equal to 0:
    # SHOULD send an `error` and fail the channel." (A number ahead of ours may mean we lost
    # data: then we "MUST NOT broadcast" and "SHOULD send an `error`"; we broadcast nothing.)
    if msg.next_revocation_number != 0:
        raise ReestablishError(
            f"bad reestablish revocation_number: {msg.next_revocation_number} vs 0"
        )
    # With next_revocation_number 0 the expected secret is all zeroes: "if
    # `your_last_per_commitment_secret` does not match the expected values: SHOULD send an
    # `error` and fail the channel."
    if msg.your_last_per_commitment_secret != bytes(32):
        raise ReestablishError("bad reestablish: your_last_per_commitment_secret is not zero")
    # "MUST ignore `my_current_per_commitment_point`, but MAY require it to be a valid point."
    if not valid_point(msg.my_current_per_commitment_point):
        raise ReestablishError("bad reestablish: my_current_per_commitment_point is invalid")


async def _no_gossipd(msg: bytes) -> None:
    """The default on_local_gossip: nowhere to send it (the message is already logged)."""


class ChannelControl:
    def __init__(self, ld: LightningD) -> None:
        self.ld = ld
        # The connection on which each channel (by dbid) may send channel messages: the one
        # it was opened on, or one on which the peer's channel_reestablish has arrived.
        self._in_sync: dict[int, Peer] = {}
        # Channels owing the peer a channel_ready retransmission once the funding is buried
        # (reestablished while it was not, e.g. during a reorg).
        self._owed: set[int] = set()
        # Where our own gossip goes: gossip_control sets it (each message is logged too).
        self.on_local_gossip: LocalGossipHook = _no_gossipd
        # The connection on which each channel's announcement_signatures went out.
        self._ann_sigs_sent: dict[int, Peer] = {}
        # The peer's announcement_signatures that came before we could check them.
        self._deferred_ann_sigs: dict[int, wire.AnnouncementSignatures] = {}
        # Channels whose gossip went to on_local_gossip in this run.
        self._announced: set[int] = set()
        self._last_timestamp = 0
        # Each watched channel's funding watch, to drop it when the channel is forgotten.
        self._watches: dict[int, TxCallback] = {}

    # -- the hooks -------------------------------------------------------------------------

    def start(self) -> None:
        """Stored channels: watch their funding (before the topology's first blocks)."""
        for channel in self.ld.channels:
            if channel.state in _OURS:
                self._watch(channel)
        assert self.ld.topology is not None
        self.ld.topology.add_block_listener(self._on_block)

    def channel_stored(self, channel: Channel, peer: Peer) -> None:
        """opening_control stored a new channel; `peer` is the connection it was opened on."""
        self._in_sync[channel.dbid] = peer
        self._watch(channel)

    async def peer_connected(self, peer: Peer) -> None:
        """BOLT #2: "upon reconnection: ... MUST transmit `channel_reestablish` for each
        channel" and "MUST wait to receive the other node's `channel_reestablish` message
        before sending any other messages for that channel"."""
        for channel in self.ld.channels_of(peer.node_id):
            if channel.state in _OURS:
                self._in_sync.pop(channel.dbid, None)
                self._owed.discard(channel.dbid)
                self._ann_sigs_sent.pop(channel.dbid, None)
                await self._send(peer, channel, self.reestablish_msg(channel).encode())

    async def channel_message(self, peer: Peer, channel_id: bytes, msg: wire.Message) -> None:
        """A message from the peer for one of its stored channels."""
        channel = self._find(peer.node_id, channel_id)
        if channel is None or channel.state not in _OURS:
            self.ld.log.debug("lightningd", f"Ignoring {msg.NAME}", peer.node_id)
            return
        if isinstance(msg, wire.ChannelReady):
            await self._got_channel_ready(peer, channel, msg)
        elif isinstance(msg, wire.ChannelReestablish):
            await self._got_reestablish(peer, channel, msg)
        elif isinstance(msg, wire.AnnouncementSignatures):
            await self._got_announcement_signatures(peer, channel, msg)
        else:
            self._log(channel).debug(f"Ignoring {msg.NAME}: not handled before lock-in")

    # -- the funding transaction's depth ---------------------------------------------------

    def _watch(self, channel: Channel) -> None:
        assert self.ld.topology is not None

        async def depth_changed(depth: int, height: int | None, txindex: int | None) -> None:
            await self._depth_changed(channel, depth, height, txindex)

        self._watches[channel.dbid] = depth_changed
        self.ld.topology.watch_txid(channel.opened.funding_txid, depth_changed)

    # -- a fundee's channel whose funding never came ---------------------------------------

    async def _on_block(self, block: Block, height: int) -> None:
        for channel in [c for c in self.ld.channels if self._never_funded(c, height)]:
            self._forget(channel, height)

    def peer_error(self, peer_id: bytes, channel_id: bytes) -> None:
        """BOLT #1: on an `error` "for a known channel" (all-zero: every channel with the
        sender) the receiver "MUST fail the channel". One opened to us, with nothing pushed
        to us and whose funding tx we never saw, has nothing of ours at stake: it is
        forgotten (the opener gave up on it, or lost it in a crash). The others wait: the
        2016-block rule, or a close this node cannot make yet; the peer loop logged it."""
        for channel in [c for c in self.ld.channels if c.peer_id == peer_id]:
            if channel_id not in (ALL_CHANNELS, channel.opened.channel_id):
                continue
            if self._unfunded_inbound(channel) and not channel.opened.push.msat:
                self._log(channel).unusual("Forgetting channel: the peer failed it, unfunded")
                self.forget(channel)

    def _unfunded_inbound(self, channel: Channel) -> bool:
        if channel.opener != REMOTE or channel.state != ChannelState.CHANNELD_AWAITING_LOCKIN:
            return False
        seen = self.ld.db.query_one(
            "SELECT 1 FROM transactions WHERE id = ?", (channel.opened.funding_txid,)
        )
        return seen is None

    def _never_funded(self, channel: Channel, height: int) -> bool:
        """A fundee's channel whose funding tx was never seen, FUNDEE_FORGET_BLOCKS on.

        Never seen at all, not just unconfirmed now: a funding tx seen once keeps its row in
        `transactions` through reorgs and the restart rescan, which unconfirm it for a while.
        """
        if channel.opener != REMOTE or channel.state != ChannelState.CHANNELD_AWAITING_LOCKIN:
            return False  # (checked first: only these need a first_blocknum)
        if channel.first_blocknum is None:  # stored before we counted: count from now
            channel.first_blocknum = height
            save_first_blocknum(self.ld.db, channel)
        return height - channel.first_blocknum >= FUNDEE_FORGET_BLOCKS and (
            self._unfunded_inbound(channel)
        )

    def _forget(self, channel: Channel, height: int) -> None:
        assert channel.first_blocknum is not None
        self._log(channel).unusual(
            f"Forgetting channel: It has been {height - channel.first_blocknum} blocks without"
            f" the funding transaction {display_txid(channel.opened.funding_txid)} getting"
            " confirmed. We are giving up on this channel."
        )
        self.forget(channel)

    # -- a channel of ours whose funding tx will never be sent ------------------------------

    async def cancel_unfunded(self, channel: Channel, reason: str) -> None:
        """Forget a channel we opened whose funding tx will never be broadcast (a
        multifundchannel with another peer failing, or bitcoind refusing the tx), and tell
        the peer, as Core Lightning's fundchannel_cancel does after fundchannel_complete.

        BOLT #1: on an `error` whose channel_id is "for a known channel" the receiver "MUST
        fail the channel"; with no funding on chain the peer has nothing to lose by it.
        Forgotten first and durably: if we die before the error leaves, the peer still
        forgets the channel once the funding fails to appear (BOLT #2's 2016 blocks).
        """
        self._log(channel).unusual(f"Forgetting channel before its funding broadcast: {reason}")
        self.forget(channel)
        peer = self.ld.peers.peers.get(channel.peer_id)
        if peer is not None:
            await self._send(peer, channel, make_error(channel.opened.channel_id, reason))

    def forget(self, channel: Channel) -> None:
        """Delete a channel with nothing at stake: its funding watch, its row (synced, with
        a funding tx of ours never confirmed), and what this module keeps about it."""
        callback = self._watches.pop(channel.dbid, None)
        if callback is not None and self.ld.topology is not None:
            # This channel's watch only: one multifundchannel tx funds other channels too.
            self.ld.topology.unwatch_txid(channel.opened.funding_txid, callback)
        forget_channel(self.ld.db, channel)
        self.ld.channels[:] = [c for c in self.ld.channels if c is not channel]
        for state in (self._in_sync, self._ann_sigs_sent, self._deferred_ann_sigs):
            state.pop(channel.dbid, None)
        self._owed.discard(channel.dbid)
        self._announced.discard(channel.dbid)

    async def _depth_changed(
        self, channel: Channel, depth: int, height: int | None, txindex: int | None
    ) -> None:
        previous, channel.depth = channel.depth, depth
        if depth < channel.lockin_depth or height is None or txindex is None:
            self._unburied(channel, previous)
            return
        scid = scid_to_str(make_scid(height, txindex, channel.opened.funding_outnum))
        if channel.short_channel_id != scid:
            channel.short_channel_id = scid
            save_lockin(self.ld.db, channel)
            self._log(channel).info(f"Funding tx reached depth {depth}: short_channel_id {scid}")
            self.ld.dev_crash("lockin")
        await self._send_channel_ready(channel)
        self._maybe_normal(channel)
        await self._maybe_announce(channel)

    def _unburied(self, channel: Channel, previous: int) -> None:
        """Below minimum_depth: still waiting, or a reorg took confirmations away.

        Depth that only grows is not a reorg: after a restart the topology re-processes its
        last blocks (--rescan) and the depth climbs back from 0 to where it was.
        """
        if channel.depth >= previous or channel.short_channel_id is None:
            self._log(channel).debug(f"Funding tx depth {channel.depth}")
            return
        if channel.state == ChannelState.CHANNELD_NORMAL:
            # A buried funding tx lost depth: past lock-in there is nothing to undo here.
            self._log(channel).unusual(f"Funding tx reorganized to depth {channel.depth}")
            return
        # Not locked in yet: back to waiting, and the short_channel_id may change.
        self._log(channel).unusual(
            f"Funding tx reorganized to depth {channel.depth}: waiting for lock-in again"
        )
        channel.short_channel_id = None
        save_lockin(self.ld.db, channel)

    def _buried(self, channel: Channel) -> bool:
        return channel.depth >= channel.lockin_depth and channel.short_channel_id is not None

    # -- channel_ready ---------------------------------------------------------------------

    async def _send_channel_ready(self, channel: Channel, retransmit: bool = False) -> None:
        """Once buried, to a connected peer in sync: once, or again after reestablish."""
        if retransmit:
            self._owed.add(channel.dbid)
        if channel.channel_ready_sent and channel.dbid not in self._owed:
            return
        peer = self._peer_in_sync(channel)
        if peer is None or not self._buried(channel):
            return
        msg = self.channel_ready_msg(channel, peer)
        if not await self._send(peer, channel, msg.encode()):
            return
        self._owed.discard(channel.dbid)
        if not channel.channel_ready_sent:
            channel.channel_ready_sent = True
            save_lockin(self.ld.db, channel)
            self._log(channel).info("Sent channel_ready")

    def channel_ready_msg(self, channel: Channel, peer: Peer) -> wire.ChannelReady:
        alias = self._local_alias(channel) if self._wants_alias(channel, peer) else None
        return wire.ChannelReady(
            channel_id=channel.opened.channel_id,
            # BOLT #2: "MUST set `second_per_commitment_point` to the per-commitment point
            # to be used for commitment transaction #1".
            second_per_commitment_point=channel.opened.our_second_per_commitment_point,
            tlvs=wire.ChannelReadyTlvs(short_channel_id=alias),
        )

    @staticmethod
    def _wants_alias(channel: Channel, peer: Peer) -> bool:
        """BOLT #2: "if `option_scid_alias` was negotiated: MUST set `short_channel_id`
        `alias`" (otherwise MAY: we don't). Negotiated: in the channel_type, or offered in
        both inits."""
        return ctype.has(channel.opened.channel_type, Feature.OPTION_SCID_ALIAS) or negotiated(
            our_features(), peer.init.features, Feature.OPTION_SCID_ALIAS
        )

    def _local_alias(self, channel: Channel) -> int:
        """Our alias for the channel: random, stored before it is ever sent, and (BOLT #2)
        not sent "for multiple peers": unique among our channels."""
        if channel.alias_local is None:
            taken = {c.alias_local for c in self.ld.channels}
            alias = None
            while alias is None or alias in taken:
                block = _ALIAS_MIN_BLOCK + secrets.randbelow(_MAX_BLOCK - _ALIAS_MIN_BLOCK)
                alias = make_scid(block, secrets.randbelow(1 << 24), secrets.randbelow(1 << 16))
            channel.alias_local = alias
            save_lockin(self.ld.db, channel)
        return channel.alias_local

    async def _got_channel_ready(
        self, peer: Peer, channel: Channel, msg: wire.ChannelReady
    ) -> None:
        point = msg.second_per_commitment_point
        if not valid_point(point):
            await self._send(
                peer, channel, make_warning(channel.opened.channel_id, "Bad channel_ready point")
            )
            return
        alias = msg.tlvs.short_channel_id
        if channel.channel_ready_received:
            # BOLT #2: "upon reconnection: MUST ignore any redundant `channel_ready` it
            # receives"; a sender "MAY send multiple `channel_ready` messages to the same
            # peer with different `alias` values" (the recipient keeps one).
            if point != channel.their_next_per_commit_point:
                self._log(channel).unusual("channel_ready again with another point: ignored")
            elif alias is not None and alias != channel.alias_remote:
                channel.alias_remote = alias
                save_lockin(self.ld.db, channel)
                self._log(channel).info(f"Peer's new alias {scid_to_str(alias)}")
            return
        channel.their_next_per_commit_point = point
        channel.alias_remote = alias
        channel.channel_ready_received = True
        save_lockin(self.ld.db, channel)
        if self._buried(channel):
            self._log(channel).info("Got channel_ready")
        else:
            # The opener "is free to send this message at any time": keep it until ours.
            self._log(channel).info("Got channel_ready before the funding tx is buried: kept")
        self._maybe_normal(channel)
        await self._maybe_announce(channel)

    def _maybe_normal(self, channel: Channel) -> None:
        """Both sent channel_ready, and the funding is buried to minimum_depth."""
        if channel.state != ChannelState.CHANNELD_AWAITING_LOCKIN:
            return
        if not (channel.channel_ready_sent and channel.channel_ready_received):
            return
        if not self._buried(channel):
            return
        old = channel.state
        set_channel_state(self.ld.db, channel, ChannelState.CHANNELD_NORMAL)
        self._log(channel).info(
            f"Channel {channel.opened.channel_id.hex()}: State changed from {old.name}"
            f" to {channel.state.name}"
        )

    # -- reestablishment -------------------------------------------------------------------

    @staticmethod
    def reestablish_msg(channel: Channel) -> wire.ChannelReestablish:
        """BOLT #2 for a channel with no updates: the next commitment_signed we expect is
        #1, the next revoke_and_ack #0; "if `next_revocation_number` equals 0: MUST set
        `your_last_per_commitment_secret` to all zeroes"; our current point is #0's."""
        return wire.ChannelReestablish(
            channel_id=channel.opened.channel_id,
            next_commitment_number=1,
            next_revocation_number=0,
            your_last_per_commitment_secret=bytes(32),
            my_current_per_commitment_point=channel.opened.our_first_per_commitment_point,
        )

    async def _got_reestablish(
        self, peer: Peer, channel: Channel, msg: wire.ChannelReestablish
    ) -> None:
        try:
            check_reestablish(msg)
        except ReestablishError as exc:
            # Failing the channel means going on-chain: not implemented yet, so we tell the
            # peer and keep the channel as it is.
            self._log(channel).broken(f"{exc}: sending error")
            await self._send(peer, channel, make_error(channel.opened.channel_id, str(exc)))
            return
        if msg.tlvs.next_funding is not None:
            # BOLT #2: next_funding that matches no interactive funding of ours: "MUST send
            # `tx_abort` to let the sending node know that they can forget" it.
            abort = wire.TxAbort(channel_id=channel.opened.channel_id, data=b"")
            await self._send(peer, channel, abort.encode())
        self._in_sync[channel.dbid] = peer
        self._log(channel).debug("Got channel_reestablish")
        # BOLT #2: "if `next_commitment_number` is 1 in both the `channel_reestablish` it
        # sent and received ...: MUST retransmit `channel_ready`." Ours is always 1 and theirs
        # was checked to be 1; if the funding got buried while they were away, this is
        # the first time.
        await self._send_channel_ready(channel, retransmit=True)
        self._maybe_normal(channel)
        await self._maybe_announce(channel)

    # -- announcement (BOLT #7) -------------------------------------------------------------

    def _announceable(self, channel: Channel) -> bool:
        """BOLT #7: "If the `open_channel` message has the `announce_channel` bit set":
        "After `channel_ready` has been sent and received AND the funding transaction has
        enough confirmations to ensure that it won't be reorganized"."""
        return (
            channel.public
            and channel.state == ChannelState.CHANNELD_NORMAL
            and channel.channel_ready_sent
            and channel.channel_ready_received
            and channel.short_channel_id is not None
            and channel.depth >= ANNOUNCE_DEPTH
        )

    async def _maybe_announce(self, channel: Channel) -> None:
        """Depth, state or connection changed: send ours, check theirs, announce."""
        if not self._announceable(channel):
            return
        deferred = self._deferred_ann_sigs.pop(channel.dbid, None)
        if deferred is not None:
            await self._check_ann_sigs(channel, deferred)
        await self._send_ann_sigs(channel)
        await self._announce(channel)

    async def _got_announcement_signatures(
        self, peer: Peer, channel: Channel, msg: wire.AnnouncementSignatures
    ) -> None:
        if not channel.public:
            await self._send(
                peer, channel, make_warning(channel.opened.channel_id, "Channel is not public")
            )
            return
        if not self._announceable(channel):
            # BOLT #7: "If it has not sent `channel_ready`: SHOULD defer handling the
            # `announcement_signatures` until after it has sent `channel_ready`" (and we
            # can answer it only at six confirmations).
            self._deferred_ann_sigs[channel.dbid] = msg
            self._log(channel).info("Got announcement_signatures early: deferred")
            return
        await self._check_ann_sigs(channel, msg)
        # BOLT #7: "If it receives `announcement_signatures` for the funding transaction:
        # MUST respond with its own" (once per connection).
        await self._send_ann_sigs(channel)
        await self._announce(channel)

    def _unsigned_announcement(
        self, channel: Channel
    ) -> tuple[wire.ChannelAnnouncement, Endpoints]:
        o = channel.opened
        ends = order_endpoints(
            self.ld.node_id, channel.peer_id, o.our_funding_pubkey, o.their_funding_pubkey
        )
        assert channel.short_channel_id is not None
        scid = str_to_scid(channel.short_channel_id)
        # BOLT #7 `features` "based on what features were negotiated for this channel": none
        # of ours applies to channel_announcement (Core Lightning sends none either).
        return channel_announcement(self.ld.config.chain.chain_hash, scid, ends), ends

    async def _check_ann_sigs(self, channel: Channel, msg: wire.AnnouncementSignatures) -> None:
        """Verify the peer's signatures against the announcement we build; store them."""
        assert channel.short_channel_id is not None
        if msg.short_channel_id != str_to_scid(channel.short_channel_id):
            # BOLT #7: "If the `short_channel_id` doesn't match one of its funding
            # transactions: SHOULD send a `warning`."
            got = scid_to_str(msg.short_channel_id)
            await self._warn(channel, f"announcement_signatures for {got}, not ours")
            return
        ann, _ = self._unsigned_announcement(channel)
        h = channel_announcement_hash(ann.encode())
        theirs = SidePair(msg.node_signature, msg.bitcoin_signature)
        problem = check_side_signatures(
            h, channel.peer_id, channel.opened.their_funding_pubkey, theirs
        )
        if problem:
            # BOLT #7: "If the `node_signature` OR the `bitcoin_signature` is NOT correct:
            # MAY send a `warning` and close the connection" (we warn and ignore it).
            await self._warn(channel, f"announcement_signatures: {problem}")
            return
        if (channel.remote_ann_node_sig, channel.remote_ann_bitcoin_sig) == (
            theirs.node_signature,
            theirs.bitcoin_signature,
        ):
            self._log(channel).debug("Got announcement_signatures again")
            return
        channel.remote_ann_node_sig = theirs.node_signature
        channel.remote_ann_bitcoin_sig = theirs.bitcoin_signature
        save_remote_ann_sigs(self.ld.db, channel)
        self._log(channel).info("Got announcement_signatures")

    async def _our_ann_sigs(
        self, channel: Channel, ann: wire.ChannelAnnouncement
    ) -> SidePair | None:
        try:
            node_sig, bitcoin_sig = await self.ld.hsm.sign_channel_announcement(
                ann.encode(), channel.peer_id, channel.dbid
            )
        except HsmError as exc:
            self._log(channel).broken(f"hsmd would not sign the channel_announcement: {exc}")
            return None
        return SidePair(node_sig, bitcoin_sig)

    async def _send_ann_sigs(self, channel: Channel) -> None:
        """Ours, once per connection: BOLT #7 "Upon reconnection ... If it has NOT previously
        received `announcement_signatures` for the funding transaction: MUST send its own"
        (we send it on every connection, which that allows)."""
        peer = self._peer_in_sync(channel)
        if peer is None or self._ann_sigs_sent.get(channel.dbid) is peer:
            return
        self._ann_sigs_sent[channel.dbid] = peer  # before awaiting hsmd: never twice
        ann, _ = self._unsigned_announcement(channel)
        ours = await self._our_ann_sigs(channel, ann)
        msg = None
        if ours is not None:
            msg = wire.AnnouncementSignatures(
                channel_id=channel.opened.channel_id,
                short_channel_id=ann.short_channel_id,
                node_signature=ours.node_signature,
                bitcoin_signature=ours.bitcoin_signature,
            )
        if msg is None or not await self._send(peer, channel, msg.encode()):
            self._ann_sigs_sent.pop(channel.dbid, None)
            return
        self._log(channel).info("Sent announcement_signatures")

    async def _announce(self, channel: Channel) -> None:
        """BOLT #7: "If it has sent AND received a valid `announcement_signatures` message:
        If the funding transaction has at least 6 confirmations: SHOULD queue the
        `channel_announcement` message for its peers"; with it our channel_update and, as the
        channel makes our node known, our node_announcement."""
        if channel.dbid in self._announced or channel.remote_ann_node_sig is None:
            return
        assert channel.remote_ann_bitcoin_sig is not None
        self._announced.add(channel.dbid)
        ann, ends = self._unsigned_announcement(channel)
        ours = await self._our_ann_sigs(channel, ann)
        if ours is None:
            self._announced.discard(channel.dbid)
            return
        theirs = SidePair(channel.remote_ann_node_sig, channel.remote_ann_bitcoin_sig)
        full = with_signatures(ann, ends, ours, theirs)
        problem = check_channel_announcement(full)
        if problem:  # hsmd's or our own bug: never gossip a bad announcement
            self._log(channel).broken(f"Our channel_announcement has a {problem}")
            return
        try:
            update = await self._signed_channel_update(channel, ends)
            node_ann = await self._signed_node_announcement()
        except HsmError as exc:
            self._log(channel).broken(f"hsmd would not sign our gossip: {exc}")
            self._announced.discard(channel.dbid)
            return
        self._log(channel).info("Announcing the channel")
        for msg in (full.encode(), update, node_ann):
            self.ld.log.debug("lightningd", f"Local gossip {wire.decode(msg).NAME}: {msg.hex()}")
            await self.on_local_gossip(msg)

    def _policy(self, channel: Channel) -> Policy:
        """Core Lightning's default fees and cltv delta. BOLT #7 `htlc_maximum_msat`: "less
        than or equal to the channel capacity", "less than or equal to
        `max_htlc_value_in_flight_msat` it received from the peer"; the peer's
        `htlc_minimum_msat` binds the HTLCs we offer it, as does ours from the config."""
        o, cfg = channel.opened, self.ld.config
        maximum = min(o.funding.to_msat().msat, o.their_config.max_htlc_value_in_flight.msat)
        if cfg.htlc_maximum_msat is not None:
            maximum = min(maximum, cfg.htlc_maximum_msat)
        # "MUST set `htlc_minimum_msat` to less than or equal to `htlc_maximum_msat`".
        minimum = min(max(cfg.htlc_minimum_msat, o.their_config.htlc_minimum.msat), maximum)
        return Policy(htlc_minimum_msat=minimum, htlc_maximum_msat=maximum)

    def _next_timestamp(self) -> int:
        """BOLT #7 timestamps: "greater than any previous" one we created."""
        self._last_timestamp = max(int(time.time()), self._last_timestamp + 1)
        return self._last_timestamp

    async def _signed_channel_update(self, channel: Channel, ends: Endpoints) -> bytes:
        assert channel.short_channel_id is not None
        update = channel_update(
            self.ld.config.chain.chain_hash,
            str_to_scid(channel.short_channel_id),
            self._next_timestamp(),
            ends.direction,
            self._policy(channel),
        )
        return await self.ld.hsm.sign_channel_update(update.encode())

    async def _signed_node_announcement(self) -> bytes:
        addrs = encode_addresses((a.kind, a.host, a.port) for a in self.ld.announced_addresses())
        ann = node_announcement(
            self.ld.node_id,
            self._next_timestamp(),
            self.ld.color,
            self.ld.alias,
            addrs,
            our_features(),
        )
        sig = await self.ld.hsm.sign_node_announcement(ann.encode())
        return with_signature(ann, sig).encode()

    async def _warn(self, channel: Channel, text: str) -> None:
        self._log(channel).unusual(f"{text}: sending warning")
        peer = self.ld.peers.peers.get(channel.peer_id)
        if peer is not None:
            await self._send(peer, channel, make_warning(channel.opened.channel_id, text))

    # -- helpers ---------------------------------------------------------------------------

    def _find(self, node_id: bytes, channel_id: bytes) -> Channel | None:
        return next(
            (c for c in self.ld.channels_of(node_id) if c.opened.channel_id == channel_id), None
        )

    def _peer_in_sync(self, channel: Channel) -> Peer | None:
        peer = self.ld.peers.peers.get(channel.peer_id)
        if peer is None or peer.conn is None or self._in_sync.get(channel.dbid) is not peer:
            return None
        return peer

    async def _send(self, peer: Peer, channel: Channel, msg: bytes) -> bool:
        """To the parked peer; False if the connection is gone (its reader will notice)."""
        if peer.conn is None:
            return False
        try:
            await peer.conn.write_message(msg)
        except (OSError, ConnectionError) as exc:
            self._log(channel).debug(f"Could not send to peer: {exc}")
            return False
        return True

    def _log(self, channel: Channel) -> _ChannelLog:
        return _ChannelLog(self.ld, channel)


class _ChannelLog:
    """Log lines for one channel, as Core Lightning tags them: `chan#<dbid>`, peer id."""

    def __init__(self, ld: LightningD, channel: Channel) -> None:
        self.log = ld.log
        self.source = f"chan#{channel.dbid}"
        self.node_id = channel.peer_id

    def debug(self, message: str) -> None:
        self.log.debug(self.source, message, self.node_id)

    def info(self, message: str) -> None:
        self.log.info(self.source, message, self.node_id)

    def unusual(self, message: str) -> None:
        self.log.unusual(self.source, message, self.node_id)

    def broken(self, message: str) -> None:
        self.log.broken(self.source, message, self.node_id)
