"""lightningd as accepter: the scripted OpeningPeer opens channels to a real lightningd.

The happy path ends with funding_signed, whose signature the peer checks
independently (bitcointx's script interpreter on the 2-of-2 spend), and a
channel lightningd keeps across restarts. Every BOLT #2 "The open_channel
Message" receiver MUST is then broken on purpose, one test case each: lightningd
must answer with `error` on the temporary_channel_id naming the field, survive,
store nothing, and keep the connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from bitcointx.core.script import OP_CHECKSIG, CScript

from common.chainparams import CHAINS
from common.features import bits_to_bytes, bytes_to_bits, our_features
from tests.node import wait_for
from tests.opening_peer import (
    ANCHORS,
    STATIC_REMOTEKEY,
    ZEROCONF_BIT,
    OpeningPeer,
    high_s,
    off_curve_point,
)
from wire import peer_wiregen as wire

FUNDING = 1_000_000
LARGE_CHANNEL_SAT = 1 << 24
POINTS = (
    "funding_pubkey",
    "revocation_basepoint",
    "payment_basepoint",
    "delayed_payment_basepoint",
    "htlc_basepoint",
    "first_per_commitment_point",
)


def features_without(*bits: int) -> bytes:
    return bits_to_bytes([b for b in bytes_to_bits(our_features()) if b not in bits])


def connected_peer(node_factory, *options: str, features: bytes | None = None):
    l1 = node_factory.get_node(*options)
    peer = OpeningPeer()
    peer.connect_to(l1, features)
    return l1, peer


def channels(node) -> list[dict]:
    return node.rpc.listpeerchannels()["channels"]


def assert_no_channel(node) -> None:
    """The master is alive and, once openingd is gone, nothing was stored."""
    assert node.rpc.getinfo()["id"] == node.id
    wait_for(lambda: channels(node) == [], what="the failed open to disappear")
    assert node.rpc.getinfo()["num_pending_channels"] == 0


def assert_matches_all(text: str, patterns: list[str]) -> None:
    for pattern in patterns:
        assert re.search(pattern, text), f"/{pattern}/ not in {text!r}"


# --- the happy path --------------------------------------------------------------------


def check_accept_channel(peer: OpeningPeer, accept: wire.AcceptChannel) -> None:
    """BOLT #2 accept_channel sender rules, as lightningd applies them."""
    sent = peer.open_msg
    # BOLT #2: "The `temporary_channel_id` MUST be the same as the `temporary_channel_id`
    # in the `open_channel` message."
    assert accept.temporary_channel_id == sent.temporary_channel_id
    # BOLT #2: "MUST set `channel_type` to the `channel_type` from `open_channel`."
    assert accept.tlvs.channel_type == sent.tlvs.channel_type
    # BOLT #2: "MUST set `channel_reserve_satoshis` greater than or equal to
    # `dust_limit_satoshis` from the `open_channel` message" and "MUST set
    # `dust_limit_satoshis` less than or equal to `channel_reserve_satoshis` from the
    # `open_channel` message".
    assert accept.channel_reserve_satoshis >= sent.dust_limit_satoshis
    assert accept.dust_limit_satoshis <= sent.channel_reserve_satoshis
    assert accept.dust_limit_satoshis >= 354
    assert accept.max_accepted_htlcs <= 483
    # Regtest default --funding-confirms is 1 (CLN's testnet_config).
    assert accept.minimum_depth == 1
    # Both advertised option_upfront_shutdown_script: the TLV must be there.
    assert accept.tlvs.upfront_shutdown_script is not None


def open_to_lightningd(peer: OpeningPeer, **overrides: Any) -> wire.FundingSigned:
    peer.send_open_channel(**overrides)
    check_accept_channel(peer, peer.read_accept_channel())
    peer.send_funding_created()
    # read_funding_signed checks lightningd's signature with bitcointx's interpreter.
    return peer.read_funding_signed()


def check_stored_channel(node, peer: OpeningPeer) -> dict:
    (chan,) = channels(node)
    sent, accept = peer.open_msg, peer.accept_msg
    assert chan["peer_id"] == peer.node_id.hex()
    assert chan["state"] == "CHANNELD_AWAITING_LOCKIN"
    assert chan["opener"] == "remote"
    assert chan["channel_id"] == peer.channel_id().hex()
    assert chan["funding_txid"] == peer.funding_txid[::-1].hex()
    assert chan["funding_outnum"] == peer.funding_outnum
    assert chan["total_msat"] == sent.funding_satoshis * 1000
    assert chan["to_us_msat"] == sent.push_msat
    # our_reserve: what lightningd must keep (we set it); their_reserve: what it set for us.
    assert chan["our_reserve_msat"] == sent.channel_reserve_satoshis * 1000
    assert chan["their_reserve_msat"] == accept.channel_reserve_satoshis * 1000
    assert chan["channel_type"]["bits"] == sorted(bytes_to_bits(sent.tlvs.channel_type))
    assert isinstance(chan["status"], list)
    return chan


@pytest.mark.parametrize(
    "channel_type, push_msat",
    [(ANCHORS, 0), (STATIC_REMOTEKEY, 0), (ANCHORS, 250_000_000)],
    ids=["anchors", "static_remotekey", "anchors_push"],
)
def test_accepter_happy_path(node_factory, channel_type, push_msat):
    l1, peer = connected_peer(node_factory)
    signed = open_to_lightningd(peer, channel_type=channel_type, push_msat=push_msat)
    # BOLT #2: funding_signed's channel_id is funding_txid XOR funding_output_index.
    assert signed.channel_id == peer.channel_id()
    before = check_stored_channel(l1, peer)
    assert l1.rpc.getinfo()["id"] == l1.id
    assert l1.stop() == 0
    l1.start()
    after = check_stored_channel(l1, peer)
    for key in ("channel_id", "funding_txid", "funding_outnum", "to_us_msat", "total_msat"):
        assert after[key] == before[key]


def test_accepter_channel_stored_before_funding_signed(node_factory):
    """BOLT #2 gives the opener the right to broadcast once it has funding_signed, so the
    accepter must have stored the channel by then: kill -9 right after it arrives."""
    l1, peer = connected_peer(node_factory)
    open_to_lightningd(peer)
    l1.kill()
    l1.start()
    check_stored_channel(l1, peer)


def test_accepter_funding_output_index_nonzero(node_factory):
    l1, peer = connected_peer(node_factory)
    peer.send_open_channel()
    peer.read_accept_channel()
    peer.send_funding_created(funding_outnum=3)
    signed = peer.read_funding_signed()
    assert signed.channel_id == peer.channel_id()
    assert check_stored_channel(l1, peer)["funding_outnum"] == 3


def test_accepter_shows_openingd_while_negotiating(node_factory):
    l1, peer = connected_peer(node_factory)
    peer.send_open_channel()
    peer.read_accept_channel()
    (chan,) = channels(l1)
    assert chan["state"] == "OPENINGD"
    assert chan["opener"] == "remote"
    assert chan["peer_id"] == peer.node_id.hex()
    peer.send_funding_created()
    peer.read_funding_signed()
    wait_for(lambda: [c["state"] for c in channels(l1)] == ["CHANNELD_AWAITING_LOCKIN"])


# --- open_channel rejections -------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """An open_channel breaking one rule, and what lightningd's `error` must say."""

    overrides: dict[str, Any]
    patterns: list[str]
    options: tuple[str, ...] = ()
    features: bytes | None = None


def _mainnet() -> bytes:
    return CHAINS["bitcoin"].chain_hash


P2PK_SCRIPT = bytes(CScript([b"\x02" + b"\x11" * 32, OP_CHECKSIG]))

REJECTIONS: dict[str, Rejection] = {
    # BOLT #2: "the `chain_hash` value is set to a hash of a chain that is unknown to the
    # receiver."
    "unknown_chain_hash": Rejection(
        {"chain_hash": _mainnet()},
        [r"(?i)chain", f"{_mainnet().hex()}|{_mainnet()[::-1].hex()}"],
    ),
    # BOLT #2: "`push_msat` is greater than `funding_satoshis` * 1000."
    "push_msat_above_funding": Rejection(
        {"push_msat": FUNDING * 1000 + 1}, ["push_msat", str(FUNDING * 1000 + 1)]
    ),
    # BOLT #2: "`funding_satoshis` is greater than or equal to 2^24 and the receiver does
    # not support `option_support_large_channel`." (not negotiated: we do not offer it)
    "large_funding_without_large_channel": Rejection(
        {"funding_satoshis": LARGE_CHANNEL_SAT},
        ["funding", str(LARGE_CHANNEL_SAT)],
        features=features_without(18, 19),
    ),
    # BOLT #2: "it considers `feerate_per_kw` too small for timely processing or
    # unreasonably large." 252 sat/kw is below any relay floor; 500000 is 2000 sat/vbyte.
    "feerate_too_low": Rejection({"feerate_per_kw": 252}, ["feerate_per_kw", r"\b252\b"]),
    "feerate_too_high": Rejection({"feerate_per_kw": 500_000}, ["feerate_per_kw", r"\b500000\b"]),
    # BOLT #2: "`to_self_delay` is unreasonably large." (--max-locktime-blocks, 2016)
    "to_self_delay_too_large": Rejection(
        {"to_self_delay": 2017}, ["to_self_delay", r"\b2017\b", r"\b2016\b"]
    ),
    "to_self_delay_above_option": Rejection(
        {"to_self_delay": 101},
        ["to_self_delay", r"\b101\b", r"\b100\b"],
        options=("--max-locktime-blocks=100",),
    ),
    # BOLT #2: "`max_accepted_htlcs` is greater than 483."
    "max_accepted_htlcs_above_483": Rejection(
        {"max_accepted_htlcs": 484}, ["max_accepted_htlcs", r"\b484\b"]
    ),
    # BOLT #2: "`dust_limit_satoshis` is smaller than `354 satoshis`".
    "dust_limit_below_354": Rejection(
        {"dust_limit_satoshis": 353}, ["dust_limit_satoshis", r"\b353\b"]
    ),
    # BOLT #2: "`dust_limit_satoshis` is greater than `channel_reserve_satoshis`."
    "dust_limit_above_reserve": Rejection(
        {"dust_limit_satoshis": 10_001, "channel_reserve_satoshis": 10_000},
        ["dust_limit_satoshis", r"\b10001\b", r"\b10000\b"],
    ),
    # BOLT #2: "the funder's amount for the initial commitment transaction is not
    # sufficient for full fee payment." 100 sat left after the push; the fee is 2810 sat.
    "funder_cannot_afford_fee": Rejection(
        {"funding_satoshis": 100_000, "push_msat": 99_900_000}, [r"(?i)afford", r"(?i)fee"]
    ),
    # BOLT #2: "both `to_local` and `to_remote` amounts for the initial commitment
    # transaction are less than or equal to `channel_reserve_satoshis`." Our dust limit
    # raises the reserve lightningd asks of us to the funder's whole balance after fees.
    "both_outputs_within_reserve": Rejection(
        {
            "funding_satoshis": 200_000,
            "push_msat": 150_000_000,
            "channel_reserve_satoshis": 150_000,
            "dust_limit_satoshis": 200_000 - 150_000 - 2810 - 660,
        },
        [r"(?i)reserve"],
    ),
    # BOLT #2: "the `channel_type` is not suitable." (bit 22 alone is no defined type)
    "channel_type_unsuitable": Rejection({"channel_type": [22]}, ["channel_type", r"\b22\b"]),
    "channel_type_unknown_bit": Rejection(
        {"channel_type": [12, 100]}, ["channel_type", r"\b100\b"]
    ),
    # BOLT #2: "if the message doesn't include a `channel_type`: fail the channel."
    "channel_type_missing": Rejection({"channel_type": None}, ["channel_type"]),
    # BOLT #2: "the `channel_type` includes `option_zeroconf` and it does not trust the
    # sender to open an unconfirmed channel."
    "zeroconf_untrusted": Rejection(
        {"channel_type": [*ANCHORS, ZEROCONF_BIT]}, [r"(?i)zero-?conf"]
    ),
    # BOLT #2 (sender): "if both nodes advertised the `option_upfront_shutdown_script`
    # feature: MUST include `upfront_shutdown_script`".
    "upfront_shutdown_script_missing": Rejection(
        {"upfront_shutdown_script": None}, ["upfront_shutdown_script"]
    ),
    # ... "with either a valid `shutdown_scriptpubkey` as required by `shutdown`
    # `scriptpubkey`, or a zero-length `shutdown_scriptpubkey`". P2PK is not one.
    "upfront_shutdown_script_nonstandard": Rejection(
        {"upfront_shutdown_script": P2PK_SCRIPT}, ["upfront_shutdown_script", P2PK_SCRIPT.hex()]
    ),
    # BOLT #2: MAY fail if "`funding_satoshis` is too small" (--min-capacity-sat).
    "funding_below_min_capacity": Rejection(
        {"funding_satoshis": 400_000},
        [r"(?i)capacity", r"\b500000"],
        options=("--min-capacity-sat=500000",),
    ),
    # BOLT #2: "`funding_pubkey`, `revocation_basepoint`, `htlc_basepoint`,
    # `payment_basepoint`, or `delayed_payment_basepoint` are not valid secp256k1
    # pubkeys in compressed format." (and no commitment without a valid first point)
    **{f"invalid_{name}": Rejection({name: off_curve_point()}, [name]) for name in POINTS},
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_accepter_rejects_open_channel(node_factory, case):
    rejection = REJECTIONS[case]
    l1, peer = connected_peer(node_factory, *rejection.options, features=rejection.features)
    sent = peer.send_open_channel(**rejection.overrides)
    error = peer.expect_error()
    text = error.data.decode()
    # BOLT #2: fail the channel; BOLT #1: the error names the channel it is about.
    assert error.channel_id == sent.temporary_channel_id, text
    # Core Lightning's wording for a refused offer.
    assert text.startswith("You gave bad parameters: "), text
    assert_matches_all(text, rejection.patterns)
    assert_no_channel(l1)
    assert l1.rpc.listpeers(peer.node_id.hex())["peers"][0]["connected"]
    # The connection stays up: only the channel failed.
    assert peer.ping_pong()


def test_accepter_accepts_a_correct_open_after_a_rejected_one(node_factory):
    l1, peer = connected_peer(node_factory)
    peer.send_open_channel(to_self_delay=5000)
    assert "to_self_delay" in peer.expect_error_text()
    assert_no_channel(l1)
    open_to_lightningd(peer)
    check_stored_channel(l1, peer)


def test_accepter_accepts_large_channel_when_negotiated(node_factory):
    """The counterpart of the 2^24 rejection: with option_support_large_channel it is fine."""
    l1, peer = connected_peer(node_factory)
    open_to_lightningd(peer, funding_satoshis=LARGE_CHANNEL_SAT)
    assert check_stored_channel(l1, peer)["total_msat"] == LARGE_CHANNEL_SAT * 1000


def test_accepter_ignores_undefined_channel_flags(node_factory):
    """BOLT #2: the receiving node MUST "ignore undefined bits in `channel_flags`"."""
    l1, peer = connected_peer(node_factory)
    open_to_lightningd(peer, channel_flags=0xFE)
    check_stored_channel(l1, peer)


# --- funding_created rejections ----------------------------------------------------------


def _to_funding_created(node_factory):
    l1, peer = connected_peer(node_factory)
    peer.send_open_channel()
    peer.read_accept_channel()
    return l1, peer


@pytest.mark.parametrize("how", ["wrong_message", "high_s"])
def test_accepter_rejects_bad_funding_created_signature(node_factory, how):
    """BOLT #2 funding_created recipient: "if `signature` is incorrect OR non-compliant
    with LOW-S-standard rule: MUST send a `warning` and close the connection, or send an
    `error` and fail the channel." """
    l1, peer = _to_funding_created(node_factory)
    if how == "wrong_message":
        sent = peer.send_funding_created(bad_signature=True)
    else:
        good = peer.funding_created_msg().signature
        sent = peer.send_funding_created(signature=high_s(good))
    error = peer.expect_error(warning_ok=True)
    text = error.data.decode()
    assert re.search(r"(?i)signature", text), text
    # The error shows the transaction lightningd checked: its own first commitment.
    unsigned = peer.their_commitment().tx.serialize().hex()
    assert unsigned in text, text
    if isinstance(error, wire.Error):
        assert error.channel_id in (sent.temporary_channel_id, peer.channel_id()), text
    assert_no_channel(l1)
    if isinstance(error, wire.Warning):
        assert peer.closed_by_other_side()


# --- the peer goes away ------------------------------------------------------------------


def test_accepter_timeout_after_accept_channel(node_factory):
    """The peer goes silent after accept_channel: openingd gives up, nothing stored."""
    timeout = 3
    l1, peer = connected_peer(node_factory, "--developer", f"--dev-opening-timeout={timeout}")
    peer.send_open_channel()
    peer.read_accept_channel()
    assert [c["state"] for c in channels(l1)] == ["OPENINGD"]
    wait_for(lambda: channels(l1) == [], timeout=timeout + 15, what="openingd to give up")
    assert l1.rpc.getinfo()["num_pending_channels"] == 0
    # Whatever lightningd told us (error, warning or hang-up), a late funding_created
    # must not resurrect the channel.
    peer.set_timeout(5)
    try:
        peer.send_funding_created()
        peer.recv_protocol()
    except (EOFError, ConnectionError, TimeoutError):
        pass
    assert_no_channel(l1)


def test_accepter_peer_disconnects_mid_negotiation(node_factory):
    """BOLT #2: after a reconnection before funding_created the receiver MUST "accept a
    new `open_channel` message" and "discard the previous `open_channel` message"."""
    l1, peer = connected_peer(node_factory)
    peer.send_open_channel()
    peer.read_accept_channel()
    peer.close()
    wait_for(
        lambda: not any(p["connected"] for p in l1.rpc.listpeers()["peers"]),
        what="lightningd to notice the disconnect",
    )
    assert_no_channel(l1)
    again = OpeningPeer()  # same seed: same node, same temporary_channel_id
    again.connect_to(l1)
    open_to_lightningd(again)
    check_stored_channel(l1, again)


def test_accepter_peer_disconnects_after_funding_created(node_factory):
    """Once funding_created is in, lightningd stores the channel and signs even if the
    peer hangs up before reading funding_signed: the opener may broadcast."""
    l1, peer = connected_peer(node_factory)
    peer.send_open_channel()
    peer.read_accept_channel()
    peer.send_funding_created()
    peer.close()
    wait_for(lambda: [c["state"] for c in channels(l1)] == ["CHANNELD_AWAITING_LOCKIN"])
