"""BOLT #1 generic message rules and the init exchange."""

import pytest

from common.chainparams import CHAINS
from common.features import Feature, bits_to_bytes, our_features
from common.read_peer_msg import (
    Deliver,
    Ignored,
    PeerError,
    PeerProtocolError,
    Reply,
    TokenBucket,
    check_init,
    handle_peer_msg,
    make_init,
    printable,
)
from wire import peer_wiregen as wire

REGTEST = CHAINS["regtest"].chain_hash
MAINNET = CHAINS["bitcoin"].chain_hash


def init_with(features: bytes, networks=(REGTEST,), globalfeatures=b"") -> bytes:
    return wire.Init(
        globalfeatures=globalfeatures, features=features, tlvs=wire.InitTlvs(networks=networks)
    ).encode()


def test_our_init_round_trips():
    got = check_init(make_init(our_features(), REGTEST), our_features(), REGTEST)
    assert got.features == our_features()
    assert got.networks == (REGTEST,)


def test_global_and_local_features_are_merged():
    got = check_init(
        init_with(bits_to_bytes([13]), globalfeatures=bits_to_bytes([1])), our_features(), REGTEST
    )
    assert got.features == bits_to_bytes([1, 13])


def test_unknown_even_feature_closes_with_warning():
    with pytest.raises(PeerProtocolError, match="Unsupported feature 100") as info:
        check_init(init_with(bits_to_bytes([100, 13])), our_features(), REGTEST)
    warning = wire.decode(info.value.warning)
    assert isinstance(warning, wire.Warning)
    assert warning.channel_id == bytes(32)
    assert warning.data == b"Unsupported feature 100"


def test_compulsory_feature_we_lack_closes():
    dual_fund = Feature.OPTION_DUAL_FUND.bit(True)
    with pytest.raises(PeerProtocolError, match=f"Unsupported feature {dual_fund}"):
        check_init(init_with(bits_to_bytes([dual_fund])), our_features(), REGTEST)


def test_unknown_odd_feature_is_ignored():
    got = check_init(init_with(bits_to_bytes([101, 13])), our_features(), REGTEST)
    assert got.features == bits_to_bytes([101, 13])


def test_missing_dependency_closes():
    with pytest.raises(PeerProtocolError, match="option_zeroconf set without option_scid_alias"):
        check_init(init_with(bits_to_bytes([51])), our_features(), REGTEST)


def test_networks():
    with pytest.raises(PeerProtocolError, match="No common chain"):
        check_init(init_with(b"", networks=(MAINNET,)), our_features(), REGTEST)
    # No networks TLV at all: the peer did not say, so we do not close.
    assert check_init(init_with(b"", networks=None), our_features(), REGTEST).networks is None


def test_first_message_must_be_init():
    with pytest.raises(PeerProtocolError, match="first message was ping, not init"):
        check_init(wire.Ping(num_pong_bytes=1, ignored=b"").encode(), our_features(), REGTEST)
    with pytest.raises(PeerProtocolError, match="bad init"):
        check_init(b"\x00\x10\x00", our_features(), REGTEST)


def test_ping_gets_pong_of_requested_size():
    event = handle_peer_msg(wire.Ping(num_pong_bytes=65531, ignored=b"\0" * 4).encode())
    assert isinstance(event, Reply)
    pong = wire.decode(event.msg)
    assert isinstance(pong, wire.Pong) and pong.ignored == bytes(65531)


def test_huge_ping_is_ignored():
    # BOLT #1: "otherwise (num_pong_bytes is not less than 65532): MUST ignore the ping."
    assert isinstance(
        handle_peer_msg(wire.Ping(num_pong_bytes=65532, ignored=b"").encode()), Ignored
    )


def test_unknown_types():
    assert handle_peer_msg(b"\x80\x01payload") == Ignored("unknown odd message type 32769")
    with pytest.raises(PeerProtocolError, match="unknown even message type 32768"):
        handle_peer_msg(b"\x80\x00payload")


def test_truncated_known_message_closes():
    with pytest.raises(PeerProtocolError, match="malformed message"):
        handle_peer_msg(wire.Ping(num_pong_bytes=1, ignored=b"abc").encode()[:-1])


def test_error_and_warning_surface():
    cid = b"\x01" * 32
    event = handle_peer_msg(wire.Error(channel_id=cid, data=b"bad feerate").encode())
    assert event == PeerError(cid, "bad feerate", is_warning=False)
    event = handle_peer_msg(wire.Warning(channel_id=bytes(32), data=b"\x00\xff").encode())
    assert event.is_warning and event.all_channels
    assert event.text == "(non-printable) 00ff"
    assert printable(b"ok ~") == "ok ~"


def test_known_message_is_delivered_and_second_init_refused():
    msg = wire.ChannelReady(channel_id=b"\x02" * 32, second_per_commitment_point=b"\x02" * 33)
    assert handle_peer_msg(msg.encode()) == Deliver(msg)
    with pytest.raises(PeerProtocolError, match="init received twice"):
        handle_peer_msg(make_init(our_features(), REGTEST))


def test_token_bucket_refill_never_exceeds_the_burst():
    """A peer idle for an hour still gets only `burst` messages at once (pings, gossip)."""
    now = [0.0]
    bucket = TokenBucket(2, 0.5, lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] = 1.0  # half a token: still nothing
    assert not bucket.take()
    now[0] = 3600.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]
