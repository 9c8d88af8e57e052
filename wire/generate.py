"""Compile a CLN-style wire CSV into a Python module of specialised codecs.

Usage: python -m wire.generate [--check] X_wire.csv X_wiregen.py

Every message becomes a frozen dataclass whose encode/decode are straight-line code:
runs of fixed-size fields are packed with one precompiled struct.Struct, so nothing is
interpreted per field at run time.
"""

from __future__ import annotations

import keyword
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wire import fundamental

# Fixed-size integers: struct code, size, Python type.
INT_TYPES: dict[str, str] = {
    "byte": "B",
    "u8": "B",
    "u16": "H",
    "u32": "I",
    "u64": "Q",
    "s8": "b",
    "s16": "h",
    "s32": "i",
    "s64": "q",
    # BOLT #7: block height, tx index and output index packed into 8 bytes.
    "short_channel_id": "Q",
}
INT_SIZES = {"B": 1, "b": 1, "H": 2, "h": 2, "I": 4, "i": 4, "Q": 8, "q": 8}
INT_MAX = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": 0xFFFFFFFFFFFFFFFF}
BYTES_TYPES: dict[str, int] = {
    "chain_hash": 32,
    "channel_id": 32,
    "sha256": 32,
    "bitcoin_txid": 32,
    "secret": 32,
    "privkey": 32,
    "preimage": 32,
    "point": 33,
    "pubkey": 33,
    "node_id": 33,
    "signature": 64,
    "bip340sig": 64,
}
# Compressed SEC1 points start with 2 or 3; anything else is rejected on the wire.
POINT_TYPES = {"point", "pubkey", "node_id"}
AMOUNT_TYPES = {"amount_sat": ("AmountSat", "sat"), "amount_msat": ("AmountMsat", "msat")}
TU_TYPES = {"tu16": 2, "tu32": 4, "tu64": 8}
# Variable-size scalars: (decode helper returning (value, offset), encode helper, py type).
VAR_TYPES: dict[str, tuple[str, str, str]] = {
    "bigsize": ("decode_bigsize", "encode_bigsize", "int"),
    "wirestring": ("decode_wirestring", "encode_wirestring", "str"),
    "bitcoin_tx": ("decode_blob", "encode_blob", "bytes"),
    "psbt": ("decode_blob", "encode_blob", "bytes"),
    "blob": ("decode_blob", "encode_blob", "bytes"),
}
# The fewest bytes each variable-size scalar takes: its length prefix (BigSize: one byte).
VAR_MIN_SIZES = {"bigsize": 1, "wirestring": 2, "bitcoin_tx": 4, "psbt": 4, "blob": 4}
# What generated code may import from the runtime: all it exports, less the two names the
# header handles itself (Message always; UnknownMessageError only the runtime raises).
RUNTIME_HELPERS = [n for n in fundamental.__all__ if n not in ("Message", "UnknownMessageError")]
# Decoders turn every low-level failure on bad input into WireError.
CATCH = "(struct.error, IndexError, ValueError, TypeError)"


class GenerateError(ValueError):
    """The CSV cannot be compiled; the message names the offending line."""


def camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


@dataclass
class Field:
    name: str
    typename: str
    count: str
    optional: bool
    where: str
    counts: list[str] = field(default_factory=list)  # arrays sized by this length field

    @property
    def py(self) -> str:
        return self.name + "_" if keyword.iskeyword(self.name) else self.name


@dataclass
class Container:
    """A message, subtype or TLV record: an ordered list of fields."""

    kind: str
    name: str
    where: str
    value: int = 0
    fields: list[Field] = field(default_factory=list)

    def data_fields(self) -> list[Field]:
        return [f for f in self.fields if not f.counts]


@dataclass
class Stream:
    name: str
    where: str
    records: list[Container] = field(default_factory=list)


@dataclass
class Schema:
    messages: list[Container] = field(default_factory=list)
    subtypes: dict[str, Container] = field(default_factory=dict)
    streams: dict[str, Stream] = field(default_factory=dict)


# ---------------------------------------------------------------------------- parsing


def _int(text: str, where: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise GenerateError(f"{where}: bad number {text!r}") from None


def _field(parts: list[str], where: str) -> Field:
    name, typename = parts[0], parts[1]
    count = parts[2] if len(parts) > 2 else ""
    optional = typename.startswith("?")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise GenerateError(f"{where}: bad field name {name!r}")
    return Field(name, typename.lstrip("?"), count, optional, where)


def parse_csv(text: str, source: str) -> Schema:
    schema = Schema()
    msgs: dict[str, Container] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        kind, args = parts[0], parts[1:]
        try:
            if kind == "msgtype":
                if args[0] in msgs:
                    raise GenerateError(f"{where}: duplicate message {args[0]}")
                msgs[args[0]] = Container("msg", args[0], where, _int(args[1], where))
                schema.messages.append(msgs[args[0]])
            elif kind == "msgdata":
                _owner(msgs, args[0], where).fields.append(_field(args[1:], where))
            elif kind == "subtype":
                schema.subtypes.setdefault(args[0], Container("subtype", args[0], where))
            elif kind == "subtypedata":
                _owner(schema.subtypes, args[0], where).fields.append(_field(args[1:], where))
            elif kind == "tlvtype":
                stream = schema.streams.setdefault(args[0], Stream(args[0], where))
                rec = Container("tlv", args[1], where, _int(args[2], where))
                stream.records.append(rec)
            elif kind == "tlvdata":
                stream = _owner(schema.streams, args[0], where)
                recs = [r for r in stream.records if r.name == args[1]]
                if not recs:
                    raise GenerateError(f"{where}: unknown tlv record {args[1]}")
                recs[0].fields.append(_field(args[2:], where))
            else:
                raise GenerateError(f"{where}: unknown row kind {kind!r}")
        except IndexError:
            raise GenerateError(f"{where}: too few columns") from None
    return schema


def _owner(table: dict, name: str, where: str):
    if name not in table:
        raise GenerateError(f"{where}: {name} used before its definition")
    return table[name]


# ------------------------------------------------------------------------- validation


def _check_type(schema: Schema, f: Field) -> None:
    t = f.typename
    known = (
        t in INT_TYPES
        or t in BYTES_TYPES
        or t in AMOUNT_TYPES
        or t in TU_TYPES
        or t in VAR_TYPES
        or t in ("bool",)
        or t in schema.subtypes
        or t in schema.streams
    )
    if not known:
        raise GenerateError(f"{f.where}: unknown type {t!r}")


def _link_lengths(c: Container) -> None:
    """Mark fields named as the count of later arrays: encode derives them."""
    seen: dict[str, Field] = {}
    for i, f in enumerate(c.fields):
        if f.count and f.count != "..." and not f.count.isdigit():
            lf = seen.get(f.count)
            if lf is None:
                raise GenerateError(f"{f.where}: count {f.count!r} is not an earlier field")
            if (lf.typename not in INT_TYPES and lf.typename != "bigsize") or lf.optional:
                raise GenerateError(f"{f.where}: length field {lf.name} is not an integer")
            lf.counts.append(f.name)
        if f.count == "..." and i != len(c.fields) - 1:
            raise GenerateError(f"{f.where}: '...' array must be the last field")
        seen[f.name] = f


def validate(schema: Schema) -> None:
    names: dict[str, str] = {}

    def claim(cls_name: str, where: str) -> None:
        if cls_name in names:
            raise GenerateError(f"{where}: class name {cls_name} clashes with {names[cls_name]}")
        names[cls_name] = where

    for sub in schema.subtypes.values():
        claim(camel(sub.name), sub.where)
    for stream in schema.streams.values():
        claim(camel(stream.name), stream.where)
        last = -1
        for rec in stream.records:
            if rec.value <= last:
                raise GenerateError(f"{rec.where}: tlv types must increase")
            last = rec.value
            if len(rec.data_fields()) > 1:
                claim(camel(stream.name) + camel(rec.name), rec.where)
    for msg in schema.messages:
        claim(camel(msg.name), msg.where)
    for c in _containers(schema):
        _link_lengths(c)
        for i, f in enumerate(c.fields):
            _check_type(schema, f)
            _check_placement(schema, c, f, i == len(c.fields) - 1)
        pys = [f.py for f in c.data_fields()]
        if len(set(pys)) != len(pys) or (c.kind == "msg" and "extra" in pys):
            raise GenerateError(f"{c.where}: duplicate or reserved field name in {c.name}")


def _min_size(schema: Schema, f: Field) -> int:
    """The fewest bytes field `f` can take on the wire."""
    if f.optional:
        return 1  # the presence byte
    if f.count and not f.count.isdigit():
        return 0  # its length is a field of its own, or it runs to the end
    t = f.typename
    code = _fixed_code(schema, Field(f.name, t, "", False, f.where))
    if t in schema.subtypes:
        one = sum(_min_size(schema, sf) for sf in schema.subtypes[t].fields)
    elif code is not None:
        one = _code_size(code)
    else:
        one = VAR_MIN_SIZES.get(t, 0)  # 0: truncated integers
    return one * int(f.count) if f.count else one


def _check_placement(schema: Schema, c: Container, f: Field, last: bool) -> None:
    t = f.typename
    if t in TU_TYPES and (c.kind != "tlv" or not last or f.count or f.optional):
        # BOLT #1: truncated integers are only for the final value in TLV records.
        raise GenerateError(f"{f.where}: {t} must be the last field of a tlv record")
    if t in schema.streams and (c.kind != "msg" or not last or f.count or f.optional):
        raise GenerateError(f"{f.where}: tlv stream {t} must be the last field of a message")
    if f.optional and f.count:
        raise GenerateError(f"{f.where}: optional arrays are not supported")
    if f.count and not f.count.isdigit() and _min_size(schema, Field("", t, "", False, "")) == 0:
        # A decoder loops once per element: one that may take no bytes lets a peer's
        # count (up to 2**64) or a `...` array spin it for ever.
        raise GenerateError(f"{f.where}: array of {t}, which can be empty on the wire")


def _is_raw_record(rec: Container) -> bool:
    """A record that is just `...*byte`: its value is the record's bytes, no codec needed."""
    return [(f.typename, f.count, f.optional) for f in rec.fields] == [("byte", "...", False)]


def _containers(schema: Schema) -> list[Container]:
    recs = [r for s in schema.streams.values() for r in s.records]
    return [*schema.subtypes.values(), *recs, *schema.messages]


# ------------------------------------------------------------------------ code model


def _fixed_code(schema: Schema, f: Field) -> str | None:
    """Struct code when the field is a single fixed-size value (or N bytes)."""
    if f.optional:
        return None
    t = f.typename
    if f.count.isdigit() and t == "byte":
        return f"{int(f.count)}s"
    if f.count:
        return None
    if t in INT_TYPES:
        return INT_TYPES[t]
    if t in BYTES_TYPES:
        return f"{BYTES_TYPES[t]}s"
    if t in AMOUNT_TYPES:
        return "Q"
    if t == "bool":
        return "B"
    return None


def _code_size(code: str) -> int:
    """Bytes taken by a struct code from _fixed_code: an integer or `Ns`."""
    return INT_SIZES.get(code) or int(code[:-1])


def _elem_size(t: str) -> int | None:
    if t in INT_TYPES:
        return INT_SIZES[INT_TYPES[t]]
    if t in BYTES_TYPES:
        return BYTES_TYPES[t]
    if t in AMOUNT_TYPES:
        return 8
    return 1 if t == "bool" else None


def _elem_pytype(schema: Schema, t: str) -> str:
    if t in INT_TYPES or t in TU_TYPES:
        return "int"
    if t in BYTES_TYPES:
        return "bytes"
    if t in AMOUNT_TYPES:
        return AMOUNT_TYPES[t][0]
    if t == "bool":
        return "bool"
    if t in VAR_TYPES:
        return VAR_TYPES[t][2]
    return camel(t)


def pytype(schema: Schema, f: Field) -> str:
    if f.typename == "byte" and f.count:
        base = "bytes"
    elif f.count:
        base = f"tuple[{_elem_pytype(schema, f.typename)}, ...]"
    else:
        base = _elem_pytype(schema, f.typename)
    return f"{base} | None" if f.optional else base


def _metadata(schema: Schema, c: Container, f: Field) -> str:
    meta = f'"type": {f.typename!r}, "count": {f.count!r}, "optional": {f.optional}'
    lens = [lf for lf in c.fields if f.name in lf.counts]
    if lens:
        code = INT_TYPES.get(lens[0].typename, "Q")
        meta += f', "maxlen": {INT_MAX.get(code, 0xFFFF)}'
    return "{" + meta.replace("'", '"') + "}"


class Structs:
    """Module-level precompiled structs, shared by format."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def get(self, fmt: str) -> str:
        if fmt not in self.names:
            self.names[fmt] = f"_S{len(self.names)}"
        return self.names[fmt]

    def lines(self) -> list[str]:
        return [f'{name} = struct.Struct(">{fmt}")' for fmt, name in self.names.items()]


# ----------------------------------------------------------------------- decode code


@dataclass
class DecodeCtx:
    schema: Schema
    structs: Structs
    label: str
    off: int | None  # known constant offset, or None once `_o` holds it
    lines: list[str] = field(default_factory=list)

    def emit(self, text: str, indent: int = 0) -> None:
        self.lines.append("    " * indent + text)

    def o(self) -> str:
        return "_o" if self.off is None else str(self.off)

    def dynamic(self) -> None:
        """From here on the offset lives in `_o`."""
        if self.off is not None:
            self.emit(f"_o = {self.off}")
            self.off = None

    def fail(self, what: str) -> str:
        return f'raise WireError("{self.label}: {what}")'


def _post_checks(ctx: DecodeCtx, f: Field, var: str, indent: int = 0) -> None:
    """Value checks and conversions after a fixed-size field is unpacked."""
    t = f.typename
    if t in POINT_TYPES and not f.count:
        ctx.emit(f"if {var}[0] not in (2, 3):", indent)
        ctx.emit(ctx.fail(f"{f.name} is not a valid point"), indent + 1)
    elif t == "bool" and not f.count:
        ctx.emit(f"if {var} > 1:", indent)
        ctx.emit(ctx.fail(f"{f.name} is not a bool"), indent + 1)
        ctx.emit(f"{var} = {var} == 1", indent)
    elif t in AMOUNT_TYPES and not f.count:
        ctx.emit(f"{var} = {AMOUNT_TYPES[t][0]}({var})", indent)


def _decode_run(ctx: DecodeCtx, run: list[tuple[Field, str]], lead: list[str]) -> None:
    # The lead targets are the message's u16 type.
    fmt = "H" * len(lead) + "".join(code for _, code in run)
    size = 2 * len(lead) + sum(_code_size(c) for _, c in run)
    targets = lead + [f"v_{f.py}" for f, _ in run]
    name = ctx.structs.get(fmt)
    lhs = f"({targets[0]},)" if len(targets) == 1 else ", ".join(targets)
    ctx.emit(f"{lhs} = {name}.unpack_from(_b, {ctx.o()})")
    if ctx.off is not None:
        ctx.off += size
    else:
        ctx.emit(f"_o += {size}")
    for f, _ in run:
        _post_checks(ctx, f, f"v_{f.py}")


def _count_expr(ctx: DecodeCtx, f: Field, size: int | None, indent: int) -> str:
    """Element count of an array field (emitting the `...` remainder computation)."""
    if f.count.isdigit():
        return f.count
    if f.count != "...":
        return f"v_{f.count}"
    if size is None:
        return ""
    ctx.emit(f"_c, _r = divmod(_n - _o, {size})", indent)
    ctx.emit("if _r:", indent)
    ctx.emit(ctx.fail(f"{f.name} is not a whole number of elements"), indent + 1)
    return "_c"


def _decode_array(ctx: DecodeCtx, f: Field, var: str, indent: int) -> None:
    t = f.typename
    size = _elem_size(t)
    if t == "byte":
        if f.count == "...":
            ctx.emit(f"{var} = _b[_o:]", indent)
            ctx.emit("_o = _n", indent)
            return
        ctx.emit(f"_e = _o + {_count_expr(ctx, f, 1, indent)}", indent)
        ctx.emit("if _e > _n:", indent)
        ctx.emit(ctx.fail(f"{f.name} truncated"), indent + 1)
        ctx.emit(f"{var} = _b[_o:_e]", indent)
        ctx.emit("_o = _e", indent)
        return
    count = _count_expr(ctx, f, size, indent)
    if size is not None:
        ctx.emit(f"_e = _o + {count} * {size}", indent)
        ctx.emit("if _e > _n:", indent)
        ctx.emit(ctx.fail(f"{f.name} truncated"), indent + 1)
        if t in BYTES_TYPES:
            ctx.emit(f"{var} = tuple(_b[_i : _i + {size}] for _i in range(_o, _e, {size}))", indent)
            if t in POINT_TYPES:
                ctx.emit(f"if any(_p[0] not in (2, 3) for _p in {var}):", indent)
                ctx.emit(ctx.fail(f"{f.name} holds an invalid point"), indent + 1)
        else:
            code = "B" if t == "bool" else INT_TYPES.get(t, "Q")
            unpack = f'struct.unpack_from(f">{{{count}}}{code}", _b, _o)'
            if f.count.isdigit():
                unpack = f"{ctx.structs.get(count + code)}.unpack_from(_b, _o)"
            ctx.emit(f"{var} = {unpack}", indent)
            if t == "bool":
                ctx.emit(f"if any(_x > 1 for _x in {var}):", indent)
                ctx.emit(ctx.fail(f"{f.name} holds a non-bool"), indent + 1)
                ctx.emit(f"{var} = tuple(_x == 1 for _x in {var})", indent)
            elif t in AMOUNT_TYPES:
                ctx.emit(f"{var} = tuple({AMOUNT_TYPES[t][0]}(_x) for _x in {var})", indent)
        ctx.emit("_o = _e", indent)
        return
    # Variable-size elements: decode one at a time.
    dec = _var_decoder(t)
    ctx.emit("_l = []", indent)
    loop = "while _o < _n:" if f.count == "..." else f"for _ in range({count}):"
    ctx.emit(loop, indent)
    ctx.emit(f"_x, _o = {dec}(_b, _o)", indent + 1)
    ctx.emit("_l.append(_x)", indent + 1)
    ctx.emit(f"{var} = tuple(_l)", indent)


def _var_decoder(t: str) -> str:
    return VAR_TYPES[t][0] if t in VAR_TYPES else f"_dsub_{t}"


def _decode_single(ctx: DecodeCtx, f: Field, var: str, indent: int) -> None:
    t = f.typename
    schema = ctx.schema
    if t in schema.streams:
        ctx.emit(f"{var} = _dstream_{t}(_b, _o)", indent)
        ctx.emit("_o = _n", indent)
    elif t in TU_TYPES:
        ctx.emit(f"{var} = decode_tu(_b, _o, {TU_TYPES[t]})", indent)
        ctx.emit("_o = _n", indent)
    elif t in VAR_TYPES or t in schema.subtypes:
        ctx.emit(f"{var}, _o = {_var_decoder(t)}(_b, _o)", indent)
    else:
        code = _fixed_code(schema, Field(f.name, t, "", False, f.where))
        assert code is not None
        size = _code_size(code)
        ctx.emit(f"{var} = {ctx.structs.get(code)}.unpack_from(_b, _o)[0]", indent)
        ctx.emit(f"_o += {size}", indent)
        _post_checks(ctx, Field(f.name, t, "", False, f.where), var, indent)


def _decode_segment(ctx: DecodeCtx, f: Field) -> None:
    ctx.dynamic()
    var = f"v_{f.py}"
    if not f.optional:
        if f.count:
            _decode_array(ctx, f, var, 0)
        else:
            _decode_single(ctx, f, var, 0)
        return
    # CLN's `?type`: a presence byte (0 or 1), then the value when present.
    ctx.emit("_p = _b[_o]")
    ctx.emit("_o += 1")
    ctx.emit("if _p == 0:")
    ctx.emit(f"{var} = None", 1)
    ctx.emit("elif _p == 1:")
    _decode_single(ctx, f, var, 1)
    ctx.emit("else:")
    ctx.emit(ctx.fail(f"{f.name} has a bad presence byte"), 1)


def decode_fields(ctx: DecodeCtx, fields: list[Field], lead: list[str]) -> None:
    """Emit statements decoding `fields` from `_b` into locals `v_<name>`."""
    run: list[tuple[Field, str]] = []
    for f in fields:
        code = _fixed_code(ctx.schema, f)
        if code is not None:
            run.append((f, code))
            continue
        if run or lead:
            _decode_run(ctx, run, lead)
            run, lead = [], []
        _decode_segment(ctx, f)
    if run or lead:
        _decode_run(ctx, run, lead)


def _finish(ctx: DecodeCtx) -> list[str]:
    """Prefix `_n = len(_b)` when the body needs it."""
    body = ctx.lines
    if any(re.search(r"\b_n\b", line) for line in body):
        body = ["_n = len(_b)", *body]
    return body


# ----------------------------------------------------------------------- encode code


@dataclass
class EncodeCtx:
    schema: Schema
    structs: Structs
    label: str
    access: Callable[[Field], str]  # Python expression reading a field's value
    checks: list[str] = field(default_factory=list)

    def fail(self, what: str) -> str:
        return f'raise WireError("{self.label}: {what}")'

    def check(self, cond: str, what: str, indent: int = 0) -> None:
        pad = "    " * indent
        self.checks += [f"{pad}if {cond}:", f"{pad}    {self.fail(what)}"]


def _len_expr(ctx: EncodeCtx, c: Container, lf: Field) -> str:
    arrays = [ctx.access(next(f for f in c.fields if f.name == n)) for n in lf.counts]
    for other in arrays[1:]:
        ctx.check(f"len({arrays[0]}) != len({other})", f"arrays sized by {lf.name} differ")
    return f"len({arrays[0]})"


def _fixed_arg(ctx: EncodeCtx, f: Field, v: str, indent: int = 0) -> str:
    """Argument for struct.pack (plus checks) of a single fixed-size value."""
    t = f.typename
    if t == "byte" and f.count:
        ctx.check(f"len({v}) != {f.count}", f"{f.name} must be {f.count} bytes", indent)
        return v
    if t in BYTES_TYPES:
        size = BYTES_TYPES[t]
        if t in POINT_TYPES:
            ctx.check(f"len({v}) != 33 or {v}[0] not in (2, 3)", f"{f.name} bad point", indent)
        else:
            ctx.check(f"len({v}) != {size}", f"{f.name} must be {size} bytes", indent)
        return v
    if t in AMOUNT_TYPES:
        return f"{v}.{AMOUNT_TYPES[t][1]}"
    if t == "bool":
        return f"1 if {v} else 0"
    return v


def _encode_array(ctx: EncodeCtx, f: Field, v: str) -> str:
    t = f.typename
    if f.count.isdigit():
        ctx.check(f"len({v}) != {f.count}", f"{f.name} needs {f.count} elements")
    if t == "byte":
        return v
    if t in BYTES_TYPES:
        size = BYTES_TYPES[t]
        bad = f"len(_x) != {size}"
        if t in POINT_TYPES:
            bad += " or _x[0] not in (2, 3)"
        ctx.check(f"any({bad} for _x in {v})", f"{f.name} holds a bad element")
        return f'b"".join({v})'
    if t == "bool":
        return f"bytes(1 if _x else 0 for _x in {v})"
    if t in INT_TYPES or t in AMOUNT_TYPES:
        code = INT_TYPES.get(t, "Q")
        items = f"*{v}"
        if t in AMOUNT_TYPES:
            items = f"*(_x.{AMOUNT_TYPES[t][1]} for _x in {v})"
        if f.count.isdigit():
            return f"{ctx.structs.get(f.count + code)}.pack({items})"
        return f'struct.pack(f">{{len({v})}}{code}", {items})'
    return f'b"".join({_var_encoder(ctx.schema, t, "_x")} for _x in {v})'


def _var_encoder(schema: Schema, t: str, v: str) -> str:
    if t in VAR_TYPES:
        return f"{VAR_TYPES[t][1]}({v})"
    if t in TU_TYPES:
        return f"encode_tu({v}, {TU_TYPES[t]})"
    return f"{v}.encode()"


def _encode_single(ctx: EncodeCtx, f: Field, v: str, indent: int) -> str:
    t = f.typename
    if t in VAR_TYPES or t in TU_TYPES or t in ctx.schema.subtypes or t in ctx.schema.streams:
        return _var_encoder(ctx.schema, t, v)
    plain = Field(f.name, t, "", False, f.where)
    code = _fixed_code(ctx.schema, plain)
    assert code is not None
    arg = _fixed_arg(ctx, plain, v, indent)
    if code.endswith("s"):
        return arg
    return f"{ctx.structs.get(code)}.pack({arg})"


def encode_parts(ctx: EncodeCtx, c: Container, lead: list[str]) -> list[str]:
    """Expressions whose concatenation is the encoding of c's fields."""
    parts: list[str] = []
    fmt, args = "", list(lead)
    if lead:
        fmt = "H"
    for f in c.fields:
        v = ctx.access(f)
        code = _fixed_code(ctx.schema, f)
        if code is not None:
            fmt += code
            args.append(_len_expr(ctx, c, f) if f.counts else _fixed_arg(ctx, f, v))
            continue
        if fmt:
            parts.append(f"{ctx.structs.get(fmt)}.pack({', '.join(args)})")
            fmt, args = "", []
        if f.counts:
            parts.append(_var_encoder(ctx.schema, f.typename, _len_expr(ctx, c, f)))
        elif f.optional:
            ctx.checks.append(f"if {v} is not None:")
            before = len(ctx.checks)
            inner = _encode_single(ctx, f, v, 1)
            _fold_optional_check(ctx.checks, before, v)
            parts.append(f'(b"\\x00" if {v} is None else b"\\x01" + {inner})')
        elif f.count:
            parts.append(_encode_array(ctx, f, v))
        else:
            parts.append(_encode_single(ctx, f, v, 0))
    if fmt:
        parts.append(f"{ctx.structs.get(fmt)}.pack({', '.join(args)})")
    return parts


def _fold_optional_check(checks: list[str], before: int, v: str) -> None:
    """Drop an empty `if v is not None:` guard, or fold a lone nested `if` into it."""
    added = checks[before:]
    if not added:
        checks.pop()
    elif len(added) == 2 and added[0].startswith("    if ") and added[0].endswith(":"):
        cond = added[0][len("    if ") : -1]
        checks[before - 1 :] = [f"if {v} is not None and ({cond}):", added[1][4:]]


def _join(parts: list[str]) -> str:
    if not parts:
        return 'b""'
    if len(parts) <= 3:
        # Concatenating a couple of bytes objects beats building a tuple for join().
        return " + ".join(parts)
    return 'b"".join((' + ", ".join(parts) + ",))"


# --------------------------------------------------------------------- module output


class Module:
    def __init__(self, schema: Schema, source: str) -> None:
        self.schema = schema
        self.source = source
        self.structs = Structs()
        self.out: list[str] = []

    def emit(self, *lines: str) -> None:
        self.out.extend(lines)

    def _field_decl(self, c: Container, f: Field, default: str | None = None) -> str:
        meta = _metadata(self.schema, c, f)
        dflt = f"default={default}, " if default is not None else ""
        return f"    {f.py}: {pytype(self.schema, f)} = field({dflt}metadata={meta})"

    def _encode_method(self, c: Container, lead: list[str], tail: list[str]) -> list[str]:
        ctx = EncodeCtx(self.schema, self.structs, c.name, lambda f: "self." + f.py)
        parts = encode_parts(ctx, c, lead) + tail
        body = ["def encode(self) -> bytes:"]
        body += ["    " + line for line in ctx.checks]
        body += [
            "    try:",
            f"        return {_join(parts)}",
            f"    except {CATCH} as e:",
            f'        raise WireError(f"{c.name}: cannot encode: {{e}}") from None',
        ]
        return body

    def subtype(self, sub: Container) -> None:
        cls = camel(sub.name)
        self.emit("", "", "@dataclass(frozen=True, slots=True)", f"class {cls}:")
        self.emit(f'    """Subtype `{sub.name}`."""', "")
        self.emit(*[self._field_decl(sub, f) for f in sub.data_fields()])
        self.emit("", *["    " + line for line in self._encode_method(sub, [], [])])
        self.emit(
            "",
            "    @classmethod",
            f"    def decode(cls, data: bytes) -> {cls}:",
            "        data = bytes(data)",
            "        try:",
            f"            value, end = _dsub_{sub.name}(data, 0)",
            f"        except {CATCH} as e:",
            f'            raise WireError(f"{sub.name}: {{e}}") from None',
            "        if end != len(data):",
            f'            raise WireError("{sub.name}: trailing bytes")',
            "        return value",
        )
        ctx = DecodeCtx(self.schema, self.structs, sub.name, None)
        decode_fields(ctx, sub.fields, [])
        args = ", ".join(f"v_{f.py}" for f in sub.data_fields())
        body = [*_finish(ctx), f"return {cls}({args}), _o"]
        self.emit("", "", f"def _dsub_{sub.name}(_b: bytes, _o: int) -> tuple[{cls}, int]:")
        self.emit(*["    " + line for line in body])

    def record_class(self, stream: Stream, rec: Container) -> None:
        cls = camel(stream.name) + camel(rec.name)
        self.emit("", "", "@dataclass(frozen=True, slots=True)", f"class {cls}:")
        self.emit(f'    """Record `{rec.name}` (type {rec.value}) of `{stream.name}`."""', "")
        self.emit(*[self._field_decl(rec, f) for f in rec.data_fields()])

    def _record_value_type(self, stream: Stream, rec: Container) -> str:
        data = rec.data_fields()
        if not data:
            return "bool"
        if len(data) == 1:
            return pytype(self.schema, data[0])
        return camel(stream.name) + camel(rec.name)

    def record_codec(self, stream: Stream, rec: Container) -> None:
        label = f"{stream.name}.{rec.name}"
        rtype = self._record_value_type(stream, rec)
        data = rec.data_fields()
        key = f"{stream.name}__{rec.name}"
        # Decoder: the record's value bytes must be consumed exactly (BOLT #1).
        ctx = DecodeCtx(self.schema, self.structs, label, 0)
        decode_fields(ctx, rec.fields, [])
        ctx.emit(f"if _n != {ctx.o()}:")
        ctx.emit(ctx.fail("length does not match its contents"), 1)
        if not data:
            ctx.emit("return True")
        elif len(data) == 1:
            ctx.emit(f"return v_{data[0].py}")
        else:
            ctx.emit(f"return {rtype}({', '.join(f'v_{f.py}' for f in data)})")
        self.emit("", "", f"def _drec_{key}(_b: bytes) -> {rtype}:")
        self.emit(*["    " + line for line in _finish(ctx)])
        # Encoder: a one-field record's value is the field itself.
        if len(data) == 1:
            ectx = EncodeCtx(self.schema, self.structs, label, lambda f: "v")
        else:
            ectx = EncodeCtx(self.schema, self.structs, label, lambda f: "v." + f.py)
        parts = encode_parts(ectx, rec, [])
        arg = "_v" if not data else "v"
        self.emit("", "", f"def _erec_{key}({arg}: {rtype}) -> bytes:")
        self.emit(*["    " + line for line in ectx.checks])
        self.emit(f"    return {_join(parts)}")

    def stream(self, stream: Stream) -> None:
        cls = camel(stream.name)
        known = ", ".join(str(r.value) for r in stream.records)
        self.emit("", "", "@dataclass(frozen=True, slots=True)", f"class {cls}:")
        self.emit(f'    """TLV stream `{stream.name}`; `unknown` keeps unknown odd records."""')
        self.emit("")
        for rec in stream.records:
            rtype = self._record_value_type(stream, rec)
            data = rec.data_fields()
            meta = f'"tlv_type": {rec.value}'
            if len(data) == 1:
                inner = _metadata(self.schema, rec, data[0])[1:-1]
                meta += f', "field": "{data[0].name}", {inner}'
            elif data:
                meta += f', "record": "{rtype}"'
            else:
                meta += ', "flag": True'
            self.emit(f"    {rec.name}: {rtype} | None = field(default=None, metadata={{{meta}}})")
        self.emit("    unknown: tuple[tuple[int, bytes], ...] = ()", "")
        self.emit("    def encode(self) -> bytes:", "        _r: list[tuple[int, bytes]] = []")
        for rec in stream.records:
            value = f"self.{rec.name}"
            if not _is_raw_record(rec):
                value = f"_erec_{stream.name}__{rec.name}({value})"
            self.emit(
                f"        if self.{rec.name} is not None:",
                f"            _r.append(({rec.value}, {value}))",
            )
        self.emit(f"        return encode_tlv_stream(_r, self.unknown, _KNOWN_{stream.name})")
        self.emit(
            "",
            "    @classmethod",
            f"    def decode(cls, data: bytes) -> {cls}:",
            "        try:",
            f"            return _dstream_{stream.name}(bytes(data), 0)",
            "        except WireError:",
            "            raise",
            f"        except {CATCH} as e:",
            f'            raise WireError(f"{stream.name}: {{e}}") from None',
        )
        self.emit("", "", f"_KNOWN_{stream.name} = frozenset(({known},))")
        self.emit(f"_EMPTY_{stream.name} = {cls}()")
        for rec in stream.records:
            self.record_codec(stream, rec)
        self._stream_decoder(stream, cls)

    def _stream_decoder(self, stream: Stream, cls: str) -> None:
        """Inline TLV framing: one-byte BigSizes (the common case) need no call."""
        names = [rec.name for rec in stream.records]
        self.emit("", "", f"def _dstream_{stream.name}(_b: bytes, _o: int) -> {cls}:")
        self.emit("    _n = len(_b)", "    if _o == _n:", f"        return _EMPTY_{stream.name}")
        self.emit(*[f"    v_{n} = None" for n in names])
        self.emit(
            "    _unknown = []",
            "    _last = -1",
            "    while _o < _n:",
            "        _t = _b[_o]",
            "        if _t < 0xFD:",
            "            _o += 1",
            "        else:",
            "            _t, _o = decode_bigsize(_b, _o)",
            "        # BOLT #1: if decoded `type`s are not strictly-increasing: MUST fail.",
            "        if _t <= _last:",
            f'            raise WireError(f"{stream.name}: tlv type {{_t}} out of order")',
            "        _last = _t",
            "        if _o >= _n:",
            f'            raise WireError(f"{stream.name}: tlv type {{_t}} has no length")',
            "        _len = _b[_o]",
            "        if _len < 0xFD:",
            "            _o += 1",
            "        else:",
            "            _len, _o = decode_bigsize(_b, _o)",
            "        _e = _o + _len",
            "        # BOLT #1: if `length` exceeds the bytes remaining: MUST fail to parse.",
            "        if _e > _n:",
            f'            raise WireError(f"{stream.name}: tlv type {{_t}} is truncated")',
        )
        kw = "if"
        for rec in stream.records:
            value = "_b[_o:_e]"
            if not _is_raw_record(rec):
                value = f"_drec_{stream.name}__{rec.name}({value})"
            self.emit(f"        {kw} _t == {rec.value}:", f"            v_{rec.name} = {value}")
            kw = "elif"
        self.emit(
            f"        {kw} _t & 1:",
            "            _unknown.append((_t, _b[_o:_e]))",
            "        else:",
            "            # BOLT #1: an unknown even type MUST fail to parse the stream.",
            f'            raise WireError(f"{stream.name}: unknown even tlv type {{_t}}")',
            "        _o = _e",
        )
        args = "".join(f"v_{n}, " for n in names)
        self.emit(f"    return {cls}({args}tuple(_unknown))", "")

    def message(self, msg: Container) -> None:
        cls = camel(msg.name)
        s = self.schema
        last = msg.fields[-1] if msg.fields else None
        has_stream = last is not None and last.typename in s.streams
        # Appendix C / BOLT #1: bytes after the known fields are an extension we may not
        # understand; keep them verbatim so re-encoding (and signatures) stay faithful.
        has_extra = not has_stream and not (
            last is not None and (last.count == "..." or last.typename in TU_TYPES)
        )
        self.emit("", "", "@dataclass(frozen=True, slots=True)", f"class {cls}(Message):")
        self.emit(f'    """Message `{msg.name}` (type {msg.value})."""', "")
        self.emit(f"    TYPE: ClassVar[int] = {msg.value}")
        self.emit(f'    NAME: ClassVar[str] = "{msg.name}"')
        for f in msg.data_fields():
            default = f"_EMPTY_{f.typename}" if f.typename in s.streams else None
            self.emit(self._field_decl(msg, f, default))
        if has_extra:
            self.emit('    extra: bytes = field(default=b"", metadata={"type": "extra"})')
        tail = ["self.extra"] if has_extra else []
        self.emit("", *["    " + line for line in self._encode_method(msg, [str(msg.value)], tail)])
        ctx = DecodeCtx(s, self.structs, msg.name, 0)
        decode_fields(ctx, msg.fields, ["_t"])
        args = [f"v_{f.py}" for f in msg.data_fields()]
        if has_extra:
            args.append(f"_b[{ctx.o()}:]")
        body = _finish(ctx)
        self.emit(
            "",
            "    @classmethod",
            f"    def decode(cls, data: bytes) -> {cls}:",
            "        _b = data if type(data) is bytes else bytes(data)",
            "        try:",
        )
        first = True
        for line in body:
            self.emit("            " + line)
            if first and line.startswith(("_t,", "(_t,)")):
                first = False
                self.emit(
                    f"            if _t != {msg.value}:",
                    f'                raise WireError(f"{msg.name}: wrong type {{_t}}")',
                )
        self.emit(
            "        except WireError:",
            "            raise",
            f"        except {CATCH} as e:",
            f'            raise WireError(f"{msg.name}: truncated or invalid: {{e}}") from None',
            "        _m = _new(cls)",
            f"        _s = _SET_{msg.name}",
            *[f"        _s[{i}](_m, {a})" for i, a in enumerate(args)],
            "        return _m",
            "",
            "",
            f"_SET_{msg.name} = slot_setters({cls})",
        )

    def render(self) -> str:
        s = self.schema
        for sub in s.subtypes.values():
            self.subtype(sub)
        for stream in s.streams.values():
            for rec in stream.records:
                if len(rec.data_fields()) > 1:
                    self.record_class(stream, rec)
            self.stream(stream)
        for msg in s.messages:
            self.message(msg)
        self.emit("", "", "MESSAGES: dict[int, type[Message]] = {")
        self.emit(*[f"    {m.value}: {camel(m.name)}," for m in s.messages], "}")
        self.emit("BY_NAME: dict[str, type[Message]] = {m.NAME: m for m in MESSAGES.values()}")
        self.emit("SUBTYPES: dict[str, type] = {")
        self.emit(*[f'    "{n}": {camel(n)},' for n in s.subtypes], "}")
        self.emit("TLV_STREAMS: dict[str, type] = {")
        self.emit(*[f'    "{n}": {camel(n)},' for n in s.streams], "}")
        self.emit(
            "",
            "",
            "def decode(data: bytes) -> Message:",
            '    """Decode any message of this module; UnknownMessageError for other types."""',
            "    return decode_message(MESSAGES, data)",
        )
        body = "\n".join(self.out)
        return self._header(body) + body + "\n"

    def _header(self, body: str) -> str:
        helpers = sorted(n for n in RUNTIME_HELPERS if re.search(rf"\b{n}\b", body))
        amounts = sorted(n for n, _ in AMOUNT_TYPES.values() if re.search(rf"\b{n}\b", body))
        lines = [
            f"# Generated by wire/generate.py from {self.source}: do not edit.",
            "from __future__ import annotations",
            "",
            "import struct",
            "from dataclasses import dataclass, field",
            "from typing import ClassVar",
            "",
        ]
        if amounts:
            lines.append(f"from common.amount import {', '.join(amounts)}")
        names = ["Message", *[h for h in helpers if h == "WireError"]]
        names += [h for h in helpers if h != "WireError"]
        lines.append("from wire.fundamental import (")
        lines += [f"    {n}," for n in names]
        lines += [")", "", "_new = object.__new__", *self.structs.lines()]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- main


def _ruff_format(text: str) -> str:
    """Normalise layout with ruff (project settings) so the output is lint-clean."""
    cmd = [sys.executable, "-m", "ruff", "format", "--isolated", "--line-length", "100"]
    cmd += ["--target-version", "py311", "-"]
    try:
        proc = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
    except OSError:
        return text
    if proc.returncode != 0:
        if "No module named ruff" in proc.stderr:
            print("generate: ruff not installed; output left unformatted", file=sys.stderr)
            return text
        raise GenerateError(f"generated code does not parse: {proc.stderr.strip()}")
    return proc.stdout


def generate(csv_text: str, source: str) -> str:
    schema = parse_csv(csv_text, source)
    validate(schema)
    return _ruff_format(Module(schema, source).render())


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if len(args) != 2:
        print("usage: python -m wire.generate [--check] X_wire.csv X_wiregen.py", file=sys.stderr)
        return 2
    csv_path, out_path = args
    try:
        text = generate(Path(csv_path).read_text(encoding="utf-8"), csv_path)
    except (GenerateError, OSError) as e:
        print(f"generate: {e}", file=sys.stderr)
        return 1
    out = Path(out_path)
    if check:
        current = out.read_text(encoding="utf-8") if out.exists() else None
        if current != text:
            print(f"{out_path} is stale: regenerate it from {csv_path}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
