"""Extract message, TLV and subtype definitions from BOLT markdown into CLN-style CSV.

Usage: python -m wire.extract_bolts doc/bolts/0*.md > wire/peer_wire.csv

The BOLTs describe wire formats as numbered markdown lists:

    1. type: 32 (`open_channel`)          -> msgtype,open_channel,32
    2. data:
       * [`chain_hash`:`chain_hash`]       -> msgdata,open_channel,chain_hash,chain_hash,
       * [`len*byte`:`data`]               -> msgdata,...,data,byte,len
    1. subtype: `witness`                 -> subtype,witness
    1. `tlv_stream`: `open_channel_tlvs`  -> tlvtype/tlvdata rows for its `types:`
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

_MSG_RE = re.compile(r"^(\s*)1\. type: (\d+) \(`([A-Za-z0-9_]+)`\)")
_SUBTYPE_RE = re.compile(r"^1\. subtype: `([A-Za-z0-9_]+)`")
# Both the current (`tlv_stream`) and the older (tlvs) spellings.
_TLV_RE = re.compile(r"^1\. (?:`tlv_stream`|tlvs): `([A-Za-z0-9_]+)`")
_DATA_RE = re.compile(r"^\s*\* \[`([^`]+)`:`([A-Za-z0-9_]+)`\]")
# `210*sha256[..4]`: an array of hashes truncated to their first 4 bytes.
_TRUNC_RE = re.compile(r"^([A-Za-z0-9_]+)\[\.\.(\d+)\]$")
_HEADING_RE = re.compile(r"^(#+) (.*)")


class ExtractError(ValueError):
    """The markdown contains a definition this extractor cannot express."""


@dataclass
class Record:
    """A message, subtype or TLV record with its ordered (name, type, count) fields."""

    kind: str  # "msg", "subtype" or "tlv"
    name: str
    value: int | None = None
    stream: str | None = None
    fields: list[tuple[str, str, str]] = field(default_factory=list)


def _split_type(spec: str, where: str) -> tuple[str, str]:
    """Split `count*type` into (type, count); the count is "" for a single value."""
    count, sep, typename = spec.rpartition("*")
    if not sep:
        count, typename = "", spec
    trunc = _TRUNC_RE.match(typename)
    if trunc:
        # A truncated fixed-size value is just bytes on the wire.
        if not count.isdigit():
            raise ExtractError(f"{where}: truncated type needs a fixed count: {spec}")
        return "byte", str(int(count) * int(trunc.group(2)))
    return typename, count


def extract(text: str, source: str = "<md>", appendix: bool = False) -> list[Record]:
    """Return every definition in one markdown document, in document order.

    Appendix sections hold test-only definitions (BOLT #1's n1/n2 TLV streams), so they
    are skipped unless `appendix` is set.
    """
    records: list[Record] = []
    current: Record | None = None
    stream: str | None = None
    in_appendix = False
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        heading = _HEADING_RE.match(line)
        if heading:
            if len(heading.group(1)) <= 2:
                in_appendix = heading.group(2).startswith("Appendix")
            current, stream = None, None
            continue
        if in_appendix and not appendix:
            continue
        msg = _MSG_RE.match(line)
        if msg:
            indent, value, name = msg.groups()
            if indent and stream is not None:
                current = Record("tlv", name, int(value), stream)
            elif not indent:
                current, stream = Record("msg", name, int(value)), None
            else:
                current = None
                continue
            records.append(current)
            continue
        sub = _SUBTYPE_RE.match(line)
        if sub:
            current, stream = Record("subtype", sub.group(1)), None
            records.append(current)
            continue
        tlv = _TLV_RE.match(line)
        if tlv:
            current, stream = None, tlv.group(1)
            continue
        data = _DATA_RE.match(line)
        if data and current is not None:
            typename, count = _split_type(data.group(1), where)
            current.fields.append((data.group(2), typename, count))
            continue
        # Any other unindented prose ends the definition being read.
        if line and not line[0].isspace() and not re.match(r"^\d+\. (data|types):", line):
            current, stream = None, None
    return records


def _link_implicit_streams(records: list[Record]) -> None:
    """Give `msg` its `msg_tlvs` stream when the spec defines one but omits the field.

    BOLT #1: every message may end with an `extension` TLV stream; some BOLT #2 messages
    (e.g. update_add_htlc) define `<name>_tlvs` without listing it in their data.
    """
    streams = {r.stream for r in records if r.kind == "tlv"}
    for rec in records:
        if rec.kind != "msg" or f"{rec.name}_tlvs" not in streams:
            continue
        if not any(t in streams for _, t, _ in rec.fields):
            rec.fields.append(("tlvs", f"{rec.name}_tlvs", ""))


def _dedupe(records: list[Record]) -> list[Record]:
    """Drop repeated identical definitions; conflicting ones are an error."""
    seen: dict[tuple[str, str | None, str], Record] = {}
    out = []
    for rec in records:
        key = (rec.kind, rec.stream, rec.name)
        prev = seen.get(key)
        if prev is None:
            seen[key] = rec
            out.append(rec)
        elif (prev.value, prev.fields) != (rec.value, rec.fields):
            raise ExtractError(f"conflicting definitions of {rec.kind} {rec.name}")
    return out


def to_csv(records: list[Record]) -> str:
    """Render records as CLN's wire CSV."""
    lines = []
    for rec in records:
        if rec.kind == "msg":
            lines.append(f"msgtype,{rec.name},{rec.value}")
            lines += [f"msgdata,{rec.name},{n},{t},{c}" for n, t, c in rec.fields]
        elif rec.kind == "subtype":
            lines.append(f"subtype,{rec.name}")
            lines += [f"subtypedata,{rec.name},{n},{t},{c}" for n, t, c in rec.fields]
        else:
            lines.append(f"tlvtype,{rec.stream},{rec.name},{rec.value}")
            lines += [f"tlvdata,{rec.stream},{rec.name},{n},{t},{c}" for n, t, c in rec.fields]
    return "".join(line + "\n" for line in lines)


def extract_files(paths: list[str], appendix: bool = False) -> list[Record]:
    """Extract from several BOLTs; files are sorted so the output never depends on argv order."""
    records: list[Record] = []
    for path in sorted(paths, key=lambda p: Path(p).name):
        records += extract(Path(path).read_text(encoding="utf-8"), path, appendix)
    records = _dedupe(records)
    _link_implicit_streams(records)
    return records


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m wire.extract_bolts BOLT.md...", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(to_csv(extract_files(argv)))
    except ExtractError as e:
        print(f"extract_bolts: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
