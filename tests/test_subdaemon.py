"""The subdaemon base: fd table, status messages to the master, and defined exits."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys

import pytest

from common import status_wiregen as status_wire
from common.daemon_conn import AsyncDaemonConn, DaemonConn, DaemonConnClosed
from common.status import (
    FailReason,
    LogLevel,
    async_sender,
    exit_code,
    reason_from_exit_code,
)
from common.subdaemon import REQ_FD, UsageError, parse_args
from common.version import VERSION
from lightningd.subd import spawn_subdaemon


def start(*args: str) -> tuple[int, DaemonConn]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = spawn_subdaemon("tests.status_subdaemon", {REQ_FD: theirs.fileno()}, list(args))
    theirs.close()
    return pid, DaemonConn(ours)


def messages_until_eof(conn: DaemonConn) -> list:
    out = []
    while True:
        try:
            out.append(status_wire.decode(conn.recv()))
        except DaemonConnClosed:
            return out


def wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_status_lines_and_clean_exit():
    pid, conn = start()
    msgs = messages_until_eof(conn)
    assert [(m.level, m.entry) for m in msgs] == [
        (LogLevel.INFO, "started"),
        (LogLevel.DEBUG, "clean exit"),
    ]
    assert wait(pid) == 0


def test_fatal_error_is_reported_once_with_its_exit_code():
    pid, conn = start("--developer", "--dev-behaviour=fatal")
    msgs = messages_until_eof(conn)
    assert msgs[-1] == status_wire.StatusFail(failreason=FailReason.HSM_IO, desc="hsmd went silent")
    code = wait(pid)
    assert code == exit_code(FailReason.HSM_IO) == 0x82
    assert reason_from_exit_code(code) is FailReason.HSM_IO


def test_unexpected_exception_is_an_internal_error():
    pid, conn = start("--developer", "--dev-behaviour=crash")
    fail = messages_until_eof(conn)[-1]
    assert fail.failreason == FailReason.INTERNAL_ERROR
    assert fail.desc.startswith("KeyError: 'surprise'")
    assert wait(pid) == 0x84


def test_master_going_away_ends_the_daemon_quietly():
    pid, conn = start("--developer", "--dev-behaviour=wait-for-master")
    assert status_wire.decode(conn.recv()).entry == "started"
    conn.close()
    assert wait(pid) == 0


def test_options():
    assert parse_args("x", ["--log-level=debug"]).log_level is LogLevel.DEBUG
    assert parse_args("x", ["--developer", "--dev-fast"]).dev_options == {"dev-fast": None}
    with pytest.raises(UsageError, match="need --developer"):
        parse_args("x", ["--dev-fast"])
    with pytest.raises(UsageError, match="unknown option '--frobnicate'"):
        parse_args("x", ["--frobnicate"])
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        parse_args("x", ["--log-level=loud"])
    assert reason_from_exit_code(1) is None


def test_version_and_bad_option_from_the_command_line():
    root = os.path.dirname(os.path.dirname(__file__))
    run = [sys.executable, "-m", "tests.status_subdaemon"]
    out = subprocess.run([*run, "--version"], capture_output=True, text=True, cwd=root)
    assert (out.returncode, out.stdout.strip()) == (0, VERSION)
    out = subprocess.run([*run, "--bogus"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 2
    assert "unknown option '--bogus'" in out.stderr


def test_subdaemon_dies_with_its_master():
    """Killed master, socket still open elsewhere: the kernel's death signal ends the daemon."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    code = (
        "import sys, time\n"
        "from lightningd.subd import spawn_subdaemon\n"
        "spawn_subdaemon('tests.status_subdaemon', {0: int(sys.argv[1])},"
        " ['--developer', '--dev-behaviour=wait-for-master'])\n"
        "time.sleep(60)\n"
    )
    master = subprocess.Popen(
        [sys.executable, "-c", code, str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    theirs.close()
    conn = DaemonConn(ours)
    assert status_wire.decode(conn.recv()).entry == "started"
    master.kill()
    master.wait()
    conn.sock.settimeout(10)
    with pytest.raises(DaemonConnClosed):
        conn.recv()  # only the subdaemon held the other end: it is gone


def test_async_status_lines_to_a_gone_master_are_dropped_quietly():
    """A log line queued as the master goes away must not end as asyncio's "Task exception
    was never retrieved" traceback on stderr: the daemon exits on its next read instead."""

    async def main() -> list[dict]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.close()
        conn = AsyncDaemonConn(ours)
        complaints: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: complaints.append(ctx))
        send = async_sender(conn)
        send(b"a line nobody reads")
        await asyncio.sleep(0.05)
        gc.collect()
        conn.close()
        return complaints

    assert asyncio.run(main()) == []
