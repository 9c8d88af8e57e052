"""A correct BOLT #2 v1 channel-establishment counterparty for tests, in either role.

`OpeningPeer` is a ScriptedPeer with its own channel keys (funding key, four
basepoint secrets, a shachain seed; all derived from a test seed), so it can
open a channel to lightningd or accept one from it, and get any field wrong on
purpose through keyword overrides.

It builds both first commitment transactions with common.commit_tx and signs
with its own funding key; the signature it receives is checked independently
of the code under test: the full 2-of-2 witness (both signatures) is run
through python-bitcointx's script interpreter (`VerifyScript`) against a
funding script built here from the two funding pubkeys.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTxOut,
)
from bitcointx.core.psbt import PartiallySignedTransaction
from bitcointx.core.script import (
    OP_0,
    OP_CHECKMULTISIG,
    SIGHASH_ALL,
    CScript,
    CScriptWitness,
)
from bitcointx.core.scripteval import VerifyScript, VerifyScriptError
from coincurve import PrivateKey, PublicKey

import common.secp  # noqa: F401  (before any bitcointx key operation)
from common.commit_tx import (
    ChannelType,
    CommitmentKeys,
    CommitmentTx,
    build_initial_commitment_tx,
    commitment_number_obscurer,
    sign_commitment_tx,
)
from common.features import bits_to_bytes, bytes_to_bits
from common.funding import derive_channel_id, funding_output
from common.handshake import privkey_ecdh
from common.key_derive import derive_revocation_pubkey, derive_simple_pubkey
from common.peer_io import PeerConnection, handshake_initiator, handshake_responder
from common.shachain import per_commitment_point
from common.signature import compact_to_der, der_to_compact
from tests.scripted_peer import REGTEST, ScriptedPeer, init_msg
from wire import peer_wiregen as wire

# BOLT #9 channel_type bits.
STATIC_REMOTEKEY = [12]
ANCHORS = [12, 22]
SCID_ALIAS_BIT = 46
ZEROCONF_BIT = 50

# BOLT #3 "Dust Limits": 354 sat is the lowest dust limit BOLT #2 lets a peer use.
MIN_DUST_LIMIT = 354
DEFAULT_DUST_LIMIT = 546
DEFAULT_FUNDING = 1_000_000
# 10 sat/vbyte, inside any sane [min, max] feerate bounds.
DEFAULT_FEERATE = 2500
DEFAULT_TO_SELF_DELAY = 144
MAX_ACCEPTED_HTLCS = 483
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# Message types skipped while waiting for a channel message (BOLT #7 gossip).
GOSSIP_TYPES = range(256, 266)


class PeerRefused(AssertionError):
    """The other side sent `error` or `warning` where we expected its next step."""

    def __init__(self, msg: wire.Error | wire.Warning) -> None:
        super().__init__(f"{type(msg).NAME}: {error_text(msg)}")
        # Not `.msg`: pytest treats an exception's `msg` attribute as text.
        self.refusal = msg
        self.text = error_text(msg)


class SignatureCheckFailed(AssertionError):
    """The peer's commitment signature does not satisfy the 2-of-2 funding script."""


def error_text(msg: wire.Error | wire.Warning) -> str:
    return msg.data.decode("utf-8", "replace")


def off_curve_point() -> bytes:
    """A 33-byte "compressed point" with a valid prefix whose x is not on secp256k1."""
    for x in range(1, 1000):
        candidate = b"\x02" + x.to_bytes(32, "big")
        try:
            PublicKey(candidate)
        except ValueError:
            return candidate
    raise AssertionError("unreachable: half of all x are off the curve")


def high_s(compact: bytes) -> bytes:
    """The same signature with S negated: valid ECDSA, but not LOW-S."""
    s = int.from_bytes(compact[32:], "big")
    return compact[:32] + (SECP256K1_ORDER - s).to_bytes(32, "big")


def _tagged(seed: bytes, tag: str) -> bytes:
    return hashlib.sha256(seed + tag.encode()).digest()


# --- keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelKeys:
    """One side's channel secrets, deterministic from a test seed."""

    funding_privkey: bytes
    revocation_secret: bytes
    payment_secret: bytes
    delayed_payment_secret: bytes
    htlc_secret: bytes
    shachain_seed: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> ChannelKeys:
        names = ("funding", "revocation", "payment", "delayed_payment", "htlc", "shachain")
        return cls(*(_tagged(seed, name) for name in names))

    @staticmethod
    def _pub(secret: bytes) -> bytes:
        return PrivateKey(secret).public_key.format(compressed=True)

    def points(self) -> dict[str, bytes]:
        """The six points of open_channel / accept_channel, by field name."""
        return {
            "funding_pubkey": self._pub(self.funding_privkey),
            "revocation_basepoint": self._pub(self.revocation_secret),
            "payment_basepoint": self._pub(self.payment_secret),
            "delayed_payment_basepoint": self._pub(self.delayed_payment_secret),
            "htlc_basepoint": self._pub(self.htlc_secret),
            "first_per_commitment_point": per_commitment_point(self.shachain_seed, 0),
        }


# --- the first commitments, from the two messages ------------------------------


def channel_type_of(open_msg: wire.OpenChannel) -> ChannelType:
    return ChannelType.from_feature_bits(bytes_to_bits(open_msg.tlvs.channel_type or b""))


def commitment_keys(
    owner: wire.OpenChannel | wire.AcceptChannel, other: wire.OpenChannel | wire.AcceptChannel
) -> CommitmentKeys:
    """BOLT #3 keys of `owner`'s first commitment (static_remotekey: remotepubkey is
    the other side's payment_basepoint)."""
    point = owner.first_per_commitment_point
    return CommitmentKeys(
        local_funding_pubkey=owner.funding_pubkey,
        remote_funding_pubkey=other.funding_pubkey,
        revocation_pubkey=derive_revocation_pubkey(other.revocation_basepoint, point),
        local_delayed_pubkey=derive_simple_pubkey(owner.delayed_payment_basepoint, point),
        remote_pubkey=other.payment_basepoint,
        local_htlc_pubkey=derive_simple_pubkey(owner.htlc_basepoint, point),
        remote_htlc_pubkey=derive_simple_pubkey(other.htlc_basepoint, point),
    )


def first_commitment(
    open_msg: wire.OpenChannel,
    accept_msg: wire.AcceptChannel,
    funding_txid: bytes,
    funding_outnum: int,
    owner_is_opener: bool,
) -> CommitmentTx:
    """Commitment number 0 of the opener (owner_is_opener) or the accepter."""
    owner, other = (open_msg, accept_msg) if owner_is_opener else (accept_msg, open_msg)
    opener_msat = open_msg.funding_satoshis * 1000 - open_msg.push_msat
    to_local = opener_msat if owner_is_opener else open_msg.push_msat
    return build_initial_commitment_tx(
        funding_txid=funding_txid,
        funding_outnum=funding_outnum,
        funding_sat=open_msg.funding_satoshis,
        keys=commitment_keys(owner, other),
        # BOLT #2: to_self_delay is how long the *other* node's to-self outputs wait.
        to_self_delay=other.to_self_delay,
        dust_limit_sat=owner.dust_limit_satoshis,
        feerate_per_kw=open_msg.feerate_per_kw,
        to_local_msat=to_local,
        to_remote_msat=open_msg.funding_satoshis * 1000 - to_local,
        obscurer=commitment_number_obscurer(
            open_msg.payment_basepoint, accept_msg.payment_basepoint
        ),
        local_is_opener=owner_is_opener,
        local_reserve_sat=other.channel_reserve_satoshis,
        remote_reserve_sat=owner.channel_reserve_satoshis,
        channel_type=channel_type_of(open_msg),
    )


# --- the independent check --------------------------------------------------------


def multisig_2of2(pubkey_a: bytes, pubkey_b: bytes) -> CScript:
    """BOLT #3 funding witness script, built here rather than by common.scripts:
    `2 <pubkey1> <pubkey2> 2 OP_CHECKMULTISIG`, keys in lexicographic order."""
    key1, key2 = sorted((pubkey_a, pubkey_b))
    return CScript([2, key1, key2, 2, OP_CHECKMULTISIG])


def verify_2of2_spend(commitment: CommitmentTx, sigs: dict[bytes, bytes], funding_sat: int) -> None:
    """Run the commitment's funding input, witnessed with both signatures, through
    bitcointx's script interpreter; SignatureCheckFailed if it does not verify.

    `sigs` maps each funding pubkey to its compact (64-byte) signature.
    """
    keys = sorted(sigs)
    wscript = multisig_2of2(*keys)
    script_pubkey = CScript([OP_0, hashlib.sha256(wscript).digest()])
    # BOLT #3: the witness is `0 <signature_for_pubkey1> <signature_for_pubkey2>`.
    stack = [b"", *(compact_to_der(sigs[k]) + bytes([SIGHASH_ALL]) for k in keys), wscript]
    try:
        VerifyScript(
            CScript(),
            script_pubkey,
            commitment.tx.to_immutable(),
            0,
            amount=funding_sat,
            witness=CScriptWitness(stack),
        )
    except VerifyScriptError as exc:
        raise SignatureCheckFailed(
            f"2-of-2 spend of {commitment.tx.serialize().hex()} fails: {exc}"
        ) from None


# --- a funding transaction that is never broadcast ---------------------------------


@dataclass(frozen=True)
class FakeFunding:
    psbt: str  # base64, as fundchannel_complete takes it
    txid: bytes  # internal byte order, as funding_created carries it
    outnum: int


def fake_funding_psbt(script_pubkey: bytes, amount_sat: int, seed: bytes = b"") -> FakeFunding:
    """A PSBT spending a made-up P2WPKH input to a change output and the funding output."""
    change_sat, fee_sat = 50_000, 1_000
    prevout = COutPoint(_tagged(seed, "fake input"), 0)
    spent = CTxOut(amount_sat + change_sat + fee_sat, CScript([OP_0, _tagged(seed, "in")[:20]]))
    change = CScript([OP_0, _tagged(seed, "change")[:20]])
    vout = [CMutableTxOut(change_sat, change), CMutableTxOut(amount_sat, CScript(script_pubkey))]
    tx = CMutableTransaction([CMutableTxIn(prevout)], vout, nVersion=2)
    psbt = PartiallySignedTransaction(unsigned_tx=tx)
    # Segwit inputs only (BOLT #2: "SHOULD use only BIP141 (Segregated Witness) inputs").
    psbt.set_utxo(spent, 0, force_witness_utxo=True)
    return FakeFunding(psbt.to_base64(), tx.GetTxid(), 1)


# --- background helpers -----------------------------------------------------------


class Background:
    """Run a function in a thread; `result()` joins and re-raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            self._value = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in result()
            self._error = exc

    def result(self, timeout: float = 30) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("background step did not finish")
        if self._error is not None:
            raise self._error
        return self._value


# --- the peer ---------------------------------------------------------------------


class OpeningPeer(ScriptedPeer):
    """A node that can open a channel to, or accept one from, the other end."""

    def __init__(self, seed: bytes = b"opening peer", secret: bytes | None = None) -> None:
        super().__init__(secret or _tagged(seed, "node secret"))
        self.seed = seed
        self.keys = ChannelKeys.from_seed(seed)
        self.open_msg: wire.OpenChannel | None = None
        self.accept_msg: wire.AcceptChannel | None = None
        self.funding_txid: bytes | None = None
        self.funding_outnum = 0
        self.is_opener = False
        self.their_init: wire.Init | None = None
        # Filled as the flow goes: our commitment with both signatures checked.
        self.our_commitment: CommitmentTx | None = None
        self.their_signature: bytes | None = None

    # -- connection ----------------------------------------------------------------

    def exchange_init(self, features: bytes | None = None) -> wire.Init:
        self.send(init_msg(features))
        their = self.recv()
        assert isinstance(their, wire.Init), their
        self.their_init = their
        return their

    def connect_to(self, node: Any, features: bytes | None = None) -> wire.Init:
        """Connect to a test Node (tests/node.py) and exchange init."""
        self.connect(node.id, node.port)
        return self.exchange_init(features)

    def connected_from(self, node: Any, features: bytes | None = None) -> dict:
        """Have a test Node `connect` to us; returns its RPC result."""
        port, accepting, accepted = self.listen()

        def answer() -> None:
            accepting.join(10)
            self.conn = accepted[0]
            self.exchange_init(features)

        talker = Background(answer)
        result = node.rpc.connect(self.node_id.hex(), "127.0.0.1", port)
        talker.result()
        return result

    def set_timeout(self, seconds: float | None) -> None:
        assert self.conn is not None
        self.conn.sock.settimeout(seconds)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    # -- receiving -------------------------------------------------------------------

    def recv_protocol(self) -> wire.Message:
        """The next message that is not ping/pong or gossip (pings are answered)."""
        while True:
            msg = self.recv_skipping_pings()
            if isinstance(msg, wire.Pong) or msg.TYPE in GOSSIP_TYPES:
                continue
            return msg

    def expect(self, kind: type) -> Any:
        """The next protocol message, which must be `kind`; PeerRefused on error/warning."""
        msg = self.recv_protocol()
        if isinstance(msg, wire.Error | wire.Warning) and kind not in (wire.Error, wire.Warning):
            raise PeerRefused(msg)
        assert isinstance(msg, kind), f"expected {kind.NAME}, got {msg}"
        return msg

    def expect_error(self, warning_ok: bool = False) -> wire.Error | wire.Warning:
        """The next protocol message, which must be `error` (or `warning` if allowed)."""
        msg = self.recv_protocol()
        kinds = (wire.Error, wire.Warning) if warning_ok else (wire.Error,)
        assert isinstance(msg, kinds), f"expected error, got {msg}"
        return msg

    def expect_error_text(self, warning_ok: bool = False) -> str:
        return error_text(self.expect_error(warning_ok))

    def ping_pong(self, num_pong_bytes: int = 7) -> bool:
        """Send a ping; True once the pong arrives (answering pings meanwhile)."""
        self.send(wire.Ping(num_pong_bytes=num_pong_bytes, ignored=b"").encode())
        while True:
            msg = self.recv_skipping_pings()
            if isinstance(msg, wire.Pong):
                return msg.ignored == bytes(num_pong_bytes)

    def closed_by_other_side(self) -> bool:
        """True if the connection ends (EOF/reset) before anything but pings arrives."""
        try:
            self.recv_protocol()
        except (EOFError, ConnectionError):
            return True
        return False

    # -- as opener -------------------------------------------------------------------

    def open_channel_msg(self, **overrides: Any) -> wire.OpenChannel:
        """A correct open_channel; any field, or the `upfront_shutdown_script` /
        `channel_type` TLVs (bytes, a list of bits, or None to omit), may be overridden."""
        funding = overrides.get("funding_satoshis", DEFAULT_FUNDING)
        fields: dict[str, Any] = {
            "chain_hash": REGTEST,
            "temporary_channel_id": _tagged(self.seed, "temporary_channel_id"),
            "funding_satoshis": funding,
            "push_msat": 0,
            "dust_limit_satoshis": DEFAULT_DUST_LIMIT,
            "max_htlc_value_in_flight_msat": funding * 1000,
            # BOLT #2: 1% of the channel total is suggested.
            "channel_reserve_satoshis": max(funding // 100, DEFAULT_DUST_LIMIT),
            "htlc_minimum_msat": 0,
            "feerate_per_kw": DEFAULT_FEERATE,
            "to_self_delay": DEFAULT_TO_SELF_DELAY,
            "max_accepted_htlcs": MAX_ACCEPTED_HTLCS,
            **self.keys.points(),
            "channel_flags": 1,
        }
        tlvs = _tlvs(wire.OpenChannelTlvs, overrides, ANCHORS)
        fields.update(overrides)
        return wire.OpenChannel(**fields, tlvs=tlvs)

    def send_open_channel(self, **overrides: Any) -> wire.OpenChannel:
        msg = self.open_channel_msg(**overrides)
        self.send(msg.encode())
        self.open_msg, self.is_opener = msg, True
        return msg

    def read_accept_channel(self) -> wire.AcceptChannel:
        self.accept_msg = self.expect(wire.AcceptChannel)
        return self.accept_msg

    def funding_created_msg(
        self,
        funding_txid: bytes | None = None,
        funding_outnum: int = 0,
        signature: bytes | None = None,
        bad_signature: bool = False,
    ) -> wire.FundingCreated:
        """funding_created for a made-up funding tx, signing their first commitment."""
        assert self.open_msg is not None and self.accept_msg is not None
        self.funding_txid = funding_txid or _tagged(self.seed, "funding txid")
        self.funding_outnum = funding_outnum
        if signature is None:
            # A wrong signature: well formed, low-S, but over our own commitment.
            signed = self.our_first_commitment() if bad_signature else self.their_commitment()
            signature = self.sign(signed)
        return wire.FundingCreated(
            temporary_channel_id=self.open_msg.temporary_channel_id,
            funding_txid=self.funding_txid,
            funding_output_index=funding_outnum,
            signature=signature,
        )

    def send_funding_created(self, **kwargs: Any) -> wire.FundingCreated:
        msg = self.funding_created_msg(**kwargs)
        self.send(msg.encode())
        return msg

    def read_funding_signed(self, verify: bool = True) -> wire.FundingSigned:
        """funding_signed: right channel_id, and (verify) a signature on our commitment
        that completes the 2-of-2 spend."""
        msg = self.expect(wire.FundingSigned)
        assert msg.channel_id == self.channel_id(), "funding_signed on the wrong channel_id"
        if verify:
            self.check_their_signature(msg.signature)
        return msg

    def open_channel(self, **overrides: Any) -> wire.FundingSigned:
        """The whole opener flow, to a verified funding_signed."""
        self.send_open_channel(**overrides)
        self.read_accept_channel()
        self.send_funding_created()
        return self.read_funding_signed()

    # -- as accepter -----------------------------------------------------------------

    def read_open_channel(self) -> wire.OpenChannel:
        self.open_msg, self.is_opener = self.expect(wire.OpenChannel), False
        return self.open_msg

    def accept_channel_msg(self, **overrides: Any) -> wire.AcceptChannel:
        """A correct reply to the open_channel read; fields and TLVs overridable."""
        assert self.open_msg is not None
        funding = self.open_msg.funding_satoshis
        fields: dict[str, Any] = {
            "temporary_channel_id": self.open_msg.temporary_channel_id,
            "dust_limit_satoshis": DEFAULT_DUST_LIMIT,
            "max_htlc_value_in_flight_msat": funding * 1000,
            # BOLT #2: MUST set channel_reserve_satoshis >= dust_limit_satoshis from
            # open_channel.
            "channel_reserve_satoshis": max(funding // 100, self.open_msg.dust_limit_satoshis),
            "htlc_minimum_msat": 0,
            "minimum_depth": 1,
            "to_self_delay": DEFAULT_TO_SELF_DELAY,
            "max_accepted_htlcs": MAX_ACCEPTED_HTLCS,
            **self.keys.points(),
        }
        # BOLT #2: MUST set channel_type to the channel_type from open_channel.
        default_type = self.open_msg.tlvs.channel_type
        tlvs = _tlvs(wire.AcceptChannelTlvs, overrides, default_type)
        fields.update(overrides)
        return wire.AcceptChannel(**fields, tlvs=tlvs)

    def send_accept_channel(self, **overrides: Any) -> wire.AcceptChannel:
        msg = self.accept_channel_msg(**overrides)
        self.send(msg.encode())
        self.accept_msg = msg
        return msg

    def read_funding_created(self, verify: bool = True) -> wire.FundingCreated:
        """funding_created: right temporary_channel_id, and (verify) a signature on
        our commitment that completes the 2-of-2 spend."""
        assert self.open_msg is not None
        msg = self.expect(wire.FundingCreated)
        assert msg.temporary_channel_id == self.open_msg.temporary_channel_id
        self.funding_txid, self.funding_outnum = msg.funding_txid, msg.funding_output_index
        if verify:
            self.check_their_signature(msg.signature)
        return msg

    def funding_signed_msg(
        self, signature: bytes | None = None, bad_signature: bool = False
    ) -> wire.FundingSigned:
        if signature is None:
            signed = self.our_first_commitment() if bad_signature else self.their_commitment()
            signature = self.sign(signed)
        return wire.FundingSigned(channel_id=self.channel_id(), signature=signature)

    def send_funding_signed(self, **kwargs: Any) -> wire.FundingSigned:
        msg = self.funding_signed_msg(**kwargs)
        self.send(msg.encode())
        return msg

    def accept_channel(self, **overrides: Any) -> wire.FundingSigned:
        """The whole accepter flow: read open_channel ... send funding_signed."""
        self.read_open_channel()
        self.send_accept_channel(**overrides)
        self.read_funding_created()
        return self.send_funding_signed()

    # -- commitments and signatures -------------------------------------------------

    def channel_id(self) -> bytes:
        assert self.funding_txid is not None
        return derive_channel_id(self.funding_txid, self.funding_outnum)

    def funding_script_pubkey(self) -> bytes:
        assert self.open_msg is not None and self.accept_msg is not None
        out = funding_output(
            self.open_msg.funding_pubkey,
            self.accept_msg.funding_pubkey,
            self.open_msg.funding_satoshis,
        )
        return bytes(out.script_pubkey)

    def _commitment(self, owner_is_opener: bool) -> CommitmentTx:
        assert self.open_msg is not None and self.accept_msg is not None
        assert self.funding_txid is not None
        return first_commitment(
            self.open_msg, self.accept_msg, self.funding_txid, self.funding_outnum, owner_is_opener
        )

    def our_first_commitment(self) -> CommitmentTx:
        return self._commitment(self.is_opener)

    def their_commitment(self) -> CommitmentTx:
        return self._commitment(not self.is_opener)

    def sign(self, commitment: CommitmentTx) -> bytes:
        return der_to_compact(sign_commitment_tx(commitment, self.keys.funding_privkey))

    def check_their_signature(self, signature: bytes) -> None:
        """Their compact signature plus ours must spend the funding output in our
        first commitment (bitcointx's interpreter, not the code under test)."""
        assert self.open_msg is not None and self.accept_msg is not None
        ours = self.our_first_commitment()
        theirs_msg = self.accept_msg if self.is_opener else self.open_msg
        our_key = self.keys.points()["funding_pubkey"]
        sigs = {our_key: self.sign(ours), theirs_msg.funding_pubkey: signature}
        # The funding output must be what both sides agreed on (common.funding).
        assert bytes(ours.funding_witness_script) == bytes(multisig_2of2(*sigs))
        verify_2of2_spend(ours, sigs, self.open_msg.funding_satoshis)
        self.our_commitment, self.their_signature = ours, signature


def _tlvs(cls: type, overrides: dict[str, Any], default_type: Iterable[int] | bytes | None):
    """Pop the TLV overrides; bits lists become bitfields, None leaves the TLV out."""
    values = {
        "upfront_shutdown_script": overrides.pop("upfront_shutdown_script", b""),
        "channel_type": overrides.pop("channel_type", default_type),
    }
    for name, value in values.items():
        if isinstance(value, list | tuple):
            values[name] = bits_to_bytes(value)
    tlvs = overrides.pop("tlvs", None)
    return tlvs if tlvs is not None else cls(**values)


def with_bits(channel_type: bytes, *bits: int) -> bytes:
    return bits_to_bytes([*bytes_to_bits(channel_type), *bits])


# --- two peers over a socketpair (the self-test) -----------------------------------


def connected_pair(
    opener: OpeningPeer, accepter: OpeningPeer, timeout: float = 10
) -> tuple[PeerConnection, PeerConnection]:
    """Run the BOLT #8 handshake between two peers over a socketpair and exchange init."""
    a, b = socket.socketpair()
    a.settimeout(timeout)
    b.settimeout(timeout)
    responder = Background(handshake_responder, b, accepter.node_id, privkey_ecdh(accepter.secret))
    opener.conn = handshake_initiator(
        a, opener.node_id, privkey_ecdh(opener.secret), accepter.node_id
    )
    accepter.conn = responder.result()
    opener.send(init_msg())
    accepter.exchange_init()
    opener.their_init = opener.expect(wire.Init)
    return opener.conn, accepter.conn


__all__ = [
    "ANCHORS",
    "STATIC_REMOTEKEY",
    "Background",
    "ChannelKeys",
    "FakeFunding",
    "OpeningPeer",
    "PeerRefused",
    "SignatureCheckFailed",
    "connected_pair",
    "error_text",
    "fake_funding_psbt",
    "first_commitment",
    "high_s",
    "multisig_2of2",
    "off_curve_point",
    "verify_2of2_spend",
    "with_bits",
]
