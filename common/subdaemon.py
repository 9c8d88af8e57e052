"""What every subdaemon does first and last.

lightningd starts each subdaemon with its sockets at fixed descriptor
numbers (as Core Lightning's openingd.c documents them):

    0 (stdin) == lightningd, the request socket: init, commands, status
    3         == the peer connection (openingd, channeld)
    4         == this peer's gossipd socket
    5         == reserved (the gossip store, in Core Lightning)
    6         == this daemon's own hsmd client socket

`run` parses the few options every subdaemon shares, wires up status
logging to the master, and turns every way out into a defined exit: a
master that goes away ends the daemon quietly (exit 0); anything unexpected
is reported once with status_fail and exits with 0x80 | reason.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from common.daemon_conn import DaemonConn, DaemonConnClosed
from common.status import FailReason, FatalError, LogLevel, Status
from common.version import VERSION

REQ_FD = 0
PEER_FD = 3
GOSSIP_FD = 4
GOSSIP_STORE_FD = 5
HSM_FD = 6
_PR_SET_PDEATHSIG = 1


@dataclass
class SubdaemonArgs:
    name: str
    developer: bool = False
    log_level: LogLevel = LogLevel.INFO
    dev_options: dict[str, str | None] = field(default_factory=dict)


class UsageError(ValueError):
    pass


def parse_args(name: str, argv: list[str]) -> SubdaemonArgs:
    """The shared options: --version, --developer, --log-level=L, --dev-*[=V]."""
    args = SubdaemonArgs(name)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "--version":
            print(VERSION)
            raise SystemExit(0)
        if key == "--developer":
            args.developer = True
        elif key == "--log-level":
            args.log_level = LogLevel.parse(value)
        elif key.startswith("--dev-"):
            args.dev_options[key[2:]] = value if "=" in arg else None
        else:
            raise UsageError(f"{name}: unknown option '{arg}'")
    if args.dev_options and not args.developer:
        raise UsageError(f"{name}: --dev-* options need --developer")
    return args


@dataclass
class Subdaemon:
    """What a subdaemon's main function gets: its args, master socket and status."""

    args: SubdaemonArgs
    master: DaemonConn
    status: Status


Main = Callable[[Subdaemon], None]


def die_with_master() -> None:
    """Ask Linux to end us when lightningd dies, however it dies (even SIGKILL).

    A subdaemon also exits when its master socket closes, but one blocked on its peer
    would otherwise linger, holding the peer connection and the master's stdout.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the master socket still ends us
        return
    if os.getppid() == 1:  # the master died before the request took effect
        os._exit(0)


def run(name: str, main: Main, argv: list[str] | None = None) -> NoReturn:
    """Run `main` as subdaemon `name` and exit with a code the master understands."""
    try:
        args = parse_args(name, sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    die_with_master()
    master = DaemonConn.from_fd(REQ_FD)
    status = Status(master.send)
    try:
        main(Subdaemon(args, master, status))
    except DaemonConnClosed:
        # BOLT-independent housekeeping: lightningd closed our socket, so it is
        # shutting down or has given up on us. Nothing to report, nobody to tell.
        os._exit(0)
    except FatalError as exc:
        # An asyncio daemon may have left the socket non-blocking.
        master.sock.setblocking(True)
        status.failed(exc.reason, exc.desc)
    except Exception as exc:
        master.sock.setblocking(True)
        detail = "".join(traceback.format_exception(exc, limit=-8))
        status.failed(FailReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}\n{detail}")
    sys.stdout.flush()
    os._exit(0)
