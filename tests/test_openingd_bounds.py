"""Every BOLT #2 open_channel / accept_channel check: both sides of each bound, exact texts."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from coincurve import PrivateKey

from common.chainparams import CHAINS
from common.features import Feature, bits_to_bytes
from openingd import bounds
from openingd.bounds import BadParams, Config, Limits

REGTEST = CHAINS["regtest"].chain_hash
MAINNET = CHAINS["bitcoin"].chain_hash
SRK = bits_to_bytes([12])
ANCHORS = bits_to_bytes([12, 22])
POINT = PrivateKey(b"\x01" * 32).public_key.format()


def feats(*features: Feature) -> bytes:
    return bits_to_bytes([f.bit(False) for f in features])


ALL = feats(
    Feature.OPTION_STATIC_REMOTEKEY,
    Feature.OPTION_CHANNEL_TYPE,
    Feature.OPTION_ANCHORS,
    Feature.OPTION_UPFRONT_SHUTDOWN_SCRIPT,
    Feature.OPTION_SUPPORT_LARGE_CHANNEL,
    Feature.OPTION_SHUTDOWN_ANYSEGWIT,
    Feature.OPTION_SCID_ALIAS,
    Feature.OPTION_ZEROCONF,
)
PLAIN = feats(Feature.OPTION_STATIC_REMOTEKEY, Feature.OPTION_CHANNEL_TYPE, Feature.OPTION_ANCHORS)


def limits(**kw) -> Limits:
    base = dict(
        chain_hash=REGTEST,
        our_features=ALL,
        their_features=ALL,
        max_to_self_delay=2016,
        min_effective_htlc_capacity_msat=1_000_000,
        min_feerate=253,
        max_feerate=100_000,
        zeroconf_trusted=False,
    )
    return Limits(**{**base, **kw})


CONFIG = Config(
    dust_limit_sat=546,
    max_htlc_value_in_flight_msat=2**64 - 1,
    channel_reserve_sat=10_000,
    htlc_minimum_msat=0,
    to_self_delay=144,
    max_accepted_htlcs=483,
)


def rejects(text: str):
    return pytest.raises(BadParams, match="^" + re.escape(text) + "$")


# --- reserve ---------------------------------------------------------------------------


def test_reserve_is_one_percent_rounded_down():
    assert bounds.our_reserve(1_000_099, 354) == 10_000


def test_reserve_floored_at_the_dust_limit():
    # 1% of 40_000 is 400: below a 546 dust limit, so 546.
    assert bounds.our_reserve(40_000, 546) == 546
    assert bounds.our_reserve(54_600, 546) == 546
    assert bounds.our_reserve(54_700, 546) == 547


def test_requested_reserve_overrides_one_percent_still_floored():
    assert bounds.our_reserve(1_000_000, 546, requested_sat=20_000) == 20_000
    assert bounds.our_reserve(1_000_000, 546, requested_sat=0) == 546
    assert bounds.our_reserve(1_000_000, 546, requested_sat=100) == 546


def test_accepter_floor_is_their_dust_and_opener_checks_it_against_ours():
    # Accepter: our reserve follows their (open_channel's) dust limit.
    their = replace(CONFIG, dust_limit_sat=2_000, channel_reserve_sat=5_000)
    ours = replace(CONFIG, channel_reserve_sat=bounds.our_reserve(100_000, their.dust_limit_sat))
    assert ours.channel_reserve_sat == 2_000
    bounds.check_their_dust_vs_our_reserve(their.dust_limit_sat, ours.channel_reserve_sat)
    # Opener: our reserve was floored at OUR dust; their larger dust is refused.
    with rejects("dust limit 2000 would be above our reserve 1000"):
        bounds.check_their_dust_vs_our_reserve(2_000, bounds.our_reserve(100_000, 546))


def test_our_dust_above_their_reserve():
    bounds.check_our_dust_vs_their_reserve(546, 546)
    with rejects("channel_reserve_satoshis 545 is less than our dust_limit_satoshis 546"):
        bounds.check_our_dust_vs_their_reserve(546, 545)


def test_their_dust_above_their_reserve():
    bounds.check_their_dust_vs_their_reserve(546, 546)
    with rejects("dust_limit_satoshis 547 too large for channel_reserve_satoshis 546"):
        bounds.check_their_dust_vs_their_reserve(547, 546)


# --- single fields ---------------------------------------------------------------------


def test_chain_hash():
    bounds.check_chain_hash(REGTEST, REGTEST)
    with rejects(f"Unknown chain-hash {MAINNET[::-1].hex()}"):
        bounds.check_chain_hash(MAINNET, REGTEST)


def test_large_channel():
    bounds.check_funding_size(2**24 - 1, large_negotiated=False)
    bounds.check_funding_size(2**24, large_negotiated=True)
    with rejects("funding_satoshis 16777216 too large"):
        bounds.check_funding_size(2**24, large_negotiated=False)


def test_push():
    bounds.check_push(100_000_000, 100_000)
    with rejects("push_msat 100000001 would be too large for funding_satoshis 100000"):
        bounds.check_push(100_000_001, 100_000)


def test_feerate():
    bounds.check_feerate(253, 253, 1000)
    bounds.check_feerate(1000, 253, 1000)
    with rejects("feerate_per_kw 100 below minimum 253"):
        bounds.check_feerate(100, 253, 1000)
    with rejects("feerate_per_kw 1001 above maximum 1000"):
        bounds.check_feerate(1001, 253, 1000)


def test_to_self_delay():
    bounds.check_to_self_delay(2016, 2016)
    with rejects("to_self_delay 2017 larger than 2016"):
        bounds.check_to_self_delay(2017, 2016)


def test_max_accepted_htlcs():
    bounds.check_max_accepted_htlcs(1)
    bounds.check_max_accepted_htlcs(483)
    with rejects("max_accepted_htlcs 484 too large"):
        bounds.check_max_accepted_htlcs(484)
    with rejects("max_accepted_htlcs 0 invalid"):
        bounds.check_max_accepted_htlcs(0)


def test_dust_limit_minimum():
    bounds.check_dust_limit(354)
    with rejects("dust_limit_satoshis 100 is less than 354"):
        bounds.check_dust_limit(100)
    with rejects("dust_limit_satoshis 353 is less than 354"):
        bounds.check_dust_limit(353)


@pytest.mark.parametrize(
    "name",
    [
        "funding_pubkey",
        "revocation_basepoint",
        "payment_basepoint",
        "delayed_payment_basepoint",
        "htlc_basepoint",
        "first_per_commitment_point",
    ],
)
def test_every_point_must_be_a_valid_compressed_pubkey(name):
    points = dict.fromkeys(
        [
            "funding_pubkey",
            "revocation_basepoint",
            "payment_basepoint",
            "delayed_payment_basepoint",
            "htlc_basepoint",
            "first_per_commitment_point",
        ],
        POINT,
    )
    bounds.check_pubkeys(points)
    off_curve = b"\x02" + b"\x00" * 32  # x = 0 is not on secp256k1
    with rejects(f"{name} {off_curve.hex()} is not a valid secp256k1 pubkey"):
        bounds.check_pubkeys({**points, name: off_curve})
    uncompressed = PrivateKey(b"\x01" * 32).public_key.format(compressed=False)
    with pytest.raises(BadParams, match=f"^{name} 04"):
        bounds.check_pubkeys({**points, name: uncompressed})


def test_minimum_depth():
    bounds.check_minimum_depth(3, zeroconf=False)
    bounds.check_minimum_depth(2016, zeroconf=False)
    bounds.check_minimum_depth(0, zeroconf=True)
    with rejects("minimum_depth 2017 above maximum 2016"):
        bounds.check_minimum_depth(2017, zeroconf=False)
    with rejects("minimum_depth 0 without option_zeroconf"):
        bounds.check_minimum_depth(0, zeroconf=False)
    with rejects("minimum_depth 3 must be 0 with option_zeroconf"):
        bounds.check_minimum_depth(3, zeroconf=True)


def test_temporary_channel_id():
    bounds.check_temporary_channel_id(b"\x01" * 32, b"\x01" * 32)
    with rejects(f"accept_channel ids don't match: sent {'01' * 32} got {'02' * 32}"):
        bounds.check_temporary_channel_id(b"\x02" * 32, b"\x01" * 32)


# --- capacity --------------------------------------------------------------------------


def capacity(their: Config, *, funding=100_000, feerate=253, ours=1_000, anchors=False, minimum=0):
    bounds.check_capacity(funding, feerate, their, ours, anchors, minimum)


def test_reserves_too_large_for_funding():
    their = replace(CONFIG, channel_reserve_sat=99_000)
    capacity(replace(their, channel_reserve_sat=99_000 - 183), funding=100_000)  # fee 183
    with rejects("channel_reserve_satoshis 99001 and 1000 too large for funding 100000"):
        capacity(replace(their, channel_reserve_sat=99_001))
    with rejects(
        "channel_reserve_satoshis 98818 and 1000 plus fee 183 too large for funding 100000"
    ):
        capacity(replace(their, channel_reserve_sat=98_818))


def test_anchors_count_against_capacity():
    # 100_000 - 1_000 - 98_100 = 900 left: enough for a 183 sat fee, not for anchors'
    # 660 sat plus the 284 sat fee of the heavier anchor commitment.
    their = replace(CONFIG, channel_reserve_sat=98_100)
    capacity(their, anchors=False)
    with rejects(
        "channel_reserve_satoshis 98100 and 1000 plus fee 284 too large for funding 100000"
    ):
        capacity(their, anchors=True)


def test_htlc_minimum_too_large():
    # capacity = 100_000 - 10_000 - 1_000 - 183 = 88_817 sat
    their = replace(CONFIG, htlc_minimum_msat=88_817_000)
    capacity(their)
    with rejects("htlc_minimum_msat 88817001 too large for funding 100000 capacity_msat 88817000"):
        capacity(replace(their, htlc_minimum_msat=88_817_001))


def test_htlc_minimum_against_max_in_flight():
    their = replace(CONFIG, max_htlc_value_in_flight_msat=5_000, htlc_minimum_msat=5_001)
    with rejects("htlc_minimum_msat 5001 too large for funding 100000 capacity_msat 5000"):
        capacity(their)


def test_min_effective_capacity():
    their = replace(CONFIG, max_htlc_value_in_flight_msat=5_000_000)
    capacity(their, minimum=5_000_000)
    with rejects(
        "channel capacity with funding 100000, reserves 10000/1000,"
        " max_htlc_value_in_flight_msat is 5000000, channel capacity is 5000000msat,"
        " which is below 5000001msat"
    ):
        capacity(their, minimum=5_000_001)


# --- initial commitment ----------------------------------------------------------------


def initial(**kw):
    args = dict(
        funding_sat=100_000,
        push_msat=0,
        feerate_per_kw=253,
        we_opened=False,
        our_reserve_sat=1_000,
        their_reserve_sat=1_000,
        channel_type=SRK,
    )
    bounds.check_initial_commitments(**{**args, **kw})


def test_funder_must_afford_the_fee():
    # 724 weight at 10_000 sat/kw: a 7240 sat fee.
    initial(funding_sat=8_000, push_msat=760_000, feerate_per_kw=10_000, their_reserve_sat=0)
    with rejects(
        "funder cannot afford fee on initial commitment: funder has 7239000 msat,"
        " needs 7240 sat fee at 10000 sat/kw"
    ):
        initial(funding_sat=8_000, push_msat=761_000, feerate_per_kw=10_000, their_reserve_sat=0)


def test_funder_must_afford_anchors_too():
    initial(funding_sat=2_000, feerate_per_kw=253, channel_type=ANCHORS, our_reserve_sat=0)
    with pytest.raises(BadParams, match=r"needs 284 sat fee \+ 660 sat anchors"):
        initial(funding_sat=943, feerate_per_kw=253, channel_type=ANCHORS)


def test_both_outputs_at_or_below_reserve():
    # Funder keeps 100_000 - 183 - 50_000 = 49_817 sat; the fundee gets 50_000 sat.
    initial(push_msat=50_000_000, our_reserve_sat=49_816, their_reserve_sat=49_999)
    with pytest.raises(BadParams, match=r"^neither to_local .* exceeds its reserve"):
        initial(push_msat=50_000_000, our_reserve_sat=49_817, their_reserve_sat=50_000)


# --- upfront_shutdown_script -----------------------------------------------------------

P2WPKH = bytes([0, 20]) + b"\x11" * 20
P2WSH = bytes([0, 32]) + b"\x22" * 32
P2TR = bytes([0x51, 32]) + b"\x33" * 32
P2PKH = b"\x76\xa9\x14" + b"\x44" * 20 + b"\x88\xac"
P2SH = b"\xa9\x14" + b"\x55" * 20 + b"\x87"


@pytest.mark.parametrize("script", [b"", P2WPKH, P2WSH, P2TR])
def test_valid_upfront_scripts(script):
    bounds.check_upfront_shutdown(script, limits(), ANCHORS)


@pytest.mark.parametrize("script", [P2PKH, P2SH])
def test_legacy_scripts_only_without_anchors(script):
    bounds.check_upfront_shutdown(script, limits(), SRK)
    with rejects(f"Unacceptable upfront_shutdown_script {script.hex()}"):
        bounds.check_upfront_shutdown(script, limits(), ANCHORS)


def test_future_segwit_needs_anysegwit():
    no_anysegwit = limits(their_features=PLAIN)
    with rejects(f"Unacceptable upfront_shutdown_script {P2TR.hex()}"):
        bounds.check_upfront_shutdown(P2TR, no_anysegwit, ANCHORS)


@pytest.mark.parametrize(
    "script",
    [
        bytes([0, 21]) + b"\x11" * 21,  # v0 with a 21-byte program
        P2WPKH + b"\x00",  # trailing byte
        bytes([0x51, 41]) + b"\x33" * 41,  # v1 push longer than 40
        bytes([0x51, 1]) + b"\x33",  # v1 push shorter than 2
        b"\x6a\x06" + b"\x00" * 6,  # OP_RETURN without option_simple_close
        b"\x01",
    ],
)
def test_nonstandard_scripts_refused(script):
    with rejects(f"Unacceptable upfront_shutdown_script {script.hex()}"):
        bounds.check_upfront_shutdown(script, limits(), ANCHORS)


def test_op_return_forms_with_simple_close():
    assert bounds.is_valid_shutdown_script(b"\x6a\x06" + b"\x00" * 6, False, True, False)
    assert bounds.is_valid_shutdown_script(b"\x6a\x4c\x50" + b"\x00" * 80, False, True, False)
    assert not bounds.is_valid_shutdown_script(b"\x6a\x05" + b"\x00" * 5, False, True, False)
    assert not bounds.is_valid_shutdown_script(b"\x6a\x4c\x51" + b"\x00" * 81, False, True, False)


def test_upfront_script_must_be_present_when_negotiated():
    bounds.check_upfront_shutdown(None, limits(their_features=PLAIN), ANCHORS)
    with rejects("upfront_shutdown_script missing, but option_upfront_shutdown_script negotiated"):
        bounds.check_upfront_shutdown(None, limits(), ANCHORS)


# --- channel_type ----------------------------------------------------------------------


def test_open_channel_type_accepted():
    assert bounds.accept_channel_type(ANCHORS, limits(), announce=True) == ANCHORS


def test_open_channel_without_type():
    with rejects("open_channel without channel_type"):
        bounds.accept_channel_type(None, limits(), announce=False)


def test_open_channel_unsupported_type():
    with rejects("Did not support channel_type [22]"):
        bounds.accept_channel_type(bits_to_bytes([22]), limits(), announce=False)
    no_anchors = limits(our_features=feats(Feature.OPTION_STATIC_REMOTEKEY))
    with rejects("Did not support channel_type [12,22]"):
        bounds.accept_channel_type(ANCHORS, no_anchors, announce=False)


def test_open_channel_zeroconf_needs_trust():
    zeroconf = bits_to_bytes([12, 22, 50])
    assert bounds.accept_channel_type(zeroconf, limits(zeroconf_trusted=True), False) == zeroconf
    with rejects("You required zeroconf, but you're not on our allowlist"):
        bounds.accept_channel_type(zeroconf, limits(zeroconf_trusted=False), False)


def test_open_channel_scid_alias_not_for_announced():
    alias = bits_to_bytes([12, 22, 46])
    assert bounds.accept_channel_type(alias, limits(), announce=False) == alias
    with rejects("option_scid_alias channel_type for an announced channel"):
        bounds.accept_channel_type(alias, limits(), announce=True)


def test_accept_channel_type_must_match():
    bounds.check_returned_channel_type(b"\x00" + ANCHORS, ANCHORS)
    with rejects("accept_channel without channel_type"):
        bounds.check_returned_channel_type(None, ANCHORS)
    with rejects("Return unoffered channel_type: [12]"):
        bounds.check_returned_channel_type(SRK, ANCHORS)


# --- everything at once ----------------------------------------------------------------


def test_their_config_all_checks_in_order():
    ours = replace(CONFIG, channel_reserve_sat=1_000)
    args = dict(
        funding_sat=100_000, feerate_per_kw=253, our=ours, limits=limits(), channel_type=ANCHORS
    )
    bounds.check_their_config(their=CONFIG, **args)
    cases = [
        (replace(CONFIG, to_self_delay=5000), "to_self_delay 5000 larger than 2016"),
        (replace(CONFIG, max_accepted_htlcs=500), "max_accepted_htlcs 500 too large"),
        (replace(CONFIG, dust_limit_sat=100), "dust_limit_satoshis 100 is less than 354"),
        (
            replace(CONFIG, dust_limit_sat=999, channel_reserve_sat=998),
            "dust_limit_satoshis 999 too large for channel_reserve_satoshis 998",
        ),
        (replace(CONFIG, dust_limit_sat=1_001), "dust limit 1001 would be above our reserve 1000"),
        (
            replace(CONFIG, dust_limit_sat=400, channel_reserve_sat=545),
            "channel_reserve_satoshis 545 is less than our dust_limit_satoshis 546",
        ),
    ]
    for their, text in cases:
        with rejects(text):
            bounds.check_their_config(their=their, **args)
