"""lightningd/bitcoind.py against the in-process fake Bitcoin Core."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from common.chainparams import CHAINS
from common.status import LogLevel
from lightningd.bitcoind import (
    BITCOIND_MAX_PARALLEL,
    Bitcoind,
    BitcoindAuthError,
    BitcoindError,
    BitcoindStartupError,
    BitcoindUnreachable,
    _keeps_alive,
    _read_response,
    btc_to_sat,
    cookie_path,
)
from lightningd.log import NodeLog
from tests.fake_bitcoind import FakeBitcoind, start_regtest_node_or_skip


def quiet_log() -> NodeLog:
    return NodeLog(LogLevel.BROKEN, [], memory_lines=1000)


def client(fake: FakeBitcoind, log: NodeLog | None = None, **kwargs) -> Bitcoind:
    args = {"user": fake.user, "password": fake.password} | kwargs
    network = {"main": "bitcoin", "test": "testnet"}.get(fake.chain, fake.chain)
    return Bitcoind(log or quiet_log(), network, "127.0.0.1", fake.port, **args)


def run(coro):
    return asyncio.run(coro)


async def started(**kwargs) -> FakeBitcoind:
    fake = FakeBitcoind(**kwargs)
    await fake.start()
    return fake


def test_calls_and_hashes_in_internal_byte_order():
    async def main():
        fake = await started()
        fake.mine(3)
        btc = client(fake)
        assert await btc.getblockcount() == 3
        assert await btc.getblockhash(2) == fake.blocks[2].hash
        assert await btc.getblockhash(4) is None  # -8 "Block height out of range"
        assert await btc.getrawblock(fake.blocks[1].hash) == fake.blocks[1].serialize()
        with pytest.raises(BitcoindError) as err:
            await btc.getrawblock(b"\x01" * 32)
        assert err.value.code == -5
        with pytest.raises(BitcoindError) as err:
            await btc.call("nosuchmethod")
        assert err.value.code == -32601
        await fake.stop()

    run(main())


def test_fees_in_sat_per_kvb():
    async def main():
        fake = await started(fees_perkb={2: 15000, 6: 11000})
        fake.floor_perkb = 2000
        btc = client(fake)
        assert await btc.estimatesmartfee(2, "CONSERVATIVE") == 15000
        assert await btc.estimatesmartfee(12, "ECONOMICAL") is None
        assert await btc.mempool_floor_perkb() == 2000
        assert fake.calls[0] == ("estimatesmartfee", [2, "CONSERVATIVE"])
        await fake.stop()

    run(main())
    assert btc_to_sat("0.00001") == 1000
    assert btc_to_sat(21_000_000) == 21_000_000 * 100_000_000


def test_wrong_password_is_an_auth_error():
    async def main():
        fake = await started()
        with pytest.raises(BitcoindAuthError, match="refused"):
            await client(fake, password="wrong").getblockcount()
        await fake.stop()

    run(main())


def test_cookie_is_read_from_the_network_subdirectory_each_call(tmp_path):
    async def main():
        fake = await started()
        path = fake.write_cookie(str(tmp_path))
        assert path == cookie_path(str(tmp_path), "regtest")
        assert path.endswith("/regtest/.cookie")
        btc = client(fake, user=None, password=None, datadir=str(tmp_path))
        assert await btc.getblockcount() == 0
        fake.write_cookie(str(tmp_path))  # bitcoind restarted: new cookie
        assert await btc.getblockcount() == 0
        await fake.stop()

    run(main())
    assert cookie_path("/d", "bitcoin") == "/d/.cookie"
    assert cookie_path("/d", "testnet") == "/d/testnet3/.cookie"


def test_missing_cookie_says_what_to_set(tmp_path):
    async def main():
        fake = await started()
        btc = client(fake, user=None, password=None, datadir=str(tmp_path))
        with pytest.raises(BitcoindStartupError, match="--bitcoin-rpcuser") as err:
            await btc.check_chain()
        assert ".cookie" in str(err.value)
        await fake.stop()

    run(main())


def test_unreachable_and_back():
    async def main():
        fake = await started()
        btc = client(fake)
        await fake.stop()
        with pytest.raises(BitcoindUnreachable, match=f"127.0.0.1:{fake.port}"):
            await btc.getblockcount()
        await fake.start()
        assert await btc.getblockcount() == 0
        await fake.stop()

    run(main())


def test_a_silent_bitcoind_times_out():
    async def main():
        async def never_answer(reader, writer):
            await asyncio.sleep(10)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        btc = Bitcoind(quiet_log(), "regtest", "127.0.0.1", port, "u", "p", timeout=0.2)
        with pytest.raises(BitcoindUnreachable, match="timed out"):
            await btc.getblockcount()
        server.close()

    run(main())


def test_check_chain_unreachable_names_host_and_fix():
    async def main():
        fake = await started()
        await fake.stop()
        with pytest.raises(BitcoindStartupError) as err:
            await client(fake).check_chain()
        message = str(err.value)
        assert f"127.0.0.1:{fake.port}" in message
        assert "-regtest" in message and "--bitcoin-rpcport" in message

    run(main())


def test_check_chain_wrong_chain():
    async def main():
        fake = await started(chain="main")
        btc = client(fake, log=None)
        btc.network = "regtest"
        with pytest.raises(BitcoindStartupError, match="on chain 'main', but we are on regtest"):
            await btc.check_chain()
        await fake.stop()

    run(main())


def test_check_chain_old_version():
    async def main():
        fake = await started(version=210000)
        with pytest.raises(BitcoindStartupError, match="Unsupported bitcoind version 210000"):
            await client(fake).check_chain()
        await fake.stop()

    run(main())


def test_check_chain_waits_for_warmup_and_ibd():
    async def main():
        fake = await started(chain="test", warmup_replies=2, ibd=True)
        log = quiet_log()
        btc = client(fake, log=log)
        task = asyncio.create_task(btc.check_chain(warmup_poll=0.01, ibd_poll=0.01))
        await asyncio.sleep(0.2)
        assert not task.done()
        fake.ibd = False
        info = await asyncio.wait_for(task, 5)
        assert info["chain"] == "test" and btc.version == fake.version
        messages = [e.message for e in log.entries(LogLevel.UNUSUAL)]
        assert sum("warm up" in m for m in messages) == 1
        assert any("initial block download" in m for m in messages)
        await fake.stop()

    run(main())


def test_regtest_does_not_wait_for_ibd():
    # A fresh regtest chain is "in IBD" until a block is mined; waiting would deadlock.
    async def main():
        fake = await started(ibd=True)
        info = await asyncio.wait_for(client(fake).check_chain(), 5)
        assert info["initialblockdownload"] is True
        await fake.stop()

    run(main())


def test_http_chunked_and_eof_bodies():
    async def parse(data: bytes):
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await _read_response(reader)

    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert run(parse(chunked)) == (200, b"abcde")
    assert run(parse(b"HTTP/1.0 500 X\r\n\r\nrest")) == (500, b"rest")
    with pytest.raises(ValueError):
        run(parse(b"garbage\r\n\r\n"))


class KeepAliveServer:
    """A bare HTTP/1.1 JSON-RPC server answering getblockcount with 7, counting connections.

    `close_after_reply`: close each connection after one reply, without saying so (as a
    server timing out an idle keep-alive connection does). `delay_first`: the first request
    is answered this late.
    """

    def __init__(self, close_after_reply: bool = False, delay_first: float = 0.0) -> None:
        self.close_after_reply = close_after_reply
        self.delay_first = delay_first
        self.connections = 0
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                req = json.loads(await reader.readexactly(length))
                self.requests += 1
                if self.requests == 1 and self.delay_first:
                    await asyncio.sleep(self.delay_first)
                body = json.dumps({"result": 7, "error": None, "id": req["id"]}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if self.close_after_reply:
                    break
        writer.close()


def keepalive_client(port: int, timeout: float = 5.0) -> Bitcoind:
    return Bitcoind(quiet_log(), "regtest", "127.0.0.1", port, "u", "p", timeout=timeout)


def test_connections_are_kept_alive_and_reused():
    async def main():
        server = KeepAliveServer()
        btc = keepalive_client(await server.start())
        for _ in range(10):
            assert await btc.getblockcount() == 7
        assert server.connections == 1
        # Concurrent calls each take a connection (no more than the parallel limit).
        got = await asyncio.gather(*(btc.getblockcount() for _ in range(8)))
        assert got == [7] * 8
        assert server.connections <= BITCOIND_MAX_PARALLEL
        assert len(btc._idle) == server.connections
        await btc.close()
        assert not btc._idle
        await server.stop()

    run(main())


def test_a_connection_closed_while_idle_is_replaced():
    async def main():
        server = KeepAliveServer(close_after_reply=True)
        btc = keepalive_client(await server.start())
        assert await btc.getblockcount() == 7
        # Whether or not the close has been seen yet, the next call just uses a new one.
        assert await btc.getblockcount() == 7
        await asyncio.sleep(0.05)  # now it has: the kept connection is at EOF
        assert await btc.getblockcount() == 7
        assert server.connections == server.requests == 3
        await btc.close()
        await server.stop()

    run(main())


def test_a_timed_out_connection_is_not_reused():
    async def main():
        server = KeepAliveServer(delay_first=0.5)
        btc = keepalive_client(await server.start(), timeout=0.2)
        with pytest.raises(BitcoindUnreachable, match="timed out"):
            await btc.getblockcount()
        assert not btc._idle  # its late reply must not answer the next call
        assert await btc.getblockcount() == 7
        assert server.connections == 2
        await btc.close()
        await server.stop()

    run(main())


def test_unreachable_after_kept_connection_says_so():
    async def main():
        server = KeepAliveServer(close_after_reply=True)
        port = await server.start()
        btc = keepalive_client(port)
        assert await btc.getblockcount() == 7
        await server.stop()
        await asyncio.sleep(0.05)
        with pytest.raises(BitcoindUnreachable, match=f"cannot connect to 127.0.0.1:{port}"):
            await btc.getblockcount()

    run(main())


def test_keep_alive_rules():
    assert _keeps_alive("HTTP/1.1", "")
    assert _keeps_alive("HTTP/1.1", "Keep-Alive")
    assert not _keeps_alive("HTTP/1.1", "close")
    assert not _keeps_alive("HTTP/1.0", "")
    assert _keeps_alive("HTTP/1.0", "keep-alive")


def test_against_a_real_regtest_node(tmp_path):
    node = start_regtest_node_or_skip(tmp_path / "bitcoin")
    try:

        async def main():
            btc = Bitcoind(
                quiet_log(), "regtest", "127.0.0.1", node.rpcport, node.rpcuser, node.rpcpassword
            )
            info = await btc.check_chain()
            assert info["chain"] == "regtest" and btc.version >= 220000
            count = await btc.getblockcount()
            genesis = await btc.getblockhash(0)
            assert genesis == CHAINS["regtest"].chain_hash
            assert await btc.getblockhash(count + 1) is None
            raw = await btc.getrawblock(genesis)
            assert len(raw) > 80
            assert await btc.mempool_floor_perkb() >= 1000
            estimate = await btc.estimatesmartfee(6, "ECONOMICAL")
            assert estimate is None or estimate > 0
            # The node keeps the connection alive: every call above went over one.
            assert len(btc._idle) == 1
            await btc.close()

        run(main())
    finally:
        node.stop()
