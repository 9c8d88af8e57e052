"""Stored channels: what goes into the database comes back the same after a restart."""

from coincurve import PrivateKey

from common.amount import AmountMsat, AmountSat
from common.chainparams import CHAINS
from common.features import bits_to_bytes
from lightningd.channel import (
    LOCAL,
    REMOTE,
    Channel,
    ChannelState,
    load_channels,
    save_channel,
    set_channel_state,
)
from lightningd.db import Database
from openingd import openingd_wiregen as wire

REGTEST = CHAINS["regtest"].chain_hash


def point(n: int) -> bytes:
    return PrivateKey(bytes([n]) * 32).public_key.format()


def config(reserve: int, delay: int) -> wire.ChannelConfig:
    return wire.ChannelConfig(
        dust_limit=AmountSat(546),
        max_htlc_value_in_flight=AmountMsat(2**64 - 1),
        channel_reserve=AmountSat(reserve),
        htlc_minimum=AmountMsat(1),
        to_self_delay=delay,
        max_accepted_htlcs=483,
    )


def opened(opener: int) -> wire.OpenedChannel:
    return wire.OpenedChannel(
        channel_id=b"\x01" * 32,
        funding_txid=bytes(range(32)),
        funding_outnum=1,
        funding=AmountSat(1_000_000),
        push=AmountMsat(5_000_000),
        opener=opener,
        channel_flags=1,
        channel_type=bits_to_bytes([12, 22]),
        feerate_per_kw=7500,
        minimum_depth=3,
        our_config=config(10_000, 144),
        their_config=config(12_000, 720),
        our_funding_pubkey=point(1),
        their_funding_pubkey=point(2),
        their_basepoints=wire.Basepoints(
            revocation=point(3), payment=point(4), htlc=point(5), delayed_payment=point(6)
        ),
        their_first_per_commitment_point=point(7),
        our_first_per_commitment_point=point(10),
        our_second_per_commitment_point=point(11),
        their_commit_sig=b"\x30" * 64,
        our_upfront_shutdown_script=b"",
        their_upfront_shutdown_script=b"\x00\x14" + b"\x09" * 20,
    )


def test_round_trip_and_json(tmp_path):
    db = Database.open(str(tmp_path / "db.sqlite3"), REGTEST)
    ours = Channel(
        db.next_channel_dbid(), point(9), ChannelState.CHANNELD_AWAITING_LOCKIN, opened(LOCAL)
    )
    theirs = Channel(
        db.next_channel_dbid(), point(8), ChannelState.CHANNELD_AWAITING_LOCKIN, opened(REMOTE)
    )
    save_channel(db, ours, "127.0.0.1:1")
    save_channel(db, theirs, None)
    set_channel_state(db, theirs, ChannelState.CHANNELD_NORMAL)
    db.close()

    db = Database.open(str(tmp_path / "db.sqlite3"), REGTEST)
    loaded = load_channels(db)
    assert [c.dbid for c in loaded] == [ours.dbid, theirs.dbid]
    assert loaded[0].opened == ours.opened and loaded[0].peer_id == ours.peer_id
    assert loaded[1].state is ChannelState.CHANNELD_NORMAL

    j = loaded[0].to_json(peer_connected=True)
    assert j["state"] == "CHANNELD_AWAITING_LOCKIN"
    assert j["opener"] == "local"
    assert j["to_us_msat"] == 1_000_000_000 - 5_000_000
    assert j["total_msat"] == 1_000_000_000
    # Each side's reserve is what the other required of it.
    assert (j["our_reserve_msat"], j["their_reserve_msat"]) == (12_000_000, 10_000_000)
    assert j["funding_txid"] == bytes(range(32))[::-1].hex()
    assert j["channel_type"] == {
        "bits": [12, 22],
        "names": ["static_remotekey/even", "anchors/even"],
    }
    assert j["status"] == [
        "CHANNELD_AWAITING_LOCKIN:Funding needs 3 more confirmations for lockin."
    ]
    assert loaded[1].to_json(False)["to_us_msat"] == 5_000_000
