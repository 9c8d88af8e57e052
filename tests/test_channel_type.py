"""channel_type negotiation: what an opener offers, what an accepter takes, the RPC form."""

from __future__ import annotations

import pytest

from common import channel_type as ct
from common.commit_tx import ChannelType
from common.features import Feature, bits_to_bytes, our_features

SRK = bits_to_bytes([12])
ANCHORS = bits_to_bytes([12, 22])


def features(*opt: Feature, compulsory: tuple[Feature, ...] = ()) -> bytes:
    return bits_to_bytes([f.bit(False) for f in opt] + [f.bit(True) for f in compulsory])


BASIC = (Feature.OPTION_STATIC_REMOTEKEY, Feature.OPTION_CHANNEL_TYPE)
WITH_ANCHORS = features(*BASIC, Feature.OPTION_ANCHORS)
WITHOUT_ANCHORS = features(*BASIC)
EVERYTHING = features(
    *BASIC,
    Feature.OPTION_ANCHORS,
    Feature.OPTION_SCID_ALIAS,
    Feature.OPTION_ZEROCONF,
)


def test_default_is_anchors_when_both_offer_it():
    assert ct.default_type(WITH_ANCHORS, WITH_ANCHORS) == ANCHORS
    # Compulsory on one side, optional on the other: still both offer it.
    assert ct.default_type(features(*BASIC, compulsory=(Feature.OPTION_ANCHORS,)), EVERYTHING) == (
        ANCHORS
    )


@pytest.mark.parametrize(
    ("ours", "theirs"), [(WITH_ANCHORS, WITHOUT_ANCHORS), (WITHOUT_ANCHORS, WITH_ANCHORS)]
)
def test_default_is_static_remotekey_otherwise(ours, theirs):
    assert ct.default_type(ours, theirs) == SRK


def test_default_never_adds_variations():
    assert ct.offer_type(b"", EVERYTHING, EVERYTHING, announce=False) == ANCHORS


def test_requested_scid_alias_needs_the_peer_to_advertise_it():
    wanted = bits_to_bytes([12, 22, 46])
    assert ct.offer_type(wanted, EVERYTHING, EVERYTHING, announce=False) == wanted
    with pytest.raises(ValueError, match="option_scid_alias not negotiated"):
        ct.offer_type(wanted, EVERYTHING, WITH_ANCHORS, announce=False)


def test_scid_alias_refused_for_announced_channel():
    wanted = bits_to_bytes([12, 22, 46])
    with pytest.raises(ValueError, match="announced channel"):
        ct.offer_type(wanted, EVERYTHING, EVERYTHING, announce=True)


def test_requested_zeroconf_is_offered_only_when_asked():
    wanted = bits_to_bytes([12, 22, 50])
    assert ct.offer_type(wanted, EVERYTHING, EVERYTHING, announce=False) == wanted
    assert not ct.has(
        ct.offer_type(b"", EVERYTHING, EVERYTHING, announce=False), Feature.OPTION_ZEROCONF
    )


def test_requested_undefined_type_refused():
    with pytest.raises(ValueError, match=r"channel_type \[22\] is not a defined channel type"):
        ct.offer_type(bits_to_bytes([22]), EVERYTHING, EVERYTHING, announce=False)
    with pytest.raises(ValueError, match="not a defined channel type"):
        ct.offer_type(bits_to_bytes([12, 13]), EVERYTHING, EVERYTHING, announce=False)


def test_requested_anchors_without_peer_support_refused():
    with pytest.raises(ValueError, match="option_anchors not negotiated"):
        ct.offer_type(ANCHORS, EVERYTHING, WITHOUT_ANCHORS, announce=False)


@pytest.mark.parametrize(
    "offered",
    [
        SRK,
        ANCHORS,
        bits_to_bytes([12, 46]),
        bits_to_bytes([12, 22, 50]),
        bits_to_bytes([12, 22, 46, 50]),
    ],
)
def test_accepter_takes_every_defined_type_it_supports(offered):
    assert ct.accept_type(offered, EVERYTHING) == offered


@pytest.mark.parametrize(
    "offered",
    [
        b"",  # no bits: not a type
        bits_to_bytes([22]),  # anchors without static_remotekey
        bits_to_bytes([13]),  # odd bits are not types
        bits_to_bytes([12, 20]),  # 20 is not a variation
        bits_to_bytes([12, 22, 62]),
    ],
)
def test_accepter_refuses_undefined_types(offered):
    assert ct.accept_type(offered, EVERYTHING) is None


def test_accepter_refuses_what_it_does_not_support():
    assert ct.accept_type(ANCHORS, WITHOUT_ANCHORS) is None
    assert ct.accept_type(bits_to_bytes([12, 50]), WITH_ANCHORS) is None
    assert ct.accept_type(SRK, WITHOUT_ANCHORS) == SRK


def test_same_type_ignores_leading_zero_bytes():
    assert ct.same_type(b"\x00" + ANCHORS, ANCHORS)
    assert not ct.same_type(SRK, ANCHORS)


def test_smallest_bitmap():
    assert ct.encode({12}) == b"\x10\x00"
    assert ct.encode({12, 22}) == b"\x40\x10\x00"


def test_json_form_is_core_lightnings():
    assert ct.to_json(ANCHORS) == {
        "bits": [12, 22],
        "names": ["static_remotekey/even", "anchors/even"],
    }
    assert ct.to_json(bits_to_bytes([12, 22, 46, 50])) == {
        "bits": [12, 22, 46, 50],
        "names": ["static_remotekey/even", "anchors/even", "scid_alias/even", "zeroconf/even"],
    }


def test_commit_format():
    assert ct.commit_format(ANCHORS) is ChannelType.ANCHORS
    assert ct.commit_format(bits_to_bytes([12, 46])) is ChannelType.STATIC_REMOTEKEY


def test_our_own_features_default_to_anchors():
    assert ct.default_type(our_features(), our_features()) == ANCHORS
