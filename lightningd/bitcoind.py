"""Bitcoin Core's JSON-RPC, used the way Core Lightning's bcli plugin uses it.

The client is a small HTTP/1.1 POST on asyncio streams rather than urllib in an executor:
a request to a hung bitcoind can be cancelled at shutdown (a thread blocked in urllib
cannot), timeouts are per request, and nothing else in the master uses threads. At most
BITCOIND_MAX_PARALLEL calls run at once: bitcoind's HTTP server has four worker threads and
fails, rather than queues, requests beyond its work queue (bcli's limit too).

Connections are kept alive and reused (a restart's rescan makes dozens of calls; a new TCP
connection for each was most of their cost), one per call in flight. bitcoind closes an
idle one after -rpcservertimeout (30 s), bcoin after 5 s, and a restarted bitcoind drops
them all: a kept connection found closed, or that the server closes before answering, is
replaced by a fresh one once. A connection whose exchange did not complete (error, timeout,
cancel) is closed, never reused.

Authentication is --bitcoin-rpcuser/--bitcoin-rpcpassword when given, else the cookie file
bitcoind writes into its datadir (re-read on every call: bitcoind writes a new one each time
it starts). Only Bitcoin Core's documented RPC is used; other backends are bridged elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
from decimal import Decimal
from typing import Any

from lightningd.log import NodeLog

SOURCE = "bitcoind"
BITCOIND_MAX_PARALLEL = 4
# bcli's floor: 22.0 is the oldest Bitcoin Core it supports.
MIN_BITCOIND_VERSION = 220000
DEFAULT_TIMEOUT = 60.0

# Bitcoin Core's RPC error codes (src/rpc/protocol.h) that we act on.
RPC_MISC_ERROR = -1
RPC_INVALID_PARAMETER = -8
RPC_IN_WARMUP = -28
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_INVALID_ADDRESS_OR_KEY = -5

# Our --network name -> getblockchaininfo's "chain", and bitcoind's datadir subdirectory.
CORE_CHAIN = {"bitcoin": "main", "testnet": "test", "signet": "signet", "regtest": "regtest"}
_DATADIR_SUBDIR = {"bitcoin": "", "testnet": "testnet3", "signet": "signet", "regtest": "regtest"}
_MAX_RESPONSE = 64 * 1024 * 1024  # a 4 MB block in hex is 8 MB: plenty of room


class BitcoindError(Exception):
    """bitcoind answered with an RPC error (its own code and message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class BitcoindUnreachable(Exception):
    """No usable answer from bitcoind: refused, timed out, cut off or overloaded."""


class BitcoindAuthError(BitcoindUnreachable):
    """bitcoind refused our credentials (a restarted bitcoind writes a new cookie)."""


class BitcoindStartupError(Exception):
    """bitcoind cannot be used as configured; the message tells the operator what to fix."""


def default_bitcoin_datadir() -> str:
    return os.path.expanduser("~/.bitcoin")


def cookie_path(datadir: str | None, network: str) -> str:
    base = datadir or default_bitcoin_datadir()
    return os.path.join(base, _DATADIR_SUBDIR.get(network, network), ".cookie")


def btc_to_sat(value: Any) -> int:
    """An amount bitcoind printed in BTC (a JSON number) as whole satoshis, exactly."""
    return int((Decimal(str(value)) * 100_000_000).to_integral_value())


class Bitcoind:
    def __init__(
        self,
        log: NodeLog,
        network: str,
        host: str = "127.0.0.1",
        port: int = 18443,
        user: str | None = None,
        password: str | None = None,
        datadir: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.log = log
        self.network = network
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.datadir = datadir
        self.timeout = timeout
        self.version = 0
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(BITCOIND_MAX_PARALLEL)
        self._idle: list[_Connection] = []  # kept-alive connections, none in use

    @classmethod
    def from_config(cls, config: Any, log: NodeLog) -> Bitcoind:
        """From lightningd's Config (its --bitcoin-* options)."""
        return cls(
            log,
            config.network,
            host=config.bitcoin_rpcconnect,
            port=config.bitcoin_rpcport,
            user=config.bitcoin_rpcuser,
            password=config.bitcoin_rpcpassword,
            datadir=config.bitcoin_datadir,
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- transport ----------------------------------------------------------------------

    def _auth_header(self) -> str:
        if self.user is not None or self.password is not None:
            creds = f"{self.user or ''}:{self.password or ''}"
        else:
            path = cookie_path(self.datadir, self.network)
            try:
                with open(path) as f:
                    creds = f.read().strip()
            except OSError as exc:
                raise BitcoindAuthError(
                    f"no --bitcoin-rpcuser/--bitcoin-rpcpassword given and cannot read "
                    f"bitcoind's cookie {path}: {exc.strerror}"
                ) from None
        return "Basic " + base64.b64encode(creds.encode()).decode()

    def _request_bytes(self, body: bytes) -> bytes:
        head = (
            f"POST / HTTP/1.1\r\nHost: {self.address}\r\n"
            f"Authorization: {self._auth_header()}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        )
        return head.encode() + body

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        request = self._request_bytes(body)
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, request, reused=True)
            except _StaleConnection:
                pass  # closed by the server while idle: it never saw the request
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise BitcoindUnreachable(f"cannot connect to {self.address}: {_why(exc)}") from None
        return await self._exchange(_Connection(reader, writer), request, reused=False)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.abort()
        return None

    async def _exchange(self, conn: _Connection, request: bytes, reused: bool) -> tuple[int, bytes]:
        """One request and its response; the connection is kept only if both completed."""
        keep = False
        status_line = b""
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            status_line = await conn.reader.readline()
            if not status_line and reused:
                raise _StaleConnection
            status, data, keep = await _read_reply(conn.reader, status_line)
            return status, data
        except (ConnectionResetError, BrokenPipeError) as exc:
            if reused and not status_line:
                raise _StaleConnection from None
            raise BitcoindUnreachable(f"connection to {self.address} failed: {_why(exc)}") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BitcoindUnreachable(f"connection to {self.address} failed: {_why(exc)}") from None
        finally:
            if keep:
                self._idle.append(conn)
            else:
                await conn.close()

    async def close(self) -> None:
        """Close the kept-alive connections (calls made later open new ones)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """One RPC call; BitcoindError for bitcoind's errors, BitcoindUnreachable otherwise."""
        req_id = next(self._ids)
        body = json.dumps({"jsonrpc": "1.0", "id": req_id, "method": method, "params": params})
        async with self._slots:
            try:
                # Not asyncio.wait_for: before Python 3.12 it can swallow a cancel that comes
                # as the call completes, and then the chain poller never stops (shutdown hangs).
                async with asyncio.timeout(timeout or self.timeout):
                    status, data = await self._post(body.encode())
            except TimeoutError:
                raise BitcoindUnreachable(f"{method} to {self.address} timed out") from None
        return self._result(method, status, data)

    def _result(self, method: str, status: int, data: bytes) -> Any:
        if status == 401:
            how = "--bitcoin-rpcuser/--bitcoin-rpcpassword" if self.user else "the cookie file"
            raise BitcoindAuthError(f"bitcoind at {self.address} refused {how} (HTTP 401)")
        try:
            reply = json.loads(data, parse_float=Decimal)
        except ValueError:
            # 503: bitcoind's work queue is full; anything else is not bitcoind talking.
            raise BitcoindUnreachable(
                f"{method}: HTTP {status} from {self.address}: {data[:200]!r}"
            ) from None
        if not isinstance(reply, dict):
            raise BitcoindUnreachable(f"{method}: unexpected reply {data[:200]!r}")
        err = reply.get("error")
        if err:
            code = err.get("code", RPC_MISC_ERROR) if isinstance(err, dict) else RPC_MISC_ERROR
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            raise BitcoindError(int(code), str(message))
        return reply.get("result")

    # -- the calls bcli makes -------------------------------------------------------------

    async def getblockcount(self) -> int:
        return int(await self.call("getblockcount"))

    async def getblockhash(self, height: int) -> bytes | None:
        """The block hash at `height` in internal byte order, or None past the tip."""
        try:
            text = await self.call("getblockhash", height)
        except BitcoindError as exc:
            if exc.code == RPC_INVALID_PARAMETER:  # "Block height out of range"
                return None
            raise
        return bytes.fromhex(text)[::-1]

    async def getrawblock(self, block_hash: bytes) -> bytes:
        """The serialized block (getblock <hash> 0)."""
        return bytes.fromhex(await self.call("getblock", block_hash[::-1].hex(), 0))

    async def getblockchaininfo(self) -> dict[str, Any]:
        return dict(await self.call("getblockchaininfo"))

    async def getnetworkinfo(self) -> dict[str, Any]:
        return dict(await self.call("getnetworkinfo"))

    async def estimatesmartfee(self, blocks: int, mode: str) -> int | None:
        """sat per 1000 vbytes, or None when bitcoind has no estimate for `blocks`."""
        reply = await self.call("estimatesmartfee", blocks, mode)
        rate = reply.get("feerate") if isinstance(reply, dict) else None
        return None if rate is None else btc_to_sat(rate)

    async def mempool_floor_perkb(self) -> int:
        """max(mempoolminfee, minrelaytxfee) in sat per 1000 vbytes, as bcli takes it."""
        info = await self.call("getmempoolinfo")
        return max(btc_to_sat(info["mempoolminfee"]), btc_to_sat(info["minrelaytxfee"]))

    async def sendrawtransaction(self, raw_tx: bytes) -> str:
        return str(await self.call("sendrawtransaction", raw_tx.hex()))

    async def gettxout(self, txid: bytes, outnum: int) -> dict[str, Any] | None:
        """The unspent output (txid in internal byte order), or None if spent or unknown."""
        reply = await self.call("gettxout", txid[::-1].hex(), outnum)
        return dict(reply) if reply else None

    # -- start-up --------------------------------------------------------------------------

    async def check_chain(self, warmup_poll: float = 1.0, ibd_poll: float = 30.0) -> dict:
        """bcli's start-up checks; returns getblockchaininfo once bitcoind is usable.

        Waits while bitcoind warms up (and, except on regtest, during its initial block
        download); raises BitcoindStartupError for anything the operator must fix.
        """
        info = await self._networkinfo_after_warmup(warmup_poll)
        self._check_version(info)
        chain_info = await self._startup_call("getblockchaininfo")
        self._check_chain_name(chain_info)
        return await self._wait_for_ibd(chain_info, ibd_poll)

    async def _startup_call(self, method: str) -> Any:
        try:
            return await self.call(method)
        except BitcoindAuthError as exc:
            raise BitcoindStartupError(
                f"{exc}. Give bitcoind's RPC credentials with --bitcoin-rpcuser and "
                "--bitcoin-rpcpassword, or --bitcoin-datadir so its .cookie file can be read"
            ) from None
        except BitcoindUnreachable as exc:
            raise BitcoindStartupError(
                f"Could not connect to bitcoind at {self.address} ({exc}). Is bitcoind running "
                f"with -server{_net_flag(self.network)}? Point --bitcoin-rpcconnect and "
                "--bitcoin-rpcport at its RPC interface"
            ) from None

    async def _networkinfo_after_warmup(self, poll: float) -> dict[str, Any]:
        logged = False
        while True:
            try:
                return dict(await self._startup_call("getnetworkinfo"))
            except BitcoindError as exc:
                if exc.code != RPC_IN_WARMUP:
                    raise BitcoindStartupError(f"bitcoind getnetworkinfo failed: {exc}") from None
                if not logged:
                    self.log.unusual(SOURCE, f"Waiting for bitcoind to warm up: {exc.message}")
                    logged = True
            await asyncio.sleep(poll)

    def _check_version(self, info: dict[str, Any]) -> None:
        self.version = int(info.get("version", 0))
        if self.version < MIN_BITCOIND_VERSION:
            raise BitcoindStartupError(
                f"Unsupported bitcoind version {self.version}, at least "
                f"{MIN_BITCOIND_VERSION} required"
            )
        # As bcli: fee estimates need transaction relay, so -blocksonly is refused.
        if info.get("localrelay") is False:
            raise BitcoindStartupError(
                "The 'blocksonly' mode of bitcoind, or any option deactivating transaction "
                "relay is not supported"
            )

    def _check_chain_name(self, chain_info: dict[str, Any]) -> None:
        want = CORE_CHAIN.get(self.network, self.network)
        got = chain_info.get("chain")
        if got != want:
            raise BitcoindStartupError(
                f"bitcoind at {self.address} is on chain '{got}', but we are on "
                f"{self.network} (bitcoind's '{want}'): point --bitcoin-rpcconnect/"
                f"--bitcoin-rpcport at a{_net_flag(self.network) or ' mainnet'} bitcoind"
            )

    async def _wait_for_ibd(self, chain_info: dict[str, Any], poll: float) -> dict[str, Any]:
        # A fresh regtest chain reports initialblockdownload until someone mines a block,
        # and nobody will while we wait: only log it there.
        while chain_info.get("initialblockdownload"):
            progress = f"{chain_info.get('blocks')} of {chain_info.get('headers')} blocks"
            if self.network == "regtest":
                self.log.debug(SOURCE, f"bitcoind reports initial block download ({progress})")
                break
            self.log.unusual(
                SOURCE, f"Waiting for bitcoind's initial block download to finish ({progress})"
            )
            await asyncio.sleep(poll)
            chain_info = await self._startup_call("getblockchaininfo")
        return chain_info


def _net_flag(network: str) -> str:
    return "" if network == "bitcoin" else f" -{network}"


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed before our request reached it."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length, chunked, or to EOF)."""
    status, body, _ = await _read_reply(reader, await reader.readline())
    return status, body


async def _read_reply(reader: asyncio.StreamReader, status_line: bytes) -> tuple[int, bytes, bool]:
    """_read_response after its status line; also whether the connection may be reused."""
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = _keeps_alive(parts[0], headers.get("connection", ""))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, await _read_chunked(reader), keep
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > _MAX_RESPONSE:
            raise ValueError(f"response of {length} bytes is too large")
        return status, await reader.readexactly(length), keep
    return status, await reader.read(_MAX_RESPONSE), False  # the body ends at EOF


def _keeps_alive(version: str, connection: str) -> bool:
    """HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when told."""
    tokens = {t.strip().lower() for t in connection.split(",")}
    if "close" in tokens:
        return False
    return version != "HTTP/1.0" or "keep-alive" in tokens


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()  # the blank line after the last chunk (no trailers)
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > _MAX_RESPONSE:
            raise ValueError("chunked response is too large")
