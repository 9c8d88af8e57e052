"""A minimal subdaemon for tests: takes a live peer at fd 3, talks, and hands it back.

It follows the shape of openingd: the master sends the cipher state (and any
bytes it had read ahead) as its first message; the peer is at PEER_FD. It
answers one ping, says hello with a warning message, then returns the peer
fd and cipher state to the master and exits.
"""

from __future__ import annotations

from common import subdaemon
from common.cryptomsg import STATE_LEN, CryptoState
from common.peer_io import PeerConnection
from common.read_peer_msg import Reply, handle_peer_msg, make_warning


def main(sub: subdaemon.Subdaemon) -> None:
    init = sub.master.recv()
    state, pending = CryptoState.from_bytes(init[:STATE_LEN]), init[STATE_LEN:]
    peer = PeerConnection.from_fd(subdaemon.PEER_FD, state, pending=pending)
    event = handle_peer_msg(peer.read_message())
    sub.status.debug(f"peer event: {type(event).__name__}")
    assert isinstance(event, Reply)
    peer.write_message(event.msg)
    peer.write_message(make_warning(bytes(32), "hello from the subdaemon"))
    fd, state = peer.detach()
    sub.master.send(state.to_bytes(), fds=[fd])


if __name__ == "__main__":
    subdaemon.run("handover_subdaemon", main)
