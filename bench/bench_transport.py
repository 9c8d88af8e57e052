"""Throughput of BOLT #8 message encryption + decryption.

First CryptoState alone (pure crypto), then PeerConnection over a socketpair
(crypto + syscalls, writer and reader in two threads).

Run: .venv/bin/python bench/bench_transport.py [seconds-per-case]
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from common.cryptomsg import MAX_MSG_LEN, CryptoState
from common.peer_io import PeerConnection


def _pair() -> tuple[CryptoState, CryptoState]:
    sk, rk, ck = (os.urandom(32) for _ in range(3))
    return (
        CryptoState(sk=sk, rk=rk, sn=0, rn=0, sck=ck, rck=ck),
        CryptoState(sk=rk, rk=sk, sn=0, rn=0, sck=ck, rck=ck),
    )


def _run(size: int, seconds: float) -> tuple[float, float]:
    """Return (messages/s, MB/s of plaintext) for encrypt followed by decrypt."""
    sender, receiver = _pair()
    msg = os.urandom(size)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        # Batches of 100 keep the clock out of the measurement and cross key rotations.
        for _ in range(100):
            receiver.decrypt_message(sender.encrypt_message(msg))
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            break
    elapsed = now - start
    return count / elapsed, count * size / elapsed / 1e6


def _run_socket(size: int, seconds: float) -> tuple[float, float]:
    """Same over a socketpair: one thread writes, this one reads and counts."""
    s1, s2 = socket.socketpair()
    sender_state, receiver_state = _pair()
    writer, reader = PeerConnection(s1, sender_state), PeerConnection(s2, receiver_state)
    msg = os.urandom(size)
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            writer.write_message(msg)
        writer.write_message(b"")  # wakes the reader for its last check

    thread = threading.Thread(target=write)
    count = 0
    start = time.perf_counter()
    thread.start()
    while time.perf_counter() - start < seconds:
        reader.read_message()
        count += 1
    elapsed = time.perf_counter() - start
    stop.set()
    while reader.read_message():  # drain until the empty marker
        pass
    thread.join()
    s1.close()
    s2.close()
    return count / elapsed, count * size / elapsed / 1e6


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"BOLT #8 encrypt+decrypt, {seconds:g}s per case")
    for label, run in (("CryptoState", _run), ("socketpair ", _run_socket)):
        for size in (100, MAX_MSG_LEN):
            msgs, mbs = run(size, seconds)
            print(f"  {label} {size:>6} B messages: {msgs:>10,.0f} msg/s  {mbs:>8.1f} MB/s")


if __name__ == "__main__":
    main()
