"""lightningd's half of openingd: start it, answer it, store what it agreed.

One openingd per peer with an open in flight (Core Lightning: "Multiple
simultaneous opens not supported"). The peer's connection moves to openingd
with its cipher state and comes back when the negotiation ends, whichever
way it ends. A channel is written to the database, synced, before anything
irreversible: as accepter, before funding_signed leaves; as opener, before
fundchannel_complete returns (the funding tx may be broadcast only after).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bitcointx import segwit_addr
from bitcointx.core.psbt import PartiallySignedTransaction

from common import channel_type as ctype
from common.amount import AmountMsat, AmountSat
from common.daemon_conn import DaemonConnError
from common.features import Feature, bits_to_bytes, negotiated, our_features
from common.subdaemon import HSM_FD, PEER_FD
from hsmd.capabilities import OPENINGD_CAPABILITIES
from lightningd.chaintopology import BroadcastError, FeerateSpec, param_feerate
from lightningd.channel import (
    LOCAL,
    REMOTE,
    Channel,
    ChannelState,
    UncommittedChannel,
    display_txid,
    save_channel,
)
from lightningd.jsonrpc import (
    Param,
    ParamError,
    RpcError,
    param_array,
    param_bool,
    param_msat,
    param_node_id,
    param_node_id_or_uri,
    param_sat,
    param_sat_or_all,
    param_string,
    param_u32,
)
from lightningd.jsonrpc_errors import (
    FUND_MAX_EXCEEDED,
    FUNDING_BROADCAST_FAIL,
    FUNDING_NOTHING_TO_CANCEL,
    FUNDING_PEER_NOT_CONNECTED,
    FUNDING_PSBT_INVALID,
    FUNDING_STATE_INVALID,
    FUNDING_V2_NOT_SUPPORTED,
    LIGHTNINGD,
)
from lightningd.subd import Subd
from lightningd.wallet import param_outpoints, param_psbt
from openingd import openingd_wiregen as wire

if TYPE_CHECKING:
    from bitcointx.core import CTransaction

    from lightningd.lightningd import LightningD
    from lightningd.peer_control import Peer

SOURCE = "openingd"
# BOLT #2 dust limit floor; Core Lightning uses Bitcoin Core's 546 for its own outputs.
OUR_DUST_LIMIT_SAT = 546
OUR_TO_SELF_DELAY = 6 * 24
OUR_MAX_ACCEPTED_HTLCS = 483
# Without fee estimates (the chain backend comes later), what we open with and accept.
DEFAULT_FEERATE_PERKW = 7500
MIN_FEERATE_PERKW = 253
MAX_FEERATE_PERKW = 10 * DEFAULT_FEERATE_PERKW
WARNING_USAGE = (
    "The funding transaction MUST NOT be broadcast until after channel establishment has "
    "been successfully completed by running `fundchannel_complete`"
)
# What Core Lightning's fundchannel_cancel (which multifundchannel's cleanup calls) sends the
# peer of a stored channel whose funding tx will not be broadcast.
CANCEL_BEFORE_BROADCAST = "Cancel channel by our RPC command before funding transaction broadcast."


@dataclass
class PendingOpen:
    """One negotiation in flight with a peer; the RPC calls waiting on openingd."""

    peer: Peer
    uncommitted: UncommittedChannel
    dbid: int
    subd: Subd | None = None
    waiting: asyncio.Future[Any] | None = None
    start_reply: wire.OpeningdFunderStartReply | None = None
    funding: AmountSat | None = None
    close_to: bytes = b""
    mindepth: int | None = None
    # fundchannel's funding tx being signed by hsmd, to be stored with the channel.
    funding_signing: asyncio.Future[CTransaction] | None = None
    peer_returned: bool = False
    done: bool = False


class OpeningControl:
    def __init__(self, ld: LightningD) -> None:
        self.ld = ld
        self.opens: dict[bytes, PendingOpen] = {}

    # -- starting openingd ----------------------------------------------------------------

    def our_config(self) -> wire.ChannelConfig:
        cfg = self.ld.config
        return wire.ChannelConfig(
            dust_limit=AmountSat(OUR_DUST_LIMIT_SAT),
            max_htlc_value_in_flight=AmountMsat(2**64 - 1),
            channel_reserve=AmountSat(0),  # per channel: openingd computes it
            htlc_minimum=AmountMsat(cfg.htlc_minimum_msat),
            to_self_delay=OUR_TO_SELF_DELAY,
            max_accepted_htlcs=min(cfg.max_concurrent_htlcs, OUR_MAX_ACCEPTED_HTLCS),
        )

    async def start_openingd(
        self, peer: Peer, opener: int, open_channel: bytes = b""
    ) -> PendingOpen:
        """Hand the peer to a new openingd (the caller checked none is running)."""
        cfg = self.ld.config
        dbid = self.ld.db.next_channel_dbid()
        pending = PendingOpen(peer, UncommittedChannel(peer.node_id, opener), dbid)
        self.opens[peer.node_id] = pending
        handover = await self.ld.peers.take(peer)
        hsm_fd = -1
        try:
            hsm_fd = await self.ld.hsm.client_fd(peer.node_id, dbid, OPENINGD_CAPABILITIES)
            pending.subd = await Subd.start(
                "openingd",
                "openingd.openingd",
                {PEER_FD: handover.fd, HSM_FD: hsm_fd},
                ["--developer"] if cfg.developer else [],
                self.ld.log,
                peer.node_id,
                lambda msg, fds: self._from_openingd(pending, msg, fds),
                lambda subd: self._openingd_died(pending, subd),
            )
        except Exception:
            del self.opens[peer.node_id]
            await self.ld.peers.lost(peer, "could not start openingd")
            raise
        finally:
            os.close(handover.fd)
            if hsm_fd >= 0:
                os.close(hsm_fd)
        init = wire.OpeningdInit(
            chain_hash=cfg.chain.chain_hash,
            peer_id=peer.node_id,
            dbid=dbid,
            cipher_state=handover.state.to_bytes(),
            our_features=our_features(),
            their_features=peer.init.features,
            our_config=self.our_config(),
            max_to_self_delay=cfg.max_locktime_blocks,
            min_effective_htlc_capacity=AmountMsat(cfg.min_capacity_sat * 1000),
            minimum_depth=cfg.funding_confirms,
            min_feerate=MIN_FEERATE_PERKW,
            max_feerate=MAX_FEERATE_PERKW,
            peer_timeout_secs=cfg.dev_opening_timeout,
            zeroconf_trusted=False,
            dev_temporary_channel_id=(
                bytes.fromhex(cfg.dev_force_tmp_channel_id)
                if cfg.dev_force_tmp_channel_id
                else None
            ),
            open_channel=open_channel,
        )
        await self._send(pending, init.encode())
        return pending

    async def peer_open_channel(self, peer: Peer, raw: bytes) -> None:
        """The parked peer sent open_channel: an openingd takes it from here."""
        await self.start_openingd(peer, REMOTE, raw)

    # -- messages from openingd -------------------------------------------------------------

    async def _from_openingd(self, pending: PendingOpen, raw: bytes, fds: list[int]) -> None:
        msg = wire.decode(raw)
        if isinstance(msg, wire.OpeningdGotOffer):
            await self._send(pending, self._judge_offer(pending, msg).encode())
        elif isinstance(msg, wire.OpeningdFunderStartReply):
            pending.start_reply = msg
            self._resolve(pending, msg)
        elif isinstance(msg, wire.OpeningdFunderReply):
            await self._committed(pending, msg.channel, msg.cipher_state, fds)
            self._resolve(pending, msg)
        elif isinstance(msg, wire.OpeningdFundee):
            await self._committed(pending, msg.channel, msg.cipher_state, fds, msg.funding_signed)
        elif isinstance(msg, wire.OpeningdFailed):
            await self._failed(pending, msg, fds)
        else:
            for fd in fds:
                os.close(fd)
            self.ld.log.broken(SOURCE, f"unexpected {msg.NAME}", pending.peer.node_id)

    def _judge_offer(
        self, pending: PendingOpen, offer: wire.OpeningdGotOffer
    ) -> wire.OpeningdGotOfferReply:
        """lightningd's own policy on an incoming open, beyond BOLT #2's rules."""
        self.ld.dev_crash("open_offer")
        pending.uncommitted.funding = offer.funding
        minimum = AmountSat(self.ld.config.min_capacity_sat)
        rejection = None
        if offer.funding < minimum:
            rejection = f"channel capacity is {offer.funding}, which is below {minimum}"
        return wire.OpeningdGotOfferReply(rejection=rejection, our_upfront_shutdown_script=b"")

    async def _committed(
        self,
        pending: PendingOpen,
        opened: wire.OpenedChannel,
        cipher_state: bytes,
        fds: list[int],
        funding_signed: bytes | None = None,
    ) -> None:
        """Store the channel, synced, then give the peer back (and send funding_signed)."""
        peer = pending.peer
        funding_tx = None
        if pending.funding_signing is not None:
            # Stored signed with the channel, so that a crash before broadcast still sends it.
            try:
                funding_tx = (await pending.funding_signing).serialize()
            except Exception as exc:  # no channel whose funding tx we could not sign
                await self._return_peer(pending, fds, cipher_state)
                self._resolve(
                    pending,
                    exc
                    if isinstance(exc, RpcError)
                    else RpcError(LIGHTNINGD, f"Could not sign the funding transaction: {exc}"),
                )
                return
        channel = Channel(
            pending.dbid,
            peer.node_id,
            ChannelState.CHANNELD_AWAITING_LOCKIN,
            opened,
            first_blocknum=self.ld.topology.height if self.ld.topology else None,
        )
        save_channel(self.ld.db, channel, str(peer.address), funding_tx)
        self.ld.dev_crash("channel_stored")
        self.ld.channels.append(channel)
        self._over(pending)
        self.ld.log.info(
            SOURCE, f"Channel {opened.channel_id.hex()} stored: {channel.state.name}", peer.node_id
        )
        await self._return_peer(pending, fds, cipher_state)
        if funding_signed is not None and peer.conn is not None:
            # BOLT #2: funding_signed goes out only now that the channel is on disk.
            await peer.conn.write_message(funding_signed)
            self.ld.dev_crash("funding_signed_sent")
        self.ld.channel_control.channel_stored(channel, peer)

    async def _failed(self, pending: PendingOpen, msg: wire.OpeningdFailed, fds: list[int]) -> None:
        self.ld.log.info(SOURCE, f"Open failed: {msg.reason}", pending.peer.node_id)
        self._over(pending)
        if msg.peer_alive:
            await self._return_peer(pending, fds, msg.cipher_state)
        self._resolve(pending, RpcError(LIGHTNINGD, msg.reason))

    async def _return_peer(self, pending: PendingOpen, fds: list[int], cipher_state: bytes) -> None:
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return
        pending.peer_returned = True
        await self.ld.peers.give_back(pending.peer, fds[0], cipher_state)

    def _over(self, pending: PendingOpen) -> None:
        """The open has ended (stored or failed): the peer may open again at once, without
        waiting for this openingd to exit and be reaped."""
        pending.done = True
        if self.opens.get(pending.peer.node_id) is pending:
            del self.opens[pending.peer.node_id]

    async def _openingd_died(self, pending: PendingOpen, subd: Subd) -> None:
        """Whatever happened, the open is over: tidy up, and tell any waiting caller why."""
        self._over(pending)
        if not pending.peer_returned:
            await self.ld.peers.lost(pending.peer, "openingd ended without returning the peer")
        reason = subd.fail_desc or f"openingd died (exit {subd.exit_code})"
        self._resolve(pending, RpcError(LIGHTNINGD, reason))

    async def _send(self, pending: PendingOpen, msg: bytes) -> None:
        """To openingd; if it is gone, the caller learns it as an RPC error, not a crash."""
        assert pending.subd is not None
        try:
            await pending.subd.send(msg)
        except (DaemonConnError, OSError) as exc:  # OSError: its socket already closed
            raise RpcError(LIGHTNINGD, f"openingd is gone: {exc}") from None

    @staticmethod
    def _resolve(pending: PendingOpen, result: Any) -> None:
        waiting, pending.waiting = pending.waiting, None
        if waiting is not None and not waiting.done():
            if isinstance(result, Exception):
                waiting.set_exception(result)
            else:
                waiting.set_result(result)

    async def _wait(self, pending: PendingOpen) -> Any:
        pending.waiting = asyncio.get_running_loop().create_future()
        return await pending.waiting

    # -- RPC --------------------------------------------------------------------------------

    def register_commands(self) -> None:
        rpc = self.ld.rpc
        rpc.register(
            "fundchannel_start",
            self.json_fundchannel_start,
            [
                Param("id", param_node_id),
                Param("amount", param_sat),
                Param("feerate", param_feerate, required=False),
                Param("announce", param_bool, required=False, default=True),
                Param("close_to", param_string, required=False),
                Param("push_msat", param_msat, required=False),
                Param("mindepth", param_u32, required=False),
                Param("reserve", param_sat, required=False),
                Param("channel_type", param_array, required=False),
            ],
            category="channels",
            description="Start fund channel with {id} using {amount} satoshis.",
        )
        rpc.register(
            "fundchannel",
            self.json_fundchannel,
            [
                Param("id", param_node_id),
                Param("amount", param_sat_or_all),
                Param("feerate", param_feerate, required=False),
                Param("announce", param_bool, required=False, default=True),
                Param("minconf", param_u32, required=False, default=1),
                Param("utxos", param_outpoints, required=False),
                Param("push_msat", param_msat, required=False),
                Param("close_to", param_string, required=False),
                Param("request_amt", param_sat, required=False),
                Param("compact_lease", param_string, required=False),
                Param("mindepth", param_u32, required=False),
                Param("reserve", param_sat, required=False),
                Param("channel_type", param_array, required=False),
            ],
            category="channels",
            description="Fund channel with {id} using {amount} satoshis, from the wallet.",
        )
        rpc.register(
            "multifundchannel",
            self.json_multifundchannel,
            [
                Param("destinations", param_array),
                Param("feerate", param_feerate, required=False),
                Param("minconf", param_u32, required=False, default=1),
                Param("utxos", param_outpoints, required=False),
                Param("minchannels", param_u32, required=False),
                Param("commitment_feerate", param_feerate, required=False),
            ],
            category="channels",
            description="Fund channels to {destinations}, which is an array of objects containing "
            "peer {id}, {amount}, and optional {announce} and {push_msat}.",
        )
        rpc.register(
            "fundchannel_complete",
            self.json_fundchannel_complete,
            [
                Param("id", param_node_id),
                Param("psbt", param_psbt),
                Param("withhold", param_bool, required=False, default=False),
            ],
            category="channels",
            description="Complete channel establishment with peer {id} for channel with {psbt}.",
        )
        rpc.register(
            "fundchannel_cancel",
            self.json_fundchannel_cancel,
            [Param("id", param_node_id)],
            category="channels",
            description="Cancel inflight channel establishment with peer {id}.",
        )

    def _connected_peer(self, node_id: bytes) -> Peer:
        peer = self.ld.peers.peers.get(node_id)
        if peer is None:
            raise RpcError(FUNDING_PEER_NOT_CONNECTED, "Peer not connected")
        return peer

    def commitment_feerate(self, spec: FeerateSpec | None) -> int:
        """The first commitment's feerate: the caller's, else the "opening" estimate."""
        topology = self.ld.topology
        if spec is None:
            rate = topology.feerate_perkw("opening") if topology else None
            return rate or DEFAULT_FEERATE_PERKW
        if topology is None:
            raise RpcError(LIGHTNINGD, "No chain backend to resolve the feerate")
        return topology.resolve_feerate(spec)

    async def start_funding(
        self,
        id: bytes,
        amount: AmountSat,
        feerate: FeerateSpec | None,
        announce: bool,
        close_to: str | None,
        push_msat: AmountMsat | None,
        mindepth: int | None,
        reserve: AmountSat | None,
        channel_type: list[Any] | None,
    ) -> tuple[PendingOpen, wire.OpeningdFunderStartReply]:
        """fundchannel_start's work: openingd negotiates up to the funding script."""
        peer = self._connected_peer(id)
        if id in self.opens:
            raise RpcError(FUNDING_STATE_INVALID, "Peer already OPENINGD")
        push = push_msat or AmountMsat(0)
        if push > amount.to_msat():
            raise RpcError(-32602, f"push_msat {push} exceeds amount {amount}")
        if amount.sat >= 2**24 and not negotiated(
            our_features(), peer.init.features, Feature.OPTION_SUPPORT_LARGE_CHANNEL
        ):
            raise RpcError(FUND_MAX_EXCEEDED, f"Amount exceeded {2**24 - 1}sat")
        close_script = parse_close_to(close_to, self.ld.config.chain.bech32_hrp)
        type_bits = parse_channel_type(channel_type)
        feerate_perkw = self.commitment_feerate(feerate)
        pending = await self.start_openingd(peer, LOCAL)
        pending.uncommitted.funding = amount
        pending.funding, pending.close_to, pending.mindepth = amount, close_script, mindepth
        start = wire.OpeningdFunderStart(
            funding=amount,
            push=push,
            feerate_per_kw=feerate_perkw,
            channel_flags=1 if announce else 0,
            reserve=reserve,
            upfront_shutdown_script=close_script,
            channel_type=type_bits,
        )
        await self._send(pending, start.encode())
        reply: wire.OpeningdFunderStartReply = await self._wait(pending)
        return pending, reply

    def _start_result(self, pending: PendingOpen, reply: wire.OpeningdFunderStartReply) -> dict:
        result: dict[str, Any] = {"channel_type": ctype.to_json(reply.channel_type)}
        if pending.close_to:
            result["close_to"] = pending.close_to.hex()
        result["mindepth"] = (
            pending.mindepth if pending.mindepth is not None else reply.minimum_depth
        )
        return result

    async def json_fundchannel_start(
        self,
        id: bytes,
        amount: AmountSat,
        feerate: FeerateSpec | None = None,
        announce: bool = True,
        close_to: str | None = None,
        push_msat: AmountMsat | None = None,
        mindepth: int | None = None,
        reserve: AmountSat | None = None,
        channel_type: list[Any] | None = None,
    ) -> dict:
        pending, reply = await self.start_funding(
            id, amount, feerate, announce, close_to, push_msat, mindepth, reserve, channel_type
        )
        return {
            "funding_address": p2wsh_address(
                reply.funding_scriptpubkey, self.ld.config.chain.bech32_hrp
            ),
            "scriptpubkey": reply.funding_scriptpubkey.hex(),
            **self._start_result(pending, reply),
            "warning_usage": WARNING_USAGE,
        }

    async def json_fundchannel(
        self,
        id: bytes,
        amount: AmountSat | None,
        feerate: FeerateSpec | None = None,
        announce: bool = True,
        minconf: int = 1,
        utxos: list[tuple[bytes, int]] | None = None,
        push_msat: AmountMsat | None = None,
        close_to: str | None = None,
        request_amt: AmountSat | None = None,
        compact_lease: str | None = None,
        mindepth: int | None = None,
        reserve: AmountSat | None = None,
        channel_type: list[Any] | None = None,
    ) -> dict:
        """The one-shot open: fund from the wallet, negotiate, store, then broadcast."""
        wallet = self.ld.wallet
        if wallet is None:
            raise RpcError(LIGHTNINGD, "No wallet: lightningd has no chain backend")
        if request_amt is not None or compact_lease is not None:
            raise RpcError(FUNDING_V2_NOT_SUPPORTED, "Liquidity ads need dual funding (v2)")
        funding_feerate = self.commitment_feerate(feerate)
        if amount is None:  # "all": what the wallet can put in one P2WSH output
            amount = wallet.max_fundable(P2WSH_LEN, funding_feerate, minconf, utxos)
        pending, reply = await self.start_funding(
            id, amount, feerate, announce, close_to, push_msat, mindepth, reserve, channel_type
        )
        try:
            funded = wallet.prepare(
                [(reply.funding_scriptpubkey, amount)], funding_feerate, minconf, utxos
            )
        except BaseException:
            await self._cancel_quietly(pending)
            raise
        # The wallet tagged the inputs with the txid: a crash before the channel is stored
        # (with the tx) leaves them to be released at the next start.
        self.ld.dev_crash("funding_reserved")
        outnum = funded.outnums[0]
        # hsmd signs it while the peer signs our first commitment: the txid is already final.
        signing = pending.funding_signing = asyncio.ensure_future(wallet.sign(funded))
        signing.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen by _committed
        try:
            await self._send(
                pending,
                wire.OpeningdFunderComplete(
                    funding_txid=bytes(funded.tx.GetTxid()), funding_outnum=outnum
                ).encode(),
            )
            funded_reply: wire.OpeningdFunderReply = await self._wait(pending)
            tx = await signing
        except BaseException:
            signing.cancel()
            wallet.release(funded.tx)
            raise
        # The channel is on disk (and synced): only now may the funding tx go out.
        await self._broadcast_funding(tx)
        self.ld.dev_crash("funding_broadcast")
        return {
            "tx": tx.serialize().hex(),
            "txid": display_txid(bytes(tx.GetTxid())),
            "outnum": outnum,
            "channel_id": funded_reply.channel.channel_id.hex(),
            **self._start_result(pending, reply),
        }

    async def _broadcast_funding(self, tx: CTransaction) -> None:
        """Send the funding tx of stored channels. Only bitcoind's refusal fails the open:
        when it is merely unreachable the open has happened (failing it would invite a
        second one), and the chain code sends the recorded tx again once bitcoind is back.
        A refused tx is never sent again, so its channels are cancelled, as fundchannel and
        multifundchannel do in Core Lightning, and then its inputs go back to the wallet:
        killed in between, the next start frees inputs reserved for a tx no channel holds."""
        wallet = self.ld.wallet
        assert wallet is not None
        try:
            await wallet.broadcast(tx)
        except BroadcastError as exc:
            if not exc.final:
                self.ld.log.unusual(SOURCE, str(exc))
                return
            await self._cancel_stored(bytes(tx.GetTxid()), f"refused by bitcoind: {exc}")
            self.ld.dev_crash("funding_refused_cancelled")
            wallet.release(tx)
            raise RpcError(
                FUNDING_BROADCAST_FAIL, f"Error broadcasting funding transaction: {exc}"
            ) from None

    async def _cancel_stored(self, txid: bytes, why: str) -> None:
        """Forget every channel we stored on funding tx `txid`, which will never be sent,
        telling each peer (call it before the tx's inputs go back to the wallet)."""
        for channel in self._unbroadcast({txid}):
            self.ld.log.unusual(
                SOURCE,
                f"Cancelling channel {channel.opened.channel_id.hex()}: funding tx"
                f" {display_txid(txid)} {why}",
                channel.peer_id,
            )
            await self.ld.channel_control.cancel_unfunded(channel, CANCEL_BEFORE_BROADCAST)

    def _unbroadcast(self, txids: set[bytes]) -> list[Channel]:
        """Our channels still waiting for a funding tx among `txids` (a copy: the caller
        may forget them as it goes)."""
        return [
            c
            for c in self.ld.channels
            if c.opener == LOCAL
            and c.state == ChannelState.CHANNELD_AWAITING_LOCKIN
            and c.opened.funding_txid in txids
        ]

    def forget_unfunded(self, unsent: set[bytes]) -> None:
        """At start, before the wallet releases the inputs of its `unsent` txs (and before
        channel_control watches anything): forget the channels we opened on one of them.

        Only multifundchannel stores channels before recording their funding tx, so a crash
        in between leaves them waiting for a tx that nobody holds and whose inputs go back
        to the wallet. We never had anything in them; each peer forgets its side when the
        funding never appears (BOLT #2's 2016 blocks). Channels funded from outside the wallet
        (fundchannel_start/complete) reserve nothing here, so their txid is never `unsent`.
        """
        for channel in self._unbroadcast(unsent):
            txid = display_txid(channel.opened.funding_txid)
            self.ld.log.unusual(
                SOURCE,
                f"Forgetting channel {channel.opened.channel_id.hex()}: its funding tx {txid}"
                " was never recorded, so never sent",
                channel.peer_id,
            )
            # Durable, before the inputs are released. No error to the peer: nobody is
            # connected yet (it forgets when the funding never appears).
            self.ld.channel_control.forget(channel)

    async def json_multifundchannel(
        self,
        destinations: list[Any],
        feerate: FeerateSpec | None = None,
        minconf: int = 1,
        utxos: list[tuple[bytes, int]] | None = None,
        minchannels: int | None = None,
        commitment_feerate: FeerateSpec | None = None,
    ) -> dict:
        """Several channels funded by one transaction, as Core Lightning's multifundchannel."""
        wallet = self.ld.wallet
        if wallet is None:
            raise RpcError(LIGHTNINGD, "No wallet: lightningd has no chain backend")
        dests = [parse_destination(d) for d in destinations]
        if not dests:
            raise RpcError(-32602, "destinations: must not be empty")
        if len({d.node_id for d in dests}) != len(dests):
            raise RpcError(-32602, "destinations: Duplicate destination")
        needed = len(dests) if minchannels is None else minchannels
        if not 1 <= needed <= len(dests):
            raise RpcError(-32602, f"minchannels: should be 1 to {len(dests)}")
        funding_feerate = self.commitment_feerate(feerate)
        # "all" (at most one): what remains for it once the other outputs are paid.
        plan = wallet.plan(
            [(bytes(P2WSH_LEN), d.amount) for d in dests], funding_feerate, minconf, utxos
        )
        amounts = [AmountSat(a) for _, a in plan.outputs]
        failed: list[dict] = []
        started = await self._start_all(dests, amounts, commitment_feerate, failed)
        if len(started) < needed:
            for start in started:
                await self._cancel_quietly(start.pending)
            raise RpcError(
                LIGHTNINGD, f"Only {len(started)} of {needed} channels started: {failed}"
            )
        outputs = [(start.reply.funding_scriptpubkey, start.amount) for start in started]
        try:
            funded, tx = await wallet.fund_outputs(outputs, funding_feerate, minconf, utxos)
        except BaseException:
            for start in started:
                await self._cancel_quietly(start.pending)
            raise
        # Not recorded with each channel (unlike fundchannel): if one peer fails at
        # funding_signed, a recorded tx would later fund an output nobody can spend from.
        # Until broadcast records it, a crash leaves it unsent: the next start forgets its
        # stored channels and releases its inputs (forget_unfunded, Wallet.release_unsent).
        txid = bytes(tx.GetTxid())
        try:
            replies = await self._complete_all(started, txid, funded.outnums)
        except BaseException as exc:
            # One peer failed: the tx will never be sent, so the channels the others stored
            # on it would wait for ever. Forgotten (durably) before the inputs are free.
            await self._cancel_stored(txid, f"will not be sent: {exc}")
            wallet.release(tx)
            raise
        self.ld.dev_crash("multifund_stored")
        await self._broadcast_funding(tx)
        result: dict[str, Any] = {
            "tx": tx.serialize().hex(),
            "txid": display_txid(txid),
            "channel_ids": [
                {
                    "id": start.pending.peer.node_id.hex(),
                    "channel_id": reply.channel.channel_id.hex(),
                    "outnum": outnum,
                    **self._start_result(start.pending, start.reply),
                }
                for start, reply, outnum in zip(started, replies, funded.outnums, strict=True)
            ],
        }
        if failed:
            result["failed"] = failed
        return result

    async def _start_all(
        self,
        dests: list[Destination],
        amounts: list[AmountSat],
        feerate: FeerateSpec | None,
        failed: list[dict],
    ) -> list[StartedOpen]:
        """fundchannel_start with every destination at once; failures go to `failed`."""
        results = await asyncio.gather(
            *(
                self.start_funding(
                    d.node_id, amount, feerate, d.announce, d.close_to, d.push_msat,
                    d.mindepth, d.reserve, None,
                )
                for d, amount in zip(dests, amounts, strict=True)
            ),
            return_exceptions=True,
        )  # fmt: skip
        started = []
        for d, amount, result in zip(dests, amounts, results, strict=True):
            if isinstance(result, RpcError):
                failed.append(
                    {
                        "id": d.node_id.hex(),
                        "method": "openchannel_init",
                        "error": {"code": result.code, "message": result.message},
                    }
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                started.append(StartedOpen(*result, amount))
        return started

    async def _complete_all(
        self, started: list[StartedOpen], txid: bytes, outnums: list[int]
    ) -> list[wire.OpeningdFunderReply]:
        """fundchannel_complete with every peer; the first failure is raised, but only
        once every open has ended, so that no channel is stored after the caller's cleanup
        (openingd's own timeout bounds the wait)."""
        results = await asyncio.gather(
            *(
                self._complete(start.pending, txid, outnum)
                for start, outnum in zip(started, outnums, strict=True)
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    async def _complete(
        self, pending: PendingOpen, txid: bytes, outnum: int
    ) -> wire.OpeningdFunderReply:
        await self._send(
            pending,
            wire.OpeningdFunderComplete(funding_txid=txid, funding_outnum=outnum).encode(),
        )
        return await self._wait(pending)

    async def _cancel_quietly(self, pending: PendingOpen) -> None:
        """Abandon an open whose funding failed; the caller reports the real error."""
        with contextlib.suppress(RpcError):
            await self._send(pending, wire.OpeningdFunderCancel().encode())
            await self._wait(pending)

    def _funder_open(self, node_id: bytes) -> PendingOpen:
        pending = self.opens.get(node_id)
        if pending is None or pending.uncommitted.opener != LOCAL:
            raise RpcError(FUNDING_STATE_INVALID, "No channel funding in progress.")
        if pending.start_reply is None:
            raise RpcError(FUNDING_STATE_INVALID, "fundchannel_start has not finished")
        return pending

    async def json_fundchannel_complete(
        self, id: bytes, psbt: PartiallySignedTransaction, withhold: bool = False
    ) -> dict:
        # `withhold` (don't broadcast) matters once we broadcast funding txs (the wallet).
        self._connected_peer(id)
        pending = self._funder_open(id)
        assert pending.start_reply is not None and pending.funding is not None
        txid, outnum = find_funding_output(
            psbt, pending.start_reply.funding_scriptpubkey, pending.funding
        )
        await self._send(
            pending, wire.OpeningdFunderComplete(funding_txid=txid, funding_outnum=outnum).encode()
        )
        reply: wire.OpeningdFunderReply = await self._wait(pending)
        return {"channel_id": reply.channel.channel_id.hex(), "commitments_secured": True}

    async def json_fundchannel_cancel(self, id: bytes) -> dict:
        pending = self.opens.get(id)
        if pending is None or pending.uncommitted.opener != LOCAL or pending.done:
            raise RpcError(FUNDING_NOTHING_TO_CANCEL, "No channel funding in progress.")
        await self._send(pending, wire.OpeningdFunderCancel().encode())
        with contextlib.suppress(RpcError):
            await self._wait(pending)
        return {"cancelled": "Channel open canceled by RPC"}

    async def abort(self, node_id: bytes) -> None:
        """End an open in flight (the peer is being disconnected): openingd just stops."""
        pending = self.opens.get(node_id)
        if pending is not None and pending.subd is not None:
            await pending.subd.stop()

    def uncommitted_json(self, node_id: bytes | None) -> list[dict]:
        return [
            p.uncommitted.to_json()
            for p in self.opens.values()
            if not p.done and (node_id is None or p.peer.node_id == node_id)
        ]

    async def shutdown(self) -> None:
        for pending in list(self.opens.values()):
            if pending.subd is not None:
                await pending.subd.stop()


# -- parameters ------------------------------------------------------------------------------


P2WSH_LEN = 34


@dataclass(frozen=True)
class StartedOpen:
    """A multifundchannel destination whose fundchannel_start succeeded."""

    pending: PendingOpen
    reply: wire.OpeningdFunderStartReply
    amount: AmountSat


@dataclass(frozen=True)
class Destination:
    """One entry of multifundchannel's `destinations`."""

    node_id: bytes
    amount: AmountSat | None
    announce: bool = True
    push_msat: AmountMsat | None = None
    close_to: str | None = None
    mindepth: int | None = None
    reserve: AmountSat | None = None


def parse_destination(entry: Any) -> Destination:
    if not isinstance(entry, dict) or "id" not in entry or "amount" not in entry:
        raise RpcError(-32602, "destinations: each must be an object with id and amount")
    try:
        node_id, _host = param_node_id_or_uri(entry["id"])
        return Destination(
            node_id=node_id,
            amount=param_sat_or_all(entry["amount"]),
            announce=param_bool(entry.get("announce", True)),
            push_msat=param_msat(entry["push_msat"]) if "push_msat" in entry else None,
            close_to=entry.get("close_to"),
            mindepth=param_u32(entry["mindepth"]) if "mindepth" in entry else None,
            reserve=param_sat(entry["reserve"]) if "reserve" in entry else None,
        )
    except ParamError as exc:
        raise RpcError(-32602, f"destinations: {entry}: {exc.should}") from None


def parse_channel_type(bits: list[Any] | None) -> bytes:
    """fundchannel's channel_type: an array of feature bit numbers; empty: negotiate."""
    if bits is None:
        return b""
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in bits):
        raise RpcError(-32602, "channel_type: should be an array of feature bit numbers")
    return bits_to_bytes(bits)


def parse_close_to(close_to: str | None, hrp: str) -> bytes:
    """An address on our chain (or a hex scriptpubkey) for the upfront shutdown script."""
    if close_to is None:
        return b""
    version, program = segwit_addr.decode(hrp, close_to)
    if version is not None and program is not None:
        return bytes([0x50 + version if version else 0, len(program)]) + bytes(program)
    try:
        return bytes.fromhex(close_to)
    except ValueError:
        raise RpcError(-32602, f"close_to: not an address on this network: {close_to}") from None


def p2wsh_address(scriptpubkey: bytes, hrp: str) -> str:
    return segwit_addr.encode(hrp, 0, scriptpubkey[2:]) or ""


def find_funding_output(
    psbt: PartiallySignedTransaction, scriptpubkey: bytes, amount: AmountSat
) -> tuple[bytes, int]:
    """The funding output's outpoint in a PSBT, checking what CLN checks."""
    tx = psbt.unsigned_tx
    for i, inp in enumerate(psbt.inputs):
        utxo = inp.witness_utxo
        if utxo is None or not utxo.scriptPubKey.is_witness_scriptpubkey():
            # A non-segwit input makes the txid malleable: our commitment would spend nothing.
            raise RpcError(FUNDING_PSBT_INVALID, f"Input {i} of the funding PSBT is not segwit")
    for outnum, out in enumerate(tx.vout):
        if bytes(out.scriptPubKey) == scriptpubkey:
            if out.nValue != amount.sat:
                raise RpcError(
                    FUNDING_PSBT_INVALID,
                    f"Output to open channel is {out.nValue}sat, should be {amount}",
                )
            return bytes(tx.GetTxid()), outnum
    raise RpcError(FUNDING_PSBT_INVALID, "Funding PSBT has no output to the funding address")
