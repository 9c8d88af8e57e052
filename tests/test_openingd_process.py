"""openingd as a real subprocess: real hsmd, real BOLT #8 connection, both roles.

The test plays lightningd on openingd's fd 0 and a minimal counterparty on the
other end of the encrypted connection at fd 3; hsmd runs for real (its asyncio
master side in a background thread) and gives openingd its fd 6. Each scenario
checks what the peer was sent, what lightningd was told, the exit code, and
that the peer connection handed back still works.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from coincurve import PrivateKey

from common import status_wiregen as status_wire
from common.amount import AmountMsat, AmountSat
from common.chainparams import CHAINS
from common.commit_tx import (
    ChannelType,
    CommitmentKeys,
    CommitmentTx,
    build_initial_commitment_tx,
    commitment_number_obscurer,
    sign_commitment_tx,
    verify_commitment_sig,
)
from common.cryptomsg import CryptoState
from common.daemon_conn import DaemonConn
from common.features import our_features
from common.funding import derive_channel_id, funding_output
from common.handshake import privkey_ecdh
from common.key_derive import derive_revocation_pubkey, derive_simple_pubkey
from common.peer_io import PeerConnection, handshake_initiator, handshake_responder
from common.signature import compact_to_der, der_to_compact
from common.status import LogLevel
from common.subdaemon import HSM_FD, PEER_FD, REQ_FD
from hsmd.capabilities import OPENINGD_CAPABILITIES
from lightningd.hsm_control import HsmControl
from lightningd.log import NodeLog
from lightningd.subd import spawn_subdaemon
from openingd import openingd_wiregen as ow
from wire import peer_wiregen as pw

REGTEST = CHAINS["regtest"].chain_hash
NODE_KEY = b"\x21" * 32  # openingd's node
PEER_KEY = b"\x12" * 32  # the counterparty
PEER_ID = PrivateKey(PEER_KEY).public_key.format()
CLN_L1_SECRET = b"lightning-1".ljust(32, b"\0")
FUNDING_TXID = bytes(range(32))
ANCHORS = b"\x40\x10\x00"  # bits 12 and 22
OUR_CONFIG = ow.ChannelConfig(
    dust_limit=AmountSat(546),
    max_htlc_value_in_flight=AmountMsat(2**64 - 1),
    channel_reserve=AmountSat(0),
    htlc_minimum=AmountMsat(0),
    to_self_delay=6,
    max_accepted_htlcs=483,
)


def pub(secret: bytes) -> bytes:
    return PrivateKey(secret).public_key.format()


# --- the counterparty's side of the channel --------------------------------------------


@dataclass
class Half:
    """One side as the other learns it: keys, and what it asks of its peer."""

    funding_pubkey: bytes
    revocation: bytes
    payment: bytes
    htlc: bytes
    delayed: bytes
    first_point: bytes
    dust: int
    to_self_delay: int  # asked of the other side
    reserve: int  # asked of the other side


PEER_FUNDING_SECRET = b"\x31" * 32
PEER_HALF = Half(
    funding_pubkey=pub(PEER_FUNDING_SECRET),
    revocation=pub(b"\x32" * 32),
    payment=pub(b"\x33" * 32),
    htlc=pub(b"\x34" * 32),
    delayed=pub(b"\x35" * 32),
    first_point=pub(b"\x36" * 32),
    dust=600,
    to_self_delay=144,
    reserve=5_000,
)


def half_of(msg: pw.OpenChannel | pw.AcceptChannel) -> Half:
    return Half(
        msg.funding_pubkey,
        msg.revocation_basepoint,
        msg.payment_basepoint,
        msg.htlc_basepoint,
        msg.delayed_payment_basepoint,
        msg.first_per_commitment_point,
        msg.dust_limit_satoshis,
        msg.to_self_delay,
        msg.channel_reserve_satoshis,
    )


@dataclass
class Deal:
    funding_sat: int
    push_msat: int
    feerate: int
    opener: Half
    accepter: Half


def first_commitment(deal: Deal, owner_is_opener: bool) -> CommitmentTx:
    """BOLT #3 first commitment of one side, written out independently of openingd."""
    owner, other = (deal.opener, deal.accepter) if owner_is_opener else (deal.accepter, deal.opener)
    point = owner.first_point
    keys = CommitmentKeys(
        local_funding_pubkey=owner.funding_pubkey,
        remote_funding_pubkey=other.funding_pubkey,
        revocation_pubkey=derive_revocation_pubkey(other.revocation, point),
        local_delayed_pubkey=derive_simple_pubkey(owner.delayed, point),
        remote_pubkey=other.payment,
        local_htlc_pubkey=derive_simple_pubkey(owner.htlc, point),
        remote_htlc_pubkey=derive_simple_pubkey(other.htlc, point),
    )
    opener_msat = deal.funding_sat * 1000 - deal.push_msat
    to_local, to_remote = (
        (opener_msat, deal.push_msat) if owner_is_opener else (deal.push_msat, opener_msat)
    )
    return build_initial_commitment_tx(
        funding_txid=FUNDING_TXID,
        funding_outnum=0,
        funding_sat=deal.funding_sat,
        keys=keys,
        to_self_delay=other.to_self_delay,
        dust_limit_sat=owner.dust,
        feerate_per_kw=deal.feerate,
        to_local_msat=to_local,
        to_remote_msat=to_remote,
        obscurer=commitment_number_obscurer(deal.opener.payment, deal.accepter.payment),
        local_is_opener=owner_is_opener,
        local_reserve_sat=other.reserve,
        remote_reserve_sat=owner.reserve,
        channel_type=ChannelType.ANCHORS,
    )


def peer_sign(commitment: CommitmentTx) -> bytes:
    return der_to_compact(sign_commitment_tx(commitment, PEER_FUNDING_SECRET))


def sig_ok(commitment: CommitmentTx, pubkey: bytes, compact: bytes) -> bool:
    return verify_commitment_sig(commitment, pubkey, compact_to_der(compact))


def accept_for(open_msg: pw.OpenChannel, **over) -> pw.AcceptChannel:
    fields = dict(
        temporary_channel_id=open_msg.temporary_channel_id,
        dust_limit_satoshis=PEER_HALF.dust,
        max_htlc_value_in_flight_msat=2**64 - 1,
        channel_reserve_satoshis=PEER_HALF.reserve,
        htlc_minimum_msat=0,
        minimum_depth=3,
        to_self_delay=PEER_HALF.to_self_delay,
        max_accepted_htlcs=483,
        funding_pubkey=PEER_HALF.funding_pubkey,
        revocation_basepoint=PEER_HALF.revocation,
        payment_basepoint=PEER_HALF.payment,
        delayed_payment_basepoint=PEER_HALF.delayed,
        htlc_basepoint=PEER_HALF.htlc,
        first_per_commitment_point=PEER_HALF.first_point,
        tlvs=pw.AcceptChannelTlvs(upfront_shutdown_script=b"", channel_type=ANCHORS),
    )
    return pw.AcceptChannel(**{**fields, **over})


def open_from_peer(**over) -> pw.OpenChannel:
    fields = dict(
        chain_hash=REGTEST,
        temporary_channel_id=b"\x77" * 32,
        funding_satoshis=1_000_000,
        push_msat=20_000_000,
        dust_limit_satoshis=PEER_HALF.dust,
        max_htlc_value_in_flight_msat=2**64 - 1,
        channel_reserve_satoshis=PEER_HALF.reserve,
        htlc_minimum_msat=0,
        feerate_per_kw=1000,
        to_self_delay=PEER_HALF.to_self_delay,
        max_accepted_htlcs=483,
        funding_pubkey=PEER_HALF.funding_pubkey,
        revocation_basepoint=PEER_HALF.revocation,
        payment_basepoint=PEER_HALF.payment,
        delayed_payment_basepoint=PEER_HALF.delayed,
        htlc_basepoint=PEER_HALF.htlc,
        first_per_commitment_point=PEER_HALF.first_point,
        channel_flags=0,
        tlvs=pw.OpenChannelTlvs(upfront_shutdown_script=b"", channel_type=ANCHORS),
    )
    return pw.OpenChannel(**{**fields, **over})


# --- hsmd, running for the whole module --------------------------------------------------


class HsmThread:
    """hsmd's master side in an asyncio loop of its own thread, as lightningd runs it."""

    def __init__(self, secret_path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.hsm = HsmControl(NodeLog(LogLevel.BROKEN, []))
        self.call(self.hsm.start(secret_path, REGTEST))
        self.next_dbid = 1

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def client_fd(self) -> tuple[int, int]:
        dbid, self.next_dbid = self.next_dbid, self.next_dbid + 1
        return self.call(self.hsm.client_fd(PEER_ID, dbid, OPENINGD_CAPABILITIES)), dbid

    def stop(self) -> None:
        self.call(self.hsm.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def hsm(tmp_path_factory) -> Iterator[HsmThread]:
    path = tmp_path_factory.mktemp("hsm") / "hsm_secret"
    path.write_bytes(CLN_L1_SECRET)
    os.chmod(path, 0o400)
    h = HsmThread(str(path))
    yield h
    h.stop()


# --- one openingd ----------------------------------------------------------------------


def connected_pair() -> tuple[PeerConnection, PeerConnection]:
    """(node side, peer side) of a fresh BOLT #8 connection over a socketpair."""
    a, b = socket.socketpair()
    result: dict[str, PeerConnection] = {}

    def respond() -> None:
        result["node"] = handshake_responder(a, pub(NODE_KEY), privkey_ecdh(NODE_KEY))

    t = threading.Thread(target=respond)
    t.start()
    peer = handshake_initiator(b, pub(PEER_KEY), privkey_ecdh(PEER_KEY), pub(NODE_KEY))
    t.join(10)
    return result["node"], peer


class Run:
    """openingd running, the test holding its master socket and the peer's end."""

    def __init__(self, hsm: HsmThread, timeout: int = 10, **init_over) -> None:
        node, self.peer = connected_pair()
        self.peer.sock.settimeout(10)
        hsm_fd, self.dbid = hsm.client_fd()
        peer_fd, state = node.detach()
        ours, theirs = socket.socketpair()
        self.pid = spawn_subdaemon(
            "openingd.openingd",
            {REQ_FD: theirs.fileno(), PEER_FD: peer_fd, HSM_FD: hsm_fd},
        )
        for fd in (peer_fd, hsm_fd):
            os.close(fd)
        theirs.close()
        ours.settimeout(15)
        self.master = DaemonConn(ours)
        self.logs: list[str] = []
        self.billboard: list[str] = []
        init = dict(
            chain_hash=REGTEST,
            peer_id=PEER_ID,
            dbid=self.dbid,
            cipher_state=state.to_bytes(),
            our_features=our_features(),
            their_features=our_features(),
            our_config=OUR_CONFIG,
            max_to_self_delay=2016,
            min_effective_htlc_capacity=AmountMsat(1_000_000),
            minimum_depth=3,
            min_feerate=253,
            max_feerate=50_000,
            peer_timeout_secs=timeout,
            zeroconf_trusted=False,
            dev_temporary_channel_id=None,
            open_channel=b"",
        )
        self.master.send(ow.OpeningdInit(**{**init, **init_over}).encode())

    def send(self, msg) -> None:
        self.master.send(msg.encode())

    def recv(self, expected: type) -> tuple:
        """The next non-status message from openingd, and the fds that came with it."""
        while True:
            raw, fds = self.master.recv_with_fds()
            try:
                status = status_wire.decode(raw)
            except Exception:
                break
            if isinstance(status, status_wire.StatusLog):
                self.logs.append(status.entry)
            elif isinstance(status, status_wire.StatusPeerBillboard):
                self.billboard.append(status.happenings)
            else:
                raise AssertionError(f"openingd sent {status}")
        msg = ow.decode(raw)
        assert isinstance(msg, expected), msg
        return msg, fds

    def peer_send(self, msg) -> None:
        self.peer.write_message(msg.encode())

    def peer_recv(self, expected: type):
        msg = pw.decode(self.peer.read_message())
        assert isinstance(msg, expected), msg
        return msg

    def exit_code(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)

    def check_handed_back(self, fds: list[int], cipher_state: bytes) -> None:
        """The returned connection carries on: lightningd pings, the peer pongs."""
        assert len(fds) == 1
        back = PeerConnection.from_fd(fds[0], CryptoState.from_bytes(cipher_state))
        back.sock.settimeout(10)
        back.write_message(pw.Ping(num_pong_bytes=3, ignored=b"").encode())
        self.peer_recv(pw.Ping)
        self.peer_send(pw.Pong(ignored=b"\0" * 3))
        assert pw.decode(back.read_message()) == pw.Pong(ignored=b"\0" * 3)
        back.close()

    def close(self) -> None:
        self.master.close()
        self.peer.close()


@pytest.fixture
def run(hsm) -> Iterator:
    runs: list[Run] = []

    def start(**kw) -> Run:
        r = Run(hsm, **kw)
        runs.append(r)
        return r

    yield start
    for r in runs:
        r.close()


def funder_start(**over) -> ow.OpeningdFunderStart:
    fields = dict(
        funding=AmountSat(1_000_000),
        push=AmountMsat(10_000_000),
        feerate_per_kw=2500,
        channel_flags=1,
        reserve=None,
        upfront_shutdown_script=b"",
        channel_type=b"",
    )
    return ow.OpeningdFunderStart(**{**fields, **over})


def open_and_accept(r: Run, **accept_over) -> tuple[pw.OpenChannel, pw.AcceptChannel]:
    r.send(funder_start())
    open_msg = r.peer_recv(pw.OpenChannel)
    accept = accept_for(open_msg, **accept_over)
    r.peer_send(accept)
    return open_msg, accept


# --- the opener ------------------------------------------------------------------------


def test_opener_to_completion(run):
    r = run()
    r.send(funder_start())
    open_msg = r.peer_recv(pw.OpenChannel)
    assert open_msg.chain_hash == REGTEST
    assert (open_msg.funding_satoshis, open_msg.push_msat, open_msg.feerate_per_kw) == (
        1_000_000,
        10_000_000,
        2500,
    )
    # Our reserve: 1% of the funding.
    assert open_msg.channel_reserve_satoshis == 10_000
    assert open_msg.dust_limit_satoshis == 546
    assert open_msg.tlvs.channel_type == ANCHORS
    assert open_msg.tlvs.upfront_shutdown_script == b""
    # A ping while we think is answered.
    r.peer_send(pw.Ping(num_pong_bytes=2, ignored=b""))
    assert r.peer_recv(pw.Pong) == pw.Pong(ignored=b"\0\0")
    r.peer_send(accept_for(open_msg))

    reply, _ = r.recv(ow.OpeningdFunderStartReply)
    fund = funding_output(open_msg.funding_pubkey, PEER_HALF.funding_pubkey, 1_000_000)
    assert reply.funding_scriptpubkey == bytes(fund.script_pubkey)
    assert reply.channel_type == ANCHORS
    assert reply.minimum_depth == 3
    assert reply.upfront_shutdown_negotiated is True

    r.send(ow.OpeningdFunderComplete(funding_txid=FUNDING_TXID, funding_outnum=0))
    created = r.peer_recv(pw.FundingCreated)
    assert created.temporary_channel_id == open_msg.temporary_channel_id
    assert (created.funding_txid, created.funding_output_index) == (FUNDING_TXID, 0)
    deal = Deal(1_000_000, 10_000_000, 2500, half_of(open_msg), PEER_HALF)
    assert sig_ok(first_commitment(deal, False), open_msg.funding_pubkey, created.signature)

    cid = derive_channel_id(FUNDING_TXID, 0)
    their_sig = peer_sign(first_commitment(deal, True))
    r.peer_send(pw.FundingSigned(channel_id=cid, signature=their_sig))

    done, fds = r.recv(ow.OpeningdFunderReply)
    ch = done.channel
    assert ch.channel_id == cid
    assert (ch.funding.sat, ch.push.msat, ch.opener, ch.channel_flags) == (
        1_000_000,
        10_000_000,
        0,
        1,
    )
    assert ch.channel_type == ANCHORS
    assert ch.minimum_depth == 3
    assert ch.our_config.channel_reserve.sat == 10_000
    assert ch.their_config.channel_reserve.sat == PEER_HALF.reserve
    assert ch.their_config.dust_limit.sat == PEER_HALF.dust
    assert ch.their_funding_pubkey == PEER_HALF.funding_pubkey
    assert ch.our_funding_pubkey == open_msg.funding_pubkey
    assert ch.their_basepoints.payment == PEER_HALF.payment
    assert ch.their_first_per_commitment_point == PEER_HALF.first_point
    assert ch.their_commit_sig == their_sig
    r.check_handed_back(fds, done.cipher_state)
    assert r.exit_code() == 0


def test_opener_refuses_bad_signature_with_the_tx(run):
    r = run()
    open_msg, _ = open_and_accept(r)
    r.recv(ow.OpeningdFunderStartReply)
    r.send(ow.OpeningdFunderComplete(funding_txid=FUNDING_TXID, funding_outnum=0))
    r.peer_recv(pw.FundingCreated)
    deal = Deal(1_000_000, 10_000_000, 2500, half_of(open_msg), PEER_HALF)
    ours = first_commitment(deal, True)
    bad = peer_sign(first_commitment(deal, False))  # signs the wrong transaction
    cid = derive_channel_id(FUNDING_TXID, 0)
    r.peer_send(pw.FundingSigned(channel_id=cid, signature=bad))
    err = r.peer_recv(pw.Error)
    # BOLT #1: after funding_created, the funder's errors use the channel_id.
    assert err.channel_id == cid
    text = err.data.decode()
    assert text.startswith(f"Bad signature {bad.hex()} on tx {ours.tx.serialize().hex()}")
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == text
    assert (failed.by_peer, failed.peer_alive) == (False, True)
    r.check_handed_back(fds, failed.cipher_state)
    assert r.exit_code() == 0


def test_opener_bad_accept_parameters(run):
    r = run()
    open_msg, _ = open_and_accept(r, dust_limit_satoshis=100)
    err = r.peer_recv(pw.Error)
    assert err.channel_id == open_msg.temporary_channel_id
    assert err.data == b"You gave bad parameters: dust_limit_satoshis 100 is less than 354"
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == "You gave bad parameters: dust_limit_satoshis 100 is less than 354"
    assert failed.peer_alive
    r.check_handed_back(fds, failed.cipher_state)
    assert r.exit_code() == 0


def test_opener_dust_above_our_reserve(run):
    # 1% of 50_000 is 500 sat, raised to our dust 546; their dust 600 is above it.
    r = run()
    r.send(funder_start(funding=AmountSat(50_000), push=AmountMsat(0)))
    open_msg = r.peer_recv(pw.OpenChannel)
    assert open_msg.channel_reserve_satoshis == 546
    r.peer_send(accept_for(open_msg))
    err = r.peer_recv(pw.Error)
    assert err.data == b"You gave bad parameters: dust limit 600 would be above our reserve 546"
    r.recv(ow.OpeningdFailed)
    assert r.exit_code() == 0


def test_opener_requested_reserve_and_dev_channel_id(run):
    r = run(dev_temporary_channel_id=b"\x55" * 32)
    r.send(funder_start(reserve=AmountSat(20_000)))
    open_msg = r.peer_recv(pw.OpenChannel)
    assert open_msg.temporary_channel_id == b"\x55" * 32
    assert open_msg.channel_reserve_satoshis == 20_000


def test_opener_timeout(run):
    r = run(timeout=1)
    r.send(funder_start())
    r.peer_recv(pw.OpenChannel)
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == "Timed out waiting for accept_channel"
    assert (failed.by_peer, failed.peer_alive, failed.cipher_state, fds) == (False, False, b"", [])
    assert r.exit_code() == 0


def test_opener_peer_sends_error(run):
    r = run()
    r.send(funder_start())
    open_msg = r.peer_recv(pw.OpenChannel)
    r.peer_send(pw.Error(channel_id=open_msg.temporary_channel_id, data=b"no thanks"))
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == "They sent error: no thanks"
    assert (failed.by_peer, failed.peer_alive) == (True, True)
    r.check_handed_back(fds, failed.cipher_state)
    assert r.exit_code() == 0


def test_opener_ignores_error_for_another_channel(run):
    r = run(timeout=1)
    r.send(funder_start())
    r.peer_recv(pw.OpenChannel)
    r.peer_send(pw.Error(channel_id=b"\x99" * 32, data=b"not you"))
    failed, _ = r.recv(ow.OpeningdFailed)
    assert failed.reason == "Timed out waiting for accept_channel"


def test_opener_cancel(run):
    r = run()
    open_msg, _ = open_and_accept(r)
    r.recv(ow.OpeningdFunderStartReply)
    r.send(ow.OpeningdFunderCancel())
    err = r.peer_recv(pw.Error)
    assert (err.channel_id, err.data) == (
        open_msg.temporary_channel_id,
        b"Channel open canceled by us",
    )
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == "Channel open canceled by RPC"
    assert (failed.by_peer, failed.peer_alive) == (False, True)
    r.check_handed_back(fds, failed.cipher_state)
    assert r.exit_code() == 0


def test_opener_unknown_even_message_closes(run):
    r = run()
    r.send(funder_start())
    open_msg = r.peer_recv(pw.OpenChannel)
    r.peer.write_message(b"\x7f\xff")  # unknown odd: ignored
    r.peer.write_message(b"\x7f\xfe")  # unknown even: BOLT #1 "MUST close the connection"
    err = r.peer_recv(pw.Error)
    assert (err.channel_id, err.data) == (
        open_msg.temporary_channel_id,
        b"unknown even message type 32766",
    )
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == "unknown even message type 32766"
    assert (failed.peer_alive, fds) == (False, [])
    assert r.exit_code() == 0


def test_opener_malformed_accept_channel_closes(run):
    r = run()
    r.send(funder_start())
    r.peer_recv(pw.OpenChannel)
    r.peer.write_message(b"\x00\x21" + bytes(40))  # accept_channel, truncated
    err = r.peer_recv(pw.Error)
    assert err.data.startswith(b"malformed message: accept_channel")
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason.startswith("malformed message")
    assert (failed.peer_alive, fds) == (False, [])


# --- the accepter ----------------------------------------------------------------------


def test_accepter_to_completion(run):
    offer = open_from_peer()
    r = run(open_channel=offer.encode())
    got, _ = r.recv(ow.OpeningdGotOffer)
    assert (got.funding.sat, got.push.msat, got.feerate_per_kw) == (1_000_000, 20_000_000, 1000)
    assert (got.dust_limit.sat, got.channel_reserve.sat) == (PEER_HALF.dust, PEER_HALF.reserve)
    assert got.channel_type == ANCHORS
    r.send(ow.OpeningdGotOfferReply(rejection=None, our_upfront_shutdown_script=b""))

    accept = r.peer_recv(pw.AcceptChannel)
    assert accept.temporary_channel_id == offer.temporary_channel_id
    assert accept.channel_reserve_satoshis == 10_000
    assert accept.minimum_depth == 3
    assert accept.tlvs.channel_type == ANCHORS
    deal = Deal(1_000_000, 20_000_000, 1000, PEER_HALF, half_of(accept))
    their_sig = peer_sign(first_commitment(deal, False))
    r.peer_send(
        pw.FundingCreated(
            temporary_channel_id=offer.temporary_channel_id,
            funding_txid=FUNDING_TXID,
            funding_output_index=0,
            signature=their_sig,
        )
    )

    done, fds = r.recv(ow.OpeningdFundee)
    ch = done.channel
    cid = derive_channel_id(FUNDING_TXID, 0)
    assert (ch.channel_id, ch.opener, ch.their_commit_sig) == (cid, 1, their_sig)
    assert ch.our_config.channel_reserve.sat == 10_000
    signed = pw.decode(done.funding_signed)
    assert isinstance(signed, pw.FundingSigned)
    assert signed.channel_id == cid
    assert sig_ok(first_commitment(deal, True), accept.funding_pubkey, signed.signature)
    # lightningd, not openingd, sends funding_signed: nothing reached the peer.
    r.check_handed_back(fds, done.cipher_state)
    assert r.exit_code() == 0


def test_accepter_rejects_bad_parameters(run):
    offer = open_from_peer(dust_limit_satoshis=100)
    r = run(open_channel=offer.encode())
    err = r.peer_recv(pw.Error)
    assert err.channel_id == offer.temporary_channel_id
    assert err.data == b"You gave bad parameters: dust_limit_satoshis 100 is less than 354"
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == err.data.decode()
    assert (failed.by_peer, failed.peer_alive) == (False, True)
    r.check_handed_back(fds, failed.cipher_state)
    assert r.exit_code() == 0


def test_accepter_feerate_bound(run):
    r = run(open_channel=open_from_peer(feerate_per_kw=100).encode())
    err = r.peer_recv(pw.Error)
    assert err.data == b"You gave bad parameters: feerate_per_kw 100 below minimum 253"


def test_accepter_reserve_floored_at_their_dust(run):
    # 1% of 100_000 is 1_000 sat; their dust limit 2_000 raises our reserve to it.
    offer = open_from_peer(
        funding_satoshis=100_000,
        push_msat=0,
        dust_limit_satoshis=2_000,
        channel_reserve_satoshis=2_000,
    )
    r = run(open_channel=offer.encode())
    r.recv(ow.OpeningdGotOffer)
    r.send(ow.OpeningdGotOfferReply(rejection=None, our_upfront_shutdown_script=b""))
    assert r.peer_recv(pw.AcceptChannel).channel_reserve_satoshis == 2_000


def test_accepter_master_rejects(run):
    r = run(open_channel=open_from_peer().encode())
    r.recv(ow.OpeningdGotOffer)
    r.send(
        ow.OpeningdGotOfferReply(
            rejection="Already have active channel", our_upfront_shutdown_script=b""
        )
    )
    err = r.peer_recv(pw.Error)
    assert err.data == b"Already have active channel"
    failed, fds = r.recv(ow.OpeningdFailed)
    assert failed.reason == "Already have active channel"
    r.check_handed_back(fds, failed.cipher_state)
    assert r.exit_code() == 0


def test_accepter_bad_signature(run):
    offer = open_from_peer()
    r = run(open_channel=offer.encode())
    r.recv(ow.OpeningdGotOffer)
    r.send(ow.OpeningdGotOfferReply(rejection=None, our_upfront_shutdown_script=b""))
    accept = r.peer_recv(pw.AcceptChannel)
    deal = Deal(1_000_000, 20_000_000, 1000, PEER_HALF, half_of(accept))
    bad = peer_sign(first_commitment(deal, True))  # their own tx, not ours
    r.peer_send(
        pw.FundingCreated(
            temporary_channel_id=offer.temporary_channel_id,
            funding_txid=FUNDING_TXID,
            funding_output_index=0,
            signature=bad,
        )
    )
    err = r.peer_recv(pw.Error)
    # BOLT #1: the fundee uses the temporary id until funding_signed.
    assert err.channel_id == offer.temporary_channel_id
    tx_hex = first_commitment(deal, False).tx.serialize().hex()
    assert err.data.decode().startswith(f"Bad signature {bad.hex()} on tx {tx_hex} using key")
    failed, _ = r.recv(ow.OpeningdFailed)
    assert failed.reason == err.data.decode()
    assert r.exit_code() == 0


def test_accepter_timeout_waiting_for_funding_created(run):
    r = run(open_channel=open_from_peer().encode(), timeout=1)
    r.recv(ow.OpeningdGotOffer)
    r.send(ow.OpeningdGotOfferReply(rejection=None, our_upfront_shutdown_script=b""))
    r.peer_recv(pw.AcceptChannel)
    failed, fds = r.recv(ow.OpeningdFailed)
    assert (failed.reason, failed.peer_alive, fds) == (
        "Timed out waiting for funding_created",
        False,
        [],
    )
    assert r.exit_code() == 0


def test_idle_openingd_takes_an_open_channel_from_the_peer(run):
    r = run()
    r.peer_send(open_from_peer())
    got, _ = r.recv(ow.OpeningdGotOffer)
    assert got.funding.sat == 1_000_000


def test_master_going_away_ends_openingd_quietly(run):
    r = run()
    r.master.close()
    assert r.exit_code() == 0
