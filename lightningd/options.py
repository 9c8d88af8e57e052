"""Command line and config files, read as Core Lightning reads them.

A CLN user must be able to start this daemon with the same command line and
config files, so the rules follow CLN's common/configdir.c and
lightningd/options.c:

- Config files hold `name=value` or `name` lines (no leading `--`), `#`
  comment lines, blank lines and `include <file>` (relative to the including
  file). Without `--conf`, `<lightning-dir>/config` is read, then
  `<lightning-dir>/<network>/config` (network from the command line or the
  first file). `--conf=<file>` replaces both, and must exist.
- Every config-file line comes before every command-line option; the last
  value of a single-valued option wins, multi-valued ones (addresses, log
  files) accumulate in that order.
- `--conf` is only allowed on the command line, `--lightning-dir` not in the
  implicit config files, `--network` not in the per-network file.
- Every `--dev-*` option requires `--developer`.
- Errors say where: `--funding-confirms=abc: 'abc' is not a number`, or
  `Config file /x/config line 3: alias=...: Alias '...' is over 32 bytes`.

Network-dependent defaults are CLN's (options.c mainnet_config and
testnet_config; the latter is used for every test network, regtest included):
funding-confirms 3 vs 1, max-concurrent-htlcs 30 vs 483, watchtime-blocks
144 vs 6.

Nothing here creates a directory or opens a log file: lightningd does that.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from common import features
from common.amount import AmountError, parse_msat
from common.chainparams import ChainParams, chain_by_name
from common.status import LogLevel
from common.version import VERSION

# BOLT #2: the receiving node MUST fail the channel if max_accepted_htlcs > 483.
MAX_ACCEPTED_HTLCS = 483
# BOLT #7: an alias is 32 bytes.
ALIAS_MAX_BYTES = 32
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
# CLN's include-depth limit, which is how it detects include loops.
_MAX_INCLUDE_DEPTH = 100


class OptionError(Exception):
    """A bad option; the message says which and what is wrong (lightningd exits 1)."""


class EarlyExit(Exception):
    """--help, --version or --list-features-only: print `text` and exit with `code`."""

    def __init__(self, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


# --------------------------------------------------------------------------
# Addresses (--addr, --bind-addr, --announce-addr)


@dataclass(frozen=True)
class NetAddr:
    """One parsed address option. kind: ipv4, ipv6, dns, torv3, wildcard or socket."""

    kind: str
    host: str
    port: int

    def __str__(self) -> str:
        if self.kind == "socket":
            return self.host
        if self.kind == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ONION_V3 = re.compile(r"^[a-z2-7]{56}\.onion$")
_UNSUPPORTED_PREFIXES = ("autotor:", "statictor:", "ws:")


def _parse_port(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"port '{text}' is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range (1-65535)")
    return port


def _split_host_port(text: str) -> tuple[str, str | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (no port)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("missing ']'")
        rest = text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected '{rest}' after ']'")
        return text[1:close], rest[1:] if rest else None
    if text.count(":") > 1:
        return text, None
    host, sep, port = text.partition(":")
    return host, port if sep else None


def _host_kind(host: str) -> str:
    """ipv4, ipv6, torv3 or dns; ValueError for anything else."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "ipv4" if ip.version == 4 else "ipv6"
    if _ONION_V3.match(host.lower()):
        return "torv3"
    if host.lower().endswith(".onion"):
        raise ValueError(f"'{host}' is not a Tor v3 .onion address")
    if re.fullmatch(r"[0-9.]+", host):
        raise ValueError(f"'{host}' is not a valid IPv4 address")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.match(p) for p in host.split(".")):
        raise ValueError(f"'{host}' is not a valid address or host name")
    return "dns"


def parse_wireaddr(text: str, default_port: int) -> NetAddr:
    """One address as CLN's --addr family takes it; ValueError says what is wrong.

    A leading `/` is a unix socket; `:port` (empty host) is every interface.
    """
    if text.startswith(_UNSUPPORTED_PREFIXES):
        prefix = text.split(":", 1)[0]
        raise ValueError(f"'{prefix}:' addresses are not supported")
    if text.startswith("/"):
        return NetAddr("socket", text, 0)
    dns_prefix = text.startswith("dns:")
    rest = text.removeprefix("dns:")
    host, port_text = _split_host_port(rest)
    if rest.startswith("[") and _host_kind(host) != "ipv6":
        raise ValueError(f"'{host}' in brackets is not an IPv6 address")
    port = default_port if port_text is None else _parse_port(port_text)
    if not host:
        if dns_prefix:
            raise ValueError("empty host name")
        return NetAddr("wildcard", "", port)
    kind = _host_kind(host)
    if dns_prefix and kind != "dns":
        raise ValueError(f"'{host}' is not a host name")
    return NetAddr(kind, host, port)


def _is_wildcard(addr: NetAddr) -> bool:
    return addr.kind == "wildcard" or (
        addr.kind in ("ipv4", "ipv6") and ipaddress.ip_address(addr.host).is_unspecified
    )


def _check_listen_addr(text: str, addr: NetAddr, announce_too: bool) -> None:
    """CLN's rules for --addr (listen and announce) and --bind-addr (listen only)."""
    option = "--addr" if announce_too else "--bind-addr"
    if text.startswith("dns:"):
        raise ValueError(f"Cannot use dns: prefix with {option}, use --announce-addr={text}")
    if addr.kind == "torv3":
        raise ValueError(f"Don't use {option}={text}, use --announce-addr={text}")
    if addr.kind == "socket" and announce_too:
        raise ValueError(f"Don't use --addr={text}, use --bind-addr={text}")


def _check_announce_addr(text: str, addr: NetAddr) -> None:
    if addr.kind == "socket":
        raise ValueError(f"Cannot announce sockets, try --bind-addr={text}")
    if _is_wildcard(addr):
        raise ValueError(f"Cannot use wildcard address '{text}'")


# --------------------------------------------------------------------------
# The configuration


def _default_lightning_dir() -> str:
    return os.path.abspath(os.path.expanduser("~/.lightning"))


@dataclass
class Config:
    """Every option lightningd knows, under its CLN name with `-` as `_`.

    The plain defaults are mainnet's; use Config.for_network for another
    network's. parse_options fills pid_file and makes every path absolute.
    """

    lightning_dir: str = field(default_factory=_default_lightning_dir)
    network: str = "bitcoin"
    conf: str | None = None
    developer: bool = False

    # Addresses exactly as given (validated); see listen_addrs / announce_addrs.
    addr: list[str] = field(default_factory=list)
    bind_addr: list[str] = field(default_factory=list)
    announce_addr: list[str] = field(default_factory=list)
    alias: str | None = None
    rgb: bytes | None = None

    log_level: LogLevel = LogLevel.INFO
    # --log-level=<level>:<filter>: sources (or node ids) containing <filter>
    # print at <level>; the first match wins, as in CLN.
    log_level_filters: list[tuple[LogLevel, str]] = field(default_factory=list)
    # Empty means stdout only, as CLN does; "-" is stdout.
    log_file: list[str] = field(default_factory=list)
    log_prefix: str = ""
    log_timestamps: bool = True
    daemon: bool = False
    pid_file: str | None = None

    bitcoin_rpcuser: str | None = None
    bitcoin_rpcpassword: str | None = None
    bitcoin_rpcconnect: str = "127.0.0.1"
    bitcoin_rpcport: int = 8332
    bitcoin_datadir: str | None = None
    bitcoin_cli: str | None = None

    funding_confirms: int = 3
    min_capacity_sat: int = 10000
    max_concurrent_htlcs: int = 30
    htlc_minimum_msat: int = 0
    htlc_maximum_msat: int | None = None  # None: no limit
    watchtime_blocks: int = 144
    max_locktime_blocks: int = 2016
    commit_feerate_offset: int = 5
    rpc_file: str = "lightning-rpc"
    rpc_file_mode: str = "0600"

    dev_bitcoind_poll: int = 30
    # As CLN: how long a connection may take over the BOLT #8 handshake, and then to `init`.
    dev_timeout_secs: int = 60
    # Ours, not CLN's: how long openingd waits for the peer at each step of an open.
    dev_opening_timeout: int = 60
    dev_allow_localhost: bool = False
    dev_force_privkey: str | None = None
    dev_force_bip32_seed: str | None = None
    dev_force_channel_secrets: str | None = None
    dev_force_tmp_channel_id: str | None = None
    dev_fast_gossip: bool = False
    dev_no_htlc_timeout: bool = False
    # Options accepted for CLN compatibility but not implemented, as given
    # ("--dev-no-reconnect", "--rescan=1"): lightningd logs each one.
    ignored_dev_options: list[str] = field(default_factory=list)

    # Option names set explicitly, and a port given in --bitcoin-rpcconnect.
    explicit: set[str] = field(default_factory=set, repr=False, compare=False)
    _rpcconnect_port: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def for_network(cls, network: str, **kwargs: object) -> Config:
        """A Config with `network`'s defaults (ValueError for an unknown network)."""
        chain = chain_by_name(network)
        defaults: dict[str, object] = {
            "network": network,
            "bitcoin_rpcport": chain.bitcoind_rpcport,
        }
        if chain.testnet:
            defaults |= {"funding_confirms": 1, "max_concurrent_htlcs": 483, "watchtime_blocks": 6}
        return cls(**(defaults | kwargs))

    @property
    def chain(self) -> ChainParams:
        return chain_by_name(self.network)

    @property
    def network_dir(self) -> str:
        return os.path.join(self.lightning_dir, self.network)

    @property
    def rpc_path(self) -> str:
        # CLN resolves --rpc-file inside the network directory (it chdirs there).
        return os.path.join(self.network_dir, self.rpc_file)

    @property
    def pid_path(self) -> str:
        if self.pid_file is None:
            return os.path.join(self.lightning_dir, f"lightningd-{self.network}.pid")
        return os.path.join(self.network_dir, self.pid_file)

    @property
    def rpc_file_mode_bits(self) -> int:
        return int(self.rpc_file_mode, 8)

    @property
    def listen_addrs(self) -> list[NetAddr]:
        """Where to listen: --addr then --bind-addr, in order."""
        port = self.chain.default_port
        return [parse_wireaddr(a, port) for a in self.addr + self.bind_addr]

    @property
    def announce_addrs(self) -> list[NetAddr]:
        """What to announce: --addr then --announce-addr, in order."""
        port = self.chain.default_port
        return [parse_wireaddr(a, port) for a in self.addr + self.announce_addr]


# --------------------------------------------------------------------------
# Value parsers: each returns the value or raises ValueError(problem).


def _parse_number(text: str, maximum: int) -> int:
    """An unsigned number as CLN's strtoul(base 0) reads it, minus octal surprises."""
    t = text.strip()
    if re.fullmatch(r"[0-9]+", t):
        value = int(t)
    elif re.fullmatch(r"0[xX][0-9a-fA-F]+", t):
        value = int(t, 16)
    else:
        raise ValueError(f"'{text}' is not a number")
    if value > maximum:
        raise ValueError(f"'{text}' is out of range")
    return value


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("yes", "true"):
        return True
    if lowered in ("no", "false"):
        return False
    raise ValueError(f"Invalid argument '{text}'")


def _parse_hex(text: str, nbytes: int, what: str) -> str:
    if len(text) != 2 * nbytes or not re.fullmatch(r"[0-9a-fA-F]*", text):
        raise ValueError(f"Unable to parse {what} '{text}' ({nbytes} bytes of hex)")
    return text.lower()


def _parse_log_level(text: str) -> tuple[LogLevel, str | None]:
    name, sep, filt = text.partition(":")
    # CLN also takes "error" and "warn" (common/status_levels.c).
    aliases = {"error": LogLevel.BROKEN, "warn": LogLevel.UNUSUAL}
    level = aliases.get(name.lower())
    if level is None:
        try:
            level = LogLevel.parse(name)
        except ValueError:
            raise ValueError(f"unknown log level {name}") from None
    return level, (filt if sep else None)


def _parse_rpc_file_mode(text: str) -> str:
    if len(text) != 4 or text[0] != "0" or not re.fullmatch(r"[0-7]{4}", text):
        raise ValueError(f"'{text}' is not a file mode")
    return text


def _parse_channel_secrets(text: str) -> str:
    parts = text.split("/")
    try:
        if len(parts) != 6:
            raise ValueError
        for part in parts:
            _parse_hex(part, 32, "secret")
    except ValueError:
        raise ValueError("Expected 6 hex secrets separated by /") from None
    return text.lower()


def _parse_alias(text: str) -> str:
    if len(text.encode("utf-8")) > ALIAS_MAX_BYTES:
        raise ValueError(f"Alias '{text}' is over {ALIAS_MAX_BYTES} bytes")
    return text


def _parse_rgb(text: str) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{6}", text):
        raise ValueError(f"rgb '{text}' is not six hex digits")
    return bytes.fromhex(text)


def _parse_msat_opt(text: str) -> int:
    try:
        return parse_msat(text).msat
    except AmountError:
        raise ValueError(f"Unable to parse millisatoshi '{text}'") from None


def _split_rpcconnect(text: str) -> tuple[str, int | None]:
    """`host` or `host:port` (IPv6 in brackets) for --bitcoin-rpcconnect."""
    host, port_text = _split_host_port(text)
    if not host:
        raise ValueError(f"'{text}' has no host")
    return host, None if port_text is None else _parse_port(port_text)


# --------------------------------------------------------------------------
# The option table


Setter = Callable[[Config, str | None], None]


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    takes_arg: bool
    apply: Setter
    dev: bool = False
    # Config attribute whose value --help shows as the default.
    show: str | None = None
    metavar: str = "<arg>"
    # Whitespace at the end of the value is significant (CLN trims otherwise).
    keep_whitespace: bool = False


def _set(attr: str, parse: Callable[[str], object] = str) -> Setter:
    def apply(cfg: Config, value: str | None) -> None:
        assert value is not None
        setattr(cfg, attr, parse(value))

    return apply


def _set_true(attr: str) -> Setter:
    def apply(cfg: Config, _value: str | None) -> None:
        setattr(cfg, attr, True)

    return apply


def _append(attr: str, check: Callable[[str], object] = str) -> Setter:
    def apply(cfg: Config, value: str | None) -> None:
        assert value is not None
        check(value)
        getattr(cfg, attr).append(value)

    return apply


def _u32(attr: str, minimum: int = 0, maximum: int = _U32_MAX) -> Setter:
    def parse(text: str) -> int:
        value = _parse_number(text, _U32_MAX)
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, not {value}")
        return value

    return _set(attr, parse)


def _set_network(network: str | None) -> Setter:
    def apply(cfg: Config, value: str | None) -> None:
        name = network or value
        assert name is not None
        try:
            chain_by_name(name)
        except ValueError:
            raise ValueError(f"Unknown network name '{name}'") from None
        cfg.network = name

    return apply


def _set_abspath(attr: str) -> Setter:
    return _set(attr, _abspath)


def _abspath(value: str) -> str:
    # abspath("") is the current directory: an empty --conf= would read that.
    if not value:
        raise ValueError("needs a path")
    return os.path.abspath(os.path.expanduser(value))


def _set_log_level(cfg: Config, value: str | None) -> None:
    assert value is not None
    level, filt = _parse_log_level(value)
    if filt is None:
        cfg.log_level = level
    else:
        cfg.log_level_filters.append((level, filt))


def _set_rpcconnect(cfg: Config, value: str | None) -> None:
    assert value is not None
    cfg.bitcoin_rpcconnect, cfg._rpcconnect_port = _split_rpcconnect(value)


def _add_address(attr: str) -> Setter:
    def apply(cfg: Config, value: str | None) -> None:
        assert value is not None
        addr = parse_wireaddr(value, cfg.chain.default_port)
        if attr == "announce_addr":
            _check_announce_addr(value, addr)
        else:
            _check_listen_addr(value, addr, announce_too=attr == "addr")
        _check_duplicate(cfg, attr, addr)
        getattr(cfg, attr).append(value)

    return apply


def _check_duplicate(cfg: Config, attr: str, addr: NetAddr) -> None:
    """CLN refuses the same address twice as a listen (or announce) address."""
    listen = attr in ("addr", "bind_addr")
    announce = attr in ("addr", "announce_addr")
    if (listen and addr in cfg.listen_addrs) or (announce and addr in cfg.announce_addrs):
        what = "listen" if listen and addr in cfg.listen_addrs else "announce"
        raise ValueError(f"Duplicate {what} address {addr}")


def _unsupported(why: str) -> Setter:
    def apply(_cfg: Config, _value: str | None) -> None:
        raise ValueError(f"not supported: {why}")

    return apply


def _ignore(name: str, check: Callable[[str], object] | None = None) -> Setter:
    """Accept a CLN option we do not implement; remember it so lightningd can say so."""

    def apply(cfg: Config, value: str | None) -> None:
        if value is not None and check is not None:
            check(value)
        cfg.ignored_dev_options.append(f"--{name}" if value is None else f"--{name}={value}")

    return apply


def _arg(
    name: str,
    help: str,
    apply: Setter,
    *,
    dev: bool = False,
    show: str | None = None,
    metavar: str = "<arg>",
    keep_whitespace: bool = False,
) -> Option:
    return Option(name, help, True, apply, dev, show, metavar, keep_whitespace)


def _flag(name: str, help: str, apply: Setter, *, dev: bool = False) -> Option:
    return Option(name, help, False, apply, dev)


def _net_flag(name: str, network: str) -> Option:
    return _flag(name, f"Alias for --network={network}", _set_network(network))


def _exits(_cfg: Config, _value: str | None) -> None:
    """--help and friends are handled before any option is applied."""


_OPTIONS: list[Option] = [
    _arg("conf", "Specify configuration file", _set_abspath("conf"), metavar="<file>"),
    _arg(
        "lightning-dir",
        "Set base directory: network-specific subdirectory is under here",
        _set_abspath("lightning_dir"),
        show="lightning_dir",
        metavar="<dir>",
    ),
    _arg(
        "network",
        "Select the network parameters (bitcoin, testnet, signet, regtest)",
        _set_network(None),
        show="network",
    ),
    _net_flag("mainnet", "bitcoin"),
    _net_flag("testnet", "testnet"),
    _net_flag("testnet4", "testnet4"),
    _net_flag("signet", "signet"),
    _net_flag("regtest", "regtest"),
    _flag("version", "Print version and exit", _exits),
    _flag("help", "Print this message.", _exits),
    _flag("list-features-only", "List the features configured, and exit immediately", _exits),
    _flag(
        "developer",
        "Enable developer commands/options, disable legacy APIs",
        _set_true("developer"),
    ),
    _arg("rpc-file", "Set JSON-RPC socket (or /dev/tty)", _set("rpc_file"), show="rpc_file"),
    _arg(
        "rpc-file-mode",
        "Set the file mode (permissions) for the JSON-RPC socket",
        _set("rpc_file_mode", _parse_rpc_file_mode),
        show="rpc_file_mode",
    ),
    _flag("daemon", "Run in the background, suppress stdout/stderr", _set_true("daemon")),
    _arg("pid-file", "Specify pid file", _set("pid_file"), show="pid_file", metavar="<file>"),
    _arg(
        "addr",
        "Set an IP address (v4 or v6) to listen on and announce to the network "
        "for incoming connections",
        _add_address("addr"),
    ),
    _arg(
        "bind-addr",
        "Set an IP address (v4 or v6) to listen on, but not announce",
        _add_address("bind_addr"),
    ),
    _arg(
        "announce-addr",
        "Set an IP address (v4 or v6) or .onion v3 to announce, but not listen on",
        _add_address("announce_addr"),
    ),
    _arg(
        "alias",
        "Up to 32-byte alias for node",
        _set("alias", _parse_alias),
        keep_whitespace=True,
    ),
    _arg("rgb", "RRGGBB hex color for node", _set("rgb", _parse_rgb)),
    _arg(
        "log-level",
        "log level (io, trace, debug, info, unusual, broken) [:prefix]",
        _set_log_level,
        show="log_level",
    ),
    _arg(
        "log-timestamps",
        "prefix log messages with timestamp",
        _set("log_timestamps", _parse_bool),
        show="log_timestamps",
    ),
    _arg("log-prefix", "log prefix", _set("log_prefix"), keep_whitespace=True),
    _arg(
        "log-file",
        "Also log to file (- for stdout)",
        _append("log_file"),
        metavar="<file>",
    ),
    _arg("bitcoin-datadir", "-datadir arg for bitcoin-cli", _set("bitcoin_datadir")),
    _arg("bitcoin-cli", "bitcoin-cli pathname (accepted, unused)", _set("bitcoin_cli")),
    _arg("bitcoin-rpcuser", "bitcoind RPC username", _set("bitcoin_rpcuser")),
    _arg("bitcoin-rpcpassword", "bitcoind RPC password", _set("bitcoin_rpcpassword")),
    _arg(
        "bitcoin-rpcconnect",
        "bitcoind RPC host to connect to (host or host:port)",
        _set_rpcconnect,
        show="bitcoin_rpcconnect",
    ),
    _arg(
        "bitcoin-rpcport",
        "bitcoind RPC port",
        _set("bitcoin_rpcport", _parse_port),
        show="bitcoin_rpcport",
    ),
    _arg(
        "funding-confirms",
        "Confirmations required for funding transaction",
        _u32("funding_confirms", minimum=1),
        show="funding_confirms",
    ),
    _arg(
        "min-capacity-sat",
        "Minimum capacity in satoshis for accepting channels",
        _set("min_capacity_sat", lambda v: _parse_number(v, _U64_MAX)),
        show="min_capacity_sat",
    ),
    _arg(
        "max-concurrent-htlcs",
        "Number of HTLCs one channel can handle concurrently. Should be between 1 and 483",
        _u32("max_concurrent_htlcs", minimum=1, maximum=MAX_ACCEPTED_HTLCS),
        show="max_concurrent_htlcs",
    ),
    _arg(
        "htlc-minimum-msat",
        "The default minimal value an HTLC must carry in order to be forwardable for new channels",
        _set("htlc_minimum_msat", _parse_msat_opt),
        show="htlc_minimum_msat",
    ),
    _arg(
        "htlc-maximum-msat",
        "The default maximal value an HTLC must carry in order to be forwardable for new channels",
        _set("htlc_maximum_msat", _parse_msat_opt),
    ),
    _arg(
        "watchtime-blocks",
        "Blocks before peer can unilaterally spend funds",
        _u32("watchtime_blocks"),
        show="watchtime_blocks",
    ),
    _arg(
        "max-locktime-blocks",
        "Maximum blocks funds may be locked for (deprecated in CLN: BOLT #4 says 2016)",
        _u32("max_locktime_blocks"),
        show="max_locktime_blocks",
    ),
    _arg(
        "commit-feerate-offset",
        "Additional feerate per kw to apply to feerate updates as the channel opener",
        _u32("commit_feerate_offset"),
        show="commit_feerate_offset",
    ),
    # Testing options we implement.
    _arg(
        "dev-bitcoind-poll",
        "Time between polling for new transactions",
        _u32("dev_bitcoind_poll"),
        dev=True,
        show="dev_bitcoind_poll",
    ),
    _arg(
        "dev-timeout-secs",
        "Seconds to timeout if we don't receive INIT from peer",
        _u32("dev_timeout_secs"),
        dev=True,
        show="dev_timeout_secs",
    ),
    _arg(
        "dev-opening-timeout",
        "Seconds openingd waits for each message from the peer before giving up",
        _u32("dev_opening_timeout"),
        dev=True,
        show="dev_opening_timeout",
    ),
    _flag(
        "dev-allow-localhost",
        "Announce and allow announcments for localhost address",
        _set_true("dev_allow_localhost"),
        dev=True,
    ),
    _arg(
        "dev-force-privkey",
        "Force HSM to use this as node private key",
        _set("dev_force_privkey", lambda v: _parse_hex(v, 32, "privkey")),
        dev=True,
    ),
    _arg(
        "dev-force-bip32-seed",
        "Force HSM to use this as bip32 seed",
        _set("dev_force_bip32_seed", lambda v: _parse_hex(v, 32, "secret")),
        dev=True,
    ),
    _arg(
        "dev-force-channel-secrets",
        "Force HSM to use these for all per-channel secrets",
        _set("dev_force_channel_secrets", _parse_channel_secrets),
        dev=True,
    ),
    _arg(
        "dev-force-tmp-channel-id",
        "Force the temporary channel id, instead of random",
        _set("dev_force_tmp_channel_id", lambda v: _parse_hex(v, 32, "channel id")),
        dev=True,
    ),
    _flag(
        "dev-fast-gossip",
        "Make gossip broadcast 1 second, etc",
        _set_true("dev_fast_gossip"),
        dev=True,
    ),
    _flag(
        "dev-no-htlc-timeout",
        "Don't kill channeld if HTLCs not confirmed within 30 seconds",
        _set_true("dev_no_htlc_timeout"),
        dev=True,
    ),
    # Refused rather than ignored: running without them would surprise the user.
    _flag(
        "encrypted-hsm",
        "Encrypt hsm_secret with a password",
        _unsupported("an encrypted hsm_secret"),
    ),
    _flag(
        "test-daemons-only",
        "Test that subdaemons can be run, then exit immediately",
        _unsupported("--test-daemons-only"),
    ),
    _arg("recover", "Populate hsm_secret from a codex32 secret", _unsupported("--recover")),
]

# CLN options we accept (pyln-testing and CLN users pass them) but do not
# implement yet: (name, takes an argument, value check). A dev- name needs --developer.
_NOT_IMPLEMENTED: list[tuple[str, bool, Callable[[str], object] | None]] = [
    ("allow-deprecated-apis", True, _parse_bool),
    ("plugin", True, None),
    ("plugin-dir", True, None),
    ("clear-plugins", False, None),
    ("disable-plugin", True, None),
    ("important-plugin", True, None),
    ("always-use-proxy", True, _parse_bool),
    ("wallet", True, None),
    ("large-channels", False, None),
    ("wumbo", False, None),
    ("experimental-dual-fund", False, None),
    ("experimental-splicing", False, None),
    ("experimental-shutdown-wrong-funding", False, None),
    ("experimental-peer-storage", False, None),
    ("experimental-upgrade-protocol", False, None),
    ("ignore-fee-limits", True, _parse_bool),
    ("require-confirmed-inputs", True, _parse_bool),
    ("cltv-delta", True, lambda v: _parse_number(v, _U32_MAX)),
    ("cltv-final", True, lambda v: _parse_number(v, _U32_MAX)),
    ("commit-time", True, lambda v: _parse_number(v, _U32_MAX)),
    ("fee-base", True, lambda v: _parse_number(v, _U32_MAX)),
    ("fee-per-satoshi", True, lambda v: _parse_number(v, _U32_MAX)),
    ("rescan", True, lambda v: _parse_number(v.removeprefix("-"), 2**31)),
    ("max-dust-htlc-exposure-msat", True, _parse_msat_opt),
    ("min-emergency-msat", True, _parse_msat_opt),
    ("announce-addr-discovered", True, None),
    ("announce-addr-discovered-port", True, _parse_port),
    ("offline", False, None),
    ("autolisten", True, _parse_bool),
    ("proxy", True, None),
    ("tor-service-password", True, None),
    ("disable-dns", False, None),
    ("accept-htlc-tlv-type", True, lambda v: _parse_number(v, _U64_MAX)),
    ("force-feerates", True, None),
    ("commit-fee", True, lambda v: _parse_number(v, _U64_MAX)),
    ("subdaemon", True, None),
    ("database-upgrade", True, _parse_bool),
    ("i-promise-to-fix-broken-api-user", True, None),
    ("invoices-onchain-fallback", False, None),
    ("autoconnect-seeker-peers", True, lambda v: _parse_number(v, _U32_MAX)),
    # Options of CLN's built-in plugins that test setups commonly pass.
    ("bitcoin-retry-timeout", True, lambda v: _parse_number(v, _U64_MAX)),
    ("grpc-port", True, _parse_port),
    ("disable-mpp", False, None),
    # CLN's other --dev-* options (lightningd/options.c dev_register_opts).
    ("dev-debugger", True, None),
    ("dev-no-plugin-checksum", False, None),
    ("dev-builtin-plugins-unimportant", False, None),
    ("dev-no-reconnect", False, None),
    ("dev-no-reconnect-private", False, None),
    ("dev-fast-reconnect", False, None),
    ("dev-fail-on-subdaemon-fail", False, None),
    ("dev-disconnect", True, None),
    ("dev-fast-gossip-prune", False, None),
    ("dev-gossip-time", True, lambda v: _parse_number(v, _U32_MAX)),
    ("dev-max-funding-unconfirmed-blocks", True, lambda v: _parse_number(v, _U32_MAX)),
    ("dev-no-version-checks", False, None),
    ("dev-force-features", True, None),
    ("dev-fail-process-onionpacket", False, None),
    ("dev-no-modern-onion", False, None),
    ("dev-disable-commit-after", True, None),
    ("dev-no-ping-timer", False, None),
    ("dev-onion-reply-length", True, lambda v: _parse_number(v, _U32_MAX)),
    ("dev-max-fee-multiplier", True, lambda v: _parse_number(v, _U32_MAX)),
    ("dev-allowdustreserve", True, _parse_bool),
    ("dev-any-channel-type", False, None),
    ("dev-allow-shutdown-destination-change", False, None),
    ("dev-hsmd-no-preapprove-check", False, None),
    ("dev-hsmd-fail-preapprove", False, None),
    ("dev-fd-limit-multiplier", True, lambda v: _parse_number(v, _U32_MAX)),
    ("dev-handshake-no-reply", False, None),
    ("dev-strict-forwarding", False, None),
    ("dev-throttle-gossip", False, None),
    ("dev-limit-connections-inflight", False, None),
    ("dev-low-prio-anchor-blocks", True, lambda v: _parse_number(v, _U32_MAX)),
    ("dev-crash-after", True, lambda v: _parse_number(v, _U32_MAX)),
    ("dev-debug-self", False, None),
]

_OPTIONS += [
    Option(
        name,
        "(accepted for Core Lightning compatibility, not implemented)",
        takes_arg,
        _ignore(name, check),
        dev=name.startswith("dev-"),
    )
    for name, takes_arg, check in _NOT_IMPLEMENTED
]

OPTIONS: dict[str, Option] = {opt.name: opt for opt in _OPTIONS}
_SHORT_OPTIONS = {"h": "help", "V": "version"}
_EXIT_OPTIONS = ("version", "list-features-only", "help")
_EARLY_OPTIONS = frozenset(
    {"conf", "lightning-dir", "network", "mainnet", "testnet", "testnet4", "signet", "regtest"}
)


# --------------------------------------------------------------------------
# Gathering option lines from the command line and config files


class Source(enum.Enum):
    CMDLINE = "command line"
    EXPLICIT_CONF = "--conf file"
    BASE_CONF = "base config"
    NETWORK_CONF = "network config"


@dataclass(frozen=True)
class _Line:
    """One option as CLN's configvar holds it: `name=value` or `name`."""

    text: str
    source: Source
    file: str | None = None
    lineno: int = 0

    @property
    def name(self) -> str:
        return self.text.split("=", 1)[0]

    @property
    def value(self) -> str | None:
        _, sep, value = self.text.partition("=")
        return value if sep else None

    def error(self, problem: str) -> OptionError:
        if self.file is not None:
            return OptionError(
                f"Config file {self.file} line {self.lineno}: {self.text}: {problem}"
            )
        return OptionError(f"--{self.text}: {problem}")


def _gather_cmdline(argv: list[str]) -> list[_Line]:
    """`--opt=value`, `--opt value`, `--flag`, `-h`, `-V` (CLN's gather_cmdline_args)."""
    lines: list[_Line] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            text = arg[2:]
        elif arg.startswith("-") and len(arg) > 1:
            text = _SHORT_OPTIONS.get(arg[1:], arg[1:])
        else:
            raise OptionError(f"no arguments accepted: '{arg}'")
        if "=" not in text and _wants_next_arg(text, argv[i] if i < len(argv) else None):
            text = f"{text}={argv[i]}"
            i += 1
        lines.append(_Line(text, Source.CMDLINE))
    if i < len(argv):
        raise OptionError(f"no arguments accepted: '{argv[i]}'")
    return lines


def _wants_next_arg(name: str, following: str | None) -> bool:
    if following is None:
        return False
    opt = OPTIONS.get(name)
    if opt is not None:
        return opt.takes_arg
    # Unknown (it will fail anyway): guess as CLN does, so the error shows the value.
    return not following.startswith("-")


def _read_config_file(path: str, source: Source, must_exist: bool, depth: int = 0) -> list[_Line]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            contents = f.read()
    except OSError as exc:
        if must_exist:
            raise OptionError(f"Opening and reading {path}: {exc.strerror}") from None
        return []
    lines: list[_Line] = []
    for lineno, raw in enumerate(contents.splitlines(), start=1):
        text = raw.lstrip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("include "):
            lines += _include(path, text.removeprefix("include ").strip(), source, depth)
            continue
        lines.append(_Line(text, source, path, lineno))
    return lines


def _include(path: str, included: str, source: Source, depth: int) -> list[_Line]:
    if depth >= _MAX_INCLUDE_DEPTH:
        raise OptionError(f"Include loop with {path} and {included}")
    target = os.path.join(os.path.dirname(path), os.path.expanduser(included))
    return _read_config_file(target, source, must_exist=True, depth=depth + 1)


# --------------------------------------------------------------------------
# Applying option lines


def _check_allowed_here(line: _Line) -> None:
    """CLN's rules on where the options that locate config files may appear."""
    name = line.name
    if name == "conf" and line.source is not Source.CMDLINE:
        raise line.error("not permitted in configuration files")
    if name == "lightning-dir" and line.source in (Source.BASE_CONF, Source.NETWORK_CONF):
        raise line.error("not permitted in implicit configuration files")
    if name in _EARLY_OPTIONS - {"conf", "lightning-dir"} and line.source is Source.NETWORK_CONF:
        raise line.error("not permitted in network-specific configuration files")


def _apply_line(cfg: Config, line: _Line, developer: bool) -> None:
    opt = OPTIONS.get(line.name)
    if opt is None:
        raise line.error("unknown option")
    if opt.dev and not developer:
        raise line.error("requires --developer")
    _check_allowed_here(line)
    value = line.value
    if not opt.takes_arg and value is not None:
        raise line.error("doesn't allow an argument")
    if opt.takes_arg and value is None:
        raise line.error("requires an argument")
    if value is not None and not opt.keep_whitespace:
        value = value.rstrip()
    try:
        opt.apply(cfg, value)
    except ValueError as exc:
        raise line.error(str(exc)) from None
    cfg.explicit.add(opt.name)


def _apply_early(lines: list[_Line]) -> Config:
    """Only what locates the config files: --conf, --lightning-dir, the network."""
    scratch = Config()
    for line in lines:
        if line.name in _EARLY_OPTIONS:
            _apply_line(scratch, line, developer=True)
    return scratch


def _gather_config_files(cmdline: list[_Line]) -> tuple[Config, list[_Line]]:
    early = _apply_early(cmdline)
    if early.conf is not None:
        files = _read_config_file(early.conf, Source.EXPLICIT_CONF, must_exist=True)
        return _apply_early(files + cmdline), files
    base_path = os.path.join(early.lightning_dir, "config")
    base = _read_config_file(base_path, Source.BASE_CONF, must_exist=False)
    # The base config may choose the network, which says which file comes next.
    early = _apply_early(base + cmdline)
    net_path = os.path.join(early.network_dir, "config")
    network = _read_config_file(net_path, Source.NETWORK_CONF, must_exist=False)
    return early, base + network


def _finish(cfg: Config) -> None:
    """Defaults that depend on other options, and checks across options."""
    cfg.pid_file = cfg.pid_path
    # CLN opens log files after chdir-ing into the network directory.
    cfg.log_file = [f if f == "-" else os.path.join(cfg.network_dir, f) for f in cfg.log_file]
    if cfg._rpcconnect_port is not None and "bitcoin-rpcport" not in cfg.explicit:
        # bitcoin-cli also lets an explicit -rpcport win over a port in -rpcconnect.
        cfg.bitcoin_rpcport = cfg._rpcconnect_port
    if cfg.daemon and not cfg.log_file:
        raise OptionError("--daemon needs --log-file")
    # lightningd creates the network dir (and chdirs into it): a file on the way is fatal.
    blocker = _existing_ancestor(cfg.network_dir)
    if not os.path.isdir(blocker):
        raise OptionError(f"--lightning-dir={cfg.lightning_dir}: {blocker} is not a directory")


def _existing_ancestor(path: str) -> str:
    """`path` itself if it exists, else its closest existing parent."""
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def parse_options(argv: list[str]) -> Config:
    """The configuration from `argv` (without the program name) and the config files.

    Raises OptionError for anything wrong, EarlyExit for --help, --version and
    --list-features-only.
    """
    cmdline = _gather_cmdline(argv)
    _check_early_exits(cmdline)
    early, files = _gather_config_files(cmdline)
    lines = files + cmdline
    developer = any(line.name == "developer" for line in lines)
    cfg = Config.for_network(early.network)
    for line in lines:
        _apply_line(cfg, line, developer)
    _finish(cfg)
    return cfg


# --------------------------------------------------------------------------
# --help, --version, --list-features-only


def _check_early_exits(cmdline: list[_Line]) -> None:
    """CLN handles --version and --list-features-only first, --help after them."""
    asked = {line.name: line for line in cmdline if line.name in _EXIT_OPTIONS}
    for name in _EXIT_OPTIONS:
        line = asked.get(name)
        if line is None:
            continue
        if line.value is not None:
            raise line.error("doesn't allow an argument")
        if name == "version":
            raise EarlyExit(VERSION + "\n")
        if name == "list-features-only":
            raise EarlyExit(list_features_text())
        raise EarlyExit(usage_text(_help_defaults(cmdline)))


def list_features_text() -> str:
    """CLN's --list-features-only: our init features, then capability lines."""
    lines = [*features.list_features_lines(), "supports_open_accept_channel_type"]
    return "".join(line + "\n" for line in lines)


def _help_defaults(cmdline: list[_Line]) -> Config:
    """Defaults for the network chosen on the command line, if it parses."""
    try:
        early = _apply_early(cmdline)
        return Config.for_network(early.network, lightning_dir=early.lightning_dir)
    except (OptionError, ValueError):
        return Config()


def _show_value(value: object) -> str | None:
    if value is None or value is False or value == []:
        return None
    if isinstance(value, LogLevel):
        return value.name.lower()
    if value is True:
        return "true"
    return f'"{value}"' if isinstance(value, str) else str(value)


def usage_text(defaults: Config | None = None) -> str:
    """--help: every option, one line each, with its default like ccan/opt does."""
    cfg = defaults or Config()
    out = [
        "Usage: lightningd",
        f"A bitcoin lightning daemon (default values shown for network: {cfg.network}).",
    ]
    for opt in _OPTIONS:
        names = f"--{opt.name}" + (f"={opt.metavar}" if opt.takes_arg else "")
        if opt.name in ("help", "version"):
            names += "|-" + ("h" if opt.name == "help" else "V")
        line = f"{names:<40} {opt.help}"
        shown = _show_value(getattr(cfg, opt.show)) if opt.show else None
        if opt.name == "pid-file":
            shown = f'"{cfg.pid_path}"'
        if shown is not None:
            line += f" (default: {shown})"
        if opt.dev:
            line += " [--developer]"
        out.append(line)
    return "\n".join(out) + "\n"
