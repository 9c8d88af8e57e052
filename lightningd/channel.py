"""Channels as lightningd keeps them: states, the database row, the RPC view.

A channel exists here only once its first commitment transactions are
signed (openingd's opened_channel). Before that, an open in progress is an
UncommittedChannel: shown by listpeerchannels as OPENINGD, never stored.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from common import channel_type as ctype
from common.amount import AmountMsat, AmountSat
from common.features import feature_names
from lightningd.db import Database
from openingd import openingd_wiregen as opening_wire


class ChannelState(enum.IntEnum):
    """Core Lightning's channel states and their numbers (as its database stores them)."""

    CHANNELD_AWAITING_LOCKIN = 2
    CHANNELD_NORMAL = 3
    CHANNELD_SHUTTING_DOWN = 4
    CLOSINGD_SIGEXCHANGE = 5
    CLOSINGD_COMPLETE = 6
    AWAITING_UNILATERAL = 7
    FUNDING_SPEND_SEEN = 8
    ONCHAIN = 9
    CLOSED = 10


LOCAL, REMOTE = 0, 1


def display_txid(txid: bytes) -> str:
    """Bitcoin shows txids byte-reversed from how transactions carry them."""
    return txid[::-1].hex()


def scid_to_str(scid: int) -> str:
    """BOLT #7's short_channel_id as people write it: `<blockheight>x<txindex>x<outnum>`."""
    return f"{scid >> 40}x{(scid >> 16) & 0xFFFFFF}x{scid & 0xFFFF}"


def str_to_scid(text: str) -> int:
    """The inverse of scid_to_str."""
    block, txindex, outnum = (int(part) for part in text.split("x"))
    return (block << 40) | (txindex << 16) | outnum


@dataclass
class Channel:
    dbid: int
    peer_id: bytes
    state: ChannelState
    opened: opening_wire.OpenedChannel
    short_channel_id: str | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))
    # Our chain tip when it was stored: BOLT #2's 2016-block wait for the funding starts here.
    first_blocknum: int | None = None
    # Lock-in (lightningd/channel_control.py), stored: their point for commitment 1 (from
    # their channel_ready), both aliases, and who has sent channel_ready.
    their_next_per_commit_point: bytes | None = None
    alias_local: int | None = None
    alias_remote: int | None = None
    channel_ready_sent: bool = False
    channel_ready_received: bool = False
    # The peer's announcement_signatures (BOLT #7), stored once verified.
    remote_ann_node_sig: bytes | None = None
    remote_ann_bitcoin_sig: bytes | None = None
    # The funding tx's depth as the chain topology last told it; not stored.
    depth: int = field(default=0, compare=False)

    @property
    def opener(self) -> int:
        return self.opened.opener

    @property
    def total(self) -> AmountMsat:
        return self.opened.funding.to_msat()

    @property
    def our_msat(self) -> AmountMsat:
        """Ours at the start: everything but the push if we opened, just the push if they did."""
        if self.opener == LOCAL:
            return self.total - self.opened.push
        return self.opened.push

    @property
    def public(self) -> bool:
        """BOLT #2 `announce_channel`: bit 0 of open_channel's `channel_flags`."""
        return bool(self.opened.channel_flags & 1)

    @property
    def lockin_depth(self) -> int:
        """Confirmations before channel_ready: minimum_depth (no zero-conf yet: at least 1)."""
        return max(self.opened.minimum_depth, 1)

    def status(self) -> list[str]:
        if self.state != ChannelState.CHANNELD_AWAITING_LOCKIN:
            return [f"{self.state.name}:Channel ready for use."]
        needed = self.lockin_depth - max(self.depth, 0)
        if needed > 0:
            lines = [f"Funding needs {needed} more confirmations for lockin."]
            if self.channel_ready_received:
                lines.append("They've confirmed channel ready, we haven't yet.")
        elif self.channel_ready_sent:
            lines = ["We've confirmed channel ready, they haven't yet."]
        else:
            lines = ["Funding confirmed: channel_ready goes out when the peer is back."]
        return [f"{self.state.name}:{line}" for line in lines]

    def alias_json(self) -> dict:
        """listpeerchannels' `alias`: the ones we know, as CLN shows them."""
        aliases = {"local": self.alias_local, "remote": self.alias_remote}
        return {side: scid_to_str(a) for side, a in aliases.items() if a is not None}

    def to_json(self, peer_connected: bool) -> dict:
        o = self.opened
        return {
            "peer_id": self.peer_id.hex(),
            "peer_connected": peer_connected,
            "state": self.state.name,
            "channel_type": ctype.to_json(o.channel_type),
            "feerate": {"perkw": o.feerate_per_kw, "perkb": o.feerate_per_kw * 4},
            **({"short_channel_id": self.short_channel_id} if self.short_channel_id else {}),
            **({"alias": self.alias_json()} if self.alias_json() else {}),
            "channel_id": o.channel_id.hex(),
            "funding_txid": display_txid(o.funding_txid),
            "funding_outnum": o.funding_outnum,
            **(
                {"close_to": o.our_upfront_shutdown_script.hex()}
                if o.our_upfront_shutdown_script
                else {}
            ),
            "private": not o.channel_flags & 1,
            "opener": "local" if self.opener == LOCAL else "remote",
            "features": [f"option_{n.split('/')[0]}" for n in feature_names(o.channel_type)],
            "funding": {
                "local_funds_msat": o.funding.to_msat().msat if self.opener == LOCAL else 0,
                "remote_funds_msat": o.funding.to_msat().msat if self.opener == REMOTE else 0,
                "pushed_msat": o.push.msat,
            },
            "to_us_msat": self.our_msat.msat,
            "total_msat": self.total.msat,
            "dust_limit_msat": o.our_config.dust_limit.to_msat().msat,
            # BOLT #2: each side's channel_reserve_satoshis is what the *other* side must keep.
            "their_reserve_msat": o.our_config.channel_reserve.to_msat().msat,
            "our_reserve_msat": o.their_config.channel_reserve.to_msat().msat,
            "minimum_htlc_in_msat": o.our_config.htlc_minimum.msat,
            "their_to_self_delay": o.their_config.to_self_delay,
            "our_to_self_delay": o.our_config.to_self_delay,
            "max_accepted_htlcs": o.our_config.max_accepted_htlcs,
            "minimum_depth": o.minimum_depth,
            "status": self.status(),
            "htlcs": [],
        }


@dataclass
class UncommittedChannel:
    """An open being negotiated by openingd: nothing stored, nothing at stake yet."""

    peer_id: bytes
    opener: int
    funding: AmountSat | None = None
    billboard: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        total = self.funding.to_msat().msat if self.funding else 0
        return {
            "peer_id": self.peer_id.hex(),
            "peer_connected": True,
            "state": "OPENINGD",
            "owner": "openingd",
            "opener": "local" if self.opener == LOCAL else "remote",
            "to_us_msat": total if self.opener == LOCAL else 0,
            "total_msat": total,
            "status": self.billboard,
            "htlcs": [],
        }


# -- the database ------------------------------------------------------------------------

_COLUMNS = (
    "id, peer_id, state, channel_id, opener, channel_flags, channel_type, minimum_depth,"
    " funding_txid, funding_outnum, funding_satoshi, push_msatoshi, our_msat, feerate_per_kw,"
    " short_channel_id,"
    " our_dust_limit_sat, our_max_htlc_value_in_flight_msat, our_channel_reserve_sat,"
    " our_htlc_minimum_msat, our_to_self_delay, our_max_accepted_htlcs,"
    " their_dust_limit_sat, their_max_htlc_value_in_flight_msat, their_channel_reserve_sat,"
    " their_htlc_minimum_msat, their_to_self_delay, their_max_accepted_htlcs,"
    " our_funding_pubkey, their_funding_pubkey,"
    " their_revocation_basepoint, their_payment_basepoint, their_htlc_basepoint,"
    " their_delayed_payment_basepoint, their_per_commit_point,"
    " last_sig, shutdown_scriptpubkey_local, shutdown_scriptpubkey_remote, created_at,"
    " our_per_commit_point, our_next_per_commit_point, first_blocknum"
)


def _to_s64(value: int) -> int:
    """SQLite integers are signed 64-bit; a u64 such as 2^64-1 is kept in two's complement."""
    return value - 2**64 if value >= 2**63 else value


def _from_s64(value: int) -> int:
    return value + 2**64 if value < 0 else value


def _config_row(c: opening_wire.ChannelConfig) -> tuple:
    return (
        c.dust_limit.sat,
        _to_s64(c.max_htlc_value_in_flight.msat),
        c.channel_reserve.sat,
        c.htlc_minimum.msat,
        c.to_self_delay,
        c.max_accepted_htlcs,
    )


def _config_from(row, side: str) -> opening_wire.ChannelConfig:
    """`side` is "our" or "their": the column prefix."""
    return opening_wire.ChannelConfig(
        dust_limit=AmountSat(row[f"{side}_dust_limit_sat"]),
        max_htlc_value_in_flight=AmountMsat(
            _from_s64(row[f"{side}_max_htlc_value_in_flight_msat"])
        ),
        channel_reserve=AmountSat(row[f"{side}_channel_reserve_sat"]),
        htlc_minimum=AmountMsat(row[f"{side}_htlc_minimum_msat"]),
        to_self_delay=row[f"{side}_to_self_delay"],
        max_accepted_htlcs=row[f"{side}_max_accepted_htlcs"],
    )


def save_channel(
    db: Database, channel: Channel, address: str | None, funding_tx: bytes | None = None
) -> None:
    """Insert the channel, committed and synced when this returns (see Database).

    Our own funding tx, if we built it, is recorded in the same transaction: the chain
    code rebroadcasts every unconfirmed recorded tx, so a crash between storing the channel
    and broadcasting cannot strand the channel; and no tx is recorded without its channel.
    """
    o = channel.opened
    bp = o.their_basepoints
    with db.transaction():
        if funding_tx is not None:
            db.execute(
                "INSERT INTO transactions (id, rawtx) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                (o.funding_txid, funding_tx),
            )
        peer_row = db.add_peer(channel.peer_id, address)
        values = (
            channel.dbid, peer_row, int(channel.state), o.channel_id, o.opener, o.channel_flags,
            o.channel_type, o.minimum_depth, o.funding_txid, o.funding_outnum, o.funding.sat,
            o.push.msat, channel.our_msat.msat, o.feerate_per_kw, channel.short_channel_id,
            *_config_row(o.our_config), *_config_row(o.their_config),
            o.our_funding_pubkey, o.their_funding_pubkey,
            bp.revocation, bp.payment, bp.htlc, bp.delayed_payment,
            o.their_first_per_commitment_point, o.their_commit_sig,
            o.our_upfront_shutdown_script, o.their_upfront_shutdown_script, channel.created_at,
            o.our_first_per_commitment_point, o.our_second_per_commitment_point,
            channel.first_blocknum,
        )  # fmt: skip
        marks = ", ".join("?" * len(values))
        db.execute(f"INSERT INTO channels ({_COLUMNS}) VALUES ({marks})", values)


def set_channel_state(db: Database, channel: Channel, state: ChannelState) -> None:
    db.execute("UPDATE channels SET state = ? WHERE id = ?", (int(state), channel.dbid))
    channel.state = state


def _alias_to_db(alias: int | None) -> int | None:
    return None if alias is None else _to_s64(alias)


def _alias_from_db(value: int | None) -> int | None:
    return None if value is None else _from_s64(value)


def save_lockin(db: Database, channel: Channel) -> None:
    """Store the channel's lock-in fields (short_channel_id, aliases, channel_ready flags)."""
    db.execute(
        "UPDATE channels SET short_channel_id = ?, their_next_per_commit_point = ?,"
        " alias_local = ?, alias_remote = ?, channel_ready_sent = ?, channel_ready_received = ?"
        " WHERE id = ?",
        (
            channel.short_channel_id,
            channel.their_next_per_commit_point,
            _alias_to_db(channel.alias_local),
            _alias_to_db(channel.alias_remote),
            int(channel.channel_ready_sent),
            int(channel.channel_ready_received),
            channel.dbid,
        ),
    )


def save_first_blocknum(db: Database, channel: Channel) -> None:
    db.execute(
        "UPDATE channels SET first_blocknum = ? WHERE id = ?",
        (channel.first_blocknum, channel.dbid),
    )


def forget_channel(db: Database, channel: Channel) -> None:
    """Delete a channel that never had anything at stake (a fundee's never funded, or
    ours whose funding tx will never be sent), committed and synced when this returns.

    Our funding tx, if recorded with the channel (fundchannel) and never confirmed, goes
    with its last channel: the chain code would otherwise keep rebroadcasting a tx whose
    inputs the wallet has released, and could fund a channel nobody remembers.
    """
    with db.transaction():
        db.execute("DELETE FROM channels WHERE id = ?", (channel.dbid,))
        db.execute(
            "DELETE FROM transactions WHERE id = ? AND blockheight IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM channels WHERE funding_txid = ?)",
            (channel.opened.funding_txid, channel.opened.funding_txid),
        )


def save_remote_ann_sigs(db: Database, channel: Channel) -> None:
    """Store the peer's announcement_signatures."""
    db.execute(
        "UPDATE channels SET remote_ann_node_sig = ?, remote_ann_bitcoin_sig = ? WHERE id = ?",
        (channel.remote_ann_node_sig, channel.remote_ann_bitcoin_sig, channel.dbid),
    )


def load_channels(db: Database) -> list[Channel]:
    """Every stored channel, oldest first."""
    rows = db.query(
        "SELECT channels.*, peers.node_id FROM channels"
        " JOIN peers ON peers.id = channels.peer_id ORDER BY channels.id"
    )
    channels = []
    for r in rows:
        opened = opening_wire.OpenedChannel(
            channel_id=r["channel_id"],
            funding_txid=r["funding_txid"],
            funding_outnum=r["funding_outnum"],
            funding=AmountSat(r["funding_satoshi"]),
            push=AmountMsat(r["push_msatoshi"]),
            opener=r["opener"],
            channel_flags=r["channel_flags"],
            channel_type=r["channel_type"],
            feerate_per_kw=r["feerate_per_kw"],
            minimum_depth=r["minimum_depth"],
            our_config=_config_from(r, "our"),
            their_config=_config_from(r, "their"),
            our_funding_pubkey=r["our_funding_pubkey"],
            their_funding_pubkey=r["their_funding_pubkey"],
            their_basepoints=opening_wire.Basepoints(
                revocation=r["their_revocation_basepoint"],
                payment=r["their_payment_basepoint"],
                htlc=r["their_htlc_basepoint"],
                delayed_payment=r["their_delayed_payment_basepoint"],
            ),
            their_first_per_commitment_point=r["their_per_commit_point"],
            our_first_per_commitment_point=r["our_per_commit_point"],
            our_second_per_commitment_point=r["our_next_per_commit_point"],
            their_commit_sig=r["last_sig"],
            our_upfront_shutdown_script=r["shutdown_scriptpubkey_local"] or b"",
            their_upfront_shutdown_script=r["shutdown_scriptpubkey_remote"] or b"",
        )
        channels.append(
            Channel(
                dbid=r["id"],
                peer_id=r["node_id"],
                state=ChannelState(r["state"]),
                opened=opened,
                short_channel_id=r["short_channel_id"],
                created_at=r["created_at"],
                first_blocknum=r["first_blocknum"],
                their_next_per_commit_point=r["their_next_per_commit_point"],
                alias_local=_alias_from_db(r["alias_local"]),
                alias_remote=_alias_from_db(r["alias_remote"]),
                channel_ready_sent=bool(r["channel_ready_sent"]),
                channel_ready_received=bool(r["channel_ready_received"]),
                remote_ann_node_sig=r["remote_ann_node_sig"],
                remote_ann_bitcoin_sig=r["remote_ann_bitcoin_sig"],
            )
        )
    return channels
