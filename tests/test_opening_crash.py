"""openingd dying mid-negotiation: lightningd lives on, nothing is committed or stored."""

from __future__ import annotations

import os
import re
import signal

import pytest
from pyln.client import RpcError

from tests.node import wait_for
from tests.opening_peer import Background, OpeningPeer
from wire import peer_wiregen as wire


def openingd_pid(node) -> int:
    line = node.wait_for_log(r"openingd: started, pid \d+")
    return int(re.search(r"pid (\d+)", line).group(1))


def assert_survived_without_channel(node) -> None:
    assert node.rpc.getinfo()["id"] == node.id
    wait_for(lambda: node.rpc.listpeerchannels()["channels"] == [], what="no channel left")
    assert node.rpc.getinfo()["num_pending_channels"] == 0


def test_openingd_killed_while_accepting(node_factory):
    l1 = node_factory.get_node()
    peer = OpeningPeer()
    peer.connect_to(l1)
    peer.send_open_channel()
    peer.read_accept_channel()
    os.kill(openingd_pid(l1), signal.SIGKILL)
    # openingd held the connection: it died with it.
    assert peer.closed_by_other_side()
    l1.wait_for_log(r"openingd: pid \d+ exited with -9")
    assert_survived_without_channel(l1)
    # The peer can come back and open again.
    again = OpeningPeer()
    again.connect_to(l1)
    again.open_channel()
    wait_for(
        lambda: (
            [c["state"] for c in l1.rpc.listpeerchannels()["channels"]]
            == ["CHANNELD_AWAITING_LOCKIN"]
        ),
        what="the second open to be stored",
    )


def test_openingd_killed_while_opening(node_factory):
    l1 = node_factory.get_node()
    peer = OpeningPeer()
    peer.connected_from(l1)
    start = Background(l1.rpc.fundchannel_start, peer.node_id.hex(), 1_000_000)
    assert isinstance(peer.read_open_channel(), wire.OpenChannel)
    os.kill(openingd_pid(l1), signal.SIGKILL)
    with pytest.raises(RpcError, match="openingd died"):
        start.result()
    assert_survived_without_channel(l1)
    assert l1.rpc.listpeers()["peers"] == []
