"""lightningd as opener: fundchannel_start / fundchannel_complete to the scripted accepter.

The OpeningPeer listens, lightningd connects to it, and the RPC drives the open while
the peer answers from the test's thread. The happy path checks lightningd's
funding_created signature independently (bitcointx's script interpreter on the
2-of-2 spend of our commitment) and the channel across a restart. Then every
BOLT #2 "The accept_channel Message" receiver rule is broken on purpose, each
surfacing in fundchannel_start's error and in an `error` to the peer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from bitcointx.core.script import OP_CHECKSIG, CScript
from pyln.client import RpcError

from common.features import bytes_to_bits
from common.read_peer_msg import MULTIPLE_CHANNELS
from tests.node import wait_for
from tests.opening_peer import (
    ANCHORS,
    STATIC_REMOTEKEY,
    Background,
    OpeningPeer,
    fake_funding_psbt,
    high_s,
    off_curve_point,
)
from wire import peer_wiregen as wire

AMOUNT = 1_000_000
LIGHTNINGD = -1  # CLN's generic error code, which fundchannel_start uses for open failures
POINTS = (
    "funding_pubkey",
    "revocation_basepoint",
    "payment_basepoint",
    "delayed_payment_basepoint",
    "htlc_basepoint",
    "first_per_commitment_point",
)


def peer_connected_from(node_factory, *options: str):
    l1 = node_factory.get_node(*options)
    peer = OpeningPeer()
    peer.connected_from(l1)
    return l1, peer


def channels(node) -> list[dict]:
    return node.rpc.listpeerchannels()["channels"]


def assert_no_channel(node) -> None:
    assert node.rpc.getinfo()["id"] == node.id
    wait_for(lambda: channels(node) == [], what="the failed open to disappear")


def assert_matches_all(text: str, patterns: list[str]) -> None:
    for pattern in patterns:
        assert re.search(pattern, text), f"/{pattern}/ not in {text!r}"


def fundchannel_start(node, peer: OpeningPeer, amount: int = AMOUNT, **params: Any) -> Background:
    """fundchannel_start in the background: it returns only after accept_channel."""
    return Background(
        node.rpc.call, "fundchannel_start", {"id": peer.node_id.hex(), "amount": amount, **params}
    )


def fundchannel_complete(node, peer: OpeningPeer, psbt: str) -> dict:
    # pyln-client's helper adds `withhold`, which CLN's fundchannel_complete lacks.
    return node.rpc.call("fundchannel_complete", {"id": peer.node_id.hex(), "psbt": psbt})


def start_failure(start: Background) -> RpcError:
    with pytest.raises(RpcError) as info:
        start.result()
    return info.value


# --- the happy path ----------------------------------------------------------------------


def _bits(msg: wire.OpenChannel) -> list[int]:
    return bytes_to_bits(msg.tlvs.channel_type)


def check_open_channel(msg: wire.OpenChannel, amount: int, push_msat: int = 0) -> None:
    """BOLT #2 open_channel sender rules, as lightningd applies them."""
    assert msg.funding_satoshis == amount and msg.push_msat == push_msat
    # BOLT #2: "MUST set `channel_reserve_satoshis` greater than or equal to
    # `dust_limit_satoshis`."
    assert msg.channel_reserve_satoshis >= msg.dust_limit_satoshis >= 354
    assert msg.max_accepted_htlcs <= 483
    # BOLT #2: "if it includes `open_channel_tlvs`: MUST include
    # `upfront_shutdown_script`. MUST set `channel_type`".
    assert msg.tlvs.upfront_shutdown_script is not None
    assert msg.tlvs.channel_type is not None
    # BOLT #2: "MUST set undefined bits in `channel_flags` to 0."
    assert msg.channel_flags & ~1 == 0


def negotiate(node, peer: OpeningPeer, amount: int = AMOUNT, **params: Any) -> dict:
    """fundchannel_start against a correct accepter; returns its result."""
    start = fundchannel_start(node, peer, amount, **params)
    check_open_channel(peer.read_open_channel(), amount, params.get("push_msat", 0))
    peer.send_accept_channel()
    return start.result()


def complete(node, peer: OpeningPeer, amount: int = AMOUNT, **signed_kwargs: Any):
    """fundchannel_complete with a fake funding PSBT while the peer signs."""
    funding = fake_funding_psbt(peer.funding_script_pubkey(), amount, peer.seed)

    def sign() -> None:
        # read_funding_created checks lightningd's signature on our commitment.
        peer.read_funding_created()
        peer.send_funding_signed(**signed_kwargs)

    signer = Background(sign)
    try:
        result = fundchannel_complete(node, peer, funding.psbt)
    finally:
        signer.result()
    return funding, result


def check_stored_channel(node, peer: OpeningPeer, amount: int = AMOUNT, push_msat: int = 0):
    (chan,) = channels(node)
    assert chan["peer_id"] == peer.node_id.hex()
    assert chan["state"] == "CHANNELD_AWAITING_LOCKIN"
    assert chan["opener"] == "local"
    assert chan["channel_id"] == peer.channel_id().hex()
    assert chan["funding_txid"] == peer.funding_txid[::-1].hex()
    assert chan["funding_outnum"] == peer.funding_outnum
    assert chan["total_msat"] == amount * 1000
    assert chan["to_us_msat"] == amount * 1000 - push_msat
    # our_reserve: what lightningd must keep (set by us); their_reserve: what it set.
    assert chan["our_reserve_msat"] == peer.accept_msg.channel_reserve_satoshis * 1000
    assert chan["their_reserve_msat"] == peer.open_msg.channel_reserve_satoshis * 1000
    return chan


@pytest.mark.parametrize("channel_type", [None, [12], [12, 22]], ids=["default", "srk", "anchors"])
def test_opener_happy_path(node_factory, channel_type):
    l1, peer = peer_connected_from(node_factory)
    params = {} if channel_type is None else {"channel_type": channel_type}
    result = negotiate(l1, peer, **params)
    # The funding output is the BOLT #3 P2WSH 2-of-2 of both funding keys.
    assert result["scriptpubkey"] == peer.funding_script_pubkey().hex()
    assert result["funding_address"].startswith("bcrt1q")
    expected_bits = sorted(channel_type or ANCHORS)
    assert result["channel_type"]["bits"] == expected_bits
    assert sorted(_bits(peer.open_msg)) == expected_bits
    assert [c["state"] for c in channels(l1)] == ["OPENINGD"]

    funding, done = complete(l1, peer)
    assert done == {"channel_id": peer.channel_id().hex(), "commitments_secured": True}
    assert (peer.funding_txid, peer.funding_outnum) == (funding.txid, funding.outnum)
    before = check_stored_channel(l1, peer)
    assert l1.stop() == 0
    l1.start()
    after = check_stored_channel(l1, peer)
    for key in ("channel_id", "funding_txid", "funding_outnum", "to_us_msat", "total_msat"):
        assert after[key] == before[key]


def test_opener_push_msat_and_mindepth(node_factory):
    l1, peer = peer_connected_from(node_factory)
    result = negotiate(l1, peer, push_msat=100_000_000, mindepth=6)
    assert result["mindepth"] == 6
    complete(l1, peer)
    check_stored_channel(l1, peer, push_msat=100_000_000)


def test_opener_channel_stored_when_complete_returns(node_factory):
    """The funding tx may be broadcast once fundchannel_complete returns: by then the
    channel must be on disk (kill -9, then look)."""
    l1, peer = peer_connected_from(node_factory)
    negotiate(l1, peer)
    complete(l1, peer)
    l1.kill()
    l1.start()
    check_stored_channel(l1, peer)


# --- accept_channel rejections -------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A bad accept_channel (overrides computed from lightningd's open_channel) and what
    fundchannel_start's error and lightningd's `error` must say."""

    overrides: Callable[[wire.OpenChannel], dict[str, Any]]
    patterns: Callable[[wire.OpenChannel], list[str]]


def _other_type(msg: wire.OpenChannel) -> list[int]:
    return STATIC_REMOTEKEY if sorted(_bits(msg)) == ANCHORS else ANCHORS


P2PK_SCRIPT = bytes(CScript([b"\x02" + b"\x11" * 32, OP_CHECKSIG]))
WRONG_TMP_ID = b"\x01" * 32

REJECTIONS: dict[str, Rejection] = {
    # BOLT #2: "The `temporary_channel_id` MUST be the same as the
    # `temporary_channel_id` in the `open_channel` message."
    "temporary_channel_id_mismatch": Rejection(
        lambda o: {"temporary_channel_id": WRONG_TMP_ID}, lambda o: [WRONG_TMP_ID.hex()]
    ),
    # BOLT #2: "if `minimum_depth` is unreasonably large: MAY fail the channel."
    "minimum_depth_unreasonable": Rejection(
        lambda o: {"minimum_depth": 100_000}, lambda o: ["minimum_depth", r"\b100000\b"]
    ),
    # BOLT #2: "if `channel_reserve_satoshis` is less than `dust_limit_satoshis` within
    # the `open_channel` message: MUST fail the channel."
    "reserve_below_our_dust": Rejection(
        lambda o: {
            "channel_reserve_satoshis": o.dust_limit_satoshis - 1,
            "dust_limit_satoshis": 354,
        },
        lambda o: ["channel_reserve", rf"\b{o.dust_limit_satoshis - 1}\b"],
    ),
    # BOLT #2: "if `channel_reserve_satoshis` from the `open_channel` message is less
    # than `dust_limit_satoshis`: MUST fail the channel."
    "dust_above_our_reserve": Rejection(
        lambda o: {
            "dust_limit_satoshis": o.channel_reserve_satoshis + 1,
            "channel_reserve_satoshis": o.channel_reserve_satoshis + 1,
        },
        lambda o: [r"(?i)dust", rf"\b{o.channel_reserve_satoshis + 1}\b"],
    ),
    # "Other fields have the same requirements as their counterparts in `open_channel`."
    "dust_above_own_reserve": Rejection(
        lambda o: {"dust_limit_satoshis": 5001, "channel_reserve_satoshis": 5000},
        lambda o: ["dust_limit_satoshis", r"\b5001\b", r"\b5000\b"],
    ),
    "dust_below_354": Rejection(
        lambda o: {"dust_limit_satoshis": 353}, lambda o: ["dust_limit_satoshis", r"\b353\b"]
    ),
    "to_self_delay_too_large": Rejection(
        lambda o: {"to_self_delay": 2017}, lambda o: ["to_self_delay", r"\b2017\b"]
    ),
    "max_accepted_htlcs_above_483": Rejection(
        lambda o: {"max_accepted_htlcs": 484}, lambda o: ["max_accepted_htlcs", r"\b484\b"]
    ),
    # BOLT #2: "if the message doesn't include a `channel_type`: MUST fail the channel."
    "channel_type_missing": Rejection(lambda o: {"channel_type": None}, lambda o: ["channel_type"]),
    # BOLT #2: "if `channel_type` does not match the `channel_type` from `open_channel`:
    # MUST fail the channel."
    "channel_type_mismatch": Rejection(
        lambda o: {"channel_type": _other_type(o)}, lambda o: ["channel_type"]
    ),
    "upfront_shutdown_script_missing": Rejection(
        lambda o: {"upfront_shutdown_script": None}, lambda o: ["upfront_shutdown_script"]
    ),
    "upfront_shutdown_script_nonstandard": Rejection(
        lambda o: {"upfront_shutdown_script": P2PK_SCRIPT},
        lambda o: ["upfront_shutdown_script", P2PK_SCRIPT.hex()],
    ),
    **{
        f"invalid_{name}": Rejection(
            lambda o, name=name: {name: off_curve_point()}, lambda o, name=name: [name]
        )
        for name in POINTS
    },
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_opener_rejects_accept_channel(node_factory, case):
    rejection = REJECTIONS[case]
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer)
    sent = peer.read_open_channel()
    peer.send_accept_channel(**rejection.overrides(sent))
    patterns = rejection.patterns(sent)

    failure = start_failure(start)
    assert failure.error["code"] == LIGHTNINGD
    assert_matches_all(failure.error["message"], patterns)
    error = peer.expect_error()
    assert error.channel_id in (sent.temporary_channel_id, WRONG_TMP_ID)
    assert_matches_all(error.data.decode(), patterns)
    assert_no_channel(l1)
    # Only the channel failed: the connection stays up.
    assert peer.ping_pong()


def test_opener_they_sent_error(node_factory):
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer)
    sent = peer.read_open_channel()
    peer.send(wire.Error(channel_id=sent.temporary_channel_id, data=b"not today").encode())
    failure = start_failure(start)
    assert failure.error["code"] == LIGHTNINGD
    assert_matches_all(failure.error["message"], [r"(?i)they sent error", "not today"])
    assert_no_channel(l1)


@pytest.mark.parametrize("when", ["before accept_channel", "before funding_created"])
def test_opener_refuses_their_open_channel_meanwhile(node_factory, when):
    """While our open is negotiated, the peer's own open_channel (its own
    temporary_channel_id) gets an error on that id, as CLN's openingd answers it; ours
    goes on to a stored channel."""
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer)
    ours = peer.read_open_channel()
    theirs = peer.open_channel_msg(temporary_channel_id=b"\x55" * 32)
    if when == "before funding_created":
        peer.send_accept_channel()
        start.result()
    peer.send(theirs.encode())
    error = peer.expect_error()
    assert (error.channel_id, error.data.decode()) == (b"\x55" * 32, MULTIPLE_CHANNELS)
    assert error.channel_id != ours.temporary_channel_id
    if when == "before accept_channel":
        peer.send_accept_channel()
        start.result()
    complete(l1, peer)
    check_stored_channel(l1, peer)


def test_opener_they_sent_warning_then_accept(node_factory):
    """A `warning` fails nothing (BOLT #1): the open carries on."""
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer)
    sent = peer.read_open_channel()
    peer.send(wire.Warning(channel_id=sent.temporary_channel_id, data=b"hmm").encode())
    peer.send_accept_channel()
    assert start.result()["scriptpubkey"] == peer.funding_script_pubkey().hex()
    complete(l1, peer)
    check_stored_channel(l1, peer)


def test_opener_retry_after_rejection(node_factory):
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer)
    peer.read_open_channel()
    peer.send_accept_channel(max_accepted_htlcs=484)
    start_failure(start)
    peer.expect_error()
    assert_no_channel(l1)
    negotiate(l1, peer)
    complete(l1, peer)
    check_stored_channel(l1, peer)


# --- funding_signed ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["wrong_message", "high_s"])
def test_opener_rejects_bad_funding_signed_signature(node_factory, how):
    """BOLT #2 funding_signed recipient: "if `signature` is incorrect OR non-compliant
    with LOW-S-standard rule: MUST send a `warning` and close the connection, or send an
    `error` and fail the channel", and "MUST NOT broadcast the funding transaction"."""
    l1, peer = peer_connected_from(node_factory)
    negotiate(l1, peer)
    funding = fake_funding_psbt(peer.funding_script_pubkey(), AMOUNT, peer.seed)
    complete_call = Background(fundchannel_complete, l1, peer, funding.psbt)
    peer.read_funding_created()
    if how == "wrong_message":
        peer.send_funding_signed(bad_signature=True)
    else:
        peer.send_funding_signed(signature=high_s(peer.sign(peer.their_commitment())))
    with pytest.raises(RpcError) as info:
        complete_call.result()
    assert re.search(r"(?i)signature", info.value.error["message"]), info.value.error
    error = peer.expect_error(warning_ok=True)
    assert re.search(r"(?i)signature", error.data.decode())
    assert_no_channel(l1)


def test_opener_complete_with_wrong_amount_fails(node_factory):
    l1, peer = peer_connected_from(node_factory)
    negotiate(l1, peer)
    funding = fake_funding_psbt(peer.funding_script_pubkey(), AMOUNT - 1, peer.seed)
    with pytest.raises(RpcError):
        fundchannel_complete(l1, peer, funding.psbt)
    # The negotiation is still there to complete correctly.
    complete(l1, peer)
    check_stored_channel(l1, peer)


# --- cancel, timeout, disconnect -------------------------------------------------------------


def test_opener_fundchannel_cancel(node_factory):
    l1, peer = peer_connected_from(node_factory)
    negotiate(l1, peer)
    sent = peer.open_msg
    result = l1.rpc.fundchannel_cancel(peer.node_id.hex())
    assert "cancelled" in result
    error = peer.expect_error()
    assert error.channel_id == sent.temporary_channel_id
    assert_no_channel(l1)
    funding = fake_funding_psbt(peer.funding_script_pubkey(), AMOUNT, peer.seed)
    with pytest.raises(RpcError):
        fundchannel_complete(l1, peer, funding.psbt)
    with pytest.raises(RpcError):
        l1.rpc.fundchannel_cancel(peer.node_id.hex())
    assert peer.ping_pong()


def test_opener_timeout_waiting_for_accept_channel(node_factory):
    timeout = 3
    l1, peer = peer_connected_from(node_factory, "--developer", f"--dev-opening-timeout={timeout}")
    start = fundchannel_start(l1, peer)
    peer.read_open_channel()
    # Silence. fundchannel_start must fail on its own, not hang.
    failure = start_failure(start)
    assert failure.error["code"] == LIGHTNINGD
    assert re.search(r"(?i)time", failure.error["message"]), failure.error
    assert_no_channel(l1)


def test_opener_peer_disconnects_before_accept_channel(node_factory):
    l1, peer = peer_connected_from(node_factory)
    start = fundchannel_start(l1, peer)
    peer.read_open_channel()
    peer.close()
    start_failure(start)
    assert_no_channel(l1)


def test_opener_peer_disconnects_before_complete(node_factory):
    """The peer hangs up between fundchannel_start and fundchannel_complete: complete
    fails cleanly (no traceback in the log at teardown) and nothing is stored."""
    l1, peer = peer_connected_from(node_factory)
    negotiate(l1, peer)
    peer.close()
    wait_for(
        lambda: not any(p["connected"] for p in l1.rpc.listpeers()["peers"]),
        what="lightningd to notice the disconnect",
    )
    funding = fake_funding_psbt(peer.funding_script_pubkey(), AMOUNT, peer.seed)
    with pytest.raises(RpcError):
        fundchannel_complete(l1, peer, funding.psbt)
    assert_no_channel(l1)


def test_opener_stop_mid_negotiation(node_factory):
    """lightningd stopped while an open waits for fundchannel_complete: a clean exit
    (Node.stop checks the log for tracebacks), and nothing stored after restart."""
    l1, peer = peer_connected_from(node_factory)
    negotiate(l1, peer)
    assert l1.stop() == 0
    l1.start()
    assert channels(l1) == []
