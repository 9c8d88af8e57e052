"""Two nodes meet: what the foundation can do today, end to end.

Each node starts its own hsmd subprocess (which creates its hsm_secret), and
the two connect over loopback TCP: BOLT #8 handshake with hsmd doing the
node-key ECDH, BOLT #1 `init` exchange with feature negotiation, one
ping/pong. Prints what each side learned. Later issues replace this with a
regtest channel open between two lightningd nodes.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
from pathlib import Path

from common.chainparams import CHAINS
from common.features import feature_names, our_features
from common.peer_io import async_handshake_initiator_sock, async_handshake_responder_sock
from common.read_peer_msg import PeerEvent, Reply, check_init, handle_peer_msg, make_init
from common.status import LogLevel
from lightningd.hsm_control import HsmControl
from lightningd.log import NodeLog
from wire import peer_wiregen as wire

CHAIN = CHAINS["regtest"]


# The node log goes to stdout, at INFO: hsmd's own lines appear too.
LOG = NodeLog(LogLevel.INFO, ["-"], prefix="  ", timestamps=False)


async def start_node(name: str, base: Path) -> HsmControl:
    directory = base / name / CHAIN.network
    directory.mkdir(parents=True)
    hsm = HsmControl(LOG)
    info = await hsm.start(str(directory / "hsm_secret"), CHAIN.chain_hash)
    print(f"{name}: node id {info.node_id.hex()} (hsmd pid {hsm.pid})")
    return hsm


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="demo-") as tmp:
        alice, bob = await start_node("alice", Path(tmp)), await start_node("bob", Path(tmp))
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        print(f"bob listens on 127.0.0.1:{port}; alice connects")

        out = socket.create_connection(("127.0.0.1", port))
        b_sock, _ = await asyncio.get_running_loop().sock_accept(listener)
        a_conn, b_conn = await asyncio.gather(
            async_handshake_initiator_sock(
                out, alice.info.node_id, alice.ecdh, bob.info.node_id, timeout=10
            ),
            async_handshake_responder_sock(b_sock, bob.info.node_id, bob.ecdh, timeout=10),
        )
        assert b_conn.remote_pubkey == alice.info.node_id
        print("BOLT #8 handshake done: bob authenticated alice's node id")

        for conn in (a_conn, b_conn):
            await conn.write_message(make_init(our_features(), CHAIN.chain_hash))
        a_init = check_init(await a_conn.read_message(), our_features(), CHAIN.chain_hash)
        check_init(await b_conn.read_message(), our_features(), CHAIN.chain_hash)
        print(f"init exchanged; bob offers: {', '.join(feature_names(a_init.features))}")

        await a_conn.write_message(wire.Ping(num_pong_bytes=16, ignored=b"").encode())
        event: PeerEvent = handle_peer_msg(await b_conn.read_message())
        assert isinstance(event, Reply)
        await b_conn.write_message(event.msg)
        pong = wire.decode(await a_conn.read_message())
        print(f"ping -> pong with {len(pong.ignored)} bytes: the connection is alive")

        for conn in (a_conn, b_conn):
            conn.close()
        listener.close()
        await alice.stop()
        await bob.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
