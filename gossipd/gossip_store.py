"""The gossip store: an append-only file of the gossip messages gossipd keeps.

Layout (shaped like Core Lightning's common/gossip_store.h):

    [1 byte version]
    then records, each:
        [u16 flags][u16 len][u32 crc][u32 timestamp][len bytes: the message]

`crc` is CRC32 (zlib) over the timestamp and the message, as CLN's is CRC32C over
the same. A record is never moved or rewritten, except that its `flags` may gain
DELETED (written in place) when the message is superseded or its channel closes.

After a crash the tail may be a half-written or garbage record: `load` detects it
(short header, short body, bad CRC, unknown flags) and cuts the file there; that is
logged, never fatal. `rewrite` is the compaction: write only the live records to a
new file and rename it over the old one.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

STORE_VERSION = 0x01
HEADER = struct.Struct(">HHII")
FLAG_DELETED = 0x8000
KNOWN_FLAGS = FLAG_DELETED
MAX_MSG_LEN = 0xFFFF

# CLN's private record following a channel_announcement: the funding amount.
WIRE_GOSSIP_STORE_CHANNEL_AMOUNT = 4101
_AMOUNT = struct.Struct(">HQ")


def channel_amount_msg(satoshis: int) -> bytes:
    return _AMOUNT.pack(WIRE_GOSSIP_STORE_CHANNEL_AMOUNT, satoshis)


def parse_channel_amount(msg: bytes) -> int | None:
    if len(msg) != _AMOUNT.size:
        return None
    msgtype, satoshis = _AMOUNT.unpack(msg)
    return satoshis if msgtype == WIRE_GOSSIP_STORE_CHANNEL_AMOUNT else None


@dataclass
class StoreRecord:
    offset: int
    flags: int
    timestamp: int
    msg: bytes

    @property
    def deleted(self) -> bool:
        return bool(self.flags & FLAG_DELETED)


def record_crc(timestamp: int, msg: bytes) -> int:
    return zlib.crc32(msg, zlib.crc32(timestamp.to_bytes(4, "big")))


def encode_record(msg: bytes, timestamp: int, flags: int = 0) -> bytes:
    if len(msg) > MAX_MSG_LEN:
        raise ValueError(f"gossip store message too long: {len(msg)}")
    return HEADER.pack(flags, len(msg), record_crc(timestamp, msg), timestamp) + msg


def _parse_records(data: bytes) -> tuple[list[StoreRecord], int, str]:
    """Records of a whole file's bytes; the good length and why the rest is bad."""
    records: list[StoreRecord] = []
    off = 1
    while off < len(data):
        if off + HEADER.size > len(data):
            return records, off, "truncated header"
        flags, length, crc, timestamp = HEADER.unpack_from(data, off)
        body = data[off + HEADER.size : off + HEADER.size + length]
        if len(body) < length:
            return records, off, "truncated record"
        if flags & ~KNOWN_FLAGS or record_crc(timestamp, body) != crc:
            return records, off, "bad checksum"
        records.append(StoreRecord(off, flags, timestamp, body))
        off += HEADER.size + length
    return records, off, ""


class GossipStore:
    """One store file, opened for appending; `records` is what was loaded."""

    def __init__(self, path: str, log: Callable[[str], None] = lambda _: None) -> None:
        self.path = path
        self.log = log
        self.records: list[StoreRecord] = []
        self.fd = -1
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        data = _read_all(self.fd)
        if not data or data[0] != STORE_VERSION:
            if data:
                self.log(f"gossip_store: version {data[0]} unknown, starting afresh")
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, bytes([STORE_VERSION]), 0)
            self.end = 1
            return
        self.records, self.end, why = _parse_records(data)
        if why:
            self.log(
                f"gossip_store: {why} at offset {self.end}, cutting {len(data) - self.end} bytes"
            )
            os.ftruncate(self.fd, self.end)

    def live(self) -> Iterator[StoreRecord]:
        return (r for r in self.records if not r.deleted)

    def append(self, msg: bytes, timestamp: int) -> int:
        """Append one record (a single write); returns its offset."""
        offset = self.end
        data = encode_record(msg, timestamp)
        os.pwrite(self.fd, data, offset)
        self.end += len(data)
        self.records.append(StoreRecord(offset, 0, timestamp, msg))
        return offset

    def delete(self, offset: int) -> None:
        """Set DELETED on the record at `offset` (in place, in the file too)."""
        (flags,) = struct.unpack(">H", os.pread(self.fd, 2, offset))
        os.pwrite(self.fd, struct.pack(">H", flags | FLAG_DELETED), offset)
        for rec in self.records:
            if rec.offset == offset:
                rec.flags |= FLAG_DELETED

    def rewrite(self, entries: Iterable[tuple[bytes, int]]) -> list[int]:
        """Compaction: replace the file by exactly these (msg, timestamp); new offsets."""
        tmp = self.path + ".tmp"
        out = bytearray([STORE_VERSION])
        records: list[StoreRecord] = []
        for msg, timestamp in entries:
            records.append(StoreRecord(len(out), 0, timestamp, msg))
            out += encode_record(msg, timestamp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, out)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)
        self.records = records
        self.end = len(out)
        return [r.offset for r in records]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""
