"""channel_type negotiation for channel establishment v1 (BOLT #2 and BOLT #9).

A channel_type is a feature bitfield carried in the `channel_type` TLV of
`open_channel` and `accept_channel`. It is not an arbitrary set of features:

BOLT #2: "Channel types are an explicit enumeration: for convenience of future
definitions they reuse even feature bits, but they are not an arbitrary
combination (they represent the persistent features which affect the channel
operation)."

Types are handled here as their wire bytes (what lightningd stores and what the
peer sent) with helpers to read them as bit sets.
"""

from __future__ import annotations

from common import features as feat
from common.commit_tx import ChannelType as CommitFormat
from common.features import Feature

# BOLT #2: "The currently defined basic types are:
#   - `option_static_remotekey` (bit 12)
#   - `option_anchors` and `option_static_remotekey` (bits 22 and 12)"
STATIC_REMOTEKEY = frozenset({Feature.OPTION_STATIC_REMOTEKEY.bit(True)})
ANCHORS = frozenset({Feature.OPTION_STATIC_REMOTEKEY.bit(True), Feature.OPTION_ANCHORS.bit(True)})
BASIC_TYPES = (ANCHORS, STATIC_REMOTEKEY)

# BOLT #2: "Each basic type has the following variations allowed:
#   - `option_scid_alias` (bit 46)
#   - `option_zeroconf` (bit 50)"
VARIATIONS = (Feature.OPTION_SCID_ALIAS, Feature.OPTION_ZEROCONF)


def bits(channel_type: bytes) -> frozenset[int]:
    return frozenset(feat.bytes_to_bits(channel_type))


def encode(type_bits: frozenset[int] | set[int]) -> bytes:
    """BOLT #2: "MUST use the smallest bitmap possible to represent the channel type"."""
    return feat.bits_to_bytes(type_bits)


def has(channel_type: bytes, feature: Feature) -> bool:
    return feat.has_bit(channel_type, feature.bit(True))


def is_defined(channel_type: bytes) -> bool:
    """A basic type plus any of the allowed variations, all as even bits."""
    type_bits = bits(channel_type)
    variations = {f.bit(True) for f in VARIATIONS}
    return any(basic <= type_bits and type_bits - basic <= variations for basic in BASIC_TYPES)


def same_type(a: bytes, b: bytes) -> bool:
    """Equal as types: the same bits, whatever leading zero bytes either carries."""
    return bits(a) == bits(b)


def commit_format(channel_type: bytes) -> CommitFormat:
    """The commitment transaction format a type selects (BOLT #3)."""
    return CommitFormat.from_feature_bits(bits(channel_type))


def describe(channel_type: bytes) -> str:
    """Short text for logs and errors: the bits, as CLN prints a featurebit set."""
    return "[" + ",".join(str(b) for b in sorted(bits(channel_type))) + "]"


def to_json(channel_type: bytes) -> dict[str, list]:
    """Core Lightning's RPC form: {"bits": [12, 22], "names": ["static_remotekey/even", ...]}."""
    return {
        "bits": sorted(bits(channel_type)),
        "names": feat.feature_names(channel_type),
    }


def _supports(ours: bytes, feature: Feature) -> bool:
    return feat.offers(ours, feature)


def default_type(ours: bytes, theirs: bytes) -> bytes:
    """What an opener offers when the user asked for nothing in particular.

    Anchors when both sides offer option_anchors, else static_remotekey
    (BOLT #9 lists option_static_remotekey as ASSUMED).
    """
    if feat.negotiated(ours, theirs, Feature.OPTION_ANCHORS):
        return encode(ANCHORS)
    return encode(STATIC_REMOTEKEY)


def unacceptable_request(
    requested: bytes, ours: bytes, theirs: bytes, announce: bool
) -> str | None:
    """Why the type a user asked us to open with cannot be offered, or None.

    BOLT #2 (the sending node): "MUST set it to a defined type representing the
    type it wants", "SHOULD NOT set it to a type containing a feature which was
    not negotiated", and "if `announce_channel` is `true` (not `0`): MUST NOT
    send `channel_type` with the `option_scid_alias` bit set".
    """
    if not is_defined(requested):
        return f"channel_type {describe(requested)} is not a defined channel type"
    for bit in sorted(bits(requested)):
        feature = Feature(bit)
        if not feat.negotiated(ours, theirs, feature):
            return f"channel_type {describe(requested)}: {feature.name.lower()} not negotiated"
    if announce and has(requested, Feature.OPTION_SCID_ALIAS):
        return "option_scid_alias channel_type cannot be used for an announced channel"
    return None


def offer_type(requested: bytes, ours: bytes, theirs: bytes, announce: bool) -> bytes:
    """The channel_type to put in open_channel: the user's, checked, or our default.

    Raises ValueError with the reason when the user's type cannot be offered.
    """
    if not requested:
        return default_type(ours, theirs)
    reason = unacceptable_request(requested, ours, theirs, announce)
    if reason is not None:
        raise ValueError(reason)
    return encode(bits(requested))


def accept_type(offered: bytes, ours: bytes) -> bytes | None:
    """The type an accepter agrees to (echoed exactly), or None if unsuitable.

    BOLT #2: the receiving node MUST fail the channel if "the `channel_type` is
    not suitable"; we find a type suitable when it is defined and we support
    each of its features.
    """
    if not is_defined(offered):
        return None
    if not all(_supports(ours, Feature(bit)) for bit in bits(offered)):
        return None
    # BOLT #2 (accept_channel): "MUST set `channel_type` to the `channel_type` from
    # `open_channel`."
    return offered
