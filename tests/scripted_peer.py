"""A scripted remote node for tests: our own BOLT #8 transport, any message we like.

Tests use it to send what a well-behaved node never would, over a real
encrypted connection, and to read exactly what lightningd answers.
"""

from __future__ import annotations

import socket
import threading
import time

from coincurve import PrivateKey

from common.chainparams import CHAINS
from common.cryptomsg import HEADER_LEN, MAC_LEN
from common.features import bits_to_bytes, bytes_to_bits, our_features
from common.handshake import privkey_ecdh
from common.peer_io import PeerConnection, handshake_initiator, handshake_responder
from wire import peer_wiregen as wire

REGTEST = CHAINS["regtest"].chain_hash


def init_msg(features: bytes | None = None, networks=(REGTEST,)) -> bytes:
    return wire.Init(
        globalfeatures=b"",
        features=our_features() if features is None else features,
        tlvs=wire.InitTlvs(networks=networks),
    ).encode()


class ScriptedPeer:
    def __init__(self, secret: bytes = b"\x42" * 32) -> None:
        self.secret = secret
        self.node_id = PrivateKey(secret).public_key.format()
        self.conn: PeerConnection | None = None

    def connect(self, node_id_hex: str, port: int, timeout: float = 10) -> PeerConnection:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = handshake_initiator(
            sock, self.node_id, privkey_ecdh(self.secret), bytes.fromhex(node_id_hex)
        )
        return self.conn

    def listen(self) -> tuple[int, threading.Thread, list]:
        """Accept one connection in a thread; the test reads `accepted[0]` once it arrives."""
        listener = socket.create_server(("127.0.0.1", 0))
        accepted: list = []

        def accept() -> None:
            sock, _ = listener.accept()
            sock.settimeout(10)
            accepted.append(handshake_responder(sock, self.node_id, privkey_ecdh(self.secret)))
            listener.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        return listener.getsockname()[1], thread, accepted

    def send(self, msg: bytes) -> None:
        assert self.conn is not None
        self.conn.write_message(msg)

    def send_slowly(self, msg: bytes, chunk: int = 1, delay: float = 0.001) -> None:
        """Send one message's encrypted frame a few bytes at a time (a slow-drip peer)."""
        assert self.conn is not None
        frame = self.conn.state.encrypt_message(msg)
        for i in range(0, len(frame), chunk):
            self.conn.sock.sendall(frame[i : i + chunk])
            time.sleep(delay)

    def send_partial(self, msg: bytes, fraction: float = 0.5) -> None:
        """Send only the start of one message's encrypted frame (then the test hangs up)."""
        assert self.conn is not None
        frame = self.conn.state.encrypt_message(msg)
        self.conn.sock.sendall(frame[: max(1, int(len(frame) * fraction))])

    def recv(self):
        assert self.conn is not None
        return wire.decode(self.conn.read_message())

    def read_until_hang_up(self) -> tuple[list, bool]:
        """Every message (gossip aside) the node sends until it hangs up, and whether it
        closed cleanly: a FIN after its last message, not a reset (which can destroy what is
        still in flight: a node that closes with our bytes unread resets the connection)."""
        conn = self.conn
        assert conn is not None and not conn._rbuf, "called between messages"
        data, clean = bytearray(), True
        while True:
            try:
                chunk = conn.sock.recv(65536)
            except ConnectionResetError:
                clean = False
                break
            if not chunk:
                break
            data += chunk
        messages = []
        while len(data) >= HEADER_LEN:
            end = HEADER_LEN + conn.state.decrypt_header(bytes(data[:HEADER_LEN])) + MAC_LEN
            msg = wire.decode(conn.state.decrypt_body(bytes(data[HEADER_LEN:end])))
            del data[:end]
            if not 256 <= msg.TYPE <= 511:
                messages.append(msg)
        return messages, clean

    def recv_skipping_pings(self):
        """The next message that is not a ping (answered) or gossip (ignored)."""
        while True:
            msg = self.recv()
            if isinstance(msg, wire.Ping):
                self.send(wire.Pong(ignored=bytes(msg.num_pong_bytes)).encode())
                continue
            if 256 <= msg.TYPE <= 511:  # BOLT #7 gossip, incl. gossip_timestamp_filter
                continue
            return msg


def features_with(*bits: int) -> bytes:
    return bits_to_bytes([*bytes_to_bits(our_features()), *bits])
