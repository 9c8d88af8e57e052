"""lightningd as users run it: real daemons on loopback, driven through pyln-client."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest
from pyln.client import RpcError

from common.version import VERSION
from tests.node import ROOT, free_port, wait_for
from tests.scripted_peer import ScriptedPeer, features_with, init_msg
from wire import peer_wiregen as wire


def peer_ids(node) -> set[str]:
    return {p["id"] for p in node.rpc.listpeers()["peers"] if p["connected"]}


def test_getinfo(node_factory):
    l1 = node_factory.get_node("--alias=SATOSHI", "--rgb=ff0080", "--announce-addr=10.1.2.3:9735")
    info = l1.rpc.getinfo()
    assert len(info["id"]) == 66
    assert info["alias"] == "SATOSHI"
    assert info["color"] == "ff0080"
    assert info["network"] == "regtest"
    assert info["version"] == VERSION
    assert info["num_peers"] == 0
    assert info["num_active_channels"] == info["num_pending_channels"] == 0
    assert info["binding"] == [{"type": "ipv4", "address": "127.0.0.1", "port": l1.port}]
    assert info["address"] == [{"type": "ipv4", "address": "10.1.2.3", "port": 9735}]
    assert info["lightning-dir"] == str(l1.dir / "regtest")
    assert set(info["our_features"]) == {"init", "node", "channel", "invoice"}
    # Files where a CLN user expects them, with CLN's permissions.
    network_dir = l1.dir / "regtest"
    assert stat.S_IMODE(os.stat(network_dir / "lightning-rpc").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(network_dir / "hsm_secret").st_mode) == 0o400
    assert (network_dir / "lightningd.sqlite3").exists()


def test_default_alias_and_color_come_from_node_id(node_factory):
    l1 = node_factory.get_node()
    assert l1.info["color"] == l1.id[:6]
    assert l1.info["alias"].isalpha() and l1.info["alias"].isupper()
    l2 = node_factory.get_node("--developer")
    assert l2.info["alias"].endswith("-" + VERSION)


def test_connect_both_directions(node_factory):
    l1, l2, l3 = node_factory.get_nodes(3)
    result = l1.rpc.connect(l2.uri())
    assert result == {
        "id": l2.id,
        "features": l2.info["our_features"]["init"],
        "direction": "out",
        "address": {"type": "ipv4", "address": "127.0.0.1", "port": l2.port},
    }
    # Separate host and port arguments, the other way round.
    assert l3.rpc.connect(l1.id, "127.0.0.1", l1.port)["direction"] == "out"
    wait_for(lambda: peer_ids(l2) == {l1.id}, what="l2 to see l1")
    assert peer_ids(l1) == {l2.id, l3.id}
    in_peer = l2.rpc.listpeers(l1.id)["peers"][0]
    assert in_peer["connected"] and in_peer["num_channels"] == 0
    assert in_peer["features"] == l1.info["our_features"]["init"]
    assert l1.rpc.getinfo()["num_peers"] == 2
    # Connecting to a connected peer answers at once with the existing connection.
    assert l1.rpc.connect(l2.id)["direction"] == "out"
    assert l2.rpc.connect(l1.id)["direction"] == "in"


def test_disconnect_and_reconnect(node_factory):
    l1, l2 = node_factory.get_nodes(2)
    l1.rpc.connect(l2.uri())
    assert l1.rpc.disconnect(l2.id) == {}
    wait_for(lambda: peer_ids(l2) == set(), what="l2 to notice")
    with pytest.raises(RpcError, match="Peer not connected"):
        l1.rpc.disconnect(l2.id)
    # The address was remembered: connect by id alone.
    assert l1.rpc.connect(l2.id)["id"] == l2.id
    l1.rpc.disconnect(l2.id, force=True)


def test_reconnect_after_restart(node_factory):
    l1, l2 = node_factory.get_nodes(2)
    l1.rpc.connect(l2.uri())
    node_id = l2.id
    assert l2.stop() == 0
    wait_for(lambda: peer_ids(l1) == set(), what="l1 to notice l2 left")
    l2.start()
    assert l2.id == node_id  # same hsm_secret, same node
    assert l1.rpc.connect(l2.id)["id"] == l2.id  # address from l1's database
    wait_for(lambda: peer_ids(l2) == {l1.id}, what="l2 to see l1 again")


def test_stop(node_factory):
    l1 = node_factory.get_node()
    assert l1.rpc.stop() == "Shutdown complete"
    assert l1.proc.wait(timeout=20) == 0
    l1.check_clean_exit()
    assert not (l1.dir / "lightningd-regtest.pid").exists()


def test_peer_with_unknown_even_feature_is_disconnected(node_factory):
    l1 = node_factory.get_node()
    peer = ScriptedPeer()
    peer.connect(l1.id, l1.port)
    assert isinstance(peer.recv(), wire.Init)
    peer.send(init_msg(features_with(100)))
    peer.send(wire.Ping(num_pong_bytes=1, ignored=b"").encode())  # unread when it refuses
    heard, clean = peer.read_until_hang_up()
    assert heard == [wire.Warning(channel_id=bytes(32), data=b"Unsupported feature 100")]
    assert clean, "the node reset the connection"
    l1.wait_for_log("Unsupported feature 100")
    assert l1.rpc.getinfo()["num_peers"] == 0


def test_connect_to_peer_with_unknown_even_feature_fails(node_factory):
    l1 = node_factory.get_node()
    peer = ScriptedPeer()
    port, thread, accepted = peer.listen()
    result: dict = {}

    def talk() -> None:
        thread.join(10)
        peer.conn = accepted[0]
        peer.send(init_msg(features_with(100)))
        result["first"] = peer.recv()

    talker = threading.Thread(target=talk)
    talker.start()
    with pytest.raises(RpcError) as info:
        l1.rpc.connect(peer.node_id.hex(), "127.0.0.1", port)
    talker.join(10)
    assert info.value.error["code"] == 402
    assert "Unsupported feature 100" in info.value.error["message"]
    assert isinstance(result["first"], wire.Init)


def test_peer_on_another_chain_is_disconnected(node_factory):
    l1 = node_factory.get_node()
    peer = ScriptedPeer()
    peer.connect(l1.id, l1.port)
    peer.recv()
    peer.send(init_msg(networks=(b"\x6f" * 32,)))
    assert b"No common chain" in peer.recv().data


def test_unknown_messages(node_factory):
    """Unknown odd: ignored. Unknown even: connection closed. Ping: pong."""
    l1 = node_factory.get_node()
    peer = ScriptedPeer()
    peer.connect(l1.id, l1.port)
    peer.recv()
    peer.send(init_msg())
    wait_for(lambda: l1.rpc.getinfo()["num_peers"] == 1, what="peer to be parked")
    peer.send(b"\x80\x01odd and unknown")
    peer.send(wire.Ping(num_pong_bytes=5, ignored=b"").encode())
    assert peer.recv_skipping_pings() == wire.Pong(ignored=bytes(5))
    # A channel message for a channel l1 has never heard of gets an error naming it.
    cid = b"\x07" * 32
    peer.send(wire.ChannelReady(channel_id=cid, second_per_commitment_point=b"\x02" * 33).encode())
    error = peer.recv_skipping_pings()
    assert isinstance(error, wire.Error) and error.channel_id == cid
    peer.send(b"\x80\x00even and unknown")
    with pytest.raises(EOFError):
        peer.recv_skipping_pings()
    l1.wait_for_log("unknown even message type 32768")
    assert l1.rpc.getinfo()["num_peers"] == 0


def test_garbage_instead_of_handshake(node_factory):
    import socket

    l1 = node_factory.get_node()
    with socket.create_connection(("127.0.0.1", l1.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 40)
        s.settimeout(10)
        # Closed on us, or reset since our garbage was left unread.
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(100) == b""
    l1.wait_for_log("Handshake from .* failed")
    assert l1.rpc.getinfo()["num_peers"] == 0


def test_rpc_errors(node_factory):
    l1 = node_factory.get_node()
    with pytest.raises(RpcError) as info:
        l1.rpc.call("frobnicate")
    assert info.value.error["code"] == -32601
    assert info.value.error["message"] == "Unknown command 'frobnicate'"
    with pytest.raises(RpcError) as info:
        l1.rpc.connect("02" + "zz" * 32)
    assert info.value.error["code"] == -32602
    with pytest.raises(RpcError) as info:
        l1.rpc.connect(ScriptedPeer().node_id.hex())
    assert info.value.error["code"] == 400
    closed_port = free_port()
    with pytest.raises(RpcError) as info:
        l1.rpc.connect(ScriptedPeer().node_id.hex(), "127.0.0.1", closed_port)
    assert info.value.error["code"] == 401
    assert "Connection refused" in info.value.error["message"]
    # A wrong node id at a live address fails the handshake, not the daemon.
    l2 = node_factory.get_node()
    with pytest.raises(RpcError) as info:
        l1.rpc.connect(ScriptedPeer().node_id.hex(), "127.0.0.1", l2.port)
    assert info.value.error["code"] == 401
    assert "Cryptographic handshake" in info.value.error["message"]
    assert l1.rpc.getinfo()["num_peers"] == 0


def test_many_rpc_clients_at_once(node_factory):
    from pyln.client import LightningRpc

    l1 = node_factory.get_node()
    errors: list = []

    def client() -> None:
        rpc = LightningRpc(str(l1.dir / "regtest" / "lightning-rpc"))
        try:
            for _ in range(10):
                assert rpc.getinfo()["id"] == l1.id
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_lightning_cli_talks_to_daemon(node_factory):
    l1 = node_factory.get_node()
    cli = [str(ROOT / "cli" / "lightning-cli"), f"--lightning-dir={l1.dir}", "--network=regtest"]
    out = subprocess.run([*cli, "getinfo"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f'"id": "{l1.id}"' in out.stdout
    out = subprocess.run([*cli, "connect", "nonsense"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "-32602" in out.stdout


def test_second_daemon_on_same_directory_refused(node_factory):
    l1 = node_factory.get_node()
    out = subprocess.run(l1.cmdline(), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "already running" in out.stderr
    assert l1.rpc.getinfo()["id"] == l1.id


def test_bad_option_is_a_clear_error(tmp_path):
    run = [sys.executable, "-m", "lightningd.lightningd", f"--lightning-dir={tmp_path}"]
    out = subprocess.run([*run, "--frobnicate"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert "frobnicate" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*run, "--version"], cwd=ROOT, capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, VERSION)
    # The executable in the source tree, as Core Lightning's build tree has one.
    out = subprocess.run(
        [ROOT / "lightningd" / "lightningd", "--version"], capture_output=True, text=True
    )
    assert (out.returncode, out.stdout.strip()) == (0, VERSION)


def test_hsmd_death_stops_lightningd_cleanly(node_factory):
    """Without its signer the node cannot work: like CLN, it shuts down, with a reason."""
    l1 = node_factory.get_node()
    pid = int(l1.wait_for_log(r"hsmd: started, pid \d+").rsplit("pid ", 1)[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    assert l1.proc.wait(timeout=20) == 1
    l1.wait_for_log("hsmd died")
    l1.check_clean_exit()
