"""The node log, written as Core Lightning writes it (lightningd/log.c).

A line is `<log-prefix><timestamp> <LEVEL> <source>: <message>`, e.g.

    2024-05-14T10:00:00.123Z INFO    lightningd: Server started with public key ...

with the level padded to 7 columns ("**BROKEN**" is wider), and
`<node_id_hex>-<source>` when a line is about a peer. Tools such as
pyln-testing's wait_for_log match these lines, so the format matters.

Every entry is kept in memory (the last `memory_lines` of them, whatever
their level) for `getlog`; only those at or above the print level reach the
files. Writing never raises: a full disk or a closed stdout must not take
the daemon down, so a failing file is skipped until `reopen()`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from common.status import LogLevel

# CLN's level_prefix(): padded so messages line up. TRACE is padded the same way;
# IO lines carry no level (see format_line).
LEVEL_PREFIX: dict[LogLevel, str] = {
    LogLevel.IO: "IO     ",
    LogLevel.TRACE: "TRACE  ",
    LogLevel.DEBUG: "DEBUG  ",
    LogLevel.INFO: "INFO   ",
    LogLevel.UNUSUAL: "UNUSUAL",
    LogLevel.BROKEN: "**BROKEN**",
}


@dataclass(frozen=True)
class LogEntry:
    time: float  # seconds since the epoch
    level: LogLevel
    source: str
    message: str  # already sanitised
    node_id: bytes | None = None


def sanitize(message: str) -> str:
    """Replace what is not printable ASCII with '?', one per UTF-8 byte, as CLN does.

    Peer-supplied text (aliases, error messages) reaches the log; this keeps
    it from forging lines or sending terminal escapes.
    """
    if message.isascii() and message.isprintable():
        return message
    out = []
    for ch in message:
        if " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("?" * len(ch.encode("utf-8", errors="replace")))
    return "".join(out)


def format_timestamp(when: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2024-05-14T10:00:00.123Z."""
    stamp = datetime.fromtimestamp(when, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{stamp.microsecond // 1000:03d}Z"


def format_line(entry: LogEntry, prefix: str = "", timestamps: bool = True) -> str:
    """One log line as CLN prints it, newline included."""
    stamp = format_timestamp(entry.time) + " " if timestamps else ""
    who = entry.source if entry.node_id is None else f"{entry.node_id.hex()}-{entry.source}"
    # CLN prints IO lines without a level column: "<source>: [IN] <hex>".
    level = "" if entry.level is LogLevel.IO else LEVEL_PREFIX[entry.level] + " "
    return f"{prefix}{stamp}{level}{who}: {entry.message}\n"


class _Output:
    """One --log-file: a path, or "-" for stdout; remembers whether it works."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stream: TextIO | None = None
        self.error: str | None = None

    def open(self, gap: bool = False) -> None:
        if self.path == "-":
            return
        try:
            self.stream = open(  # noqa: SIM115 - held open for the daemon's life
                self.path, "a", buffering=1, encoding="utf-8", errors="replace"
            )
            self.error = None
        except OSError as exc:
            self.stream = None
            self.error = f"{self.path}: {exc.strerror}"
            return
        if gap and self.stream.tell() > 0:
            # CLN (like Bitcoin Core) separates runs in an old file by blank lines.
            self.write("\n\n\n\n")

    def write(self, line: str) -> None:
        stream = sys.stdout if self.path == "-" else self.stream
        if stream is None:
            return
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError) as exc:
            # Full disk, closed pipe, closed file: stop writing here until reopen().
            self.error = f"{self.path}: {getattr(exc, 'strerror', None) or exc}"
            if self.path != "-":
                self.close()

    def close(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(OSError):
                self.stream.close()
            self.stream = None


class NodeLog:
    """The master's log: files (or stdout) plus the recent entries in memory.

    `files` empty means stdout, as in CLN. `filters` are CLN's
    `--log-level=<level>:<filter>`: a source or node id containing <filter>
    prints at <level> instead (the first match wins).
    """

    def __init__(
        self,
        level: LogLevel,
        files: Sequence[str],
        prefix: str = "",
        timestamps: bool = True,
        *,
        filters: Sequence[tuple[LogLevel, str]] = (),
        memory_lines: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.level = level
        self.prefix = prefix
        self.timestamps = timestamps
        self.filters = list(filters)
        self.created_at = clock()
        self._clock = clock
        self._entries: deque[LogEntry] = deque(maxlen=memory_lines)
        # Re-entrant: a SIGHUP handler calling reopen() mid-write must not deadlock.
        self._lock = threading.RLock()
        self._outputs = [_Output(path) for path in (files or ["-"])]
        for output in self._outputs:
            output.open(gap=True)

    @property
    def open_errors(self) -> list[str]:
        """Files that could not be opened or written ("path: reason"); lightningd decides."""
        return [o.error for o in self._outputs if o.error is not None]

    def print_level(self, source: str, node_id: bytes | None = None) -> LogLevel:
        node_hex = node_id.hex() if node_id is not None else ""
        for level, filt in self.filters:
            if filt in source or (node_hex and filt in node_hex):
                return level
        return self.level

    def log(self, level: LogLevel, source: str, message: str, node_id: bytes | None = None) -> None:
        entry = LogEntry(self._clock(), level, source, sanitize(message), node_id)
        with self._lock:
            self._entries.append(entry)
            if level >= self.print_level(source, node_id):
                self._write(format_line(entry, self.prefix, self.timestamps))

    def io(self, source: str, incoming: bool, data: bytes, node_id: bytes | None = None) -> None:
        """A message as it crossed the wire, as CLN logs IO: `[IN] <hex>` after the source."""
        direction = "[IN]" if incoming else "[OUT]"
        self.log(LogLevel.IO, source, f"{direction} {data.hex()}", node_id)

    def trace(self, source: str, message: str, node_id: bytes | None = None) -> None:
        self.log(LogLevel.TRACE, source, message, node_id)

    def debug(self, source: str, message: str, node_id: bytes | None = None) -> None:
        self.log(LogLevel.DEBUG, source, message, node_id)

    def info(self, source: str, message: str, node_id: bytes | None = None) -> None:
        self.log(LogLevel.INFO, source, message, node_id)

    def unusual(self, source: str, message: str, node_id: bytes | None = None) -> None:
        self.log(LogLevel.UNUSUAL, source, message, node_id)

    def broken(self, source: str, message: str, node_id: bytes | None = None) -> None:
        self.log(LogLevel.BROKEN, source, message, node_id)

    def entries(
        self, min_level: LogLevel = LogLevel.INFO, node_id: bytes | None = None
    ) -> list[LogEntry]:
        """The remembered entries at or above `min_level` (about `node_id`, if given)."""
        with self._lock:
            snapshot = list(self._entries)
        return [
            e
            for e in snapshot
            if e.level >= min_level and (node_id is None or e.node_id == node_id)
        ]

    def tail(self, n: int | None = None) -> list[str]:
        """The last `n` remembered entries as log lines (all levels, no prefix)."""
        with self._lock:
            snapshot = list(self._entries)
        if n is not None:
            snapshot = snapshot[-n:] if n > 0 else []
        return [format_line(e, "", self.timestamps) for e in snapshot]

    def reopen(self) -> None:
        """SIGHUP: close and re-open every file, so logrotate can move them (as CLN)."""
        self.info("lightningd", "Ending log due to SIGHUP")
        with self._lock:
            for output in self._outputs:
                output.close()
                output.open()
        self.info("lightningd", "Started log due to SIGHUP")

    def close(self) -> None:
        with self._lock:
            for output in self._outputs:
                output.close()

    def _write(self, line: str) -> None:
        for output in self._outputs:
            output.write(line)
