"""cli/lightning-cli as a subprocess against an in-process JsonRpcServer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_jsonrpc import NODE_ID, ServerThread

CLI = Path(__file__).resolve().parent.parent / "cli" / "lightning-cli"


@pytest.fixture
def lndir(tmp_path: Path):
    """A lightning-dir with a regtest daemon listening at regtest/lightning-rpc."""
    (tmp_path / "regtest").mkdir()
    srv = ServerThread(tmp_path / "regtest" / "lightning-rpc")
    yield tmp_path
    srv.close()


def cli(lndir: Path, *args: str, network: str | None = "regtest") -> subprocess.CompletedProcess:
    base = [sys.executable, str(CLI), f"--lightning-dir={lndir}"]
    if network:
        base.append(f"--network={network}")
    return subprocess.run(
        [*base, *args], capture_output=True, text=True, timeout=30, cwd=lndir.parent
    )


def ok_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def test_positional(lndir: Path):
    proc = cli(lndir, "fund", NODE_ID, "1000sat")
    assert ok_json(proc) == {"id": NODE_ID, "amount_sat": 1000, "announce": True}
    # CLN's print_json: three-space indent.
    assert proc.stdout == (
        f'{{\n   "id": "{NODE_ID}",\n   "amount_sat": 1000,\n   "announce": true\n}}\n'
    )


def test_keywords(lndir: Path):
    proc = cli(lndir, "-k", "fund", "announce=false", f"id={NODE_ID}", "amount=5")
    assert ok_json(proc) == {"id": NODE_ID, "amount_sat": 5, "announce": False}


def test_keyword_autodetect_from_first_param(lndir: Path):
    assert ok_json(cli(lndir, "fund", f"id={NODE_ID}", "amount=7"))["amount_sat"] == 7
    # Autodetect looks at the first param only: an '=' there means keywords...
    proc = cli(lndir, "say", "x=y")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["message"].startswith("unknown parameter: x, this may be")
    # ...and a later "k=v" after a plain first param stays a positional string.
    proc = cli(lndir, "echo", "plain", "x=y")
    assert json.loads(proc.stdout)["message"] == (
        "count: should be an unsigned 32 bit integer: invalid token '\"x=y\"'"
    )


def test_order_forces_positional(lndir: Path):
    assert ok_json(cli(lndir, "-o", "say", "a=b")) == {"value": "a=b"}


def test_keywords_need_equals(lndir: Path):
    proc = cli(lndir, "-k", "say", "novalue")
    assert proc.returncode == 3
    assert "Expected key=value in 'novalue'" in proc.stderr


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("12", 12),
        ("1.5", 1.5),
        ("true", True),
        ("false", False),
        ("[1, 2]", [1, 2]),
        ('{"a": {"b": null}}', {"a": {"b": None}}),
        ('"quoted"', "quoted"),
        ("plain words", "plain words"),
        ("", ""),
    ],
)
def test_argument_json_rules(lndir: Path, arg: str, value: object):
    assert ok_json(cli(lndir, "echo", arg))["value"] == value


def test_dash_args_after_double_dash(lndir: Path):
    # As with CLN's option parser, "-5" would be an option; "--" ends the options.
    assert cli(lndir, "echo", "-5").returncode == 3
    assert ok_json(cli(lndir, "echo", "--", "-5"))["value"] == "-5"


def test_null_skips_positional(lndir: Path):
    assert ok_json(cli(lndir, "fund", NODE_ID, "1", "null"))["announce"] is True


def test_malformed_literal_is_usage_error(lndir: Path):
    proc = cli(lndir, "echo", "1.2.3")
    assert proc.returncode == 3
    assert "Some parameters are malformed, cannot create a valid JSON-RPC request" in proc.stderr
    assert proc.stdout == ""


def test_human_readable(lndir: Path):
    proc = cli(lndir, "-H", "fund", NODE_ID, "1000")
    assert proc.returncode == 0
    assert proc.stdout == f"id={NODE_ID}\namount_sat=1000\nannounce=true\n"
    # Single-field objects are elided to their value.
    assert cli(lndir, "-H", "say", "hi").stdout == "hi\n"


def test_flat(lndir: Path):
    proc = cli(lndir, "-F", "echo", '{"a": [1, "x"]}')
    assert proc.stdout == "value.a[0]=1\nvalue.a[1]=x\ncount=null\nbig=null\n"


def test_raw(lndir: Path):
    assert cli(lndir, "-R", "say", "hi").stdout == '{"value":"hi"}\n'


def test_help_lists_commands(lndir: Path):
    proc = cli(lndir, "help")
    assert proc.returncode == 0
    out = proc.stdout
    assert "fund id amount [announce]\n\n" in out
    assert "help [command]\n\n" in out
    assert out.endswith(
        "---\nrun `lightning-cli help <command>` for more information on a specific command\n"
    )
    # Sorted by category, then command: "channels" before "utility".
    assert out.index("fund id") < out.index("help [command]")


def test_help_json_when_asked(lndir: Path):
    result = ok_json(cli(lndir, "-J", "help"))
    assert result["format-hint"] == "simple"
    assert any(h["command"] == "check command_to_check [parameters...]" for h in result["help"])


def test_command_dash_h_asks_daemon(lndir: Path):
    proc = cli(lndir, "fund", "-h")
    assert proc.returncode == 0
    assert proc.stdout == (
        "command=fund id amount [announce]\n"
        "category=channels\n"
        "description=Fund a channel\n"
        "verbose=Fund a channel\n"
    )
    assert cli(lndir, "help", "fund").stdout == proc.stdout


def test_own_usage(tmp_path: Path):
    proc = cli(tmp_path, "-h", network=None)
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: lightning-cli <command> [<params>...]")
    assert "--keywords|-k" in proc.stdout


def test_version(tmp_path: Path):
    proc = cli(tmp_path, "--version", network=None)
    assert proc.returncode == 0
    assert proc.stdout.strip().startswith("v")


def test_error_from_lightningd(lndir: Path):
    proc = cli(lndir, "fund", "zz", "1")
    assert proc.returncode == 1
    assert proc.stdout == (
        "{\n"
        '   "code": -32602,\n'
        '   "message": "id: should be a node id: invalid token \'\\"zz\\"\'"\n'
        "}\n"
    )
    assert cli(lndir, "nosuchcommand").returncode == 1
    assert json.loads(cli(lndir, "boom").stdout) == {"code": -1, "message": "kaboom"}


def test_notifications_printed(lndir: Path):
    proc = cli(lndir, "chatty")
    assert proc.stdout.startswith("# halfway there\n")
    assert json.loads(proc.stdout.split("\n", 1)[1]) == {"done": True}
    assert cli(lndir, "-N", "none", "chatty").stdout.startswith("{")
    assert cli(lndir, "-N", "unusual", "chatty").stdout.startswith("{")


def test_missing_socket(tmp_path: Path):
    (tmp_path / "bitcoin").mkdir()
    proc = cli(tmp_path, "getinfo", network=None)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "lightning-cli: Connecting to 'lightning-rpc': No such file or directory\n"
    )


def test_missing_network_dir(tmp_path: Path):
    proc = cli(tmp_path, "getinfo", network=None)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"lightning-cli: Moving into '{tmp_path}/bitcoin': No such file or directory\n"
    )


def test_absolute_rpc_file(lndir: Path, tmp_path: Path):
    rpc = lndir / "regtest" / "lightning-rpc"
    proc = cli(tmp_path / "elsewhere", f"--rpc-file={rpc}", "say", "abs", network=None)
    assert ok_json(proc) == {"value": "abs"}


def test_network_from_config_file(lndir: Path):
    (lndir / "config").write_text("# base config\nnetwork=regtest\nalias=ignored\n")
    assert ok_json(cli(lndir, "say", "conf", network=None)) == {"value": "conf"}
    conf = lndir / "other.conf"
    conf.write_text("regtest\n")
    assert ok_json(cli(lndir, f"--conf={conf}", "say", "c", network=None)) == {"value": "c"}


def test_bad_options_are_usage_errors(lndir: Path):
    for args in (["--bogus"], ["-x"], ["--network=nonet", "help"], ["-N", "loud", "help"]):
        proc = cli(lndir, *args)
        assert proc.returncode == 3, args
        assert proc.stderr.startswith("lightning-cli: ")
        assert "Traceback" not in proc.stderr


def test_grouped_short_flags(lndir: Path):
    proc = cli(lndir, "-kH", "fund", f"id={NODE_ID}", "amount=3")
    assert proc.stdout == f"id={NODE_ID}\namount_sat=3\nannounce=true\n"
