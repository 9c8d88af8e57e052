"""JSON-RPC 2.0 over a Unix socket, served the way Core Lightning's lightningd serves it.

A client writes a stream of JSON objects (split across reads or packed together, with or
without whitespace between them) and gets one JSON object per request, each followed by
"\\n\\n": pyln-client and lightning-cli split responses on that. Requests on one
connection run concurrently and answer in completion order, carrying their `id`.

Commands declare their parameters as an ordered list of `Param`; a request may give
`params` as an array (by position) or an object (by name), and the errors for bad
parameters use CLN's wording (common/json_param.c) so scripts written against CLN match.
Built in here: `help`, `check`, `notifications` and `batching`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import socket
import stat
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.amount import AmountError, AmountMsat, parse_msat, parse_sat, parse_sat_or_all
from common.key_derive import is_valid_pubkey
from lightningd.jsonrpc_errors import (
    JSONRPC2_INVALID_PARAMS,
    JSONRPC2_INVALID_REQUEST,
    JSONRPC2_METHOD_NOT_FOUND,
    LIGHTNINGD,
)

# A request bigger than this is refused and its connection closed: nothing legitimate
# comes close, and an unbounded buffer would let one client exhaust our memory.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
# How much of unparseable input we echo back (CLN echoes all of it, in hex).
_PARSE_ERROR_ECHO = 256
_READ_CHUNK = 65536
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

Handler = Callable[..., Awaitable[Any]]
Parser = Callable[[Any], Any]


class RpcError(Exception):
    """A command's failure, sent to the client as the response's `error` object."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class RpcSocketError(RuntimeError):
    """The RPC socket cannot be created (in use by a live daemon, path too long...)."""


class ParamError(ValueError):
    """Raised by a parser: `should` completes CLN's "<name>: should be ..." message.

    `message`, if given, is the whole error text instead: a few CLN parsers word their
    own (param_outpoint_arr, for one).
    """

    def __init__(self, should: str, message: str | None = None) -> None:
        super().__init__(message or should)
        self.should = should
        self.message = message


@dataclass(frozen=True)
class Param:
    name: str
    parser: Parser
    required: bool = True
    default: Any = None


# ---------------------------------------------------------------------------
# Parsers. Each takes the decoded JSON value and returns the parsed one, or raises
# ParamError with CLN's "should be ..." phrase for that type.


def make_parser(should: str, convert: Callable[[Any], Any]) -> Parser:
    """A parser from `convert`, whose ValueError/TypeError becomes ParamError(should)."""

    def parse(value: Any) -> Any:
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise ParamError(should) from exc

    return parse


def param_string(value: Any) -> str:
    # CLN's param_string takes the token text whatever its type: 42 gives "42".
    return value if isinstance(value, str) else json_token(value)


def param_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ParamError("should be 'true' or 'false'")


def _unsigned(value: Any, limit: int) -> int | None:
    """A JSON integer, or a string of decimal digits (CLN accepts both), within limit."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value <= limit:
        return value
    return None


def param_number(value: Any) -> int:
    num = _unsigned(value, _U32_MAX)
    if num is None:
        raise ParamError("should be an integer")
    return num


def param_u32(value: Any) -> int:
    num = _unsigned(value, _U32_MAX)
    if num is None:
        raise ParamError("should be an unsigned 32 bit integer")
    return num


def param_u64(value: Any) -> int:
    num = _unsigned(value, _U64_MAX)
    if num is None:
        raise ParamError("should be an unsigned 64 bit integer")
    return num


def _hex_bytes(value: Any, length: int) -> bytes | None:
    if not isinstance(value, str) or len(value) != 2 * length:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def param_node_id(value: Any) -> bytes:
    """A 33-byte compressed public key given as 66 hex digits."""
    raw = _hex_bytes(value, 33)
    if raw is None or not is_valid_pubkey(raw):
        raise ParamError("should be a node id")
    return raw


def param_node_id_or_uri(value: Any) -> tuple[bytes, str | None]:
    """connect's `id`: a node id, or "id@host[:port]" giving (node id, "host[:port]")."""
    if not isinstance(value, str):
        raise ParamError("should be a node id")
    node, at, host = value.partition("@")
    if at and not host:
        raise ParamError("should be a node id")
    return param_node_id(node), host or None


def param_sha256(value: Any) -> bytes:
    raw = _hex_bytes(value, 32)
    if raw is None:
        raise ParamError("should be a 32 byte hex value")
    return raw


def param_array(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    raise ParamError("should be an array")


def _amount_input(value: Any) -> str | int:
    """What common.amount parses: ints as they are, a whole float as an int."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise AmountError("not an amount")
    if isinstance(value, float):
        return repr(value)
    return value


def param_sat(value: Any) -> Any:
    try:
        return parse_sat(_amount_input(value))
    except AmountError as exc:
        raise ParamError("should be a satoshi amount") from exc


def param_sat_or_all(value: Any) -> Any:
    """Like param_sat, but "all" gives None (common.amount's convention)."""
    try:
        return parse_sat_or_all(_amount_input(value))
    except AmountError as exc:
        raise ParamError("should be a satoshi amount") from exc


def param_msat(value: Any) -> AmountMsat:
    try:
        return parse_msat(_amount_input(value))
    except AmountError as exc:
        raise ParamError("should be a millisatoshi amount") from exc


def param_msat_or_any(value: Any) -> AmountMsat | None:
    """A millisatoshi amount, or "any" (None), as CLN's invoice takes it."""
    if value == "any":
        return None
    return param_msat(value)


def json_token(value: Any) -> str:
    """The value as JSON text: CLN quotes the raw token, strings with their quotes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------
# Parameter matching, as common/json_param.c does it.


class _DupKeysDict(dict):
    """A decoded object that repeated some keys (json keeps only the last)."""

    dups: frozenset[str] = frozenset()


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    dups = {k for k, _ in pairs if k in seen or seen.add(k)}
    marked = _DupKeysDict(obj)
    marked.dups = frozenset(dups)
    return marked


def param_usage(params: Sequence[Param]) -> str:
    """CLN's usage: required params bare, optional ones bracketed."""
    return " ".join(p.name if p.required else f"[{p.name}]" for p in params)


def _check_declaration(name: str, params: Sequence[Param]) -> None:
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"command {name}: duplicate parameter names {names}")
    seen_optional = False
    for p in params:
        if p.required and seen_optional:
            raise ValueError(f"command {name}: required {p.name} follows an optional param")
        seen_optional |= not p.required


class _ParamContext:
    """How a parse failure is reported: CLN echoes the token only to developers or check."""

    def __init__(self, show_token: bool, log: _RpcLog) -> None:
        self.show_token = show_token
        self.log = log

    def bad(self, param: Param, value: Any, should: str) -> RpcError:
        token = json_token(value)
        if self.show_token:
            return RpcError(
                JSONRPC2_INVALID_PARAMS, f"{param.name}: {should}: invalid token '{token}'"
            )
        # The token may be a secret (a rune in quotes, say): keep it to the log.
        self.log.debug("Invalid parameter %s (%s): token '%s'", param.name, should, token)
        return RpcError(
            JSONRPC2_INVALID_PARAMS, f"{param.name}: {should}: invalid token (see logs for details)"
        )


def _parse_one(param: Param, value: Any, ctx: _ParamContext) -> Any:
    try:
        return param.parser(value)
    except ParamError as exc:
        if exc.message is not None:
            raise RpcError(JSONRPC2_INVALID_PARAMS, exc.message) from None
        raise ctx.bad(param, value, exc.should) from None


def _by_position(
    params: Sequence[Param], values: list[Any], ctx: _ParamContext, allow_extra: bool
) -> dict[str, Any]:
    if len(values) > len(params) and not allow_extra:
        raise RpcError(
            JSONRPC2_INVALID_PARAMS,
            f"too many parameters: got {len(values)}, expected {len(params)}",
        )
    # A null skips an optional parameter, so later ones can still be given by position.
    return {
        p.name: _parse_one(p, v, ctx) for p, v in zip(params, values, strict=False) if v is not None
    }


def _by_name(
    params: Sequence[Param], values: dict[str, Any], ctx: _ParamContext, allow_extra: bool
) -> dict[str, Any]:
    known = {p.name: p for p in params}
    out: dict[str, Any] = {}
    for key, value in values.items():
        p = known.get(key)
        if p is None:
            if allow_extra:
                continue
            raise RpcError(
                JSONRPC2_INVALID_PARAMS,
                f"unknown parameter: {key}, this may be caused by a failure to autodetect"
                " key=value-style parameters. Please try using the -k flag and explicit"
                " key=value pairs of parameters.",
            )
        if key in getattr(values, "dups", ()):
            raise RpcError(JSONRPC2_INVALID_PARAMS, f"duplicate json names: {key}")
        # pyln-client drops None-valued kwargs; a null given by name means "not given" too.
        if value is not None:
            out[key] = _parse_one(p, value, ctx)
    return out


def parse_params(
    params: Sequence[Param], raw: Any, ctx: _ParamContext, allow_extra: bool = False
) -> dict[str, Any]:
    """Match `raw` (array or object) to `params`; return every param's value or default."""
    if isinstance(raw, list):
        got = _by_position(params, raw, ctx, allow_extra)
    elif isinstance(raw, dict):
        got = _by_name(params, raw, ctx, allow_extra)
    else:
        raise RpcError(JSONRPC2_INVALID_PARAMS, "Expected array or object for params")
    for p in params:
        if p.required and p.name not in got:
            raise RpcError(JSONRPC2_INVALID_PARAMS, f"missing required parameter: {p.name}")
    return {p.name: got.get(p.name, p.default) for p in params}


# ---------------------------------------------------------------------------
# Reply filters (CLN's "filter" request member): keep only the fields named.


def apply_filter(value: Any, flt: Any) -> Any:
    """`flt` mirrors the result: `true` keeps a field, an object recurses, [f] maps f."""
    if isinstance(flt, dict) and isinstance(value, dict):
        return {
            k: apply_filter(v, flt[k]) for k, v in value.items() if k in flt and flt[k] is not False
        }
    if isinstance(flt, list) and len(flt) == 1 and isinstance(value, list):
        return [apply_filter(v, flt[0]) for v in value]
    return value


# ---------------------------------------------------------------------------
# The command being run, for handlers that want to send notifications.


@dataclass
class Command:
    id: Any
    method: str
    _conn: _Connection | None = field(default=None, repr=False)

    def notify(self, message: str, level: str = "info") -> None:
        """Send a "message" notification, if this connection enabled notifications."""
        conn = self._conn
        if conn is None or not conn.notifications_enabled:
            return
        conn.send(
            {
                "jsonrpc": "2.0",
                "method": "message",
                "params": {"id": self.id, "level": level, "message": message},
            }
        )


_current: contextvars.ContextVar[Command | None] = contextvars.ContextVar(
    "jsonrpc_command", default=None
)


def current_command() -> Command | None:
    """The command whose handler is running (None outside a handler)."""
    return _current.get()


# ---------------------------------------------------------------------------


@dataclass
class _Method:
    name: str
    handler: Handler
    params: tuple[Param, ...]
    category: str
    description: str
    usage: str
    verbose: str


def _json_default(obj: Any) -> Any:
    """Results may carry bytes (as hex) and msat amounts (as numbers, as CLN prints them)."""
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    if isinstance(obj, AmountMsat):
        return obj.msat
    to_json = getattr(obj, "to_json", None)
    if callable(to_json):
        return to_json()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_response(obj: dict[str, Any]) -> bytes:
    # Compact JSON never contains a raw newline, so "\n\n" is an unambiguous terminator.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return (text + "\n\n").encode()


class _Scanner:
    """Finds where the first JSON object or array in a growing buffer ends.

    Incremental, so a 10 MB request arriving in small reads is scanned once, not once per
    read. It only balances brackets outside strings; json.loads then validates the slice.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pos = 0
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def end_of_value(self, text: str) -> int | None:
        """Index just past the value starting at text[0], or None if incomplete."""
        i, n = self.pos, len(text)
        while i < n:
            c = text[i]
            i += 1
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.reset()
                    return i
        self.pos = i
        return None


class _BadInput(Exception):
    """The stream cannot be parsed: answer with this error and close the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Connection:
    """One client: reads its request stream, runs requests, writes their responses."""

    def __init__(
        self, server: JsonRpcServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.notifications_enabled = False
        self.batching = False
        self.text = ""
        self.scanner = _Scanner()
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def send(self, obj: dict[str, Any]) -> None:
        self.write(encode_response(obj))

    def write(self, data: bytes) -> None:
        """Queue one whole response; synchronous, so responses never interleave."""
        if not self.closed:
            self.writer.write(data)

    async def run(self) -> None:
        decoder = _utf8_decoder()
        try:
            while not self.closed:
                data = await self.reader.read(_READ_CHUNK)
                if not data:
                    # The client may only have shut its sending side: answer what it sent.
                    await asyncio.gather(*self.tasks, return_exceptions=True)
                    break
                self.text += decoder.decode(data)
                self._dispatch_complete()
                await self.writer.drain()
        except _BadInput as exc:
            self.send(_error_response(None, exc.code, exc.message))
        except UnicodeDecodeError:
            message = "Invalid UTF-8 in json input"
            self.send(_error_response(None, JSONRPC2_INVALID_REQUEST, message))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        # Commands still running finish on their own; their replies then go nowhere.
        with contextlib.suppress(Exception):
            self.writer.close()
            await self.writer.wait_closed()

    def _dispatch_complete(self) -> None:
        """Start every complete request in the buffer; keep any partial one."""
        while True:
            self.text = self.text.lstrip()
            if not self.text:
                return
            end = self._value_end()
            if end is None:
                if len(self.text) > MAX_REQUEST_BYTES:  # chars: cheap, and within 4x of bytes
                    raise _BadInput(
                        JSONRPC2_INVALID_REQUEST,
                        f"Request too large: over {MAX_REQUEST_BYTES} bytes",
                    )
                return
            chunk, self.text = self.text[:end], self.text[end:]
            try:
                request = json.loads(chunk, object_pairs_hook=_object_hook)
            except json.JSONDecodeError:
                raise _parse_error(chunk) from None
            self.server._start_request(self, request)

    def _value_end(self) -> int | None:
        if self.text[0] in "{[":
            return self.scanner.end_of_value(self.text)
        # Not an object or array: a bare primitive, or garbage.
        try:
            _, end = json.JSONDecoder().raw_decode(self.text)
        except json.JSONDecodeError:
            raise _parse_error(self.text) from None
        return end


def _utf8_decoder() -> Any:
    import codecs

    return codecs.getincrementaldecoder("utf-8")("strict")


def _parse_error(text: str) -> _BadInput:
    # CLN answers unparseable input as a malformed request (-32600), not -32700.
    echo = text.encode()[:_PARSE_ERROR_ECHO].hex()
    return _BadInput(JSONRPC2_INVALID_REQUEST, f"Invalid token in json input: '{echo}'")


def _error_response(req_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": error}


def _validate_envelope(request: Any) -> tuple[Any, str, Any, Any]:
    """(id, method, params, filter) of a request, checked in CLN's order.

    Raises _Malformed(id_or_None, message): errors found before the id is known are
    answered with a null id, as CLN does.
    """
    if not isinstance(request, dict):
        raise _Malformed(None, "Expected {} for json command")
    if "id" not in request:
        raise _Malformed(None, "No id")
    req_id = request["id"]
    if isinstance(req_id, dict | list):
        raise _Malformed(None, "Expected string/primitive for id")
    if request.get("jsonrpc") != "2.0":
        raise _Malformed(None, 'jsonrpc: "2.0" must be specified in the request')
    if "method" not in request:
        raise _Malformed(req_id, "No method")
    if "params" not in request:
        raise _Malformed(req_id, "No params")
    method = request["method"]
    if not isinstance(method, str):
        raise _Malformed(req_id, "Expected string for method")
    flt = request.get("filter")
    if flt is not None and not isinstance(flt, dict | list):
        raise _Malformed(req_id, "filter: should be an object or array")
    return req_id, method, request["params"], flt


class _Malformed(Exception):
    def __init__(self, req_id: Any, message: str) -> None:
        super().__init__(message)
        self.req_id = req_id
        self.message = message


class _RpcLog:
    """Logs to a logging.Logger, or to lightningd's NodeLog (which takes a source first)."""

    SOURCE = "jsonrpc"

    def __init__(self, log: Any) -> None:
        self.log = log or logging.getLogger("lightningd.jsonrpc")
        self.node_log = hasattr(self.log, "unusual")

    def debug(self, fmt: str, *args: Any) -> None:
        self._emit("debug", "debug", fmt, args)

    def info(self, fmt: str, *args: Any) -> None:
        self._emit("info", "info", fmt, args)

    def error(self, fmt: str, *args: Any) -> None:
        self._emit("broken", "error", fmt, args)

    def exception(self, fmt: str, *args: Any) -> None:
        if self.node_log:
            detail = traceback.format_exc().rstrip().replace("\n", " | ")
            self.log.broken(self.SOURCE, f"{fmt % args}: {detail}")
        else:
            self.log.exception(fmt, *args)

    def _emit(self, node_level: str, std_level: str, fmt: str, args: tuple[Any, ...]) -> None:
        if self.node_log:
            getattr(self.log, node_level)(self.SOURCE, fmt % args)
        else:
            getattr(self.log, std_level)(fmt, *args)


class JsonRpcServer:
    """The RPC socket: a registry of commands and the listener serving them."""

    def __init__(self, log: Any = None, developer: bool = False) -> None:
        # log: a logging.Logger or lightningd's NodeLog. developer: echo bad parameter
        # tokens in errors (CLN's --developer does the same).
        self.developer = developer
        self.log = _RpcLog(log)
        self._methods: dict[str, _Method] = {}
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._inode: int | None = None
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._register_builtins()

    # -- registry ---------------------------------------------------------

    def register(
        self,
        name: str,
        handler: Handler,
        params: Sequence[Param] = (),
        category: str = "",
        description: str = "",
        usage: str | None = None,
        verbose: str | None = None,
    ) -> None:
        """Add a command; `handler(**params)` is awaited with every declared param."""
        if name in self._methods:
            raise ValueError(f"command {name} already registered")
        _check_declaration(name, params)
        self._methods[name] = _Method(
            name=name,
            handler=handler,
            params=tuple(params),
            category=category,
            description=description,
            usage=param_usage(params) if usage is None else usage,
            verbose=verbose if verbose is not None else description,
        )

    def unregister(self, name: str) -> None:
        self._methods.pop(name, None)

    @property
    def commands(self) -> list[str]:
        return sorted(self._methods)

    def usage_line(self, name: str) -> str:
        m = self._methods[name]
        return f"{name} {m.usage}".rstrip()

    # -- socket -------------------------------------------------------------

    async def start(self, path: str | os.PathLike[str], mode: int = 0o600) -> None:
        """Listen on `path`, replacing a stale socket file; refuse if a daemon answers there."""
        path = os.fspath(path)
        if len(path.encode()) + 1 > 108:
            raise RpcSocketError(f"rpc filename '{path}' too long")
        if await _someone_listening(path):
            raise RpcSocketError(f"rpc filename '{path}' in use")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = _bind_unix(path, mode)
        self._path, self._inode = path, os.stat(path).st_ino
        self._server = await asyncio.start_unix_server(
            self._on_connect, sock=sock, limit=_READ_CHUNK
        )
        self.log.debug("Listening on %s", path)

    async def stop(self) -> None:
        """Close the listener and every connection; cancel commands still running."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.writer.close()
        me = asyncio.current_task()
        pending = [t for t in self._tasks if t is not me]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        # Only our own socket: another daemon may have taken the path since.
        if self._path is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self._path)
            if st.st_ino == self._inode and stat.S_ISSOCK(st.st_mode):
                os.unlink(self._path)
        self._path = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)

    # -- requests -----------------------------------------------------------

    def _start_request(self, conn: _Connection, request: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._run_request(conn, request))
        for tasks in (self._tasks, conn.tasks):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _run_request(self, conn: _Connection, request: Any) -> None:
        try:
            req_id, method, params, flt = _validate_envelope(request)
        except _Malformed as exc:
            conn.send(_error_response(exc.req_id, JSONRPC2_INVALID_REQUEST, exc.message))
            return
        self.log.debug("Request %s: %s", method, req_id)
        try:
            result = await self._call(conn, req_id, method, params)
            if flt is not None:
                result = apply_filter(result, flt)
            data = encode_response({"jsonrpc": "2.0", "id": req_id, "result": result})
        except RpcError as exc:
            data = self._encode_error(req_id, exc.code, exc.message, exc.data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("Command %s failed", method)
            data = self._encode_error(req_id, LIGHTNINGD, str(exc) or type(exc).__name__)
        # No await between the handler's return and this write: a `stop` handler that
        # schedules shutdown still gets its reply out.
        conn.write(data)
        with contextlib.suppress(ConnectionError):
            await conn.writer.drain()

    def _encode_error(self, req_id: Any, code: int, message: str, data: Any = None) -> bytes:
        try:
            return encode_response(_error_response(req_id, code, message, data))
        except (TypeError, ValueError):
            self.log.error("Error data for %s is not JSON: %r", req_id, data)
            return encode_response(_error_response(req_id, code, message))

    async def _call(self, conn: _Connection, req_id: Any, method: str, raw: Any) -> Any:
        m = self._methods.get(method)
        if m is None:
            raise RpcError(JSONRPC2_METHOD_NOT_FOUND, f"Unknown command '{method}'")
        if method == "check":
            return self.check_params(raw)
        kwargs = parse_params(m.params, raw, self._param_ctx(check=False))
        _current.set(Command(req_id, method, conn))
        return await m.handler(**kwargs)

    def _param_ctx(self, check: bool) -> _ParamContext:
        return _ParamContext(self.developer or check, self.log)

    # -- builtins -----------------------------------------------------------

    def _register_builtins(self) -> None:
        self.register(
            "help",
            self._help,
            [Param("command", param_string, required=False)],
            category="utility",
            description="List available commands, or give verbose help on one {command}.",
            verbose="help [command]\nWithout [command]:\n  Outputs an array of objects with"
            " 'command' and 'description'\nWith [command]:\n  Give a single object containing"
            " 'verbose', which completely describes\n  the command inputs and outputs.",
        )
        self.register(
            "check",
            self._check,
            [Param("command_to_check", param_string)],
            category="utility",
            description="Don't run {command_to_check}, just verify parameters.",
            usage="command_to_check [parameters...]",
        )
        self.register(
            "notifications",
            self._notifications,
            [Param("enable", param_bool)],
            category="utility",
            description="{enable} notifications",
        )
        self.register(
            "batching",
            self._batching,
            [Param("enable", param_bool)],
            category="utility",
            description="Database transaction batching {enable}",
        )

    async def _help(self, command: str | None) -> dict[str, Any]:
        if command is not None and command not in self._methods:
            raise RpcError(JSONRPC2_METHOD_NOT_FOUND, f"Unknown command {command}")
        names = [command] if command is not None else self.commands
        entries = [self._help_entry(n) for n in names]
        # format-hint tells lightning-cli this is simple enough to print flat.
        return {"help": entries, "format-hint": "simple"}

    def _help_entry(self, name: str) -> dict[str, str]:
        m = self._methods[name]
        return {
            "command": self.usage_line(name),
            "category": m.category,
            "description": m.description,
            "verbose": m.verbose,
        }

    async def _check(self, **_: Any) -> dict[str, str]:  # pragma: no cover
        raise AssertionError("check needs the raw params: _call runs check_params instead")

    async def _notifications(self, enable: bool) -> dict[str, Any]:
        cmd = current_command()
        if cmd is not None and cmd._conn is not None:
            cmd._conn.notifications_enabled = enable
        return {}

    async def _batching(self, enable: bool) -> dict[str, Any]:
        cmd = current_command()
        if cmd is not None and cmd._conn is not None:
            cmd._conn.batching = enable
        return {}

    def check_params(self, raw: Any) -> dict[str, str]:
        """`check`: validate a command's params as `raw` gives them, without running it."""
        ctx = self._param_ctx(check=True)
        head = parse_params(self._methods["check"].params, raw, ctx, allow_extra=True)
        name = head["command_to_check"]
        target = self._methods.get(name)
        if target is None:
            raise RpcError(JSONRPC2_METHOD_NOT_FOUND, f"Unknown command '{name}'")
        if isinstance(raw, list):
            rest: Any = raw[1:]
        else:
            rest = type(raw)((k, v) for k, v in raw.items() if k != "command_to_check")
            if isinstance(raw, _DupKeysDict):
                rest.dups = raw.dups
        if name == "check":
            self.check_params(rest)
        else:
            parse_params(target.params, rest, ctx)
        return {"command_to_check": name}


async def _someone_listening(path: str) -> bool:
    """True if a live process accepts connections on the socket at `path`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout=2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _bind_unix(path: str, mode: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the socket's mode right from the start: a chmod after bind would
    # leave a window where others could connect. (umask is process-wide; bind is quick.)
    old = os.umask(0o777 ^ mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise RpcSocketError(f"Binding rpc socket to '{path}': {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock
