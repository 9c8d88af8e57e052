"""lightningd's supervision of subdaemons: status lines into the node log, deaths noticed."""

from __future__ import annotations

import asyncio
import os
import signal

from common.status import LogLevel
from lightningd.log import NodeLog
from lightningd.subd import Subd

PEER = bytes.fromhex("02" + "ab" * 32)


async def start(log: NodeLog, *args: str):
    died: asyncio.Queue[Subd] = asyncio.Queue()
    received: list[bytes] = []

    async def on_message(msg: bytes, fds: list[int]) -> None:
        received.append(msg)

    async def on_death(subd: Subd) -> None:
        await died.put(subd)

    subd = await Subd.start(
        "testd", "tests.status_subdaemon", {}, list(args), log, PEER, on_message, on_death
    )
    return subd, died, received


def test_sigkilled_subdaemon_is_reaped_and_reported():
    async def main():
        log = NodeLog(LogLevel.DEBUG, [])
        subd, died, _ = await start(log, "--developer", "--dev-behaviour=wait-for-master")
        await asyncio.sleep(0.3)
        os.kill(subd.pid, signal.SIGKILL)
        dead = await asyncio.wait_for(died.get(), 10)
        assert dead is subd and subd.exit_code == -signal.SIGKILL
        # The loop is alive and well: another subdaemon starts and runs to completion.
        again, died_again, _ = await start(log)
        await asyncio.wait_for(died_again.get(), 10)
        assert again.exit_code == 0
        return log

    log = asyncio.run(main())
    lines = "\n".join(log.tail())
    assert f"{PEER.hex()}-testd: started" in lines
    assert "INFO" in lines and "started" in lines
    assert f"exited with -{signal.SIGKILL}" in lines


def test_status_fail_is_logged_as_broken():
    async def main():
        log = NodeLog(LogLevel.DEBUG, [])
        subd, died, _ = await start(log, "--developer", "--dev-behaviour=fatal")
        await asyncio.wait_for(died.get(), 10)
        assert subd.fail_desc == "hsmd went silent"
        assert subd.exit_code == 0x82
        return log

    lines = "\n".join(asyncio.run(main()).tail())
    assert "failed: hsmd went silent" in lines
    assert "failed (HSM_IO)" in lines
