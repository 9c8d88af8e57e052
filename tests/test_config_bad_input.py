"""Bad command lines and config files, end to end: the real lightningd exits 1 at once
with one "lightningd: ..." line on stderr naming the option (CLN style), no traceback,
and nothing created (no hsm_secret, no RPC socket).

tests/test_options.py checks the parser's messages in-process; this checks what an
operator sees from the program itself, and the inputs that reach past the parser
(files that are not files, control characters, an empty --conf).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.node import ROOT


def run(ldir: Path, *args: str) -> subprocess.CompletedProcess:
    # Generous: a CI core shared with other suites; a clean failure takes well under 1 s.
    return subprocess.run(
        [sys.executable, "-m", "lightningd.lightningd", f"--lightning-dir={ldir}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(ldir: Path, *args: str) -> str:
    """Run lightningd expecting a configuration error; return its one message."""
    proc = run(ldir, *args)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lightningd: ")
    # Nothing was set up: a configuration error is found before anything is created.
    assert not list(ldir.rglob("hsm_secret"))
    assert not list(ldir.rglob("lightning-rpc"))
    return lines[0].removeprefix("lightningd: ")


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


@pytest.fixture
def ldir(tmp_path: Path) -> Path:
    path = tmp_path / "ld"
    path.mkdir()
    return path


CMDLINE_ROWS = [
    (["--frobnicate"], "--frobnicate: unknown option"),
    (["--network"], "--network: requires an argument"),
    (["--network=dogecoin"], "--network=dogecoin: Unknown network name 'dogecoin'"),
    (["--funding-confirms=many"], "--funding-confirms=many: 'many' is not a number"),
    (["--bitcoin-rpcport=99999"], "--bitcoin-rpcport=99999: port 99999 out of range (1-65535)"),
    (["--log-timestamps=perhaps"], "--log-timestamps=perhaps: Invalid argument 'perhaps'"),
    (["--developer=yes"], "--developer=yes: doesn't allow an argument"),
    (["--log-level=shout"], "--log-level=shout: unknown log level shout"),
    (["--conf="], "--conf=: needs a path"),
    (["stray"], "no arguments accepted: 'stray'"),
]


@pytest.mark.parametrize(("args", "message"), CMDLINE_ROWS)
def test_bad_command_line(ldir: Path, args: list[str], message: str) -> None:
    assert refused(ldir, "--regtest", *args) == message


# (file under the lightning dir, its contents, the message after "Config file <path> line N: ")
CONFIG_ROWS = [
    ("config", "alias=ok\nfrobnicate=1\n", 2, "frobnicate=1: unknown option"),
    ("config", "alias\n", 1, "alias: requires an argument"),
    ("config", "funding-confirms=1e3\n", 1, "funding-confirms=1e3: '1e3' is not a number"),
    ("config", "log-timestamps=maybe\n", 1, "log-timestamps=maybe: Invalid argument 'maybe'"),
    ("config", "network=florin\n", 1, "network=florin: Unknown network name 'florin'"),
    ("config", "[regtest]\n", 1, "[regtest]: unknown option"),
    ("config", "=value\n", 1, "=value: unknown option"),
    ("config", "lightning-dir=/elsewhere\n", 1, (
        "lightning-dir=/elsewhere: not permitted in implicit configuration files"
    )),
    ("regtest/config", "network=testnet\n", 1, (
        "network=testnet: not permitted in network-specific configuration files"
    )),
    ("regtest/config", "developer=1\n", 1, "developer=1: doesn't allow an argument"),
    ("regtest/config", "dev-fast-gossip\n", 1, "dev-fast-gossip: requires --developer"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "line", "message"), CONFIG_ROWS)
def test_bad_config_file(ldir: Path, name: str, text: str, line: int, message: str) -> None:
    path = write(ldir / name, text)
    assert refused(ldir, "--regtest") == f"Config file {path} line {line}: {message}"


def test_bad_explicit_conf(ldir: Path, tmp_path: Path) -> None:
    conf = write(tmp_path / "my.conf", "alias=a\nconf=/other\n")
    assert refused(ldir, f"--conf={conf}") == (
        f"Config file {conf} line 2: conf=/other: not permitted in configuration files"
    )


def test_missing_and_unreadable_conf(ldir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    assert refused(ldir, f"--conf={missing}") == (
        f"Opening and reading {missing}: No such file or directory"
    )
    # A directory is unreadable as a file even to root (a chmod 000 file is not).
    assert refused(ldir, f"--conf={tmp_path}") == f"Opening and reading {tmp_path}: Is a directory"


def test_garbage_bytes_in_config(ldir: Path) -> None:
    """Binary junk is an unknown option, reported on its line, not a crash."""
    path = write(ldir / "config", b"alias=x\n\xff\xfe\x00\x01junk\n")
    message = refused(ldir, "--regtest")
    assert message.startswith(f"Config file {path} line 2: ")
    assert message.endswith("junk: unknown option")


@pytest.mark.parametrize(
    ("file", "lightning_dir"),
    [("ld", "ld"), ("ld/regtest", "ld"), ("plain", "plain/ld")],
    ids=["lightning-dir", "network-dir", "parent"],
)
def test_directory_that_is_a_file(tmp_path: Path, file: str, lightning_dir: str) -> None:
    """A file where lightningd must create (or enter) a directory."""
    blocker = write(tmp_path / file, "not a directory\n")
    ldir = tmp_path / lightning_dir
    assert refused(ldir, "--regtest") == f"--lightning-dir={ldir}: {blocker} is not a directory"


def test_lightning_dir_that_cannot_be_created(tmp_path: Path) -> None:
    """mkdir failing for any other reason (a name too long here; as a user, no permission)."""
    ldir = tmp_path / ("x" * 300)
    proc = run(ldir, "--regtest")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"lightningd: Could not create {ldir / 'regtest'}: File name too long\n"
