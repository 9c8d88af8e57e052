"""SYNTHETIC channel rows for start-up benchmarks, written with the daemon's own store code.

1,000 real on-chain opens are too slow for a benchmark, so a STOPPED node's database gets
channels through lightningd.channel.save_channel / Database.next_channel_dbid (what
opening_control uses), state CHANNELD_NORMAL, each with its own peer (a distinct node key,
never reachable: no address stored, so nothing dials it), its own funding tx and
short_channel_id. The funding tx is recorded in `transactions` at a block the node has
really processed (as the topology records a watched tx it saw confirm): by default its
oldest stored block, below the --rescan window, so start-up finds every channel buried and
locked in, as after a real restart. (A tx recorded in a block the rescan re-processes would
lose its confirmation, since nothing is really in that block, and be rebroadcast at every
start: no real node's channels look like that.) Nothing is on chain: the funding txs are
well-formed but spend made-up outpoints, and the keys/signatures are valid points/signatures
that no peer holds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bitcointx.core import CMutableTransaction, CMutableTxIn, CMutableTxOut, COutPoint
from bitcointx.core.script import CScript
from coincurve import PrivateKey

import common.secp  # noqa: F401  (python-bitcointx's secp256k1 first, as the daemon does)
from common import channel_type as ctype
from common.amount import AmountMsat, AmountSat
from common.chainparams import CHAINS
from common.signature import sign_hash_compact
from lightningd.channel import Channel, ChannelState, save_channel, save_lockin, scid_to_str
from lightningd.channel_control import make_scid
from lightningd.db import Database
from lightningd.lightningd import DB_FILE
from openingd import openingd_wiregen as ow

FUNDING_SAT = 100_000


def _key(tag: str, i: int) -> bytes:
    return hashlib.sha256(f"bench-synthetic-{tag}-{i}".encode()).digest()


def _point(tag: str, i: int) -> bytes:
    return PrivateKey(_key(tag, i)).public_key.format()


def _config(reserve: int) -> ow.ChannelConfig:
    return ow.ChannelConfig(
        dust_limit=AmountSat(546),
        max_htlc_value_in_flight=AmountMsat(2**64 - 1),
        channel_reserve=AmountSat(reserve),
        htlc_minimum=AmountMsat(0),
        to_self_delay=144,
        max_accepted_htlcs=483,
    )


def _funding_tx(i: int) -> bytes:
    """A well-formed tx paying FUNDING_SAT to a P2WSH, spending a made-up outpoint."""
    txin = CMutableTxIn(COutPoint(_key("prevout", i), 0))
    out = CMutableTxOut(FUNDING_SAT, CScript(b"\x00\x20" + _key("script", i)))
    return CMutableTransaction([txin], [out]).serialize()


def _opened(i: int, txid: bytes) -> ow.OpenedChannel:
    return ow.OpenedChannel(
        channel_id=txid,  # v1: funding txid XOR outnum, and outnum is 0
        funding_txid=txid,
        funding_outnum=0,
        funding=AmountSat(FUNDING_SAT),
        push=AmountMsat(0),
        opener=i % 2,  # half opened by us, half by the peer
        channel_flags=1,
        channel_type=ctype.encode(ctype.ANCHORS),
        feerate_per_kw=3750,
        minimum_depth=1,
        our_config=_config(1000),
        their_config=_config(1000),
        our_funding_pubkey=_point("our-funding", i),
        their_funding_pubkey=_point("their-funding", i),
        their_basepoints=ow.Basepoints(
            revocation=_point("rev", i),
            payment=_point("pay", i),
            htlc=_point("htlc", i),
            delayed_payment=_point("delayed", i),
        ),
        their_first_per_commitment_point=_point("their-pcp", i),
        our_first_per_commitment_point=_point("our-pcp1", i),
        our_second_per_commitment_point=_point("our-pcp2", i),
        their_commit_sig=sign_hash_compact(_key("their-funding", i), _key("commit", i)),
        our_upfront_shutdown_script=b"",
        their_upfront_shutdown_script=b"",
    )


def add_channels(lightning_dir: Path, count: int, height: int | None = None) -> dict:
    """Store `count` CHANNELD_NORMAL channels in a stopped node's database; what was written.

    Their funding txs confirm at `height` (a stored block), by default the oldest stored one.
    """
    path = lightning_dir / "regtest" / DB_FILE
    with Database.open(str(path), CHAINS["regtest"].chain_hash) as db:
        if height is None:
            height = db.query_one("SELECT MIN(height) FROM blocks")[0]
        stored = db.query_one("SELECT 1 FROM blocks WHERE height = ?", (height,))
        if height is None or stored is None:
            raise RuntimeError("the node has not processed that block: run it on a chain first")
        for i in range(count):
            raw = _funding_tx(i)
            txid = CMutableTransaction.deserialize(raw).GetTxid()
            scid = scid_to_str(make_scid(height, i + 1, 0))
            channel = Channel(
                dbid=db.next_channel_dbid(),
                peer_id=_point("peer", i),
                state=ChannelState.CHANNELD_NORMAL,
                opened=_opened(i, bytes(txid)),
                short_channel_id=scid,
                channel_ready_sent=True,
                channel_ready_received=True,
            )
            save_channel(db, channel, None, raw)
            save_lockin(db, channel)  # channel_ready both ways, as after a real lock-in
            # Confirmed at `height`, as the topology records a watched tx it saw in a block.
            db.execute(
                "UPDATE transactions SET blockheight = ?, txindex = ? WHERE id = ?",
                (height, i + 1, bytes(txid)),
            )
        total = db.query_one("SELECT COUNT(*) FROM channels")[0]
        tip = db.query_one("SELECT MAX(height) FROM blocks")[0]
    return {
        "synthetic_rows": True,
        "added": count,
        "stored": total,
        "height": height,
        "stored_tip": tip,
    }
