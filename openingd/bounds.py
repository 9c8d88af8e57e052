"""Every BOLT #2 check on the other side's open_channel / accept_channel.

Pure functions: each raises BadParams(reason) or returns. openingd prefixes the
reason with "You gave bad parameters: " in the `error` it sends (as Core
Lightning words it), and reports the same text to lightningd.

Naming: "their" is the peer's side, "our" ours. `our_reserve` is the
`channel_reserve_satoshis` WE send: the amount THEY must keep (BOLT #2:
"`channel_reserve_satoshis` is the minimum amount that the other node is to keep").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common import channel_type as ctype
from common import features as feat
from common.commit_tx import (
    InitialCommitmentError,
    anchors_total_sat,
    check_initial_commitment,
    commit_tx_base_fee,
)
from common.features import Feature
from common.key_derive import is_valid_pubkey

# BOLT #2: "`dust_limit_satoshis` is smaller than `354 satoshis`" (see BOLT #3 Dust Limits).
MIN_DUST_LIMIT_SAT = 354
# BOLT #2: "`max_accepted_htlcs` is greater than 483."
MAX_ACCEPTED_HTLCS = 483
# BOLT #2: funding_satoshis "greater than or equal to 2^24" needs option_support_large_channel.
LARGE_CHANNEL_SAT = 1 << 24
# Bitcoin's 21 million coins, in satoshi (Core Lightning's chainparams max_supply).
MAX_MONEY_SAT = 21_000_000 * 100_000_000
# BOLT #2 lets the opener MAY-fail an "unreasonably large" minimum_depth. We take the
# 2016 blocks BOLT #2 gives a funding tx to confirm: deeper than that is never reasonable.
MAX_MINIMUM_DEPTH = 2016

_WITNESS_V0 = 0x00
_OP_1, _OP_16 = 0x51, 0x60
_OP_RETURN = 0x6A
_OP_PUSHDATA1 = 0x4C


class BadParams(Exception):
    """The peer's parameters are unacceptable; `reason` is what we tell them."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Config:
    """One side's channel_config, as open_channel/accept_channel carry it."""

    dust_limit_sat: int
    max_htlc_value_in_flight_msat: int
    channel_reserve_sat: int
    htlc_minimum_msat: int
    to_self_delay: int
    max_accepted_htlcs: int


@dataclass(frozen=True)
class Limits:
    """What we accept from the peer, from lightningd's openingd_init."""

    chain_hash: bytes
    our_features: bytes
    their_features: bytes
    max_to_self_delay: int
    min_effective_htlc_capacity_msat: int
    min_feerate: int
    max_feerate: int
    zeroconf_trusted: bool

    def negotiated(self, feature: Feature) -> bool:
        return feat.negotiated(self.our_features, self.their_features, feature)


def fail(reason: str) -> None:
    raise BadParams(reason)


# --- reserve -------------------------------------------------------------------------


def our_reserve(funding_sat: int, dust_floor_sat: int, requested_sat: int | None = None) -> int:
    """The channel_reserve_satoshis we ask of the peer.

    1% of the funding rounded down (BOLT #2 rationale: "1% of the channel total
    is suggested"), or the reserve the user asked for; never below the dust
    limit: BOLT #2 (accept_channel sender) "MUST set `channel_reserve_satoshis`
    greater than or equal to `dust_limit_satoshis` from the `open_channel`
    message", and (open_channel sender) "MUST set `channel_reserve_satoshis`
    greater than or equal to `dust_limit_satoshis`".
    """
    reserve = funding_sat // 100 if requested_sat is None else requested_sat
    return max(reserve, dust_floor_sat)


# --- single fields -------------------------------------------------------------------


def check_chain_hash(theirs: bytes, ours: bytes) -> None:
    # BOLT #2: MUST fail the channel if "the `chain_hash` value is set to a hash of
    # a chain that is unknown to the receiver."
    if theirs != ours:
        fail(f"Unknown chain-hash {theirs[::-1].hex()}")


def check_funding_size(funding_sat: int, large_negotiated: bool) -> None:
    # BOLT #2: MUST fail the channel if "`funding_satoshis` is greater than or equal
    # to 2^24 and the receiver does not support `option_support_large_channel`."
    # As Core Lightning, we require it negotiated, not just supported by us.
    if funding_sat >= LARGE_CHANNEL_SAT and not large_negotiated:
        fail(f"funding_satoshis {funding_sat} too large")
    # Even a large channel cannot hold more bitcoin than will ever exist; nor could its
    # balances, 1000 * funding_satoshis, fit the u64 msat amounts of BOLT #2 messages.
    if funding_sat > MAX_MONEY_SAT:
        fail(f"funding_satoshis {funding_sat} too large")


def check_push(push_msat: int, funding_sat: int) -> None:
    # BOLT #2: MUST fail the channel if "`push_msat` is greater than
    # `funding_satoshis` * 1000."
    if push_msat > funding_sat * 1000:
        fail(f"push_msat {push_msat} would be too large for funding_satoshis {funding_sat}")


def check_feerate(feerate_per_kw: int, min_feerate: int, max_feerate: int) -> None:
    # BOLT #2: MUST fail the channel if "it considers `feerate_per_kw` too small for
    # timely processing or unreasonably large."
    if feerate_per_kw < min_feerate:
        fail(f"feerate_per_kw {feerate_per_kw} below minimum {min_feerate}")
    if feerate_per_kw > max_feerate:
        fail(f"feerate_per_kw {feerate_per_kw} above maximum {max_feerate}")


def check_to_self_delay(to_self_delay: int, max_to_self_delay: int) -> None:
    # BOLT #2: MUST fail the channel if "`to_self_delay` is unreasonably large."
    if to_self_delay > max_to_self_delay:
        fail(f"to_self_delay {to_self_delay} larger than {max_to_self_delay}")


def check_max_accepted_htlcs(max_accepted_htlcs: int) -> None:
    # BOLT #2: MAY fail if "it considers `max_accepted_htlcs` too small": a channel
    # that accepts no HTLC at all is useless.
    if max_accepted_htlcs == 0:
        fail(f"max_accepted_htlcs {max_accepted_htlcs} invalid")
    # BOLT #2: MUST fail the channel if "`max_accepted_htlcs` is greater than 483."
    if max_accepted_htlcs > MAX_ACCEPTED_HTLCS:
        fail(f"max_accepted_htlcs {max_accepted_htlcs} too large")


def check_dust_limit(dust_limit_sat: int) -> None:
    # BOLT #2: MUST fail the channel if "`dust_limit_satoshis` is smaller than
    # `354 satoshis`".
    if dust_limit_sat < MIN_DUST_LIMIT_SAT:
        fail(f"dust_limit_satoshis {dust_limit_sat} is less than {MIN_DUST_LIMIT_SAT}")


def check_their_dust_vs_their_reserve(dust_limit_sat: int, reserve_sat: int) -> None:
    # BOLT #2: MUST fail the channel if "`dust_limit_satoshis` is greater than
    # `channel_reserve_satoshis`" (accept_channel: "Other fields have the same
    # requirements as their counterparts in `open_channel`").
    if dust_limit_sat > reserve_sat:
        fail(
            f"dust_limit_satoshis {dust_limit_sat}"
            f" too large for channel_reserve_satoshis {reserve_sat}"
        )


def check_their_dust_vs_our_reserve(their_dust_sat: int, our_reserve_sat: int) -> None:
    # BOLT #2 (accept_channel receiver): "if `channel_reserve_satoshis` from the
    # `open_channel` message is less than `dust_limit_satoshis`: MUST fail the channel."
    if their_dust_sat > our_reserve_sat:
        fail(f"dust limit {their_dust_sat} would be above our reserve {our_reserve_sat}")


def check_our_dust_vs_their_reserve(our_dust_sat: int, their_reserve_sat: int) -> None:
    # BOLT #2 (accept_channel receiver): "if `channel_reserve_satoshis` is less than
    # `dust_limit_satoshis` within the `open_channel` message: MUST fail the channel."
    # The accepter must refuse too: it "MUST set `dust_limit_satoshis` less than or
    # equal to `channel_reserve_satoshis` from the `open_channel` message".
    if their_reserve_sat < our_dust_sat:
        fail(
            f"channel_reserve_satoshis {their_reserve_sat}"
            f" is less than our dust_limit_satoshis {our_dust_sat}"
        )


def check_pubkeys(points: Mapping[str, bytes]) -> None:
    # BOLT #2: MUST fail the channel if "`funding_pubkey`, `revocation_basepoint`,
    # `htlc_basepoint`, `payment_basepoint`, or `delayed_payment_basepoint` are not
    # valid secp256k1 pubkeys in compressed format." The first_per_commitment_point
    # must be one too, or no commitment can be built.
    for name, point in points.items():
        if not is_valid_pubkey(point):
            fail(f"{name} {point.hex()} is not a valid secp256k1 pubkey")


def check_minimum_depth(minimum_depth: int, zeroconf: bool) -> None:
    # BOLT #2 (accept_channel sender): "if `channel_type` includes `option_zeroconf`:
    # MUST set `minimum_depth` to zero."
    if zeroconf and minimum_depth != 0:
        fail(f"minimum_depth {minimum_depth} must be 0 with option_zeroconf")
    # A zero depth means an unconfirmed channel: only as agreed through the type.
    if not zeroconf and minimum_depth == 0:
        fail("minimum_depth 0 without option_zeroconf")
    # BOLT #2 (accept_channel receiver): "if `minimum_depth` is unreasonably large:
    # MAY fail the channel."
    if minimum_depth > MAX_MINIMUM_DEPTH:
        fail(f"minimum_depth {minimum_depth} above maximum {MAX_MINIMUM_DEPTH}")


def check_temporary_channel_id(theirs: bytes, ours: bytes) -> None:
    # BOLT #2: "The `temporary_channel_id` MUST be the same as the
    # `temporary_channel_id` in the `open_channel` message."
    if theirs != ours:
        fail(f"accept_channel ids don't match: sent {ours.hex()} got {theirs.hex()}")


# --- capacity ------------------------------------------------------------------------


def check_capacity(
    funding_sat: int,
    feerate_per_kw: int,
    their: Config,
    our_reserve_sat: int,
    anchors: bool,
    min_effective_htlc_capacity_msat: int,
) -> None:
    """What is left for HTLCs once both reserves, anchors and the fee are taken out.

    BOLT #2: the receiving node MAY fail the channel if "it considers
    `htlc_minimum_msat` too large", "it considers `max_htlc_value_in_flight_msat`
    too small", "it considers `channel_reserve_satoshis` too large".
    """
    reserves = their.channel_reserve_sat + our_reserve_sat
    # BOLT #2: the funder of an option_anchors channel "MUST be able to additionally
    # pay for `to_local_anchor` and `to_remote_anchor` above its reserve."
    capacity = funding_sat - reserves - (anchors_total_sat(_fmt(anchors)))
    if capacity < 0:
        fail(
            f"channel_reserve_satoshis {their.channel_reserve_sat}"
            f" and {our_reserve_sat} too large for funding {funding_sat}"
        )
    fee = commit_tx_base_fee(feerate_per_kw, 0, _fmt(anchors))
    capacity -= fee
    if capacity < 0:
        fail(
            f"channel_reserve_satoshis {their.channel_reserve_sat} and {our_reserve_sat}"
            f" plus fee {fee} too large for funding {funding_sat}"
        )
    # Their in-flight cap bounds what can ever move through the channel.
    capacity_msat = min(capacity * 1000, their.max_htlc_value_in_flight_msat)
    if their.htlc_minimum_msat > capacity_msat:
        fail(
            f"htlc_minimum_msat {their.htlc_minimum_msat} too large for funding"
            f" {funding_sat} capacity_msat {capacity_msat}"
        )
    if min_effective_htlc_capacity_msat > capacity_msat:
        fail(
            f"channel capacity with funding {funding_sat}, reserves"
            f" {their.channel_reserve_sat}/{our_reserve_sat},"
            f" max_htlc_value_in_flight_msat is {their.max_htlc_value_in_flight_msat},"
            f" channel capacity is {capacity_msat}msat, which is below"
            f" {min_effective_htlc_capacity_msat}msat"
        )


def _fmt(anchors: bool) -> ctype.CommitFormat:
    return ctype.CommitFormat.ANCHORS if anchors else ctype.CommitFormat.STATIC_REMOTEKEY


def check_initial_commitments(
    *,
    funding_sat: int,
    push_msat: int,
    feerate_per_kw: int,
    we_opened: bool,
    our_reserve_sat: int,
    their_reserve_sat: int,
    channel_type: bytes,
) -> None:
    """BOLT #2: MUST fail the channel if "the funder's amount for the initial
    commitment transaction is not sufficient for full fee payment", or "both
    `to_local` and `to_remote` amounts for the initial commitment transaction are
    less than or equal to `channel_reserve_satoshis`"."""
    opener_msat = funding_sat * 1000 - push_msat
    ours_msat, theirs_msat = (opener_msat, push_msat) if we_opened else (push_msat, opener_msat)
    try:
        # Our commitment: we keep their reserve requirement, they keep ours.
        check_initial_commitment(
            funding_sat=funding_sat,
            to_local_msat=ours_msat,
            to_remote_msat=theirs_msat,
            feerate_per_kw=feerate_per_kw,
            local_is_opener=we_opened,
            local_reserve_sat=their_reserve_sat,
            remote_reserve_sat=our_reserve_sat,
            channel_type=ctype.commit_format(channel_type),
        )
    except InitialCommitmentError as exc:
        fail(str(exc))


# --- upfront_shutdown_script ---------------------------------------------------------


def is_valid_shutdown_script(
    script: bytes, anysegwit: bool, simple_close: bool, allow_legacy: bool
) -> bool:
    """BOLT #2 `shutdown`: "MUST set `scriptpubkey` in one of the following forms"."""
    n = len(script)
    # 1. `OP_0` `20` 20-bytes; 2. `OP_0` `32` 32-bytes
    if n in (22, 34) and script[0] == _WITNESS_V0 and script[1] == n - 2:
        return True
    # 3. if (and only if) `option_shutdown_anysegwit` is negotiated: `OP_1` through
    # `OP_16` inclusive, followed by a single push of 2 to 40 bytes
    if anysegwit and n >= 4 and _OP_1 <= script[0] <= _OP_16 and 2 <= script[1] <= 40:
        return script[1] == n - 2
    # 4. if (and only if) `option_simple_close` is negotiated: `OP_RETURN` followed by
    # `6` to `75` ... or `76` followed by `76` to `80` followed by exactly that many bytes
    if simple_close and n >= 2 and script[0] == _OP_RETURN:
        if 6 <= script[1] <= 75 and script[1] == n - 2:
            return True
        if script[1] == _OP_PUSHDATA1 and n >= 3 and 76 <= script[2] <= 80 and script[2] == n - 3:
            return True
    # Core Lightning still takes P2PKH and P2SH from non-anchor channels, which older
    # BOLT #2 revisions allowed; anchor channels are recent enough to be segwit-only.
    return allow_legacy and (_is_p2pkh(script) or _is_p2sh(script))


def _is_p2pkh(s: bytes) -> bool:
    # OP_DUP OP_HASH160 20 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG
    return len(s) == 25 and s[:3] == b"\x76\xa9\x14" and s[23:] == b"\x88\xac"


def _is_p2sh(s: bytes) -> bool:
    # OP_HASH160 20 <20 bytes> OP_EQUAL
    return len(s) == 23 and s[:2] == b"\xa9\x14" and s[22] == 0x87


def check_upfront_shutdown(script: bytes | None, limits: Limits, channel_type: bytes) -> None:
    # BOLT #2: "if both nodes advertised the `option_upfront_shutdown_script` feature:
    # MUST include `upfront_shutdown_script` with either a valid
    # `shutdown_scriptpubkey` as required by `shutdown` `scriptpubkey`, or a
    # zero-length `shutdown_scriptpubkey` (ie. `0x0000`)."
    if script is None:
        if limits.negotiated(Feature.OPTION_UPFRONT_SHUTDOWN_SCRIPT):
            fail("upfront_shutdown_script missing, but option_upfront_shutdown_script negotiated")
        return
    if not script:
        return
    ok = is_valid_shutdown_script(
        script,
        anysegwit=limits.negotiated(Feature.OPTION_SHUTDOWN_ANYSEGWIT),
        simple_close=limits.negotiated(Feature.OPTION_SIMPLE_CLOSE),
        allow_legacy=not ctype.has(channel_type, Feature.OPTION_ANCHORS),
    )
    if not ok:
        fail(f"Unacceptable upfront_shutdown_script {script.hex()}")


# --- channel_type --------------------------------------------------------------------


def accept_channel_type(offered: bytes | None, limits: Limits, announce: bool) -> bytes:
    """The accepter's checks on open_channel's channel_type; the type agreed."""
    # BOLT #2: "if the message doesn't include a `channel_type`: fail the channel."
    if offered is None:
        fail("open_channel without channel_type")
    agreed = ctype.accept_type(offered, limits.our_features)
    # BOLT #2: MUST fail the channel if "the `channel_type` is not suitable."
    if agreed is None:
        fail(f"Did not support channel_type {ctype.describe(offered)}")
    # BOLT #2 (sender): "if `announce_channel` is `true` (not `0`): MUST NOT send
    # `channel_type` with the `option_scid_alias` bit set."
    if announce and ctype.has(agreed, Feature.OPTION_SCID_ALIAS):
        fail("option_scid_alias channel_type for an announced channel")
    # BOLT #2: MUST fail the channel if "the `channel_type` includes `option_zeroconf`
    # and it does not trust the sender to open an unconfirmed channel."
    if ctype.has(agreed, Feature.OPTION_ZEROCONF) and not limits.zeroconf_trusted:
        fail("You required zeroconf, but you're not on our allowlist")
    return agreed


def check_returned_channel_type(returned: bytes | None, sent: bytes) -> None:
    # BOLT #2 (accept_channel receiver): "if the message doesn't include a
    # `channel_type`: MUST fail the channel." and "if `channel_type` does not match
    # the `channel_type` from `open_channel`: MUST fail the channel."
    if returned is None:
        fail("accept_channel without channel_type")
    if not ctype.same_type(returned, sent):
        fail(f"Return unoffered channel_type: {ctype.describe(returned)}")


# --- the whole of a message ----------------------------------------------------------


def check_their_config(
    *,
    funding_sat: int,
    feerate_per_kw: int,
    their: Config,
    our: Config,
    limits: Limits,
    channel_type: bytes,
) -> None:
    """The checks common to both roles on the peer's channel_config.

    `our.channel_reserve_sat` is already our final reserve.
    """
    check_to_self_delay(their.to_self_delay, limits.max_to_self_delay)
    check_max_accepted_htlcs(their.max_accepted_htlcs)
    check_dust_limit(their.dust_limit_sat)
    check_their_dust_vs_their_reserve(their.dust_limit_sat, their.channel_reserve_sat)
    check_their_dust_vs_our_reserve(their.dust_limit_sat, our.channel_reserve_sat)
    check_our_dust_vs_their_reserve(our.dust_limit_sat, their.channel_reserve_sat)
    check_capacity(
        funding_sat,
        feerate_per_kw,
        their,
        our.channel_reserve_sat,
        ctype.commit_format(channel_type).anchors,
        limits.min_effective_htlc_capacity_msat,
    )
