"""Subdaemons forked from the zygote (lightningd/zygote.py) instead of a fresh interpreter.

Whichever way a subdaemon starts, it must look the same to it and to lightningd: its
sockets at their numbers and nothing else, its status messages arriving, and lightningd
(here: this test process) reaping it with os.waitpid() and seeing how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common import status_wiregen as status_wire
from common.daemon_conn import DaemonConn, DaemonConnClosed
from common.status import FailReason, LogLevel
from common.subdaemon import HSM_FD, PEER_FD, REQ_FD
from lightningd import subd as subd_mod
from lightningd import zygote as zygote_mod
from lightningd.log import NodeLog
from lightningd.subd import Subd, spawn_subdaemon, start_zygote, stop_zygote
from lightningd.zygote import current_zygote

ROOT = Path(__file__).resolve().parent.parent
STATUS = "tests.status_subdaemon"
WAIT = ["--developer", "--dev-behaviour=wait-for-master"]


@pytest.fixture
def zygote():
    saved = zygote_mod._disabled
    z = start_zygote()
    assert z is not None and z.ready
    yield z
    stop_zygote()
    zygote_mod._disabled = saved


def forked_from_zygote(pid: int) -> bool:
    """A zygote child is titled lightning_<daemon>; a posix_spawned one keeps `python -m`.

    Only for a live process: a zombie's command line is empty.
    """
    return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"lightning_")


def spawn(module: str, fds: dict[int, int], args: list[str]) -> int:
    """spawn_subdaemon, checking that it went through the zygote."""
    z = current_zygote()
    assert z is not None
    before = z.spawned
    pid = spawn_subdaemon(module, fds, args)
    assert z.spawned == before + 1
    return pid


def spawn_status(*args: str) -> tuple[int, DaemonConn]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = spawn(STATUS, {REQ_FD: theirs.fileno()}, list(args))
    finally:
        theirs.close()
    return pid, DaemonConn(ours)


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def first_status(conn: DaemonConn):
    conn.sock.settimeout(10)
    return status_wire.decode(conn.recv())


def test_fds_at_their_numbers_and_nothing_else(zygote):
    pairs = [socket.socketpair() for _ in range(4)]
    theirs = {REQ_FD: pairs[0][1], PEER_FD: pairs[1][1], 4: pairs[2][1], HSM_FD: pairs[3][1]}
    want = [os.readlink(f"/proc/self/fd/{s.fileno()}") for s in theirs.values()]
    pid = spawn(STATUS, {n: s.fileno() for n, s in theirs.items()}, WAIT)
    for s in theirs.values():
        s.close()
    try:
        assert first_status(DaemonConn(pairs[0][0])).entry == "started"
        fd_dir = Path(f"/proc/{pid}/fd")
        have = {int(p.name): os.readlink(p) for p in fd_dir.iterdir()}
        # 1 and 2 are ours (inherited, as posix_spawn would); the rest exactly as asked.
        assert set(have) == {0, 1, 2, PEER_FD, 4, HSM_FD}
        for n in (1, 2):
            assert have[n] == os.readlink(f"/proc/self/fd/{n}")
        assert [have[n] for n in (0, PEER_FD, 4, HSM_FD)] == want
        # Our child, to reap; not the zygote's.
        assert f"PPid:\t{os.getpid()}\n" in Path(f"/proc/{pid}/status").read_text()
    finally:
        os.kill(pid, signal.SIGKILL)
        assert exit_code(pid) == -signal.SIGKILL
        for a, _ in pairs:
            a.close()


def test_fd_identity(zygote):
    """What we put at fd 3 is what the subdaemon has at fd 3 (same open file)."""
    req_ours, req_theirs = socket.socketpair()
    peer_ours, peer_theirs = socket.socketpair()
    want = os.readlink(f"/proc/self/fd/{peer_theirs.fileno()}")
    pid = spawn(STATUS, {REQ_FD: req_theirs.fileno(), PEER_FD: peer_theirs.fileno()}, WAIT)
    req_theirs.close()
    peer_theirs.close()
    assert first_status(DaemonConn(req_ours)).entry == "started"
    assert os.readlink(f"/proc/{pid}/fd/{PEER_FD}") == want
    req_ours.close()  # EOF: the subdaemon ends quietly
    assert exit_code(pid) == 0
    peer_ours.close()


def test_status_messages_and_exit_codes(zygote):
    pid, conn = spawn_status("--developer", "--dev-behaviour=fatal")
    msgs = []
    with contextlib.suppress(DaemonConnClosed):
        while True:
            msgs.append(first_status(conn))
    assert msgs[0] == status_wire.StatusLog(LogLevel.INFO, None, "started", b"")
    assert isinstance(msgs[-1], status_wire.StatusFail)
    assert msgs[-1].desc == "hsmd went silent"
    assert exit_code(pid) == 0x80 | FailReason.HSM_IO

    pid, conn = spawn_status("--developer", "--dev-behaviour=crash")
    assert exit_code(pid) == 0x80 | FailReason.INTERNAL_ERROR

    pid, conn = spawn_status()
    assert first_status(conn).entry == "started"
    assert exit_code(pid) == 0

    pid, conn = spawn_status("--bogus")  # usage error: SystemExit(2), as python -m would
    assert exit_code(pid) == 2

    pid, conn = spawn_status(*WAIT)
    assert first_status(conn).entry == "started"
    os.kill(pid, signal.SIGKILL)
    assert exit_code(pid) == -signal.SIGKILL

    pid, conn = spawn_status(*WAIT)
    assert first_status(conn).entry == "started"
    os.kill(pid, signal.SIGTERM)  # default disposition restored in the child
    assert exit_code(pid) == -signal.SIGTERM


def test_subd_supervision_through_zygote(zygote):
    async def main():
        log = NodeLog(LogLevel.DEBUG, [])
        died: asyncio.Queue[Subd] = asyncio.Queue()

        async def on_message(msg: bytes, fds: list[int]) -> None:
            pass

        async def on_death(subd: Subd) -> None:
            await died.put(subd)

        subd = await Subd.start("testd", STATUS, {}, WAIT, log, None, on_message, on_death)
        assert forked_from_zygote(subd.pid)
        await asyncio.sleep(0.2)
        os.kill(subd.pid, signal.SIGKILL)
        dead = await asyncio.wait_for(died.get(), 10)
        assert dead is subd and subd.exit_code == -signal.SIGKILL
        return "\n".join(log.tail())

    lines = asyncio.run(main())
    assert "testd: started" in lines
    assert f"exited with -{signal.SIGKILL}" in lines


def test_many_spawns(zygote):
    started = [spawn_status(*WAIT) for _ in range(60)]
    assert len({pid for pid, _ in started}) == 60
    for _, conn in started:
        assert first_status(conn).entry == "started"
    for _, conn in started:
        conn.sock.close()
    assert [exit_code(pid) for pid, _ in started] == [0] * 60


def test_peer_handover_through_zygote(zygote, monkeypatch):
    from tests import test_peer_handover

    pids = []

    def recording(module, fds, args=None):
        pid = spawn(module, fds, args or [])
        pids.append(pid)
        return pid

    monkeypatch.setattr(test_peer_handover, "spawn_subdaemon", recording)
    test_peer_handover.test_connection_moves_to_subdaemon_and_back()
    assert len(pids) == 1


def spare_of() -> int | None:
    """Our child titled lightning_spare, if the zygote has forked one."""
    kids = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    for kid in map(int, kids):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{kid}/cmdline").read_bytes().startswith(b"lightning_spare"):
                return kid
    return None


def wait_for_spare(zygote) -> int:
    deadline = time.monotonic() + 10
    while (pid := spare_of()) is None:
        assert time.monotonic() < deadline, "no spare forked"
        time.sleep(0.01)
    return pid


def test_a_start_takes_the_spare_and_a_new_one_follows(zygote):
    """Once idle, the zygote keeps one subdaemon forked ahead (our child already); a start
    hands it the request and returns its pid, and the next spare is another process."""
    spare = wait_for_spare(zygote)
    pid, conn = spawn_status(*WAIT)
    assert pid == spare
    assert first_status(conn).entry == "started"
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"lightning_status_subdaemon")
    following = wait_for_spare(zygote)
    assert following != spare
    conn.sock.close()
    assert exit_code(pid) == 0


def test_a_spare_killed_while_waiting_is_replaced_at_the_start(zygote):
    spare = wait_for_spare(zygote)
    os.kill(spare, signal.SIGKILL)
    assert exit_code(spare) == -signal.SIGKILL
    pid, conn = spawn_status(*WAIT)
    assert pid != spare and forked_from_zygote(pid)
    assert first_status(conn).entry == "started"
    conn.sock.close()
    assert exit_code(pid) == 0


def test_the_spare_ends_with_the_zygote(zygote):
    spare = wait_for_spare(zygote)
    stop_zygote()
    assert exit_code(spare) == 0


def test_fallback_when_zygote_killed(zygote):
    os.kill(zygote.pid, signal.SIGKILL)
    time.sleep(0.1)
    for _ in range(3):
        ours, theirs = socket.socketpair()
        pid = spawn_subdaemon(STATUS, {REQ_FD: theirs.fileno()}, WAIT)
        theirs.close()
        conn = DaemonConn(ours)
        assert first_status(conn).entry == "started"
        assert not forked_from_zygote(pid)  # posix_spawned (and alive: it waits for us)
        ours.close()
        assert exit_code(pid) == 0
    assert zygote.dead and zygote.spawned == 0
    # An explicit start brings it back.
    again = start_zygote()
    assert again is not None and again is not zygote and again.ready
    pid, conn = spawn_status()
    assert first_status(conn).entry == "started"
    assert exit_code(pid) == 0


def test_posix_spawn_when_stopped():
    saved = zygote_mod._disabled
    stop_zygote()
    try:
        ours, theirs = socket.socketpair()
        pid = subd_mod.spawn_subdaemon(STATUS, {REQ_FD: theirs.fileno()}, WAIT)
        theirs.close()
        assert first_status(DaemonConn(ours)).entry == "started"
        assert not forked_from_zygote(pid)
        assert current_zygote() is None
        ours.close()
        assert exit_code(pid) == 0
    finally:
        zygote_mod._disabled = saved


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("start", ["start_zygote", "fork_zygote"])
def test_subdaemon_and_zygote_die_with_lightningd(start):
    """PR_SET_PDEATHSIG must tie the subdaemon to lightningd, not to the zygote's
    short-lived intermediate: a subdaemon whose master socket stays open elsewhere
    still dies when lightningd is killed. The zygote dies with it too, whether it was
    posix_spawned or forked from lightningd as lightningd does."""
    ours, theirs = socket.socketpair()
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from lightningd.subd import spawn_subdaemon, {start}
        z = {start}()
        pid = spawn_subdaemon({STATUS!r}, {{0: {theirs.fileno()}}}, {WAIT!r})
        # The child sets its title once it runs: spawn may return a moment before.
        deadline = time.monotonic() + 10
        while True:
            title = open(f"/proc/{{pid}}/cmdline", "rb").read()
            if title.startswith(b"lightning_status_subdaemon") or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        print(z.pid, pid, int(title.startswith(b"lightning_status_subdaemon")), flush=True)
        time.sleep(60)
        """
    )
    fake_ld = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    pid = zpid = 0
    try:
        assert fake_ld.stdout is not None
        zpid, pid, forked = map(int, fake_ld.stdout.readline().split())
        assert forked == 1
        conn = DaemonConn(ours)
        assert first_status(conn).entry == "started"
        assert _alive(pid) and _alive(zpid)
        fake_ld.kill()
        fake_ld.wait(10)
        # The master socket is still open here: only PDEATHSIG can have ended it.
        readable, _, _ = select.select([ours], [], [], 10)
        assert readable
        with pytest.raises(DaemonConnClosed):
            conn.recv()
        deadline = time.monotonic() + 10
        while (_alive(pid) or _alive(zpid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid) and not _alive(zpid)
    finally:
        fake_ld.kill()
        fake_ld.wait(10)
        ours.close()
        for p in (pid, zpid):  # reparented to us if we are a subreaper: reap
            if p:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p, os.WNOHANG)


@pytest.mark.parametrize("module", ["openingd.openingd", "gossipd.gossipd"])
def test_preloaded_subdaemon_runs_its_main(zygote, module):
    """Preloaded modules run their `__main__` block in the already imported module."""
    assert module in zygote_mod.PRELOAD
    ours, theirs = socket.socketpair()
    pid = spawn(module, {REQ_FD: theirs.fileno()}, [])
    theirs.close()
    conn = DaemonConn(ours)
    conn.send(b"\x00\x00")  # no valid init: it says why and gives up
    fail = first_status(conn)
    assert isinstance(fail, status_wire.StatusFail)
    assert "init" in fail.desc
    assert exit_code(pid) == 0x80 | fail.failreason
    ours.close()


def test_node_processes_are_forked_and_titled(node_factory):
    """lightningd forks its zygote, which forks hsmd and gossipd: `ps` shows them under
    Core Lightning's names, and none is a fresh `python -m` interpreter."""
    l1 = node_factory.get_node()
    kids = Path(f"/proc/{l1.proc.pid}/task/{l1.proc.pid}/children").read_text().split()
    titles = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in kids}
    assert {b"lightning_zygote", b"lightning_hsmd", b"lightning_gossipd"} <= titles


def test_warm_ups_leave_nothing_open():
    """The zygote runs these before forking: an fd or thread they left would be in every
    subdaemon (and a fork with a live thread is unsafe)."""
    import threading

    from hsmd import hsmd
    from openingd import openingd

    fds, threads = sorted(os.listdir("/proc/self/fd")), threading.active_count()
    hsmd.warm_up()
    openingd.warm_up()
    assert sorted(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads
