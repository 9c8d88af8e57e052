"""The master database's migrations, in order.

The schema version of a database is the number of these scripts applied to it, kept in the
one-row `version` table as Core Lightning does (a table rather than `PRAGMA user_version` so
that `SELECT * FROM version` shows it to anyone with the sqlite3 shell). Never edit, reorder or
remove an entry once it has shipped: append a new one. Each script may hold several
statements; `lightningd/db.py` runs them all, plus the version bump, in one transaction.

Amounts are integers in the unit their column name says (`_sat`, `_msat`); public keys are
33-byte compressed BLOBs; txids and chain/block hashes are 32-byte BLOBs in internal byte order.
"""

from __future__ import annotations

# Well-known rows of `vars`.
VAR_GENESIS_HASH = "genesis_hash"  # blobval: the chain this database belongs to
VAR_NEXT_CHANNEL_DBID = "next_channel_dbid"  # intval: the next channel dbid to hand out
VAR_BIP32_MAX_INDEX = "bip32_max_index"  # intval: highest wallet keyindex handed out (CLN's name)

_INITIAL = """
CREATE TABLE vars (
    name TEXT PRIMARY KEY,
    val TEXT,
    intval INTEGER,
    blobval BLOB
);

CREATE TABLE peers (
    id INTEGER PRIMARY KEY,
    node_id BLOB UNIQUE NOT NULL CHECK (length(node_id) = 33),
    address TEXT
);

-- Everything a channel opened with open_channel/accept_channel (v1) needs to come back after
-- a restart: who, which funding output, both sides' channel parameters and keys, and our
-- latest commitment transaction with their signature on it.
CREATE TABLE channels (
    -- The channel dbid: hsmd derives the channel's secrets from (peer, dbid), so it is never 0
    -- and never reused (handed out by the next_channel_dbid var, not by SQLite).
    id INTEGER PRIMARY KEY CHECK (id > 0),
    -- No ON DELETE: a peer with channels must never be deleted, so make that fail loudly.
    peer_id INTEGER NOT NULL REFERENCES peers(id),
    state INTEGER NOT NULL,
    channel_id BLOB,
    opener INTEGER NOT NULL CHECK (opener IN (0, 1)),  -- 0 = we opened (LOCAL), 1 = they did
    channel_flags INTEGER NOT NULL DEFAULT 0,
    channel_type BLOB,
    minimum_depth INTEGER,
    funding_txid BLOB,
    funding_outnum INTEGER,
    funding_satoshi INTEGER NOT NULL,
    push_msatoshi INTEGER NOT NULL DEFAULT 0,
    our_msat INTEGER NOT NULL,
    feerate_per_kw INTEGER,
    first_blocknum INTEGER,  -- where to start looking for the funding tx after a restart
    short_channel_id TEXT,
    next_index_local INTEGER NOT NULL DEFAULT 0,
    next_index_remote INTEGER NOT NULL DEFAULT 0,
    next_htlc_id INTEGER NOT NULL DEFAULT 0,

    our_dust_limit_sat INTEGER,
    our_max_htlc_value_in_flight_msat INTEGER,
    our_channel_reserve_sat INTEGER,
    our_htlc_minimum_msat INTEGER,
    our_to_self_delay INTEGER,
    our_max_accepted_htlcs INTEGER,

    their_dust_limit_sat INTEGER,
    their_max_htlc_value_in_flight_msat INTEGER,
    their_channel_reserve_sat INTEGER,
    their_htlc_minimum_msat INTEGER,
    their_to_self_delay INTEGER,
    their_max_accepted_htlcs INTEGER,

    -- Our keys are not stored: hsmd derives them from the dbid.
    our_funding_pubkey BLOB,  -- public: kept so listing channels needs no hsmd round trip
    their_funding_pubkey BLOB,
    their_revocation_basepoint BLOB,
    their_payment_basepoint BLOB,
    their_htlc_basepoint BLOB,
    their_delayed_payment_basepoint BLOB,
    -- Their point for their current commitment (at open: first_per_commitment_point) and the
    -- one after it (from channel_ready; NULL until then).
    their_per_commit_point BLOB,
    their_next_per_commit_point BLOB,
    -- Ours for commitments 0 and 1 (public; hsmd keeps the secrets): channel_reestablish and
    -- channel_ready carry them, and lightningd has no hsmd capability to ask for them.
    our_per_commit_point BLOB,
    our_next_per_commit_point BLOB,
    -- short_channel_id aliases (BOLT #2 channel_ready's TLV) as u64s in two's complement:
    -- the one we sent (random, unique on this node) and the one they sent; NULL until then.
    alias_local INTEGER,
    alias_remote INTEGER,
    -- Lock-in: whether we sent channel_ready and whether we received theirs.
    channel_ready_sent INTEGER NOT NULL DEFAULT 0 CHECK (channel_ready_sent IN (0, 1)),
    channel_ready_received INTEGER NOT NULL DEFAULT 0 CHECK (channel_ready_received IN (0, 1)),
    -- BOLT #7 announcement_signatures: the peer's node and bitcoin signatures on the
    -- channel_announcement (64-byte compact), NULL until a valid one arrived. Ours are not
    -- stored: hsmd signs the same announcement again whenever we (re)send it.
    remote_ann_node_sig BLOB
        CHECK (remote_ann_node_sig IS NULL OR length(remote_ann_node_sig) = 64),
    remote_ann_bitcoin_sig BLOB
        CHECK (remote_ann_bitcoin_sig IS NULL OR length(remote_ann_bitcoin_sig) = 64),

    last_tx BLOB,   -- our latest commitment tx, so we can always go on-chain
    last_sig BLOB,  -- their signature on it

    shutdown_scriptpubkey_local BLOB,
    shutdown_scriptpubkey_remote BLOB,
    shutdown_keyidx_local INTEGER,  -- wallet keyindex behind our close output, if any

    created_at INTEGER NOT NULL  -- unix time
);
CREATE INDEX channels_peer_idx ON channels (peer_id);

-- The chain as we last saw it: reorgs delete blocks and the references below follow.
CREATE TABLE blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    prev_hash BLOB
);

-- The on-chain wallet. status: 0 available, 1 reserved, 2 spent (CLN's output_status).
CREATE TABLE outputs (
    prev_out_tx BLOB NOT NULL,
    prev_out_index INTEGER NOT NULL,
    value INTEGER NOT NULL,  -- satoshis
    type INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),
    keyindex INTEGER,
    scriptpubkey BLOB,
    confirmation_height INTEGER REFERENCES blocks(height) ON DELETE SET NULL,
    spend_height INTEGER REFERENCES blocks(height) ON DELETE SET NULL,
    reserved_til INTEGER,  -- blockheight a reservation lapses at
    PRIMARY KEY (prev_out_tx, prev_out_index)
);
CREATE INDEX output_height_idx ON outputs (confirmation_height, spend_height);

CREATE TABLE transactions (
    id BLOB PRIMARY KEY,  -- txid
    blockheight INTEGER REFERENCES blocks(height) ON DELETE SET NULL,
    txindex INTEGER,
    rawtx BLOB NOT NULL
);

INSERT INTO vars (name, intval) VALUES ('next_channel_dbid', 1);
INSERT INTO vars (name, intval) VALUES ('bip32_max_index', 0);
"""

# An unsent tx's reservations name it, so start-up can free them if it was never recorded
# (Wallet.release_unsent); reserveinputs' own reservations name none and survive restarts.
# The vars rows that did this job before (`funding_reserved_<txid hex>`, blobval the inputs as
# 32-byte txid + 4-byte big-endian outnum each) only ever outlived a crash, and this runs
# before anything else at the start that follows it: do once what that start would have done,
# release the inputs unless the tx was recorded, then drop the rows. (Converting them into
# tags instead would end the same, a moment later, but needs unhex(): SQLite 3.41.)
_RESERVED_FOR_TXID = """
ALTER TABLE outputs ADD COLUMN reserved_for_txid BLOB;

WITH RECURSIVE abandoned(points) AS (
    SELECT blobval FROM vars
     WHERE substr(name, 1, 17) = 'funding_reserved_'
       AND substr(name, 18) NOT IN (SELECT lower(hex(id)) FROM transactions)
    UNION ALL
    SELECT substr(points, 37) FROM abandoned WHERE length(points) > 36
)
UPDATE outputs SET status = 0, reserved_til = NULL
 WHERE status = 1
   AND (prev_out_tx, printf('%08X', prev_out_index))
       IN (SELECT substr(points, 1, 32), hex(substr(points, 33, 4)) FROM abandoned);

DELETE FROM vars WHERE substr(name, 1, 17) = 'funding_reserved_';
"""

# Whether an output is a coinbase's, as Core Lightning's outputs.is_in_coinbase: spending
# checks maturity on every spendable output, and parsing the whole tx for it cost ~0.6 ms an
# output. Existing rows are flagged from their recorded tx: a coinbase's one input spends the
# null outpoint (32 zero bytes, index 0xffffffff), which starts at byte 6, or 8 after a
# segwit marker and flag (a byte 0 where a non-witness tx has its input count).
_IS_IN_COINBASE = """
ALTER TABLE outputs ADD COLUMN is_in_coinbase INTEGER NOT NULL DEFAULT 0;

UPDATE outputs SET is_in_coinbase = 1
 WHERE prev_out_tx IN (
    SELECT id FROM transactions
     WHERE substr(rawtx, CASE WHEN substr(rawtx, 5, 1) = x'00' THEN 8 ELSE 6 END, 36)
           = x'0000000000000000000000000000000000000000000000000000000000000000ffffffff'
);
"""

MIGRATIONS: list[str] = [
    _INITIAL,
    _RESERVED_FOR_TXID,
    _IS_IN_COINBASE,
]
