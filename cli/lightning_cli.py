"""lightning-cli: send one command to lightningd over its RPC socket and print the reply.

Behaves as Core Lightning's cli/lightning-cli.c: the same options, the same rules for
turning arguments into JSON, the same output formats and exit codes (0 success,
1 lightningd returned an error, 2 could not talk to lightningd, 3 usage error).
Only the standard library is used, so it runs without the daemon's dependencies.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

NO_ERROR = 0
ERROR_FROM_LIGHTNINGD = 1
ERROR_TALKING_TO_LIGHTNINGD = 2
ERROR_USAGE = 3

PROG = "lightning-cli"
DEFAULT_RPC_FILE = "lightning-rpc"
NETWORKS = ("bitcoin", "testnet", "testnet4", "signet", "regtest")
# Notification levels, lowest first; "none" (past the end) silences them all.
LOG_LEVELS = ("io", "trace", "debug", "info", "unusual", "broken")
_SUN_PATH_MAX = 107
_HELP_FOOTER = (
    "---\nrun `lightning-cli help <command>` for more information on a specific command\n"
)


class CliExit(Exception):
    """Stop with `code`, printing `message` (if any) to stderr prefixed by our name."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Options:
    lightning_dir: str = field(default_factory=lambda: os.path.expanduser("~/.lightning"))
    conf: str | None = None
    network: str | None = None
    rpc_file: str | None = None
    input: str = "default"  # "keywords", "ordered" or "default" (autodetect)
    format: str = "default"  # "json", "human", "flat", "raw" or "default"
    notifications: int = LOG_LEVELS.index("info")
    filter: str | None = None
    commando: tuple[str, str | None] | None = None
    help: bool = False
    version: bool = False
    args: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Options. As CLN's ccan/opt: options may come anywhere before "--", "--opt=value" or
# "--opt value", and short flags may be grouped ("-kH").


def _set_network(net: str) -> Callable[[Options, str | None], None]:
    def setter(opts: Options, _: str | None) -> None:
        opts.network = net

    return setter


def _opt_network(opts: Options, arg: str | None) -> None:
    if arg not in NETWORKS:
        raise CliExit(ERROR_USAGE, f"--network: Unknown network name '{arg}'")
    opts.network = arg


def _opt_notifications(opts: Options, arg: str | None) -> None:
    if arg == "none":
        opts.notifications = len(LOG_LEVELS)
    elif arg in LOG_LEVELS:
        opts.notifications = LOG_LEVELS.index(arg)
    else:
        raise CliExit(ERROR_USAGE, f"--notifications: Invalid level '{arg}'")


def _opt_commando(opts: Options, arg: str | None) -> None:
    peer, _, rune = (arg or "").partition(":")
    if len(peer) != 66:
        raise CliExit(ERROR_USAGE, "--commando: Invalid peer id")
    opts.commando = (peer, rune or None)


def _assign(attr: str, value: Any = None) -> Callable[[Options, str | None], None]:
    def setter(opts: Options, arg: str | None) -> None:
        setattr(opts, attr, arg if value is None else value)

    return setter


@dataclass(frozen=True)
class _Opt:
    long: str
    short: str | None
    takes_arg: bool
    apply: Callable[[Options, str | None], None]
    help: str
    metavar: str = ""


OPTIONS: tuple[_Opt, ...] = (
    _Opt("conf", None, True, _assign("conf"), "Specify configuration file", "=<file>"),
    _Opt(
        "lightning-dir",
        None,
        True,
        _assign("lightning_dir"),
        "Set base directory: network-specific subdirectory is under here",
        "=<dir>",
    ),
    _Opt(
        "network",
        None,
        True,
        _opt_network,
        "Select the network parameters (bitcoin, testnet, signet, regtest)",
    ),
    _Opt("testnet", None, False, _set_network("testnet"), "Alias for --network=testnet"),
    _Opt("signet", None, False, _set_network("signet"), "Alias for --network=signet"),
    _Opt("mainnet", None, False, _set_network("bitcoin"), "Alias for --network=bitcoin"),
    _Opt("regtest", None, False, _set_network("regtest"), "Alias for --network=regtest"),
    _Opt("version", "V", False, _assign("version", True), "Print version and exit"),
    _Opt("rpc-file", None, True, _assign("rpc_file"), "Set JSON-RPC socket"),
    _Opt(
        "help",
        "h",
        False,
        _assign("help", True),
        'Show this message. Use the command help (without hyphens -- "lightning-cli help")'
        " to get a list of all RPC commands",
    ),
    _Opt("human-readable", "H", False, _assign("format", "human"), "Human-readable output"),
    _Opt("flat", "F", False, _assign("format", "flat"), "Flatten output ('x.y.x=' format)"),
    _Opt("json", "J", False, _assign("format", "json"), "JSON output (default unless 'help')"),
    _Opt("raw", "R", False, _assign("format", "raw"), "Raw, unformatted JSON output"),
    _Opt("keywords", "k", False, _assign("input", "keywords"), "Use format key=value for <params>"),
    _Opt("order", "o", False, _assign("input", "ordered"), "Use params in order for <params>"),
    _Opt(
        "notifications", "N", True, _opt_notifications, "Set notification level, or none", "=<lvl>"
    ),
    _Opt("filter", "l", True, _assign("filter"), "Set JSON reply filter", "=<json>"),
    _Opt(
        "commando",
        "c",
        True,
        _opt_commando,
        "Send this as a commando command to nodeid:rune",
        "=<peerid:rune>",
    ),
)
_BY_LONG = {o.long: o for o in OPTIONS}
_BY_SHORT = {o.short: o for o in OPTIONS if o.short}


def usage_text() -> str:
    lines = [f"Usage: {PROG} <command> [<params>...]"]
    for o in OPTIONS:
        flag = f"--{o.long}" + (f"|-{o.short}" if o.short else "") + o.metavar
        lines.append(f"{flag:<30} {o.help}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            opts.args.extend(argv[i:])
            break
        if arg.startswith("--"):
            i = _long_option(opts, arg[2:], argv, i)
        elif arg.startswith("-") and len(arg) > 1:
            i = _short_options(opts, arg[1:], argv, i)
        else:
            opts.args.append(arg)
    return opts


def _long_option(opts: Options, body: str, argv: list[str], i: int) -> int:
    name, eq, value = body.partition("=")
    opt = _BY_LONG.get(name)
    if opt is None:
        raise CliExit(ERROR_USAGE, f"--{name}: unrecognized option")
    if not opt.takes_arg:
        if eq:
            raise CliExit(ERROR_USAGE, f"--{name}: doesn't allow an argument")
        opt.apply(opts, None)
        return i
    if not eq:
        if i >= len(argv):
            raise CliExit(ERROR_USAGE, f"--{name}: requires an argument")
        value, i = argv[i], i + 1
    opt.apply(opts, value)
    return i


def _short_options(opts: Options, flags: str, argv: list[str], i: int) -> int:
    for pos, flag in enumerate(flags):
        opt = _BY_SHORT.get(flag)
        if opt is None:
            raise CliExit(ERROR_USAGE, f"-{flag}: unrecognized option")
        if not opt.takes_arg:
            opt.apply(opts, None)
            continue
        value = flags[pos + 1 :]
        if not value:
            if i >= len(argv):
                raise CliExit(ERROR_USAGE, f"-{flag}: requires an argument")
            value, i = argv[i], i + 1
        opt.apply(opts, value)
        break
    return i


# ---------------------------------------------------------------------------
# Where the socket is: <lightning-dir>/<network>/<rpc-file>, with config files able to
# set the network and rpc-file (the command line wins), as CLN's configdir does.


def _read_config(path: str, must_exist: bool) -> dict[str, str | None]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        if must_exist:
            raise CliExit(ERROR_USAGE, f"Opening and reading {path}: No such file") from None
        return {}
    except OSError as exc:
        raise CliExit(ERROR_USAGE, f"Opening and reading {path}: {exc.strerror}") from None
    conf: dict[str, str | None] = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            key, eq, value = line.partition("=")
            conf[key.strip()] = value.strip() if eq else None
    return conf


def _network_from(conf: dict[str, str | None]) -> str | None:
    net = None
    for key, value in conf.items():
        if key == "network":
            net = value
        elif key in ("testnet", "signet", "regtest", "mainnet"):
            net = "bitcoin" if key == "mainnet" else key
    return net


def resolve_socket(opts: Options) -> tuple[str, str]:
    """(directory, file name) of the RPC socket, as lightning-cli reports them."""
    base = os.path.abspath(os.path.expanduser(opts.lightning_dir))
    if opts.conf is not None:
        conf = _read_config(opts.conf, must_exist=True)
        if conf.get("lightning-dir") and opts.lightning_dir == Options().lightning_dir:
            base = os.path.abspath(os.path.expanduser(conf["lightning-dir"] or ""))
    else:
        conf = _read_config(os.path.join(base, "config"), must_exist=False)
    network = opts.network or _network_from(conf) or "bitcoin"
    if opts.conf is None:
        conf |= _read_config(os.path.join(base, network, "config"), must_exist=False)
    rpc_file = opts.rpc_file or conf.get("rpc-file") or DEFAULT_RPC_FILE
    net_dir = os.path.join(base, network)
    # An absolute rpc-file overrides the directories; a relative one is in the network dir.
    if os.path.isabs(rpc_file):
        return os.path.dirname(rpc_file), os.path.basename(rpc_file)
    return net_dir, rpc_file


def connect(net_dir: str, rpc_file: str) -> socket.socket:
    if not os.path.isdir(net_dir):
        raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, f"Moving into '{net_dir}': {_no_such_dir()}")
    path = os.path.join(net_dir, rpc_file)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(path.encode()) <= _SUN_PATH_MAX:
            sock.connect(path)
        else:
            _connect_via_dirfd(sock, net_dir, rpc_file)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise CliExit(
            ERROR_TALKING_TO_LIGHTNINGD, f"Connecting to '{rpc_file}': {reason}"
        ) from None
    return sock


def _no_such_dir() -> str:
    return os.strerror(2)


def _connect_via_dirfd(sock: socket.socket, net_dir: str, rpc_file: str) -> None:
    # CLN chdirs into the network dir to dodge sun_path's length limit; a directory fd
    # under /proc does the same without changing our cwd.
    dirfd = os.open(net_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{rpc_file}")
    finally:
        os.close(dirfd)


# ---------------------------------------------------------------------------
# The request.


def is_literal(arg: str) -> bool:
    """CLN's rule for passing an argument through as raw JSON rather than as a string."""
    if not arg:
        return False
    return (
        all(c in "0123456789." for c in arg)
        or arg in ("true", "false", "null")
        or (arg[0] == "{" and arg[-1] == "}")
        or (arg[0] == "[" and arg[-1] == "]")
        or (arg[0] == '"' and arg[-1] == '"')
    )


def _json_arg(arg: str) -> str:
    return arg if is_literal(arg) else json.dumps(arg, ensure_ascii=False)


def build_params(args: list[str], input_mode: str) -> str:
    """The params as JSON text: an object of key=value args, or an array."""
    if input_mode == "default":
        # CLN's "hacky autodetect": keywords if the first param has an '='.
        input_mode = "keywords" if args and "=" in args[0] else "ordered"
    if input_mode == "ordered":
        return "[" + ", ".join(_json_arg(a) for a in args) + "]"
    members = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq:
            raise CliExit(ERROR_USAGE, f"Expected key=value in '{arg}'")
        members.append(f"{json.dumps(key, ensure_ascii=False)}: {_json_arg(value)}")
    return "{" + ", ".join(members) + "}"


def request_id(method: str) -> str:
    weird = json.dumps(method, ensure_ascii=False)[1:-1] != method
    return f"cli:{'weirdmethod!' if weird else method}#{os.getpid()}"


def build_request(opts: Options, method: str, args: list[str], idstr: str) -> bytes:
    params = build_params(args, opts.input)
    flt = f', "filter": {opts.filter}' if opts.filter and not opts.commando else ""
    name = json.dumps(method, ensure_ascii=False)
    if opts.commando:
        peer, rune = opts.commando
        inner = [f'"peer_id": {json.dumps(peer)}', f'"method": {name}']
        if opts.filter:
            inner.append(f'"filter": {opts.filter}')
        if rune:
            inner.append(f'"rune": {json.dumps(rune)}')
        inner.append(f'"params": {params}')
        params, name = "{" + ", ".join(inner) + "}", '"commando"'
    head = f'"jsonrpc": "2.0", "method": {name}, "id": {json.dumps(idstr)}{flt}'
    text = f'{{{head}, "params": {params}}}'
    try:
        json.loads(text)
    except json.JSONDecodeError:
        raise CliExit(
            ERROR_USAGE,
            f"Some parameters are malformed, cannot create a valid JSON-RPC request: {text}",
        ) from None
    return text.encode()


# ---------------------------------------------------------------------------
# Talking to lightningd: every reply and notification ends with "\n\n".


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next_object(self) -> Any:
        while b"\n\n" not in self.buf:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, f"reading response: {exc}") from None
            if not data:
                return self._last_object()
            self.buf += data
        raw, self.buf = self.buf.split(b"\n\n", 1)
        return _decode(raw)

    def _last_object(self) -> Any:
        raw, self.buf = self.buf, b""
        if not raw.strip():
            raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, "reading response: socket closed")
        return _decode(raw)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        text = raw.decode(errors="replace")
        raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, f"Malformed response '{text}'") from None


def _send(sock: socket.socket, data: bytes, what: str) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, f"{what}: {exc.strerror}") from None


def enable_notifications(sock: socket.socket, reader: _Reader) -> None:
    req = {
        "jsonrpc": "2.0",
        "method": "notifications",
        "id": f"cli:notifications#{os.getpid()}",
        "params": {"enable": True},
    }
    _send(sock, json.dumps(req).encode(), "Writing enable command")
    reader.next_object()  # Its reply carries nothing we need.


def is_notification(obj: Any) -> bool:
    return isinstance(obj, dict) and "id" not in obj and "method" in obj and "params" in obj


def print_notification(obj: dict[str, Any], min_level: int, out: TextIO) -> None:
    params = obj.get("params")
    if obj.get("method") != "message" or not isinstance(params, dict):
        return
    level = params.get("level")
    if level not in LOG_LEVELS or LOG_LEVELS.index(level) < min_level:
        return
    if "message" in params:
        out.write(f"# {params['message']}\n")


def await_response(reader: _Reader, opts: Options, out: TextIO) -> Any:
    while True:
        obj = reader.next_object()
        if not is_notification(obj):
            return obj
        print_notification(obj, opts.notifications, out)


# ---------------------------------------------------------------------------
# Output formats.


def print_json(value: Any, out: TextIO) -> None:
    # CLN's print_json: three-space indent, "key": value, empty containers as {} and [].
    out.write(json.dumps(value, indent=3, ensure_ascii=False) + "\n")


def _primitive_text(value: Any) -> str:
    """The token as CLN prints it: a string's (escaped) content with \\n and \\t expanded."""
    if not isinstance(value, str):
        return json.dumps(value)
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    out, i = [], 0
    while i < len(escaped):
        pair = escaped[i : i + 2]
        if pair in ("\\n", "\\t"):
            out.append("\n" if pair == "\\n" else "\t")
            i += 2
        else:
            out.append(escaped[i])
            i += 1
    return "".join(out)


def human_readable(value: Any, term: str, out: TextIO) -> None:
    if isinstance(value, list):
        for item in value:
            human_readable(item, "\n", out)
    elif isinstance(value, dict):
        if len(value) == 1:
            # Single-field objects are elided to their value.
            human_readable(next(iter(value.values())), "\n", out)
            return
        for key, item in value.items():
            out.write(_primitive_text(key) + "=")
            human_readable(item, "\n", out)
    else:
        out.write(_primitive_text(value) + term)


def flat_json(prefix: str, value: Any, out: TextIO) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            flat_json(f"{prefix}[{i}]", item, out)
    elif isinstance(value, dict):
        for key, item in value.items():
            flat_json(key if not prefix else f"{prefix}.{key}", item, out)
    else:
        text = json.dumps(value, ensure_ascii=False)
        out.write(f"{prefix}={text[1:-1] if isinstance(value, str) else text}\n")


def _help_sort_key(entry: Any) -> tuple[bool, str, str]:
    if not isinstance(entry, dict):
        return (False, "", "")
    category = str(entry.get("category", ""))
    # The developer category always goes last; then by category, then by command.
    return (category == "developer", category, str(entry.get("command", "")))


def human_help(result: Any, out: TextIO) -> None:
    entries = result.get("help", []) if isinstance(result, dict) else []
    for entry in sorted(entries, key=_help_sort_key):
        if isinstance(entry, dict):
            out.write(f"{entry.get('command', '')}\n\n")
    out.write(_HELP_FOOTER)


def choose_format(result: Any, method: str, command: str | None, requested: str) -> str:
    """CLN's choice: as asked; else a help list; else "human" if the reply hints "simple"."""
    hinted = isinstance(result, dict) and "format-hint" in result
    if requested != "default":
        if requested == "human" and hinted:
            del result["format-hint"]
        return requested
    if method == "help" and command is None:
        return "helplist"
    if not hinted:
        return "json"
    hint = result.pop("format-hint")
    return "human" if hint == "simple" else "json"


def print_result(result: Any, fmt: str, out: TextIO) -> None:
    if fmt == "helplist":
        human_help(result, out)
    elif fmt == "human":
        human_readable(result, "\n", out)
    elif fmt == "flat":
        flat_json("", result, out)
    elif fmt == "raw":
        out.write(json.dumps(result, separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        print_json(result, out)


# ---------------------------------------------------------------------------


def _version() -> str:
    try:
        from common.version import VERSION
    except ImportError:  # pragma: no cover - run outside the source tree
        return "unknown"
    return VERSION


def run_command(opts: Options, out: TextIO) -> int:
    args = list(opts.args)
    if opts.help:
        # "<command> -h" asks lightningd for that command's help.
        args = ["help", args[0]]
    if not args:
        out.write(usage_text() + "\n")
        out.write('Querying lightningd for available RPC commands ("lightning-cli help"):\n\n')
        args = ["help"]
    method, params = args[0], args[1:]
    command = params[0] if method == "help" and params else None

    net_dir, rpc_file = resolve_socket(opts)
    idstr = request_id(method)
    request = build_request(opts, method, params, idstr)
    sock = connect(net_dir, rpc_file)
    with sock:
        reader = _Reader(sock)
        if opts.notifications < len(LOG_LEVELS) and not opts.commando:
            enable_notifications(sock, reader)
        _send(sock, request, "Writing command")
        response = await_response(reader, opts, out)
    return _report(response, idstr, method, command, opts, out)


def _report(
    response: Any, idstr: str, method: str, command: str | None, opts: Options, out: TextIO
) -> int:
    compact = json.dumps(response, ensure_ascii=False)
    if not isinstance(response, dict):
        raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, f"Non-object response '{compact}'")
    if "result" not in response and "error" not in response:
        raise CliExit(
            ERROR_TALKING_TO_LIGHTNINGD,
            f"Either 'result' or 'error' must be returned in response '{compact}'",
        )
    if "id" not in response:
        raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, f"Missing 'id' in response '{compact}'")
    if response["id"] != idstr:
        got = json.dumps(response["id"], ensure_ascii=False)
        raise CliExit(ERROR_TALKING_TO_LIGHTNINGD, f"Incorrect 'id' ({got}) in response: {compact}")
    error = response.get("error")
    if error is None:
        result = response.get("result")
        print_result(result, choose_format(result, method, command, opts.format), out)
        return NO_ERROR
    if opts.format == "raw":
        out.write(json.dumps(error, separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        print_json(error, out)
    return ERROR_FROM_LIGHTNINGD


def main(argv: list[str] | None = None) -> int:
    """Run lightning-cli with `argv` (without the program name); return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    out = sys.stdout
    try:
        opts = parse_args(argv)
        if opts.help and not opts.args:
            out.write(usage_text() + "\n")
            return NO_ERROR
        if opts.version:
            out.write(_version() + "\n")
            return NO_ERROR
        return run_command(opts, out)
    except CliExit as exc:
        if exc.message:
            sys.stderr.write(f"{PROG}: {exc.message}\n")
        return exc.code
    except KeyboardInterrupt:
        return ERROR_TALKING_TO_LIGHTNINGD
    except BrokenPipeError:
        # Our reader (e.g. `| head`) went away: nothing more to say.
        return NO_ERROR
    except Exception as exc:  # never a traceback for a command-line user
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc}\n")
        return ERROR_TALKING_TO_LIGHTNINGD


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
