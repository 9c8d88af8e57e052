"""lightningd/log.py: CLN's log line format, filtering, files and memory."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pytest

from common.status import LogLevel
from lightningd.log import LEVEL_PREFIX, NodeLog, format_timestamp, sanitize

# 2024-05-14T10:00:00.123Z
T0 = 1715680800.123
NODE = bytes.fromhex("02" + "66" * 32)


def clock() -> float:
    return T0


def make_log(tmp_path: Path, level: LogLevel = LogLevel.DEBUG, **kw: object) -> NodeLog:
    return NodeLog(level, [str(tmp_path / "log")], clock=clock, **kw)  # type: ignore[arg-type]


def read(tmp_path: Path) -> list[str]:
    return (tmp_path / "log").read_text().splitlines()


def test_timestamp_format() -> None:
    assert format_timestamp(T0) == "2024-05-14T10:00:00.123Z"
    assert format_timestamp(0.0) == "1970-01-01T00:00:00.000Z"


def test_line_format(tmp_path: Path) -> None:
    log = make_log(tmp_path, LogLevel.IO)
    log.info("lightningd", "Server started with public key 02ab")
    log.debug("hsmd", "debugging")
    log.trace("gossipd", "tracing")
    log.unusual("lightningd", "odd")
    log.broken("lightningd", "bad")
    log.close()
    assert read(tmp_path) == [
        "2024-05-14T10:00:00.123Z INFO    lightningd: Server started with public key 02ab",
        "2024-05-14T10:00:00.123Z DEBUG   hsmd: debugging",
        "2024-05-14T10:00:00.123Z TRACE   gossipd: tracing",
        "2024-05-14T10:00:00.123Z UNUSUAL lightningd: odd",
        "2024-05-14T10:00:00.123Z **BROKEN** lightningd: bad",
    ]


def test_level_prefixes_are_padded() -> None:
    assert {len(p) for lvl, p in LEVEL_PREFIX.items() if lvl is not LogLevel.BROKEN} == {7}


def test_node_id_prefix(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.info("openingd-chan#1", "Handed peer, entering loop", node_id=NODE)
    log.close()
    assert read(tmp_path) == [
        f"2024-05-14T10:00:00.123Z INFO    {NODE.hex()}-openingd-chan#1: Handed peer, entering loop"
    ]


def test_io_lines_have_no_level(tmp_path: Path) -> None:
    log = make_log(tmp_path, LogLevel.IO)
    log.io("connectd", True, b"\x00\x10", node_id=NODE)
    log.close()
    assert read(tmp_path) == [f"2024-05-14T10:00:00.123Z {NODE.hex()}-connectd: [IN] 0010"]


def test_log_prefix_and_no_timestamps(tmp_path: Path) -> None:
    log = make_log(tmp_path, prefix="lightningd-1 ", timestamps=False)
    log.info("lightningd", "hello")
    log.close()
    assert read(tmp_path) == ["lightningd-1 INFO    lightningd: hello"]


def test_prefix_comes_before_timestamp(tmp_path: Path) -> None:
    log = make_log(tmp_path, prefix="P ")
    log.info("x", "y")
    log.close()
    assert read(tmp_path) == ["P 2024-05-14T10:00:00.123Z INFO    x: y"]


def test_level_filtering(tmp_path: Path) -> None:
    log = make_log(tmp_path, LogLevel.UNUSUAL)
    log.debug("a", "dropped")
    log.info("a", "dropped")
    log.unusual("a", "kept")
    log.broken("a", "kept too")
    log.close()
    assert [line.split(": ", 1)[1] for line in read(tmp_path)] == ["kept", "kept too"]


def test_per_source_filters(tmp_path: Path) -> None:
    # --log-level=info --log-level=debug:openingd --log-level=broken:0266
    filters = [(LogLevel.DEBUG, "openingd"), (LogLevel.BROKEN, NODE.hex()[:6])]
    log = make_log(tmp_path, LogLevel.INFO, filters=filters)
    log.debug("openingd-chan#1", "shown: source matches")
    log.debug("gossipd", "hidden: default level")
    log.unusual("channeld", "hidden: node id filter says broken", node_id=NODE)
    log.close()
    assert [line.split(": ", 1)[1] for line in read(tmp_path)] == ["shown: source matches"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("plain text", "plain text"),
        ("line\nforged INFO", "line?forged INFO"),
        ("bell\x07esc\x1b[31m", "bell?esc?[31m"),
        ("del\x7f", "del?"),
        ("café", "caf??"),  # one '?' per UTF-8 byte, as CLN
        ("tab\there", "tab?here"),
    ],
)
def test_sanitize(message: str, expected: str) -> None:
    assert sanitize(message) == expected


def test_messages_are_escaped_in_file_and_memory(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.info("peer", "alias\n2024-01-01T00:00:00.000Z **BROKEN** fake")
    log.close()
    lines = read(tmp_path)
    assert len(lines) == 1 and "alias?2024" in lines[0]
    assert log.entries()[0].message.startswith("alias?2024")


def test_files_are_appended_with_a_gap(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("old line\n")
    log = make_log(tmp_path)
    log.info("a", "new")
    log.close()
    assert (tmp_path / "log").read_text() == (
        "old line\n\n\n\n\n2024-05-14T10:00:00.123Z INFO    a: new\n"
    )


def test_several_files_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = NodeLog(LogLevel.INFO, ["-", str(tmp_path / "a"), str(tmp_path / "b")], clock=clock)
    log.info("x", "everywhere")
    log.close()
    for path in ("a", "b"):
        assert (tmp_path / path).read_text().endswith("INFO    x: everywhere\n")
    assert capsys.readouterr().out.endswith("INFO    x: everywhere\n")


def test_no_files_means_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log = NodeLog(LogLevel.INFO, [], clock=clock)
    log.info("x", "to stdout")
    assert capsys.readouterr().out == "2024-05-14T10:00:00.123Z INFO    x: to stdout\n"


def test_unopenable_file_does_not_raise(tmp_path: Path) -> None:
    bad = str(tmp_path / "no-such-dir" / "log")
    log = NodeLog(LogLevel.INFO, [bad, str(tmp_path / "good")], clock=clock)
    log.info("x", "still logged")
    log.close()
    assert log.open_errors == [f"{bad}: No such file or directory"]
    assert (tmp_path / "good").read_text().endswith("still logged\n")


def test_write_errors_do_not_raise(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log._outputs[0].stream.close()  # type: ignore[union-attr]  # as if the fd went bad
    log.info("x", "no exception")
    assert log.open_errors and log.open_errors[0].startswith(str(tmp_path / "log"))
    log.info("x", "still none")
    assert len(log.entries()) == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_does_not_raise() -> None:
    log = NodeLog(LogLevel.INFO, ["/dev/full"], clock=clock)
    log.info("x", "disk full")
    assert log.open_errors


def test_closed_stdout_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    log = NodeLog(LogLevel.INFO, ["-"], clock=clock)
    log.info("x", "nobody listens")
    monkeypatch.setattr(sys, "stdout", None)
    log.info("x", "no stdout at all")
    assert len(log.entries()) == 2


def test_reopen_after_rotation(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.info("a", "before")
    os.rename(tmp_path / "log", tmp_path / "log.1")
    log.info("a", "still to the rotated file")
    log.reopen()
    log.info("a", "after")
    log.close()
    rotated = (tmp_path / "log.1").read_text()
    assert "before" in rotated and "still to the rotated file" in rotated
    assert "Ending log due to SIGHUP" in rotated
    # A reopened file gets no blank-line gap (CLN's rotate_log just fopens).
    assert read(tmp_path) == [
        "2024-05-14T10:00:00.123Z INFO    lightningd: Started log due to SIGHUP",
        "2024-05-14T10:00:00.123Z INFO    a: after",
    ]


def test_reopen_recovers_a_failed_file(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log._outputs[0].stream.close()  # type: ignore[union-attr]
    log.info("a", "lost")
    log.reopen()
    log.info("a", "back")
    log.close()
    assert log.open_errors == []
    assert read(tmp_path)[-1].endswith("a: back")


def test_memory_keeps_every_level_and_the_last_n(tmp_path: Path) -> None:
    log = make_log(tmp_path, LogLevel.BROKEN, memory_lines=3)
    for i in range(5):
        log.debug("src", f"debug {i}")
    log.info("src", "info", node_id=NODE)
    log.close()
    assert read(tmp_path) == []  # nothing printed at BROKEN
    assert [e.message for e in log.entries(LogLevel.IO)] == ["debug 3", "debug 4", "info"]
    assert [e.message for e in log.entries()] == ["info"]
    assert [e.message for e in log.entries(LogLevel.IO, node_id=NODE)] == ["info"]
    tail = log.tail()
    assert len(tail) == 3
    assert tail[-1] == f"2024-05-14T10:00:00.123Z INFO    {NODE.hex()}-src: info\n"
    assert log.tail(1) == tail[-1:]
    assert log.tail(0) == []
    assert log.created_at == T0


def test_default_clock_is_now(tmp_path: Path) -> None:
    log = NodeLog(LogLevel.INFO, [str(tmp_path / "log")])
    log.info("a", "b")
    log.close()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    a: b", read(tmp_path)[0])
