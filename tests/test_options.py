"""lightningd/options.py: CLN's command line and config files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.features import list_features_lines
from common.status import LogLevel
from common.version import VERSION
from lightningd.options import (
    OPTIONS,
    Config,
    EarlyExit,
    NetAddr,
    OptionError,
    parse_options,
    parse_wireaddr,
)

KEY = "01" * 32
SECRETS = "/".join(f"{i:02x}" * 32 for i in range(1, 7))


@pytest.fixture
def ldir(tmp_path: Path) -> Path:
    return tmp_path / "ld"


def parse(ldir: Path, *args: str) -> Config:
    return parse_options([f"--lightning-dir={ldir}", *args])


def error(ldir: Path, *args: str) -> str:
    with pytest.raises(OptionError) as info:
        parse(ldir, *args)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- defaults ---------------------------------------------------------------


def test_mainnet_defaults(ldir: Path) -> None:
    cfg = parse(ldir)
    assert cfg.lightning_dir == str(ldir)
    assert cfg.network == "bitcoin"
    assert cfg.network_dir == str(ldir / "bitcoin")
    assert cfg.rpc_path == str(ldir / "bitcoin" / "lightning-rpc")
    assert cfg.pid_file == str(ldir / "lightningd-bitcoin.pid")
    assert cfg.chain.network == "bitcoin"
    assert (cfg.addr, cfg.bind_addr, cfg.announce_addr) == ([], [], [])
    assert cfg.alias is None and cfg.rgb is None
    assert cfg.log_level is LogLevel.INFO and cfg.log_level_filters == []
    assert cfg.log_file == [] and cfg.log_prefix == "" and cfg.log_timestamps is True
    assert cfg.daemon is False and cfg.developer is False
    assert cfg.bitcoin_rpcconnect == "127.0.0.1" and cfg.bitcoin_rpcport == 8332
    assert cfg.bitcoin_rpcuser is None and cfg.bitcoin_rpcpassword is None
    assert cfg.funding_confirms == 3
    assert cfg.max_concurrent_htlcs == 30
    assert cfg.watchtime_blocks == 144
    assert cfg.min_capacity_sat == 10000
    assert cfg.htlc_minimum_msat == 0 and cfg.htlc_maximum_msat is None
    assert cfg.max_locktime_blocks == 2016
    assert cfg.commit_feerate_offset == 5
    assert cfg.rpc_file_mode == "0600" and cfg.rpc_file_mode_bits == 0o600
    assert cfg.dev_bitcoind_poll == 30
    assert cfg.ignored_dev_options == []


@pytest.mark.parametrize("network", ["regtest", "testnet", "signet"])
def test_test_network_defaults(ldir: Path, network: str) -> None:
    cfg = parse(ldir, f"--network={network}")
    # CLN's testnet_config applies to every test network.
    assert (cfg.funding_confirms, cfg.max_concurrent_htlcs, cfg.watchtime_blocks) == (1, 483, 6)
    assert cfg.bitcoin_rpcport == cfg.chain.bitcoind_rpcport
    assert cfg.pid_file == str(ldir / f"lightningd-{network}.pid")


def test_default_lightning_dir_is_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_options([])
    assert cfg.lightning_dir == str(tmp_path / ".lightning")


def test_relative_lightning_dir_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_options(["--lightning-dir=foo"]).lightning_dir == str(tmp_path / "foo")


def test_nothing_is_created(ldir: Path) -> None:
    parse(ldir, "--regtest", "--log-file=log")
    assert not ldir.exists()


# -- command-line syntax ----------------------------------------------------


def test_value_forms(ldir: Path) -> None:
    assert parse(ldir, "--alias", "bob").alias == "bob"
    assert parse(ldir, "--alias=bob").alias == "bob"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frob"], "--frob: unknown option"),
        (["--frob=1"], "--frob=1: unknown option"),
        (["--developer=1"], "--developer=1: doesn't allow an argument"),
        (["--alias"], "--alias: requires an argument"),
        (["stray"], "no arguments accepted: 'stray'"),
        (["-x"], "--x: unknown option"),
    ],
)
def test_syntax_errors(ldir: Path, args: list[str], message: str) -> None:
    assert error(ldir, *args) == message


@pytest.mark.parametrize(
    ("flag", "network"),
    [
        ("--mainnet", "bitcoin"),
        ("--testnet", "testnet"),
        ("--signet", "signet"),
        ("--regtest", "regtest"),
    ],
)
def test_network_shortcuts(ldir: Path, flag: str, network: str) -> None:
    assert parse(ldir, flag).network == network


def test_bad_network(ldir: Path) -> None:
    assert error(ldir, "--network=litecoin") == (
        "--network=litecoin: Unknown network name 'litecoin'"
    )
    assert "Unknown network name 'testnet4'" in error(ldir, "--testnet4")


def test_last_network_wins(ldir: Path) -> None:
    assert parse(ldir, "--testnet", "--regtest").network == "regtest"


# -- each option: good and bad values ----------------------------------------


@pytest.mark.parametrize(
    ("option", "attr", "value", "expected"),
    [
        ("funding-confirms", "funding_confirms", "6", 6),
        ("funding-confirms", "funding_confirms", "0x10", 16),
        ("max-concurrent-htlcs", "max_concurrent_htlcs", "483", 483),
        ("max-concurrent-htlcs", "max_concurrent_htlcs", "1", 1),
        ("watchtime-blocks", "watchtime_blocks", "5", 5),
        ("max-locktime-blocks", "max_locktime_blocks", "1000", 1000),
        ("commit-feerate-offset", "commit_feerate_offset", "0", 0),
        ("min-capacity-sat", "min_capacity_sat", "20000000000", 20000000000),
        ("htlc-minimum-msat", "htlc_minimum_msat", "1000", 1000),
        ("htlc-minimum-msat", "htlc_minimum_msat", "2sat", 2000),
        ("htlc-maximum-msat", "htlc_maximum_msat", "100000msat", 100000),
        ("rpc-file", "rpc_file", "my-rpc", "my-rpc"),
        ("rpc-file-mode", "rpc_file_mode", "0660", "0660"),
        ("alias", "alias", "x" * 32, "x" * 32),
        ("alias", "alias", "with trailing ", "with trailing "),
        ("rgb", "rgb", "FF0a01", b"\xff\x0a\x01"),
        ("log-prefix", "log_prefix", "node-1 ", "node-1 "),
        ("log-timestamps", "log_timestamps", "false", False),
        ("log-timestamps", "log_timestamps", "YES", True),
        ("bitcoin-rpcuser", "bitcoin_rpcuser", "u", "u"),
        ("bitcoin-rpcpassword", "bitcoin_rpcpassword", "p", "p"),
        ("bitcoin-rpcport", "bitcoin_rpcport", "18444", 18444),
        ("bitcoin-datadir", "bitcoin_datadir", "/btc", "/btc"),
        ("bitcoin-cli", "bitcoin_cli", "/usr/bin/bitcoin-cli", "/usr/bin/bitcoin-cli"),
    ],
)
def test_good_values(ldir: Path, option: str, attr: str, value: str, expected: object) -> None:
    cfg = parse(ldir, f"--{option}={value}")
    assert getattr(cfg, attr) == expected
    assert option in cfg.explicit


def test_trailing_whitespace_trimmed_except_alias(ldir: Path) -> None:
    assert parse(ldir, "--rpc-file=x  ").rpc_file == "x"


@pytest.mark.parametrize(
    ("arg", "problem"),
    [
        ("--funding-confirms=abc", "'abc' is not a number"),
        ("--funding-confirms=-1", "'-1' is not a number"),
        ("--funding-confirms=0", "must be between 1 and"),
        ("--funding-confirms=4294967296", "'4294967296' is out of range"),
        ("--max-concurrent-htlcs=484", "must be between 1 and 483, not 484"),
        ("--max-concurrent-htlcs=0", "must be between 1 and 483"),
        ("--watchtime-blocks=1.5", "'1.5' is not a number"),
        ("--min-capacity-sat=lots", "'lots' is not a number"),
        ("--htlc-minimum-msat=1.5msat", "Unable to parse millisatoshi '1.5msat'"),
        ("--htlc-maximum-msat=x", "Unable to parse millisatoshi 'x'"),
        ("--rpc-file-mode=600", "'600' is not a file mode"),
        ("--rpc-file-mode=0800", "'0800' is not a file mode"),
        ("--alias=" + "x" * 33, "is over 32 bytes"),
        ("--alias=" + "é" * 17, "is over 32 bytes"),
        ("--rgb=ff00", "rgb 'ff00' is not six hex digits"),
        ("--rgb=gg0000", "rgb 'gg0000' is not six hex digits"),
        ("--log-level=loud", "unknown log level loud"),
        ("--log-timestamps=maybe", "Invalid argument 'maybe'"),
        ("--bitcoin-rpcport=0", "port 0 out of range"),
        ("--bitcoin-rpcport=65536", "port 65536 out of range"),
        ("--bitcoin-rpcconnect=host:x", "port 'x' is not a number"),
    ],
)
def test_bad_values(ldir: Path, arg: str, problem: str) -> None:
    message = error(ldir, arg)
    assert message.startswith(arg + ": ")
    assert problem in message


def test_alias_counts_utf8_bytes(ldir: Path) -> None:
    assert parse(ldir, "--alias=" + "é" * 16).alias == "é" * 16


# -- logging options ---------------------------------------------------------


def test_log_level_and_filters(ldir: Path) -> None:
    cfg = parse(ldir, "--log-level=debug", "--log-level=io:openingd", "--log-level=warn:0266")
    assert cfg.log_level is LogLevel.DEBUG
    assert cfg.log_level_filters == [(LogLevel.IO, "openingd"), (LogLevel.UNUSUAL, "0266")]
    assert parse(ldir, "--log-level=error").log_level is LogLevel.BROKEN
    assert parse(ldir, "--log-level=TRACE").log_level is LogLevel.TRACE


def test_log_files_accumulate_and_resolve_in_network_dir(ldir: Path) -> None:
    cfg = parse(ldir, "--regtest", "--log-file=-", "--log-file=log", "--log-file=/abs/log")
    assert cfg.log_file == ["-", str(ldir / "regtest" / "log"), "/abs/log"]


def test_daemon_needs_log_file(ldir: Path) -> None:
    assert error(ldir, "--daemon") == "--daemon needs --log-file"
    assert parse(ldir, "--daemon", "--log-file=log").daemon is True


def test_pid_file(ldir: Path) -> None:
    assert parse(ldir, "--regtest", "--pid-file=x.pid").pid_file == str(ldir / "regtest/x.pid")
    assert parse(ldir, "--pid-file=/run/ln.pid").pid_file == "/run/ln.pid"


# -- bitcoind ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("10.0.0.1", "10.0.0.1", 18443),
        ("10.0.0.1:1234", "10.0.0.1", 1234),
        ("bitcoind.local:8000", "bitcoind.local", 8000),
        ("[::1]:1234", "::1", 1234),
        ("::1", "::1", 18443),
    ],
)
def test_rpcconnect(ldir: Path, value: str, host: str, port: int) -> None:
    cfg = parse(ldir, "--regtest", f"--bitcoin-rpcconnect={value}")
    assert (cfg.bitcoin_rpcconnect, cfg.bitcoin_rpcport) == (host, port)


def test_explicit_rpcport_beats_rpcconnect_port(ldir: Path) -> None:
    for args in (
        ["--bitcoin-rpcport=99", "--bitcoin-rpcconnect=h:1234"],
        ["--bitcoin-rpcconnect=h:1234", "--bitcoin-rpcport=99"],
    ):
        assert parse(ldir, *args).bitcoin_rpcport == 99


# -- addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1234", NetAddr("ipv4", "127.0.0.1", 1234)),
        ("127.0.0.1", NetAddr("ipv4", "127.0.0.1", 9735)),
        ("[::1]:1234", NetAddr("ipv6", "::1", 1234)),
        ("[::1]", NetAddr("ipv6", "::1", 9735)),
        ("fe80::1", NetAddr("ipv6", "fe80::1", 9735)),
        ("localhost:99", NetAddr("dns", "localhost", 99)),
        (":9736", NetAddr("wildcard", "", 9736)),
        ("/tmp/sock", NetAddr("socket", "/tmp/sock", 0)),
        ("dns:example.com:9735", NetAddr("dns", "example.com", 9735)),
        ("a" * 56 + ".onion:9735", NetAddr("torv3", "a" * 56 + ".onion", 9735)),
    ],
)
def test_parse_wireaddr(text: str, expected: NetAddr) -> None:
    assert parse_wireaddr(text, 9735) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1.2.3.4:0", "port 0 out of range"),
        ("1.2.3.4:65536", "port 65536 out of range"),
        ("1.2.3.4:http", "port 'http' is not a number"),
        ("[::1", "missing ']'"),
        ("[::1]x", "unexpected 'x'"),
        ("[nothex]:1", "in brackets is not an IPv6 address"),
        ("[1.2.3.4]:1", "in brackets is not an IPv6 address"),
        ("300.1.1.1", "not a valid IPv4 address"),
        ("bad_host:1", "not a valid address or host name"),
        ("short.onion", "not a Tor v3 .onion address"),
        ("autotor:127.0.0.1:9051", "'autotor:' addresses are not supported"),
        ("statictor:127.0.0.1:9051", "'statictor:' addresses are not supported"),
        ("dns:1.2.3.4", "is not a host name"),
    ],
)
def test_parse_wireaddr_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_wireaddr(text, 9735)


def test_addresses_accumulate(ldir: Path) -> None:
    cfg = parse(
        ldir,
        "--regtest",
        "--addr=127.0.0.1:1",
        "--addr=[::1]:2",
        "--bind-addr=0.0.0.0:3",
        "--bind-addr=/tmp/s",
        "--announce-addr=1.2.3.4:5",
        "--announce-addr=dns:example.com",
    )
    assert cfg.addr == ["127.0.0.1:1", "[::1]:2"]
    assert cfg.bind_addr == ["0.0.0.0:3", "/tmp/s"]
    assert cfg.announce_addr == ["1.2.3.4:5", "dns:example.com"]
    assert [str(a) for a in cfg.listen_addrs] == ["127.0.0.1:1", "[::1]:2", "0.0.0.0:3", "/tmp/s"]
    assert [str(a) for a in cfg.announce_addrs] == [
        "127.0.0.1:1",
        "[::1]:2",
        "1.2.3.4:5",
        "example.com:19846",
    ]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--addr=/tmp/s"], "Don't use --addr=/tmp/s, use --bind-addr=/tmp/s"),
        (["--announce-addr=/tmp/s"], "Cannot announce sockets"),
        (["--announce-addr=0.0.0.0:1"], "Cannot use wildcard address"),
        (["--announce-addr=:9735"], "Cannot use wildcard address"),
        (["--bind-addr=dns:example.com"], "Cannot use dns: prefix with --bind-addr"),
        (["--addr=" + "a" * 56 + ".onion"], "use --announce-addr="),
        (["--addr=1.1.1.1", "--bind-addr=1.1.1.1:9735"], "Duplicate listen address 1.1.1.1:9735"),
        (["--addr=1.1.1.1", "--announce-addr=1.1.1.1"], "Duplicate announce address"),
        (["--addr=1.2.3.4:99999"], "port 99999 out of range"),
    ],
)
def test_address_option_errors(ldir: Path, args: list[str], problem: str) -> None:
    message = error(ldir, *args)
    assert message.startswith(args[-1] + ": ")
    assert problem in message


# -- developer options -------------------------------------------------------


@pytest.mark.parametrize(
    "arg",
    [
        "--dev-fast-gossip",
        "--dev-bitcoind-poll=1",
        f"--dev-force-privkey={KEY}",
        "--dev-no-reconnect",
        "--dev-debugger=openingd",
    ],
)
def test_dev_options_require_developer(ldir: Path, arg: str) -> None:
    assert error(ldir, arg) == f"{arg}: requires --developer"


def test_dev_options(ldir: Path) -> None:
    cfg = parse(
        ldir,
        "--developer",
        "--dev-bitcoind-poll=1",
        "--dev-allow-localhost",
        f"--dev-force-privkey={KEY}",
        f"--dev-force-bip32-seed={'02' * 32}",
        f"--dev-force-channel-secrets={SECRETS.upper()}",
        f"--dev-force-tmp-channel-id={'03' * 32}",
        "--dev-fast-gossip",
        "--dev-no-htlc-timeout",
    )
    assert cfg.developer
    assert cfg.dev_bitcoind_poll == 1
    assert cfg.dev_allow_localhost and cfg.dev_fast_gossip and cfg.dev_no_htlc_timeout
    assert cfg.dev_force_privkey == KEY
    assert cfg.dev_force_bip32_seed == "02" * 32
    assert cfg.dev_force_channel_secrets == SECRETS
    assert cfg.dev_force_tmp_channel_id == "03" * 32


def test_developer_may_come_after_dev_options(ldir: Path) -> None:
    assert parse(ldir, "--dev-fast-gossip", "--developer").dev_fast_gossip


@pytest.mark.parametrize(
    ("arg", "problem"),
    [
        ("--dev-force-privkey=" + "01" * 31, "Unable to parse privkey"),
        ("--dev-force-privkey=" + "zz" * 32, "Unable to parse privkey"),
        ("--dev-force-bip32-seed=abc", "Unable to parse secret"),
        ("--dev-force-tmp-channel-id=" + "01" * 33, "Unable to parse channel id"),
        ("--dev-force-channel-secrets=" + SECRETS.rsplit("/", 1)[0], "Expected 6 hex secrets"),
        ("--dev-force-channel-secrets=" + SECRETS + "/" + KEY, "Expected 6 hex secrets"),
        ("--dev-force-channel-secrets=" + SECRETS[:-2] + "zz", "Expected 6 hex secrets"),
        ("--dev-bitcoind-poll=soon", "'soon' is not a number"),
    ],
)
def test_bad_dev_values(ldir: Path, arg: str, problem: str) -> None:
    assert problem in error(ldir, "--developer", arg)


def test_ignored_options_are_recorded(ldir: Path) -> None:
    # What pyln-testing's LightningNode passes, roughly.
    cfg = parse(
        ldir,
        "--developer",
        "--log-level=debug",
        "--cltv-delta=6",
        "--rescan=1",
        "--disable-dns",
        "--allow-deprecated-apis=false",
        "--ignore-fee-limits=false",
        "--dev-fail-on-subdaemon-fail",
        "--dev-no-reconnect",
        "--dev-fast-reconnect",
        "--dev-no-version-checks",
        "--dev-debugger=openingd",
        "--plugin=/x/plugin.py",
        "--disable-plugin=bcli",
    )
    assert cfg.ignored_dev_options == [
        "--cltv-delta=6",
        "--rescan=1",
        "--disable-dns",
        "--allow-deprecated-apis=false",
        "--ignore-fee-limits=false",
        "--dev-fail-on-subdaemon-fail",
        "--dev-no-reconnect",
        "--dev-fast-reconnect",
        "--dev-no-version-checks",
        "--dev-debugger=openingd",
        "--plugin=/x/plugin.py",
        "--disable-plugin=bcli",
    ]


def test_ignored_options_still_check_their_values(ldir: Path) -> None:
    assert "Invalid argument 'perhaps'" in error(ldir, "--allow-deprecated-apis=perhaps")
    assert "doesn't allow an argument" in error(ldir, "--developer", "--dev-no-reconnect=1")


def test_refused_options(ldir: Path) -> None:
    assert "not supported" in error(ldir, "--encrypted-hsm")


# -- config files ------------------------------------------------------------


def test_base_and_network_config(ldir: Path) -> None:
    write(ldir / "config", "# comment\n\nnetwork=regtest\nalias=base\nlog-file=base.log\n")
    write(ldir / "regtest" / "config", "alias=net\nrgb=010203\nlog-file=net.log\n")
    cfg = parse(ldir)
    assert cfg.network == "regtest"
    assert cfg.alias == "net"
    assert cfg.rgb == b"\x01\x02\x03"
    assert cfg.log_file == [str(ldir / "regtest" / n) for n in ("base.log", "net.log")]


def test_network_config_follows_command_line_network(ldir: Path) -> None:
    write(ldir / "config", "network=testnet\n")
    write(ldir / "regtest" / "config", "alias=regtest-node\n")
    write(ldir / "testnet" / "config", "alias=testnet-node\n")
    assert parse(ldir, "--regtest").alias == "regtest-node"
    assert parse(ldir).alias == "testnet-node"


def test_command_line_overrides_config(ldir: Path) -> None:
    write(ldir / "config", "alias=file\nfunding-confirms=5\naddr=127.0.0.1:1\n")
    cfg = parse(ldir, "--alias=cmdline", "--addr=127.0.0.1:2")
    assert cfg.alias == "cmdline"
    assert cfg.funding_confirms == 5
    # Multi-valued options accumulate, config files first (CLN joins them so).
    assert cfg.addr == ["127.0.0.1:1", "127.0.0.1:2"]


def test_flags_and_crlf_in_config(ldir: Path) -> None:
    write(ldir / "config", "developer\r\ndev-fast-gossip\r\n  regtest\r\n")
    cfg = parse(ldir)
    assert cfg.developer and cfg.dev_fast_gossip and cfg.network == "regtest"


def test_dev_option_in_config_needs_developer(ldir: Path) -> None:
    path = write(ldir / "config", "dev-fast-gossip\n")
    assert error(ldir) == f"Config file {path} line 1: dev-fast-gossip: requires --developer"
    assert parse(ldir, "--developer").dev_fast_gossip


def test_explicit_conf_replaces_default_files(ldir: Path, tmp_path: Path) -> None:
    write(ldir / "config", "alias=default\n")
    conf = write(tmp_path / "my.conf", "alias=explicit\nnetwork=signet\n")
    cfg = parse(ldir, f"--conf={conf}")
    assert (cfg.alias, cfg.network, cfg.conf) == ("explicit", "signet", str(conf))


def test_explicit_conf_may_set_lightning_dir(tmp_path: Path) -> None:
    conf = write(tmp_path / "my.conf", f"lightning-dir={tmp_path / 'elsewhere'}\n")
    cfg = parse_options([f"--conf={conf}"])
    assert cfg.lightning_dir == str(tmp_path / "elsewhere")


def test_explicit_conf_must_exist(ldir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    assert error(ldir, f"--conf={missing}") == (
        f"Opening and reading {missing}: No such file or directory"
    )


def test_include(ldir: Path) -> None:
    write(ldir / "extra" / "more.conf", "alias=included\nrgb=aabbcc\n")
    write(ldir / "config", "include extra/more.conf\nrgb=112233\n")
    cfg = parse(ldir)
    assert cfg.alias == "included"
    assert cfg.rgb == bytes.fromhex("112233")


def test_include_missing_and_loops(ldir: Path) -> None:
    write(ldir / "config", "include nothere.conf\n")
    assert "Opening and reading" in error(ldir)
    write(ldir / "config", "include config\n")
    assert "Include loop with" in error(ldir)


def test_error_names_file_and_line(ldir: Path) -> None:
    path = write(ldir / "config", "# first\nalias=ok\n\nfunding-confirms=abc\n")
    assert error(ldir) == (
        f"Config file {path} line 4: funding-confirms=abc: 'abc' is not a number"
    )


def test_error_in_included_file_names_that_file(ldir: Path) -> None:
    inc = write(ldir / "inc.conf", "\nfrob=1\n")
    write(ldir / "config", "include inc.conf\n")
    assert error(ldir) == f"Config file {inc} line 2: frob=1: unknown option"


@pytest.mark.parametrize(
    ("where", "line", "problem"),
    [
        ("base", "conf=/x", "not permitted in configuration files"),
        ("base", "lightning-dir=/x", "not permitted in implicit configuration files"),
        ("network", "network=testnet", "not permitted in network-specific configuration files"),
        ("network", "testnet", "not permitted in network-specific configuration files"),
    ],
)
def test_restricted_config_lines(ldir: Path, where: str, line: str, problem: str) -> None:
    path = ldir / "config" if where == "base" else ldir / "bitcoin" / "config"
    write(path, line + "\n")
    assert error(ldir) == f"Config file {path} line 1: {line}: {problem}"


def test_conf_not_permitted_in_explicit_conf(ldir: Path, tmp_path: Path) -> None:
    conf = write(tmp_path / "c.conf", "conf=/other\n")
    assert "not permitted in configuration files" in error(ldir, f"--conf={conf}")


def test_unreadable_default_config_is_skipped(ldir: Path) -> None:
    (ldir / "config").mkdir(parents=True)  # a directory, not a file
    assert parse(ldir).network == "bitcoin"


# -- --help, --version, --list-features-only -----------------------------------


def early_exit(*args: str) -> EarlyExit:
    with pytest.raises(EarlyExit) as info:
        parse_options(list(args))
    return info.value


def test_version() -> None:
    for flag in ("--version", "-V"):
        ex = early_exit(flag)
        assert (ex.text, ex.code) == (VERSION + "\n", 0)


def test_list_features_only() -> None:
    ex = early_exit("--list-features-only")
    lines = ex.text.splitlines()
    assert lines == [*list_features_lines(), "supports_open_accept_channel_type"]
    assert all(
        line.startswith("option_") and line.endswith(("/even", "/odd")) for line in lines[:-1]
    )
    assert ex.code == 0


def test_help_lists_every_option_with_defaults() -> None:
    for flag in ("--help", "-h"):
        ex = early_exit(flag, "--regtest")
        assert ex.code == 0
        lines = ex.text.splitlines()
        assert lines[0] == "Usage: lightningd"
        assert "network: regtest" in lines[1]
        for name in OPTIONS:
            assert any(line.startswith(f"--{name}") for line in lines), name
        assert any(
            line.startswith("--funding-confirms") and "(default: 1)" in line for line in lines
        )
        assert any(
            line.startswith("--bitcoin-rpcport") and "(default: 18443)" in line for line in lines
        )


def test_help_ignores_other_problems() -> None:
    assert early_exit("--frob", "--help").text.startswith("Usage:")


def test_version_wins_over_help() -> None:
    assert early_exit("--help", "--version").text == VERSION + "\n"


def test_config_for_network() -> None:
    cfg = Config.for_network("regtest", alias="x")
    assert (cfg.network, cfg.alias, cfg.funding_confirms) == ("regtest", "x", 1)
    with pytest.raises(ValueError):
        Config.for_network("nonet")


def test_paths_are_absolute(ldir: Path) -> None:
    cfg = parse(ldir, "--rpc-file=/tmp/rpc")
    assert cfg.rpc_path == "/tmp/rpc"
    assert os.path.isabs(cfg.pid_file or "")
