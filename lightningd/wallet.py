"""The on-chain wallet: BIP84 P2WPKH outputs, watched from the account xpub alone.

lightningd holds no private key: addresses come from hsmd's account xpub
(m/84'/coin'/0', external chain 0, child `keyindex`), and hsmd signs every input
(hsmd_sign_withdrawal) after re-deriving the key itself. As in Core Lightning, the highest
keyindex handed out is the `bip32_max_index` var (so the first address is index 1), and we
recognise scripts up to LOOKAHEAD indexes beyond it so funds sent to an address handed out
before a crash, or by a restored node, are still found.

Outputs live in the `outputs` table (status available/reserved/spent as CLN's
output_status). A block listener records outputs paying our scripts and marks ours spent;
transactions we broadcast are applied at once, unconfirmed. Coin selection takes the
largest confirmed outputs first until the target plus fee is met; change goes back to a
fresh address unless it would be dust, when it goes to fees. Selected inputs are reserved
(`reserved_til` = height + 72, CLN's default) until broadcast, release, or expiry, and
tagged with the txid spending them (`reserved_for_txid`): a start that finds that tx was
never recorded (so never sent) releases them at once. reserveinputs' reservations carry no
txid and only lapse.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bitcointx import base58, segwit_addr
from bitcointx.core import (
    COutPoint,
    CTransaction,
    CTxIn,
    CTxOut,
)
from bitcointx.core.psbt import PartiallySignedTransaction
from bitcointx.core.script import CScript
from bitcointx.wallet import CBitcoinExtPubKey, CBitcoinTestnetExtPubKey
from coincurve import PublicKey

import common.secp  # noqa: F401  (python-bitcointx's secp256k1, before any bitcointx use)
from common.amount import AmountSat
from common.chainparams import ChainParams
from common.scripts import hash160
from hsmd.hsmd_wiregen import HsmdSignWithdrawal, HsmdSignWithdrawalReply, WalletUtxo
from lightningd.chaintopology import (
    Block,
    BroadcastError,
    ChainTopology,
    param_feerate,
    txid_hex,
)
from lightningd.db import Database
from lightningd.db_schema import VAR_BIP32_MAX_INDEX
from lightningd.hsm_control import HsmControl
from lightningd.jsonrpc import (
    JsonRpcServer,
    Param,
    ParamError,
    RpcError,
    json_token,
    param_bool,
    param_number,
    param_sat_or_all,
    param_u32,
)
from lightningd.jsonrpc_errors import (
    FUND_CANNOT_AFFORD,
    FUND_CANNOT_AFFORD_WITH_EMERGENCY,
    FUND_OUTPUT_IS_DUST,
    JSONRPC2_INVALID_PARAMS,
    LIGHTNINGD,
)
from lightningd.log import NodeLog

SOURCE = "wallet"
LOOKAHEAD = 200
RESERVATION_BLOCKS = 72  # CLN's default reservation
EMERGENCY_RESERVE_SAT = 25_000  # CLN's --min-emergency-msat default
DUST_LIMIT_SAT = 546  # CLN's chainparams dust limit
COINBASE_MATURITY = 100
RBF_SEQUENCE = 0xFFFFFFFD  # CLN's BITCOIN_TX_RBF_SEQUENCE
# Weights (BIP141 weight units).
P2WPKH_INPUT_WEIGHT = 272  # 41 bytes x4 + witness (1 + 1+72 signature + 1+33 key)
P2WPKH_SCRIPT_LEN = 22
# outputs.status, as CLN's output_status.
AVAILABLE, RESERVED, SPENT = 0, 1, 2
# Makes outputs AVAILABLE again (status bound first); callers add which ones.
UNRESERVE = "UPDATE outputs SET status = ?, reserved_til = NULL, reserved_for_txid = NULL"
# outputs.type: CLN's wallet_output_type for a plain BIP32 P2WPKH output.
OUTPUT_TYPE_P2WPKH = 6
_BASE58_VERSIONS = {True: (0x6F, 0xC4), False: (0x00, 0x05)}  # testnet? -> (p2pkh, p2sh)


# -- weights and scripts --------------------------------------------------------------------


def varint_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5


def tx_core_weight(num_inputs: int, num_outputs: int) -> int:
    """Version, locktime, counts, and the segwit marker and flag."""
    return 4 * (4 + varint_len(num_inputs) + varint_len(num_outputs) + 4) + 2


def output_weight(script_len: int) -> int:
    return 4 * (8 + varint_len(script_len) + script_len)


def fee_for(feerate_perkw: int, weight: int) -> int:
    return feerate_perkw * weight // 1000  # CLN's amount_tx_fee rounds down


def p2wpkh_script(pubkey: bytes) -> bytes:
    return b"\x00\x14" + hash160(pubkey)


def bip32_child_pubkey(parent: PublicKey, chaincode: bytes, index: int) -> bytes:
    """BIP32 CKDpub, non-hardened `index`: parent + I_L*G, I = HMAC-SHA512(chaincode,
    serP(parent) || ser32(index)). An I_L that is no valid key (odds ~2^-127) raises."""
    if not 0 <= index < 0x80000000:
        raise ValueError(f"not a non-hardened BIP32 index: {index}")
    i = hmac.digest(chaincode, parent.format() + index.to_bytes(4, "big"), "sha512")
    return parent.add(i[:32]).format()


def script_to_address(script: bytes, hrp: str) -> str | None:
    """The address of a witness program output; None for anything else."""
    if len(script) < 4 or script[1] != len(script) - 2:
        return None
    if script[0] == 0:
        version = 0
    elif 0x51 <= script[0] <= 0x60:
        version = script[0] - 0x50
    else:
        return None
    return segwit_addr.encode(hrp, version, script[2:])


def address_to_script(address: str, chain: ChainParams) -> bytes | None:
    """scriptPubKey for a bech32/bech32m or base58 address on `chain`, else None."""
    version, program = segwit_addr.decode(chain.bech32_hrp, address)
    if version is not None and program is not None:
        op = 0 if version == 0 else 0x50 + version
        return bytes([op, len(program)]) + bytes(program)
    payload = _base58_payload(address)
    if payload is None:
        return None
    p2pkh, p2sh = _BASE58_VERSIONS[chain.testnet]
    if payload[0] == p2pkh:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    if payload[0] == p2sh:
        return b"\xa9\x14" + payload[1:] + b"\x87"
    return None


def _base58_payload(address: str) -> bytes | None:
    """The version byte and hash of a well-formed base58check address, any network."""
    try:
        raw = base58.decode(address)
    except Exception:  # bitcointx raises its own error types for bad characters
        return None
    payload, check = raw[:-4], raw[-4:]
    digest = hashlib.sha256(hashlib.sha256(payload).digest()).digest()
    if len(payload) != 21 or digest[:4] != check:
        return None
    return payload


def parse_account_xpub(xpub: str) -> Any:
    """hsmd's account xpub (mainnet "xpub" version bytes on every network; tpub accepted)."""
    for cls in (CBitcoinExtPubKey, CBitcoinTestnetExtPubKey):
        try:
            return cls(xpub)
        except Exception:  # wrong version bytes for this class: try the next one
            continue
    raise ValueError(f"not an extended public key: {xpub[:12]}...")


# -- the wallet's view of outputs -------------------------------------------------------------


@dataclass(frozen=True)
class Utxo:
    txid: bytes  # internal byte order
    outnum: int
    amount_sat: int
    keyindex: int
    scriptpubkey: bytes
    status: int
    confirmation_height: int | None
    spend_height: int | None
    reserved_til: int | None
    reserved_for: bytes | None = None  # txid of the unsent tx of ours they were reserved for
    is_in_coinbase: bool = False

    @classmethod
    def from_row(cls, row: Any) -> Utxo:
        return cls(
            bytes(row["prev_out_tx"]),
            int(row["prev_out_index"]),
            int(row["value"]),
            int(row["keyindex"]),
            bytes(row["scriptpubkey"]),
            int(row["status"]),
            row["confirmation_height"],
            row["spend_height"],
            row["reserved_til"],
            None if row["reserved_for_txid"] is None else bytes(row["reserved_for_txid"]),
            bool(row["is_in_coinbase"]),
        )

    @property
    def outpoint(self) -> tuple[bytes, int]:
        return self.txid, self.outnum

    def reserved_at(self, height: int) -> bool:
        """CLN: a reservation lapses once the chain reaches reserved_til."""
        return self.status == RESERVED and (self.reserved_til or 0) > height


@dataclass(frozen=True)
class Plan:
    inputs: list[Utxo]
    outputs: list[tuple[bytes, int]]  # the requested outputs, amounts resolved
    change_sat: int
    fee_sat: int


@dataclass(frozen=True)
class FundedTx:
    # Unsigned. Every input is our P2WPKH, so the signatures (witnesses) cannot change the
    # txid: peers can sign commitments spending it while hsmd signs it (Wallet.sign).
    tx: CTransaction
    outnums: list[int]  # where each requested output ended up
    amounts: list[int]  # satoshis of each requested output ("all" resolved)
    change_outnum: int | None
    fee_sat: int
    inputs: list[Utxo]

    @property
    def txid(self) -> bytes:
        return self.tx.GetTxid()


def plan_with_inputs(
    inputs: Sequence[Utxo],
    outputs: Sequence[tuple[bytes, int]],
    feerate_perkw: int,
    min_change_sat: int = 0,
) -> Plan | None:
    """Spend exactly `inputs` on fixed `outputs`, or None if they fall short. Change below
    dust goes to fees (unless `min_change_sat` demands a change output of that size)."""
    fixed = sum(a for _, a in outputs)
    total = sum(u.amount_sat for u in inputs)
    base = P2WPKH_INPUT_WEIGHT * len(inputs) + sum(output_weight(len(s)) for s, _ in outputs)
    with_change = base + tx_core_weight(len(inputs), len(outputs) + 1)
    fee_with = fee_for(feerate_perkw, with_change + output_weight(P2WPKH_SCRIPT_LEN))
    change = total - fixed - fee_with
    if change >= max(DUST_LIMIT_SAT, min_change_sat):
        return Plan(list(inputs), list(outputs), change, fee_with)
    fee_without = fee_for(feerate_perkw, base + tx_core_weight(len(inputs), len(outputs)))
    if min_change_sat == 0 and total >= fixed + fee_without:
        return Plan(list(inputs), list(outputs), 0, total - fixed)
    return None


def plan_spend(
    candidates: Sequence[Utxo],
    outputs: Sequence[tuple[bytes, int | None]],
    feerate_perkw: int,
    min_change_sat: int = 0,
    use_all: bool = False,
) -> Plan:
    """Choose inputs (a prefix of `candidates`, or all of them with use_all) for `outputs`;
    at most one amount may be None ("all": everything left after fees). `min_change_sat`
    forces a change output at least that big (the emergency reserve). RpcError 301 if the
    candidates fall short."""
    if any(a is None for _, a in outputs):
        return _plan_all(candidates, outputs, feerate_perkw, min_change_sat)
    fixed_outputs = [(s, int(a or 0)) for s, a in outputs]
    sizes = [len(candidates)] if use_all else range(1, len(candidates) + 1)
    for count in sizes:
        plan = plan_with_inputs(candidates[:count], fixed_outputs, feerate_perkw, min_change_sat)
        if plan is not None:
            return plan
    fixed = sum(a for _, a in fixed_outputs)
    total = sum(u.amount_sat for u in candidates)
    raise RpcError(
        FUND_CANNOT_AFFORD,
        f"Could not afford {fixed}sat using all {len(candidates)} available UTXOs: "
        f"{total}sat does not cover it and the fee",
    )


def _plan_all(
    candidates: Sequence[Utxo],
    outputs: Sequence[tuple[bytes, int | None]],
    feerate_perkw: int,
    min_change_sat: int,
) -> Plan:
    fixed = sum(a for _, a in outputs if a is not None)
    out_weight = sum(output_weight(len(s)) for s, _ in outputs)
    count = len(candidates)
    n_out = len(outputs) + (1 if min_change_sat else 0)
    weight = tx_core_weight(count, n_out) + P2WPKH_INPUT_WEIGHT * count + out_weight
    if min_change_sat:
        weight += output_weight(P2WPKH_SCRIPT_LEN)
    fee = fee_for(feerate_perkw, weight)
    total = sum(u.amount_sat for u in candidates)
    rest = total - fixed - fee - min_change_sat
    if not candidates or rest < DUST_LIMIT_SAT:
        raise RpcError(
            FUND_CANNOT_AFFORD,
            f"Could not afford all using all {count} available UTXOs: {total}sat "
            f"cannot pay {fee}sat fee{' and the emergency reserve' if min_change_sat else ''}",
        )
    resolved = [(s, rest if a is None else a) for s, a in outputs]
    return Plan(list(candidates), resolved, min_change_sat, fee)


class Wallet:
    def __init__(
        self,
        db: Database,
        hsm: HsmControl,
        topology: ChainTopology,
        log: NodeLog,
        chain: ChainParams,
        account_xpub: str,
        lookahead: int = LOOKAHEAD,
    ) -> None:
        self.db = db
        self.hsm = hsm
        self.topology = topology
        self.log = log
        self.chain = chain
        self.lookahead = lookahead
        receive = parse_account_xpub(account_xpub).derive(0)  # external chain
        self._receive_key = PublicKey(bytes(receive.pub))
        self._receive_chaincode = bytes(receive.chaincode)
        self.scripts: dict[bytes, int] = {}
        # Filled in by whoever owns channels: listfunds' "channels", and whether we have
        # anchor channels (which need the emergency reserve kept back).
        self.channels_json: Callable[[], list[dict[str, Any]]] = list
        self.needs_emergency_reserve: Callable[[], bool] = lambda: False
        self._extend_window()
        topology.add_block_listener(self._on_block)

    # -- keys and addresses -------------------------------------------------------------------

    def pubkey(self, keyindex: int) -> bytes:
        # BIP32 CKDpub with coincurve: ~10x faster than bitcointx's derive (which also
        # hashes the parent for a fingerprint we never use), and the lookahead derives
        # hundreds of keys at start-up.
        return bip32_child_pubkey(self._receive_key, self._receive_chaincode, keyindex)

    def script(self, keyindex: int) -> bytes:
        return p2wpkh_script(self.pubkey(keyindex))

    def address(self, keyindex: int) -> str:
        address = script_to_address(self.script(keyindex), self.chain.bech32_hrp)
        assert address is not None
        return address

    @property
    def max_index(self) -> int:
        return self.db.get_int_var(VAR_BIP32_MAX_INDEX, 0)

    def new_keyindex(self, durable: bool = True) -> int:
        """A never-used keyindex, counted on disk before anyone sees its address. Not
        durable for change: the tx showing it is stored durably before it is sent."""
        index = self.max_index + 1
        with self.db.transaction(durable=durable):
            self.db.set_var(VAR_BIP32_MAX_INDEX, index)
        self._extend_window()
        return index

    def _extend_window(self) -> None:
        top = self.max_index + self.lookahead
        for index in range(len(self.scripts), top + 1):
            self.scripts[self.script(index)] = index

    def _saw_keyindex(self, index: int) -> None:
        # Funds arrived on a lookahead address: never hand it out again.
        if index > self.max_index:
            self.db.set_var(VAR_BIP32_MAX_INDEX, index)
            self._extend_window()

    # -- following the chain ---------------------------------------------------------------

    async def _on_block(self, block: Block, height: int) -> None:
        with self.db.transaction():
            for index, tx in enumerate(block.txs):
                self._apply_tx(tx, height, index)

    def _apply_tx(self, tx: CTransaction, height: int | None, txindex: int | None) -> bool:
        """Record `tx`'s effect on our outputs (unconfirmed if height is None)."""
        txid = tx.GetTxid()
        ours = False
        coinbase = tx.is_coinbase()
        if not coinbase:
            for vin in tx.vin:
                ours |= self._mark_spent(vin.prevout.hash, vin.prevout.n, height)
        for n, out in enumerate(tx.vout):
            keyindex = self.scripts.get(bytes(out.scriptPubKey))
            if keyindex is not None:
                self._add_output(txid, n, out, keyindex, height, coinbase)
                ours = True
        if ours:
            self.db.execute(
                "INSERT INTO transactions (id, blockheight, txindex, rawtx) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET"
                " blockheight = COALESCE(excluded.blockheight, blockheight),"
                " txindex = COALESCE(excluded.txindex, txindex)",
                (txid, height, txindex, tx.serialize()),
            )
        return ours

    def _mark_spent(self, txid: bytes, outnum: int, height: int | None) -> bool:
        cur = self.db.execute(
            "UPDATE outputs SET status = ?, reserved_til = NULL, reserved_for_txid = NULL,"
            " spend_height = COALESCE(?, spend_height)"
            " WHERE prev_out_tx = ? AND prev_out_index = ?",
            (SPENT, height, txid, outnum),
        )
        return cur.rowcount > 0

    def _add_output(
        self,
        txid: bytes,
        n: int,
        out: CTxOut,
        keyindex: int,
        height: int | None,
        coinbase: bool,
    ) -> None:
        self.db.execute(
            "INSERT INTO outputs (prev_out_tx, prev_out_index, value, type, status, keyindex,"
            " scriptpubkey, confirmation_height, is_in_coinbase)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (prev_out_tx, prev_out_index) DO UPDATE SET"
            " confirmation_height = COALESCE(excluded.confirmation_height, confirmation_height)",
            (
                txid,
                n,
                out.nValue,
                OUTPUT_TYPE_P2WPKH,
                AVAILABLE,
                keyindex,
                bytes(out.scriptPubKey),
                height,
                coinbase,
            ),
        )
        self._saw_keyindex(keyindex)
        if height is not None:
            self.log.debug(SOURCE, f"Output {txid_hex(txid)}:{n} of {out.nValue}sat ours")

    # -- listing ---------------------------------------------------------------------------

    def outputs(self, include_spent: bool = False) -> list[Utxo]:
        where = "" if include_spent else " WHERE status != 2"
        rows = self.db.query(
            "SELECT * FROM outputs" + where + " ORDER BY prev_out_tx, prev_out_index"
        )
        return [Utxo.from_row(r) for r in rows]

    def get_utxo(self, txid: bytes, outnum: int) -> Utxo | None:
        row = self.db.query_one(
            "SELECT * FROM outputs WHERE prev_out_tx = ? AND prev_out_index = ?", (txid, outnum)
        )
        return None if row is None else Utxo.from_row(row)

    def spendable(self, minconf: int) -> list[Utxo]:
        """Unspent, unreserved outputs with at least `minconf` confirmations, largest first."""
        height = self.topology.height
        found = []
        for utxo in self.outputs():
            if utxo.reserved_at(height) or not self._deep_enough(utxo, minconf, height):
                continue
            found.append(utxo)
        return sorted(found, key=lambda u: (-u.amount_sat, u.txid, u.outnum))

    def _deep_enough(self, utxo: Utxo, minconf: int, height: int) -> bool:
        conf = utxo.confirmation_height
        depth = 0 if conf is None else height - conf + 1
        if depth < minconf:
            return False
        return depth >= COINBASE_MATURITY or not utxo.is_in_coinbase

    # -- spending ------------------------------------------------------------------------------

    def max_fundable(
        self,
        script_len: int,
        feerate_perkw: int,
        minconf: int = 1,
        utxos: Sequence[tuple[bytes, int]] | None = None,
    ) -> AmountSat:
        """What one output of `script_len` bytes could carry with everything ("all")."""
        plan = self.plan([(bytes(script_len), None)], feerate_perkw, minconf, utxos)
        return AmountSat(plan.outputs[0][1])

    def plan(
        self,
        outputs: Sequence[tuple[bytes, AmountSat | None]],
        feerate_perkw: int,
        minconf: int = 1,
        utxos: Sequence[tuple[bytes, int]] | None = None,
    ) -> Plan:
        """Choose inputs (all given `utxos`, else from spendable ones), reserve aside."""
        wanted = [(s, None if a is None else a.sat) for s, a in outputs]
        if sum(a is None for _, a in wanted) > 1:
            raise RpcError(JSONRPC2_INVALID_PARAMS, "Only one output can be 'all'")
        for _, amount in wanted:
            if amount is not None and amount < DUST_LIMIT_SAT:
                raise RpcError(FUND_OUTPUT_IS_DUST, f"Output {amount}sat would be dust")
        spendable = self.spendable(minconf)
        candidates = self._chosen_utxos(utxos) if utxos is not None else spendable
        reserve = self._reserve_needed()
        plan = plan_spend(
            candidates,
            wanted,
            feerate_perkw,
            reserve_if_all(wanted, reserve),
            use_all=utxos is not None,
        )
        self._check_reserve(plan, spendable, reserve)
        return plan

    def _chosen_utxos(self, outpoints: Sequence[tuple[bytes, int]]) -> list[Utxo]:
        height = self.topology.height
        chosen = []
        for txid, outnum in outpoints:
            utxo = self.get_utxo(txid, outnum)
            name = f"{txid_hex(txid)}:{outnum}"
            if utxo is None:
                raise RpcError(JSONRPC2_INVALID_PARAMS, f"Unknown UTXO {name}")
            if utxo.status == SPENT:
                raise RpcError(JSONRPC2_INVALID_PARAMS, f"Already spent UTXO {name}")
            if utxo.reserved_at(height):
                raise RpcError(JSONRPC2_INVALID_PARAMS, f"UTXO {name} already reserved")
            chosen.append(utxo)
        if len({u.outpoint for u in chosen}) != len(chosen):
            raise RpcError(JSONRPC2_INVALID_PARAMS, "utxos: the same UTXO is listed twice")
        return chosen

    def _reserve_needed(self) -> int:
        return EMERGENCY_RESERVE_SAT if self.needs_emergency_reserve() else 0

    def _check_reserve(self, plan: Plan, spendable: list[Utxo], reserve: int) -> None:
        if not reserve:
            return
        used = {u.outpoint for u in plan.inputs}
        left = plan.change_sat + sum(u.amount_sat for u in spendable if u.outpoint not in used)
        if left < reserve:
            raise RpcError(
                FUND_CANNOT_AFFORD_WITH_EMERGENCY,
                f"We would not have enough left for min-emergency-msat {reserve * 1000}msat",
            )

    def reserve(
        self,
        inputs: Sequence[Utxo],
        blocks: int = RESERVATION_BLOCKS,
        for_txid: bytes | None = None,
    ) -> None:
        """Reserve `inputs`; `for_txid` names our tx spending them, so that a start finding it
        never recorded frees them (release_unsent). Untagged ones only lapse."""
        height = self.topology.height
        # Not durable: it keeps our own concurrent spends apart; the tx spending these is
        # stored durably before it leaves the node, and a reservation lost with the power
        # only frees inputs nothing was sent with.
        with self.db.transaction(durable=False):
            for utxo in inputs:
                cur = self.db.execute(
                    "UPDATE outputs SET status = ?, reserved_til = ?, reserved_for_txid = ?"
                    " WHERE prev_out_tx = ? AND prev_out_index = ? AND status != ?",
                    (RESERVED, height + blocks, for_txid, utxo.txid, utxo.outnum, SPENT),
                )
                if cur.rowcount != 1:
                    raise RpcError(LIGHTNINGD, f"UTXO {txid_hex(utxo.txid)}:{utxo.outnum} gone")

    def release(self, tx: CTransaction | Sequence[Utxo]) -> None:
        """Unreserve a transaction's inputs (a failed open, a tx we will not send)."""
        if isinstance(tx, CTransaction):
            points = [(i.prevout.hash, i.prevout.n) for i in tx.vin]
        else:
            points = [u.outpoint for u in tx]
        with self.db.transaction(durable=False):  # a lost release only lapses in 72 blocks
            for txid, outnum in points:
                self.db.execute(
                    UNRESERVE + " WHERE prev_out_tx = ? AND prev_out_index = ? AND status = ?",
                    (AVAILABLE, txid, outnum, RESERVED),
                )

    def unsent_txids(self) -> set[bytes]:
        """Our txs holding reservations that were never recorded (with their channel, or by
        broadcast() before sending): they never left the node, and never will."""
        rows = self.db.query(
            "SELECT DISTINCT reserved_for_txid FROM outputs WHERE status = ?"
            " AND reserved_for_txid IS NOT NULL"
            " AND reserved_for_txid NOT IN (SELECT id FROM transactions)",
            (RESERVED,),
        )
        return {bytes(row[0]) for row in rows}

    def release_unsent(self) -> set[bytes]:
        """At start: free the inputs of our txs that died before being recorded; returns
        their txids. A recorded tx keeps its inputs: it is sent again, and spends them."""
        unsent = self.unsent_txids()
        with self.db.transaction(durable=False):  # lost with the power: redone next start
            for txid in unsent:
                self.db.execute(
                    UNRESERVE + " WHERE status = ? AND reserved_for_txid = ?",
                    (AVAILABLE, RESERVED, txid),
                )
        for txid in unsent:
            self.log.info(SOURCE, f"Released the inputs of unsent transaction {txid_hex(txid)}")
        return unsent

    def build(
        self, plan: Plan, locktime: int | None = None
    ) -> tuple[CTransaction, list[int], int | None]:
        """The unsigned tx: BIP69 order (as CLN permutes), RBF sequences, anti-fee-sniping
        locktime. Returns it with the outnum of each requested output and of the change."""
        inputs = sorted(plan.inputs, key=lambda u: (u.txid[::-1], u.outnum))
        tagged = [(amount, script, i) for i, (script, amount) in enumerate(plan.outputs)]
        if plan.change_sat:
            tagged.append((plan.change_sat, self.script(self.new_keyindex(durable=False)), -1))
        tagged.sort(key=lambda t: (t[0], t[1]))
        tx = CTransaction(
            [CTxIn(COutPoint(u.txid, u.outnum), nSequence=RBF_SEQUENCE) for u in inputs],
            [CTxOut(amount, CScript(script)) for amount, script, _ in tagged],
            nLockTime=self.topology.height if locktime is None else locktime,
            nVersion=2,
        )
        outnums = [0] * len(plan.outputs)
        change_outnum = None
        for n, (_, _, tag) in enumerate(tagged):
            if tag < 0:
                change_outnum = n
            else:
                outnums[tag] = n
        return tx, outnums, change_outnum

    def psbt(self, funded: FundedTx) -> str:
        """The unsigned transaction with its inputs' witness_utxo, base64."""
        by_point = {u.outpoint: u for u in funded.inputs}
        psbt = PartiallySignedTransaction(unsigned_tx=funded.tx)
        for i, txin in enumerate(funded.tx.vin):
            utxo = by_point[(txin.prevout.hash, txin.prevout.n)]
            spent = CTxOut(utxo.amount_sat, CScript(utxo.scriptpubkey))
            psbt.set_utxo(spent, i, force_witness_utxo=True)
        return str(psbt.to_base64())

    async def sign(self, funded: FundedTx) -> CTransaction:
        """hsmd signs every input; each must be one of `funded.inputs` (our outputs)."""
        by_point = {u.outpoint: u for u in funded.inputs}
        utxos = []
        for txin in funded.tx.vin:
            u = by_point[(txin.prevout.hash, txin.prevout.n)]
            utxos.append(WalletUtxo(u.txid, u.outnum, AmountSat(u.amount_sat), u.keyindex))
        reply = await self.hsm.request(
            HsmdSignWithdrawal(utxos=tuple(utxos), tx=funded.tx.serialize()),
            HsmdSignWithdrawalReply,
        )
        signed = CTransaction.deserialize(reply.tx)
        if signed.GetTxid() != funded.tx.GetTxid():
            raise RpcError(LIGHTNINGD, "hsmd returned a different transaction")
        return signed

    def prepare(
        self,
        outputs: Sequence[tuple[bytes, AmountSat | None]],
        feerate_perkw: int,
        minconf: int = 1,
        utxos: Sequence[tuple[bytes, int]] | None = None,
        locktime: int | None = None,
    ) -> FundedTx:
        """Select, build (with change) and reserve an unsigned tx paying `outputs`; one
        amount may be None ("all"). Then sign() it, and broadcast() or release() it: it must
        be recorded in `transactions` (broadcast() does so first) before it leaves the node."""
        plan = self.plan(outputs, feerate_perkw, minconf, utxos)
        tx, outnums, change_outnum = self.build(plan, locktime)
        # Reserved for this txid: if we die before it is recorded, the next start frees them.
        self.reserve(plan.inputs, for_txid=bytes(tx.GetTxid()))
        amounts = [a for _, a in plan.outputs]
        return FundedTx(tx, outnums, amounts, change_outnum, plan.fee_sat, plan.inputs)

    async def fund_outputs(
        self,
        outputs: Sequence[tuple[bytes, AmountSat | None]],
        feerate_perkw: int,
        minconf: int = 1,
        utxos: Sequence[tuple[bytes, int]] | None = None,
        locktime: int | None = None,
    ) -> tuple[FundedTx, CTransaction]:
        """prepare() and sign(): the funded tx and its signed form, nothing broadcast."""
        funded = self.prepare(outputs, feerate_perkw, minconf, utxos, locktime)
        try:
            return funded, await self.sign(funded)
        except BaseException:
            self.release(funded.inputs)
            raise

    async def broadcast(self, tx: CTransaction) -> bytes:
        """Send one of our transactions and apply it to the wallet (inputs spent, change
        recorded unconfirmed). A refused tx raises BroadcastError(final=True) with its inputs
        still reserved: the caller releases them, once it has dropped what it recorded on the
        tx. An unreachable bitcoind leaves it applied and queued for rebroadcast."""
        try:
            txid = await self.topology.broadcast(tx.serialize(), bytes(tx.GetTxid()))
        except BroadcastError as exc:
            if not exc.final:
                self._apply_unconfirmed(tx)
            raise
        self._apply_unconfirmed(tx)
        return txid

    def _apply_unconfirmed(self, tx: CTransaction) -> None:
        with self.db.transaction():
            self._apply_tx(tx, None, None)

    # -- RPC ---------------------------------------------------------------------------------

    def register_commands(self, rpc: JsonRpcServer) -> None:
        rpc.register(
            "newaddr",
            self.json_newaddr,
            [Param("addresstype", param_addresstype, required=False, default="bech32")],
            category="bitcoin",
            description="Get a new {bech32} address to fund a channel",
        )
        rpc.register(
            "listfunds",
            self.json_listfunds,
            [Param("spent", param_bool, required=False, default=False)],
            category="utility",
            description="Show available funds from the internal wallet",
        )
        rpc.register(
            "withdraw",
            self.json_withdraw,
            [
                Param("destination", self.param_destination),
                Param("satoshi", param_sat_or_all),
                Param("feerate", param_feerate, required=False),
                Param("minconf", param_number, required=False, default=1),
                Param("utxos", param_outpoints, required=False),
            ],
            category="bitcoin",
            description="Send funds from the internal wallet to {destination} address",
        )
        rpc.register(
            "reserveinputs",
            self.json_reserveinputs,
            [
                Param("psbt", param_psbt),
                Param("exclusive", param_bool, required=False, default=True),
                Param("reserve", param_u32, required=False, default=RESERVATION_BLOCKS),
            ],
            category="bitcoin",
            description="Reserve utxos (or increase their reservation)",
        )
        rpc.register(
            "unreserveinputs",
            self.json_unreserveinputs,
            [
                Param("psbt", param_psbt),
                Param("reserve", param_u32, required=False, default=RESERVATION_BLOCKS),
            ],
            category="bitcoin",
            description="Unreserve utxos (or at least, reduce their reservation)",
        )

    def param_destination(self, value: Any) -> str:
        """withdraw's `destination`, checked in parameter order as CLN does."""
        self.destination_script(value)
        return value

    def destination_script(self, address: Any) -> bytes:
        """scriptPubKey of an address on our chain; CLN fails others with code -1, not as
        a bad parameter (common/json_param.c param_bitcoin_address)."""
        script = address_to_script(address, self.chain) if isinstance(address, str) else None
        if script is not None:
            return script
        if isinstance(address, str) and _base58_payload(address) is not None:
            network = self.chain.network
            raise RpcError(LIGHTNINGD, f"Destination address is not on network {network}")
        raise RpcError(
            LIGHTNINGD, "Could not parse destination address, destination should be a valid address"
        )

    async def json_newaddr(self, addresstype: str) -> dict[str, str]:
        if addresstype == "p2tr":
            raise RpcError(
                JSONRPC2_INVALID_PARAMS,
                "addresstype: p2tr addresses are not supported (our bitcoind backend may be "
                "bcoin, which has no taproot); use bech32",
            )
        index = self.new_keyindex()
        return {"bech32": self.address(index)}

    async def json_listfunds(self, spent: bool) -> dict[str, Any]:
        height = self.topology.height
        return {
            "outputs": [self._output_json(u, height) for u in self.outputs(spent)],
            "channels": self.channels_json(),
        }

    def _output_json(self, utxo: Utxo, height: int) -> dict[str, Any]:
        if utxo.status == SPENT:
            status = "spent"
        else:
            status = "unconfirmed" if utxo.confirmation_height is None else "confirmed"
        item: dict[str, Any] = {
            "txid": txid_hex(utxo.txid),
            "output": utxo.outnum,
            "amount_msat": utxo.amount_sat * 1000,
            "scriptpubkey": utxo.scriptpubkey.hex(),
        }
        address = script_to_address(utxo.scriptpubkey, self.chain.bech32_hrp)
        if address is not None:
            item["address"] = address
        item["status"] = status
        if status == "confirmed":
            item["blockheight"] = utxo.confirmation_height
        item["reserved"] = utxo.reserved_at(height)
        if item["reserved"]:
            item["reserved_to_block"] = utxo.reserved_til
        return item

    async def json_withdraw(
        self,
        destination: str,
        satoshi: AmountSat | None,
        feerate: Any,
        minconf: int,
        utxos: list[tuple[bytes, int]] | None,
    ) -> dict[str, Any]:
        script = self.destination_script(destination)
        perkw = self.topology.resolve_feerate("opening" if feerate is None else feerate)
        funded, signed = await self.fund_outputs([(script, satoshi)], perkw, minconf, utxos)
        try:
            txid = await self.broadcast(signed)
        except BroadcastError as exc:
            if exc.final:
                self.release(signed)
            raise RpcError(LIGHTNINGD, str(exc)) from None
        return {"tx": signed.serialize().hex(), "txid": txid_hex(txid), "psbt": self.psbt(funded)}

    async def json_reserveinputs(
        self, psbt: PartiallySignedTransaction, exclusive: bool, reserve: int
    ) -> dict[str, Any]:
        height = self.topology.height
        utxos = self._psbt_utxos(psbt)
        for utxo in utxos:
            if exclusive and utxo.reserved_at(height):
                raise RpcError(LIGHTNINGD, f"{txid_hex(utxo.txid)}:{utxo.outnum} already reserved")
        result = []
        with self.db.transaction():
            for utxo in utxos:
                was = utxo.reserved_at(height)
                til = (utxo.reserved_til if was else height) or height
                self._set_reservation(utxo, RESERVED, til + reserve)
                result.append(self._reservation_json(utxo, was, True, til + reserve))
        return {"reservations": result}

    async def json_unreserveinputs(
        self, psbt: PartiallySignedTransaction, reserve: int
    ) -> dict[str, Any]:
        height = self.topology.height
        result = []
        with self.db.transaction():
            for utxo in self._psbt_utxos(psbt):
                was = utxo.reserved_at(height)
                if not was:
                    result.append(
                        {
                            "txid": txid_hex(utxo.txid),
                            "vout": utxo.outnum,
                            "was_reserved": False,
                            "reserved": False,
                        }
                    )
                    continue
                til = (utxo.reserved_til or 0) - reserve
                still = til > height
                if still:  # whatever held it still does, unsent tx or user
                    self._set_reservation(utxo, RESERVED, til, utxo.reserved_for)
                else:
                    self._set_reservation(utxo, AVAILABLE, None)
                result.append(self._reservation_json(utxo, True, still, til))
        return {"reservations": result}

    def _psbt_utxos(self, psbt: PartiallySignedTransaction) -> list[Utxo]:
        utxos = []
        for txin in psbt.unsigned_tx.vin:
            name = f"{txid_hex(txin.prevout.hash)}:{txin.prevout.n}"
            utxo = self.get_utxo(txin.prevout.hash, txin.prevout.n)
            if utxo is None:
                raise RpcError(JSONRPC2_INVALID_PARAMS, f"Unknown UTXO {name}")
            if utxo.status == SPENT:
                raise RpcError(LIGHTNINGD, f"{name} already spent")
            utxos.append(utxo)
        return utxos

    def _set_reservation(
        self, utxo: Utxo, status: int, til: int | None, for_txid: bytes | None = None
    ) -> None:
        # reserveinputs passes no txid: the user's reservation outlives restarts, whoever
        # held the output before.
        self.db.execute(
            "UPDATE outputs SET status = ?, reserved_til = ?, reserved_for_txid = ?"
            " WHERE prev_out_tx = ? AND prev_out_index = ?",
            (status, til, for_txid, utxo.txid, utxo.outnum),
        )

    @staticmethod
    def _reservation_json(utxo: Utxo, was: bool, now: bool, til: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "txid": txid_hex(utxo.txid),
            "vout": utxo.outnum,
            "was_reserved": was,
            "reserved": now,
        }
        if now:
            item["reserved_to_block"] = til
        return item


def reserve_if_all(wanted: Sequence[tuple[bytes, int | None]], reserve: int) -> int:
    """With "all", the emergency reserve is kept back as change; otherwise it is checked."""
    return reserve if any(a is None for _, a in wanted) else 0


# -- parameters -------------------------------------------------------------------------------


def param_addresstype(value: Any) -> str:
    # "all" would add a p2tr address, which we cannot offer: it gives the bech32 one.
    if value in ("bech32", "all"):
        return "bech32"
    if value == "p2tr":
        return "p2tr"
    raise ParamError("should be one of: bech32, p2tr, all")


def param_outpoints(value: Any) -> list[tuple[bytes, int]]:
    """An array of "txid:vout" (txid as printed), with CLN's errors (param_outpoint_arr)."""
    if not isinstance(value, list):
        text = value if isinstance(value, str) else json_token(value)
        raise ParamError(
            "should be an array",
            f'Could not decode the outpoint array for utxos: "{text}" is not a valid outpoint'
            " array.",
        )
    return [_outpoint(item) for item in value]


def _outpoint(item: Any) -> tuple[bytes, int]:
    txid, sep, vout = item.partition(":") if isinstance(item, str) else ("", "", "")
    try:
        raw = bytes.fromhex(txid)
    except ValueError:
        raw = b""
    if not sep or len(raw) != 32 or not (vout.isascii() and vout.isdigit()) or int(vout) >= 2**32:
        raise ParamError(
            "should be 'txid:output'",
            f'Could not decode outpoint "{json_token(item)}", expected format: txid:output',
        )
    return raw[::-1], int(vout)


def param_psbt(value: Any) -> PartiallySignedTransaction:
    try:
        return PartiallySignedTransaction.from_base64(value)
    except Exception:  # bitcointx raises several types for bad input
        raise ParamError("Expected a PSBT") from None
