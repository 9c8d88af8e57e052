"""Subdaemon start-up: posix_spawn of a fresh interpreter vs a fork from the zygote.

Through the zygote two ways: starts back to back, each forked on request (as in a
burst), and starts after an idle pause, each taking the spare the zygote forked ahead
(as an open on a quiet node does).

For each kind of subdaemon, the time from "lightningd decides to start it" (just
before spawn_subdaemon) to "it is ready": the first message it sends us. openingd,
gossipd and hsmd speak only when spoken to, so we send each a bogus 2-byte message
right after spawning, and the clock stops at its answer (a status_fail or
hsmd_bad_request): that answer needs the daemon to have started, imported
everything and read its master socket. tests.status_subdaemon says "started" on
its own. Then PSS/USS (/proc/<pid>/smaps_rollup) of one idle subdaemon of each
kind, started each way.

Run: .venv/bin/python bench/bench_spawn.py [runs]
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time

from common.daemon_conn import DaemonConn
from lightningd.subd import posix_spawn_subdaemon, spawn_subdaemon, start_zygote
from lightningd.zygote import SPARE_AFTER_IDLE, current_zygote

KINDS = {
    "openingd": ("openingd.openingd", True),
    "gossipd": ("gossipd.gossipd", True),
    "hsmd": ("hsmd.hsmd", True),
    "status_subdaemon": ("tests.status_subdaemon", False),
}


def via_zygote(module: str, fds: dict[int, int], args: list[str]) -> int:
    z = current_zygote()
    assert z is not None
    before = z.spawned
    pid = spawn_subdaemon(module, fds, args)
    assert z.spawned == before + 1, "did not go through the zygote"
    return pid


# name -> (spawn function, idle pause before each timed start)
METHODS = {
    "posix_spawn": (posix_spawn_subdaemon, 0.0),
    "zygote, forked": (via_zygote, 0.0),
    "zygote, spare": (via_zygote, SPARE_AFTER_IDLE + 0.1),
}


def start(method, module: str, poke: bool) -> tuple[float, int, DaemonConn]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = DaemonConn(ours)
    t0 = time.perf_counter()
    pid = method(module, {0: theirs.fileno()}, [])
    theirs.close()
    if poke:
        conn.send(b"\x00\x00")
    conn.sock.settimeout(30)
    conn.recv_with_fds()
    return time.perf_counter() - t0, pid, conn


def finish(pid: int, sock: socket.socket) -> None:
    """EOF to the daemon, read what it still says (closing unread data would reset it)."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(30)
    while sock.recv(65536):
        pass
    sock.close()
    os.waitpid(pid, 0)


def one_run(method, module: str, poke: bool, pause: float) -> float:
    time.sleep(pause)
    elapsed, pid, conn = start(method, module, poke)
    finish(pid, conn.sock)
    return elapsed


def memory(pid: int) -> tuple[int, int]:
    """(PSS, USS) in kB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


def idle(method, module: str) -> tuple[int, int]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = method(
        module,
        {0: theirs.fileno()},
        ["--developer", "--dev-behaviour=wait-for-master"]
        if module == "tests.status_subdaemon"
        else [],
    )
    theirs.close()
    time.sleep(1.0)  # imported, blocked reading its master socket
    try:
        return memory(pid)
    finally:
        finish(pid, ours)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    t0 = time.perf_counter()
    z = start_zygote()
    if z is None:
        sys.exit("zygote unavailable here")
    print(f"zygote ready in {(time.perf_counter() - t0) * 1e3:.0f} ms (once per lightningd)")
    print(f"\nspawn -> first message, {runs} runs each (ms)")
    print(f"{'subdaemon':<18}{'method':<16}{'min':>8}{'median':>8}{'p95':>8}")
    for kind, (module, poke) in KINDS.items():
        for name, (method, pause) in METHODS.items():
            one_run(method, module, poke, pause)  # warm-up
            times = [one_run(method, module, poke, pause) * 1e3 for _ in range(runs)]
            print(
                f"{kind:<18}{name:<16}{min(times):>8.1f}{statistics.median(times):>8.1f}"
                f"{pct(times, 0.95):>8.1f}",
                flush=True,
            )
    print("\nidle subdaemon memory (kB)")
    print(f"{'subdaemon':<18}{'method':<16}{'PSS':>8}{'USS':>8}")
    for kind, (module, _) in KINDS.items():
        for name in ("posix_spawn", "zygote, spare"):
            pss, uss = idle(METHODS[name][0], module)
            print(f"{kind:<18}{name:<16}{pss:>8}{uss:>8}", flush=True)
    pss, uss = memory(z.pid)
    print(f"{'(the zygote)':<18}{'':<16}{pss:>8}{uss:>8}")


if __name__ == "__main__":
    main()
