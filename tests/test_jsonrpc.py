"""lightningd/jsonrpc.py: the RPC socket as CLN serves it, driven by pyln-client and raw sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyln.client import LightningRpc
from pyln.client import RpcError as PylnRpcError

from lightningd import jsonrpc
from lightningd.jsonrpc import (
    JsonRpcServer,
    Param,
    RpcError,
    RpcSocketError,
    current_command,
    param_bool,
    param_msat,
    param_node_id,
    param_sat,
    param_string,
    param_u32,
    param_u64,
)
from lightningd.jsonrpc_errors import CONNECT_NO_KNOWN_ADDRESS

NODE_ID = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
# 66 hex digits, right prefix, but not a point on the curve.
BAD_POINT = "02" + "ff" * 32


def register_test_commands(server: JsonRpcServer, calls: list[str]) -> None:
    """Commands the tests drive; `calls` records which handlers actually ran."""

    async def fund(id: bytes, amount: Any, announce: bool) -> dict[str, Any]:
        calls.append("fund")
        return {"id": id.hex(), "amount_sat": amount.sat, "announce": announce}

    async def pay(amount_msat: Any) -> dict[str, Any]:
        return {"amount_msat": amount_msat}

    async def echo(value: Any, count: int | None, big: int | None) -> dict[str, Any]:
        return {"value": value, "count": count, "big": big}

    async def say(value: str) -> dict[str, Any]:
        return {"value": value}

    async def sleep(ms: int) -> dict[str, Any]:
        await asyncio.sleep(ms / 1000)
        calls.append(f"slept {ms}")
        return {"slept": ms}

    async def boom() -> dict[str, Any]:
        raise RuntimeError("kaboom")

    async def fail() -> dict[str, Any]:
        raise RpcError(CONNECT_NO_KNOWN_ADDRESS, "no address known", {"id": NODE_ID})

    async def chatty() -> dict[str, Any]:
        cmd = current_command()
        assert cmd is not None
        cmd.notify("halfway there")
        return {"done": True}

    async def big() -> dict[str, Any]:
        return {"data": "x" * 300_000}

    server.register(
        "fund",
        fund,
        [
            Param("id", param_node_id),
            Param("amount", param_sat),
            Param("announce", param_bool, required=False, default=True),
        ],
        category="channels",
        description="Fund a channel",
    )
    server.register("sendmsat", pay, [Param("amount_msat", param_msat)], category="payment")
    server.register(
        "echo",
        echo,
        [
            Param("value", lambda v: v),
            Param("count", param_u32, required=False),
            Param("big", param_u64, required=False),
        ],
    )
    server.register("sleep", sleep, [Param("ms", param_u32)])
    server.register("boom", boom)
    server.register("fail", fail)
    server.register("chatty", chatty)
    server.register("big", big)
    server.register("say", say, [Param("value", param_string)], usage="value")


class ServerThread:
    """A JsonRpcServer on its own event loop in a background thread."""

    def __init__(self, path: Path, developer: bool = True, mode: int = 0o600) -> None:
        self.path = str(path)
        self.calls: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = JsonRpcServer(developer=developer)
        register_test_commands(self.server, self.calls)
        self.run(self.server.start(self.path, mode))

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def srv(tmp_path: Path):
    s = ServerThread(tmp_path / "lightning-rpc")
    yield s
    s.close()


@pytest.fixture
def rpc(srv: ServerThread) -> LightningRpc:
    return LightningRpc(srv.path)


def rpc_error(rpc: LightningRpc, method: str, params: Any) -> dict[str, Any]:
    with pytest.raises(PylnRpcError) as exc:
        rpc.call(method, params)
    return exc.value.error


class RawClient:
    """A bare socket speaking the wire format: responses end with "\\n\\n"."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data: bytes | str | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data)
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def recv(self) -> dict[str, Any]:
        while b"\n\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; buffered {self.buf!r}"
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n\n", 1)
        assert b"\n" not in raw
        return json.loads(raw)

    def at_eof(self) -> bool:
        return self.buf == b"" and self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def req(method: str, params: Any, id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": params}


@pytest.fixture
def raw(srv: ServerThread):
    client = RawClient(srv.path)
    yield client
    client.close()


# -- parameters ----------------------------------------------------------------


def test_positional_and_named_params(rpc: LightningRpc):
    assert rpc.call("fund", [NODE_ID, "1000sat"]) == {
        "id": NODE_ID,
        "amount_sat": 1000,
        "announce": True,
    }
    assert rpc.call("fund", [NODE_ID, 5000, False])["announce"] is False
    assert rpc.fund(id=NODE_ID, amount="0.001btc", announce=False) == {
        "id": NODE_ID,
        "amount_sat": 100_000,
        "announce": False,
    }
    # null skips an optional positional param; None kwargs are dropped by pyln.
    assert rpc.call("fund", [NODE_ID, "1sat", None])["announce"] is True
    assert rpc.fund(id=NODE_ID, amount=7, announce=None)["announce"] is True


def test_amounts_and_numbers(rpc: LightningRpc):
    assert rpc.sendmsat(amount_msat="1sat") == {"amount_msat": 1000}
    assert rpc.sendmsat(amount_msat=1234) == {"amount_msat": 1234}
    assert rpc.sendmsat(amount_msat="1234msat") == {"amount_msat": 1234}
    # CLN takes numbers given as strings of digits.
    assert rpc.echo(value=1, count="42", big=str(2**64 - 1)) == {
        "value": 1,
        "count": 42,
        "big": 2**64 - 1,
    }


def test_too_many_params(rpc: LightningRpc):
    err = rpc_error(rpc, "fund", [NODE_ID, 1, True, "extra"])
    assert err == {"code": -32602, "message": "too many parameters: got 4, expected 3"}


def test_unknown_named_param(rpc: LightningRpc):
    err = rpc_error(rpc, "fund", {"id": NODE_ID, "amount": 1, "colour": "red"})
    assert err["code"] == -32602
    assert err["message"].startswith("unknown parameter: colour, this may be caused by")
    assert "Please try using the -k flag" in err["message"]


def test_missing_required_param(rpc: LightningRpc):
    assert rpc_error(rpc, "fund", [NODE_ID]) == {
        "code": -32602,
        "message": "missing required parameter: amount",
    }
    assert rpc_error(rpc, "fund", {"amount": 1})["message"] == "missing required parameter: id"
    assert rpc_error(rpc, "fund", [None, 1])["message"] == "missing required parameter: id"


U32 = "should be an unsigned 32 bit integer"
U64 = "should be an unsigned 64 bit integer"


@pytest.mark.parametrize(
    ("method", "params", "name", "should", "token"),
    [
        ("fund", ["zz", 1], "id", "should be a node id", '"zz"'),
        ("fund", [BAD_POINT, 1], "id", "should be a node id", f'"{BAD_POINT}"'),
        ("fund", [NODE_ID[:-2], 1], "id", "should be a node id", f'"{NODE_ID[:-2]}"'),
        ("fund", [NODE_ID, "1.5sat"], "amount", "should be a satoshi amount", '"1.5sat"'),
        ("fund", [NODE_ID, -1], "amount", "should be a satoshi amount", "-1"),
        ("fund", [NODE_ID, 1, "yes"], "announce", "should be 'true' or 'false'", '"yes"'),
        ("sendmsat", ["lots"], "amount_msat", "should be a millisatoshi amount", '"lots"'),
        ("echo", [1, -1], "count", U32, "-1"),
        ("echo", [1, 2**32], "count", U32, str(2**32)),
        ("echo", [1, 1.5], "count", U32, "1.5"),
        ("echo", [1, None, 2**64], "big", U64, str(2**64)),
        ("echo", [1, None, "0x10"], "big", U64, '"0x10"'),
    ],
)
def test_bad_param_messages(
    rpc: LightningRpc, method: str, params: Any, name: str, should: str, token: str
):
    message = f"{name}: {should}: invalid token '{token}'"
    assert rpc_error(rpc, method, params) == {"code": -32602, "message": message}


def test_bad_param_hides_token_without_developer(tmp_path: Path):
    s = ServerThread(tmp_path / "rpc", developer=False)
    try:
        err = rpc_error(LightningRpc(s.path), "fund", ["secret-ish", 1])
        assert err == {
            "code": -32602,
            "message": "id: should be a node id: invalid token (see logs for details)",
        }
    finally:
        s.close()


def test_params_must_be_array_or_object(raw: RawClient):
    raw.send(req("fund", "nope"))
    assert raw.recv()["error"] == {
        "code": -32602,
        "message": "Expected array or object for params",
    }


def test_duplicate_named_param(raw: RawClient):
    raw.send(
        '{"jsonrpc":"2.0","id":1,"method":"sendmsat","params":{"amount_msat":1,"amount_msat":2}}'
    )
    assert raw.recv()["error"] == {"code": -32602, "message": "duplicate json names: amount_msat"}


def test_string_param_takes_any_token(rpc: LightningRpc):
    # As CLN's param_string: a non-string token is taken as its JSON text.
    assert rpc.say(value=42)["value"] == "42"
    assert rpc.say(value="hi")["value"] == "hi"


def test_register_rejects_bad_declarations():
    server = JsonRpcServer()

    async def handler(**_: Any) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="follows an optional"):
        server.register("x", handler, [Param("a", param_string, False), Param("b", param_string)])
    with pytest.raises(ValueError, match="duplicate"):
        server.register("y", handler, [Param("a", param_string), Param("a", param_string)])
    with pytest.raises(ValueError, match="already registered"):
        server.register("help", handler)


# -- the envelope -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_obj", "reply_id", "code", "message"),
    [
        ([1, 2], None, -32600, "Expected {} for json command"),
        ({"jsonrpc": "2.0", "method": "help", "params": []}, None, -32600, "No id"),
        ({"jsonrpc": "2.0", "id": [1], "method": "help", "params": []}, None, -32600,
         "Expected string/primitive for id"),
        ({"id": 5, "method": "help", "params": []}, None, -32600,
         'jsonrpc: "2.0" must be specified in the request'),
        ({"jsonrpc": "2.0", "id": 5, "params": []}, 5, -32600, "No method"),
        ({"jsonrpc": "2.0", "id": 5, "method": "help"}, 5, -32600, "No params"),
        ({"jsonrpc": "2.0", "id": 5, "method": 7, "params": []}, 5, -32600,
         "Expected string for method"),
        (req("nope", [], id="abc"), "abc", -32601, "Unknown command 'nope'"),
    ],
)  # fmt: skip
def test_envelope_errors(raw: RawClient, request_obj: Any, reply_id: Any, code: int, message: str):
    raw.send(json.dumps(request_obj))
    reply = raw.recv()
    assert reply == {"jsonrpc": "2.0", "id": reply_id, "error": {"code": code, "message": message}}
    # The connection stays usable after a well-formed but invalid request.
    raw.send(req("say", ["still here"], id=9))
    assert raw.recv()["result"] == {"value": "still here"}


@pytest.mark.parametrize("req_id", ["cli:x#1", 7, 0, -3, 2**70, "", 'with "quotes"'])
def test_id_echoed_verbatim(raw: RawClient, req_id: Any):
    raw.send(req("say", ["x"], id=req_id))
    reply = raw.recv()
    assert reply["id"] == req_id and type(reply["id"]) is type(req_id)
    assert reply["jsonrpc"] == "2.0"


def test_invalid_json_closes_connection(raw: RawClient):
    raw.send('{"jsonrpc": "2.0", "id": 1, oops}')
    reply = raw.recv()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32600  # CLN: a malformed request
    assert reply["error"]["message"].startswith("Invalid token in json input: '7b22")
    assert raw.at_eof()


def test_invalid_utf8_closes_connection(raw: RawClient):
    raw.send(b'{"jsonrpc": "2.0", "id": 1, "method": "\xff\xfe", "params": []}')
    assert raw.recv()["error"]["code"] == -32600
    assert raw.at_eof()


def test_oversized_request_closes_connection(raw: RawClient, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jsonrpc, "MAX_REQUEST_BYTES", 10_000)
    raw.send('{"jsonrpc": "2.0", "id": 1, "method": "say", "params": ["' + "x" * 20_000)
    reply = raw.recv()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32600
    assert "too large" in reply["error"]["message"]
    assert raw.at_eof()


def test_request_split_across_reads(raw: RawClient):
    data = json.dumps(req("say", ['héllo {["}'], id="split"), ensure_ascii=False).encode()
    for i in range(len(data)):  # one byte at a time, splitting the UTF-8 'é' too
        raw.send(data[i : i + 1])
        time.sleep(0.002)
    assert raw.recv()["result"]["value"] == 'héllo {["}'


def test_requests_concatenated(raw: RawClient):
    parts = [json.dumps(req("say", [str(i)], id=i)) for i in range(4)]
    raw.send(parts[0] + parts[1] + "\n\n  " + parts[2] + "\t" + parts[3] + "\n")
    replies = {r["id"]: r["result"]["value"] for r in (raw.recv() for _ in range(4))}
    assert replies == {0: "0", 1: "1", 2: "2", 3: "3"}


def test_responses_complete_out_of_order(raw: RawClient):
    raw.send(json.dumps(req("sleep", [400], id="slow")) + json.dumps(req("sleep", [0], id="fast")))
    assert [raw.recv()["id"], raw.recv()["id"]] == ["fast", "slow"]


def test_pyln_extras_filter_and_notifications(rpc: LightningRpc):
    with rpc.reply_filter({"id": True, "nothere": True}):
        assert rpc.fund(id=NODE_ID, amount=1) == {"id": NODE_ID}
    with rpc.reply_filter({"help": [{"command": True}]}):
        assert {"command": "boom"} in rpc.help()["help"]
    seen: list[str] = []
    with rpc.notify(lambda message, progress, request, **_: seen.append(message)):
        assert rpc.chatty() == {"done": True}
    assert seen == ["halfway there"]
    # Without opting in, no notification precedes the reply.
    assert rpc.chatty() == {"done": True}


def test_large_response(rpc: LightningRpc):
    assert len(rpc.big()["data"]) == 300_000


# -- concurrency and failures ---------------------------------------------------------


def test_fifty_concurrent_clients(srv: ServerThread):
    def client(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        rpc = LightningRpc(srv.path)
        return rpc.sleep(ms=300), rpc.say(value=f"client {i}")

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(client, range(50)))
    elapsed = time.monotonic() - start
    assert all(slept == {"slept": 300} for slept, _ in results)
    assert [said["value"] for _, said in results] == [f"client {i}" for i in range(50)]
    # Sequential handling would take 15 s.
    assert elapsed < 5


def test_client_disconnecting_mid_request(srv: ServerThread, rpc: LightningRpc):
    early = RawClient(srv.path)
    early.send(req("sleep", [200], id=1))
    early.close()
    partial = RawClient(srv.path)
    partial.send('{"jsonrpc": "2.0", "id": 2, "method": "sl')
    partial.close()
    assert rpc.say(value="fine")["value"] == "fine"
    time.sleep(0.4)
    assert "slept 200" in srv.calls  # the command ran on; only its reply went nowhere
    assert rpc.sleep(ms=1) == {"slept": 1}


def test_half_closed_client_still_gets_reply(srv: ServerThread):
    client = RawClient(srv.path)
    client.send(req("sleep", [50], id="hc"))
    client.sock.shutdown(socket.SHUT_WR)
    assert client.recv()["id"] == "hc"
    client.close()


def test_handler_exception_is_code_minus_one(rpc: LightningRpc):
    assert rpc_error(rpc, "boom", []) == {"code": -1, "message": "kaboom"}
    assert rpc.say(value="alive")["value"] == "alive"


def test_rpc_error_with_data(rpc: LightningRpc):
    assert rpc_error(rpc, "fail", {}) == {
        "code": 400,
        "message": "no address known",
        "data": {"id": NODE_ID},
    }


# -- help and check -------------------------------------------------------------------


def test_help_lists_commands(rpc: LightningRpc):
    result = rpc.help()
    assert result["format-hint"] == "simple"
    names = [h["command"].split()[0] for h in result["help"]]
    assert names == sorted(names)
    assert {"help", "check", "notifications", "fund", "boom"} <= set(names)
    fund = next(h for h in result["help"] if h["command"].startswith("fund"))
    assert fund == {
        "command": "fund id amount [announce]",
        "category": "channels",
        "description": "Fund a channel",
        "verbose": "Fund a channel",
    }
    by_name = {h["command"].split()[0]: h["command"] for h in result["help"]}
    assert by_name["boom"] == "boom"
    assert by_name["say"] == "say value"
    assert by_name["help"] == "help [command]"


def test_help_one_command(rpc: LightningRpc):
    result = rpc.help(command="echo")
    assert [h["command"] for h in result["help"]] == ["echo value [count] [big]"]
    assert rpc_error(rpc, "help", ["nope"]) == {"code": -32601, "message": "Unknown command nope"}


def test_check(srv: ServerThread, rpc: LightningRpc):
    assert rpc.check("fund", id=NODE_ID, amount="1sat") == {"command_to_check": "fund"}
    assert rpc.call("check", ["fund", NODE_ID, 1, True]) == {"command_to_check": "fund"}
    assert "fund" not in srv.calls  # validated, never run
    assert rpc_error(rpc, "check", {"command_to_check": "fund", "id": NODE_ID}) == {
        "code": -32602,
        "message": "missing required parameter: amount",
    }
    assert rpc_error(rpc, "check", ["fund", "zz", 1])["message"] == (
        "id: should be a node id: invalid token '\"zz\"'"
    )
    assert rpc_error(rpc, "check", ["nope"]) == {
        "code": -32601,
        "message": "Unknown command 'nope'",
    }
    assert rpc_error(rpc, "check", {})["message"] == "missing required parameter: command_to_check"
    assert rpc.call("check", ["check", "boom"]) == {"command_to_check": "check"}
    assert rpc_error(rpc, "check", ["check", "nope"])["code"] == -32601


def test_check_shows_token_even_without_developer(tmp_path: Path):
    s = ServerThread(tmp_path / "rpc", developer=False)
    try:
        err = rpc_error(LightningRpc(s.path), "check", ["fund", "zz", 1])
        assert err["message"] == "id: should be a node id: invalid token '\"zz\"'"
    finally:
        s.close()


# -- the socket file ------------------------------------------------------------------


def test_socket_mode(srv: ServerThread, tmp_path: Path):
    st = os.stat(srv.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    other = ServerThread(tmp_path / "group-rpc", mode=0o660)
    try:
        assert stat.S_IMODE(os.stat(other.path).st_mode) == 0o660
    finally:
        other.close()


def test_stale_socket_replaced_and_removed_on_stop(tmp_path: Path):
    path = tmp_path / "lightning-rpc"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a socket file nobody listens on: a crashed daemon's
    dead.close()
    s = ServerThread(path)
    try:
        assert LightningRpc(str(path)).say(value="new")["value"] == "new"
    finally:
        s.close()
    assert not path.exists()


def test_refuses_path_of_live_daemon(srv: ServerThread):
    second = JsonRpcServer()
    with pytest.raises(RpcSocketError, match="in use"):
        srv.run(second.start(srv.path))
    # The live daemon keeps its socket.
    assert LightningRpc(srv.path).say(value="mine")["value"] == "mine"


def test_refuses_too_long_path(tmp_path: Path):
    server = JsonRpcServer()
    with pytest.raises(RpcSocketError, match="too long"):
        asyncio.run(server.start(str(tmp_path / ("x" * 120))))


# -- pieces ---------------------------------------------------------------------------


def test_param_node_id_or_uri():
    node = bytes.fromhex(NODE_ID)
    assert jsonrpc.param_node_id_or_uri(NODE_ID) == (node, None)
    assert jsonrpc.param_node_id_or_uri(f"{NODE_ID}@host:9735") == (node, "host:9735")
    for bad in (f"{NODE_ID}@", "zz@host", 5, f"{BAD_POINT}@h"):
        with pytest.raises(jsonrpc.ParamError, match="should be a node id"):
            jsonrpc.param_node_id_or_uri(bad)


class FakeNodeLog:
    """lightningd's NodeLog shape: level methods taking (source, message)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def __getattr__(self, level: str) -> Any:
        if level not in ("debug", "info", "unusual", "broken"):
            raise AttributeError(level)
        return lambda source, message: self.lines.append((level, source, message))


def test_logs_to_node_log(tmp_path: Path):
    log = FakeNodeLog()
    server = JsonRpcServer(log, developer=False)
    server.register("boom", lambda: _raise(RuntimeError("kaboom")))

    async def scenario() -> None:
        await server.start(str(tmp_path / "rpc"))
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "rpc"))
        writer.write(json.dumps(req("boom", [])).encode())
        reply = json.loads((await reader.readuntil(b"\n\n"))[:-2])
        assert reply["error"] == {"code": -1, "message": "kaboom"}
        writer.close()
        await server.stop()

    asyncio.run(scenario())
    broken = [m for level, src, m in log.lines if level == "broken" and src == "jsonrpc"]
    assert broken and "Command boom failed" in broken[0] and "kaboom" in broken[0]


async def _raise(exc: Exception) -> Any:
    raise exc
