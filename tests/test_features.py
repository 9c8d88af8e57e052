from common.features import (
    Feature,
    bits_to_bytes,
    bytes_to_bits,
    feature_names,
    has_bit,
    list_features_lines,
    merge_init_features,
    missing_dependencies,
    negotiated,
    offers,
    our_features,
    unknown_compulsory,
)


def test_bitfield_layout():
    # BOLT #9: "Flags are numbered from the least-significant bit, at bit 0".
    assert bits_to_bytes([0]) == b"\x01"
    assert bits_to_bytes([8]) == b"\x01\x00"
    assert bits_to_bytes([1, 9]) == b"\x02\x02"
    assert bits_to_bytes([]) == b""
    assert bytes_to_bits(b"\x02\x02") == [1, 9]
    assert has_bit(b"\x00\x01", 0) and not has_bit(b"\x00\x01", 8)


def test_our_features():
    ours = our_features()
    for feature in (Feature.OPTION_STATIC_REMOTEKEY, Feature.OPTION_CHANNEL_TYPE):
        assert has_bit(ours, feature.bit(True))
        assert not has_bit(ours, feature.bit(False))
    assert has_bit(ours, Feature.OPTION_ANCHORS.bit(False))
    assert has_bit(ours, Feature.OPTION_SUPPORT_LARGE_CHANNEL.bit(False))
    # BOLT #9: "MUST set all transitive feature dependencies."
    assert missing_dependencies(ours) == []
    # BOLT #9: "MUST NOT set both the optional and mandatory bits."
    bits = set(bytes_to_bits(ours))
    assert not any(bit % 2 == 0 and bit + 1 in bits for bit in bits)


def test_negotiation():
    ours = bits_to_bytes([Feature.OPTION_ANCHORS.bit(False)])
    theirs = bits_to_bytes([Feature.OPTION_ANCHORS.bit(True)])
    assert negotiated(ours, theirs, Feature.OPTION_ANCHORS)
    assert not negotiated(ours, b"", Feature.OPTION_ANCHORS)
    assert offers(theirs, Feature.OPTION_ANCHORS)


def test_unknown_even_bits():
    ours = our_features()
    # Bit 100 is nobody's; even means compulsory, so the connection must fail.
    assert unknown_compulsory(bits_to_bytes([100, 101, 12]), ours) == [100]
    # Unknown odd bits are fine; a known feature's even bit is fine too.
    assert unknown_compulsory(bits_to_bytes([101, 23, 22]), ours) == []


def test_dependencies():
    assert missing_dependencies(bits_to_bytes([Feature.OPTION_ZEROCONF.bit(False)])) == [
        (Feature.OPTION_ZEROCONF, Feature.OPTION_SCID_ALIAS)
    ]


def test_merge_and_names():
    assert merge_init_features(b"\x01", b"\x01\x00") == b"\x01\x01"
    assert feature_names(bits_to_bytes([12, 23, 101])) == [
        "static_remotekey/even",
        "anchors/odd",
        "unknown_101/odd",
    ]
    lines = list_features_lines()
    assert lines[:3] == [
        "option_data_loss_protect/even",
        "option_upfront_shutdown_script/odd",
        "option_gossip_queries/odd",
    ]
    assert lines.index("option_static_remotekey/even") < lines.index("option_anchors/odd")
