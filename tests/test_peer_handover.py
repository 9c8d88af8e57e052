"""A live, encrypted peer connection moves between processes and keeps talking.

The master (asyncio, this test) does the BOLT #8 handshake and init exchange,
hands the connection with its cipher state to a spawned subdaemon at fd 3,
the subdaemon talks to the peer and hands it back, and the master carries on:
the peer sees one unbroken conversation.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading

from coincurve import PrivateKey

from common import status_wiregen as status_wire
from common.chainparams import CHAINS
from common.cryptomsg import STATE_LEN, CryptoState
from common.daemon_conn import AsyncDaemonConn
from common.features import our_features
from common.handshake import privkey_ecdh
from common.peer_io import AsyncPeerConnection, async_handshake_responder_sock, handshake_initiator
from common.read_peer_msg import check_init, make_init
from common.subdaemon import PEER_FD, REQ_FD
from lightningd.subd import spawn_subdaemon
from wire import peer_wiregen as wire

REGTEST = CHAINS["regtest"].chain_hash
NODE_KEY = b"\x21" * 32
PEER_KEY = b"\x12" * 32


def run_peer(port: int, heard: list, done: threading.Event) -> None:
    """The remote node: plain blocking code on the other end of a TCP connection."""
    node_id = PrivateKey(NODE_KEY).public_key.format()
    sock = socket.create_connection(("127.0.0.1", port))
    peer_pub = PrivateKey(PEER_KEY).public_key.format()
    conn = handshake_initiator(sock, peer_pub, privkey_ecdh(PEER_KEY), node_id)
    conn.write_message(make_init(our_features(), REGTEST))
    heard.append(wire.decode(conn.read_message()))  # the master's init
    conn.write_message(wire.Ping(num_pong_bytes=4, ignored=b"").encode())  # for the subdaemon
    heard.append(wire.decode(conn.read_message()))  # pong, written by the subdaemon
    heard.append(wire.decode(conn.read_message()))  # its warning
    heard.append(wire.decode(conn.read_message()))  # ping, from the master again
    conn.write_message(wire.Pong(ignored=b"\0" * 7).encode())
    done.wait(10)
    conn.close()


async def master() -> list:
    listener = socket.create_server(("127.0.0.1", 0))
    heard: list = []
    done = threading.Event()
    peer = threading.Thread(target=run_peer, args=(listener.getsockname()[1], heard, done))
    peer.start()
    sock, _ = await asyncio.get_running_loop().sock_accept(listener)
    node_pub = PrivateKey(NODE_KEY).public_key.format()
    conn = await async_handshake_responder_sock(sock, node_pub, privkey_ecdh(NODE_KEY))
    await conn.write_message(make_init(our_features(), REGTEST))
    check_init(await conn.read_message(), our_features(), REGTEST)

    # Hand over: peer at fd 3, cipher state (+ read-ahead) in the first message.
    handover = await conn.detach()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = spawn_subdaemon(
        "tests.handover_subdaemon", {REQ_FD: theirs.fileno(), PEER_FD: handover.fd}
    )
    theirs.close()
    os.close(handover.fd)
    subd = AsyncDaemonConn(ours)
    await subd.send(handover.state.to_bytes() + handover.pending)

    # Status lines come first; then the peer comes back with its cipher state.
    logs = []
    while True:
        msg, fds = await subd.recv_with_fds()
        if fds:
            break
        logs.append(status_wire.decode(msg))
    assert len(msg) == STATE_LEN
    back = AsyncPeerConnection.from_socket(
        socket.socket(fileno=fds[0]), CryptoState.from_bytes(msg)
    )
    await back.write_message(wire.Ping(num_pong_bytes=7, ignored=b"").encode())
    pong = wire.decode(await back.read_message())
    done.set()
    peer.join(10)
    _, status = os.waitpid(pid, 0)
    back.close()
    listener.close()
    subd.close()
    return [heard, logs, pong, os.waitstatus_to_exitcode(status)]


def test_connection_moves_to_subdaemon_and_back():
    heard, logs, pong, exit_code = asyncio.run(master())
    init, pong_from_subd, warning, ping_from_master = heard
    assert isinstance(init, wire.Init)
    assert pong_from_subd == wire.Pong(ignored=b"\0" * 4)
    assert warning == wire.Warning(channel_id=bytes(32), data=b"hello from the subdaemon")
    assert ping_from_master == wire.Ping(num_pong_bytes=7, ignored=b"")
    assert pong == wire.Pong(ignored=b"\0" * 7)
    assert [log.entry for log in logs] == ["peer event: Reply"]
    assert exit_code == 0
