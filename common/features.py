"""BOLT #9 feature bits: our set, bitfield helpers and negotiation.

A feature field is a big-endian bitfield; bit 0 is the least significant bit
of the last byte. Features come in pairs: the even bit means "required", the
odd bit "supported".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Feature(enum.IntEnum):
    """Each feature by its even (compulsory) bit, named as BOLT #9 names it."""

    OPTION_DATA_LOSS_PROTECT = 0
    OPTION_UPFRONT_SHUTDOWN_SCRIPT = 4
    GOSSIP_QUERIES = 6
    VAR_ONION_OPTIN = 8
    GOSSIP_QUERIES_EX = 10
    OPTION_STATIC_REMOTEKEY = 12
    PAYMENT_SECRET = 14
    BASIC_MPP = 16
    OPTION_SUPPORT_LARGE_CHANNEL = 18
    OPTION_ANCHORS = 22
    OPTION_ROUTE_BLINDING = 24
    OPTION_SHUTDOWN_ANYSEGWIT = 26
    OPTION_DUAL_FUND = 28
    OPTION_QUIESCE = 34
    OPTION_ATTRIBUTION_DATA = 36
    OPTION_ONION_MESSAGES = 38
    OPTION_PROVIDE_STORAGE = 42
    OPTION_CHANNEL_TYPE = 44
    OPTION_SCID_ALIAS = 46
    OPTION_PAYMENT_METADATA = 48
    OPTION_ZEROCONF = 50
    OPTION_SIMPLE_CLOSE = 60
    OPTION_SPLICE = 62

    @property
    def short_name(self) -> str:
        """Core Lightning's name in channel_type results: "anchors", "scid_alias"."""
        return self.name.lower().removeprefix("option_")

    def bit(self, compulsory: bool) -> int:
        return int(self) if compulsory else int(self) + 1


# BOLT #9: "MUST set all transitive feature dependencies."
DEPENDENCIES: dict[Feature, tuple[Feature, ...]] = {
    Feature.BASIC_MPP: (Feature.PAYMENT_SECRET,),
    Feature.OPTION_ZEROCONF: (Feature.OPTION_SCID_ALIAS,),
    Feature.OPTION_SIMPLE_CLOSE: (Feature.OPTION_SHUTDOWN_ANYSEGWIT,),
}

# What we put in `init`, as Core Lightning does: compulsory what everyone
# assumes today, optional what we support but do not insist on.
OUR_COMPULSORY = (
    Feature.OPTION_DATA_LOSS_PROTECT,
    Feature.VAR_ONION_OPTIN,
    Feature.PAYMENT_SECRET,
    Feature.OPTION_STATIC_REMOTEKEY,
    Feature.OPTION_CHANNEL_TYPE,
)
OUR_OPTIONAL = (
    Feature.OPTION_UPFRONT_SHUTDOWN_SCRIPT,
    Feature.GOSSIP_QUERIES,
    Feature.OPTION_SUPPORT_LARGE_CHANNEL,
    Feature.OPTION_ANCHORS,
    Feature.OPTION_SCID_ALIAS,
    Feature.OPTION_ZEROCONF,
    Feature.OPTION_QUIESCE,
)


def bits_to_bytes(bits: Iterable[int]) -> bytes:
    """The minimal big-endian bitfield with exactly these bits set."""
    value = 0
    for bit in bits:
        value |= 1 << bit
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def bytes_to_bits(field: bytes) -> list[int]:
    value = int.from_bytes(field, "big")
    return [bit for bit in range(value.bit_length()) if value >> bit & 1]


def has_bit(field: bytes, bit: int) -> bool:
    return bool(int.from_bytes(field, "big") >> bit & 1)


def offers(field: bytes, feature: Feature) -> bool:
    """The field sets the feature, as compulsory or optional."""
    return has_bit(field, feature.bit(True)) or has_bit(field, feature.bit(False))


def negotiated(ours: bytes, theirs: bytes, feature: Feature) -> bool:
    """Both sides offer the feature, so both may use it on this connection."""
    return offers(ours, feature) and offers(theirs, feature)


def our_features() -> bytes:
    return bits_to_bytes(
        [f.bit(True) for f in OUR_COMPULSORY] + [f.bit(False) for f in OUR_OPTIONAL]
    )


def merge_init_features(globalfeatures: bytes, features: bytes) -> bytes:
    """BOLT #1: a receiver treats the two init fields as one, logically or-ed."""
    merged = int.from_bytes(globalfeatures, "big") | int.from_bytes(features, "big")
    return merged.to_bytes((merged.bit_length() + 7) // 8, "big")


def unknown_compulsory(theirs: bytes, ours: bytes) -> list[int]:
    """Even bits they set that we do not offer in any form.

    BOLT #1: "upon receiving unknown _even_ feature bits that are non-zero:
    MUST fail the connection."
    """
    return [
        bit
        for bit in bytes_to_bits(theirs)
        if bit % 2 == 0 and not (has_bit(ours, bit) or has_bit(ours, bit + 1))
    ]


def missing_dependencies(field: bytes) -> list[tuple[Feature, Feature]]:
    """(feature, dependency) pairs where the field offers one without the other.

    BOLT #1: a receiving node "upon receiving `features` that do not set all
    transitive feature dependencies: SHOULD send a `warning`, MUST disconnect".
    """
    return [
        (feature, dep)
        for feature, deps in DEPENDENCIES.items()
        if offers(field, feature)
        for dep in deps
        if not offers(field, dep)
    ]


def feature_names(field: bytes) -> list[str]:
    """CLN's "name/even" or "name/odd" for every bit set (unknown bits by number)."""
    names = []
    for bit in bytes_to_bits(field):
        parity = "even" if bit % 2 == 0 else "odd"
        try:
            names.append(f"{Feature(bit & ~1).short_name}/{parity}")
        except ValueError:
            names.append(f"unknown_{bit}/{parity}")
    return names


def list_features_lines() -> list[str]:
    """What `lightningd --list-features-only` prints: one line per feature, in bit order."""
    ours = [(f, "even") for f in OUR_COMPULSORY] + [(f, "odd") for f in OUR_OPTIONAL]
    return [f"option_{f.short_name}/{parity}" for f, parity in sorted(ours)]
