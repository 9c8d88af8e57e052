"""Satoshi and millisatoshi amounts with overflow-checked arithmetic.

Amounts travel on the wire as u64, so every value is kept in [0, 2^64): an
operation that would leave that range raises AmountError instead of wrapping
or going negative. String forms follow Core Lightning: "1000sat",
"1000msat", "0.001btc", a bare number in the parameter's own unit, and
"all" where the caller allows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

U64_MAX = 2**64 - 1
MSAT_PER_SAT = 1000
SAT_PER_BTC = 100_000_000


class AmountError(ValueError):
    """An amount out of range or a string that is not an amount."""


def _checked(value: int, what: str) -> int:
    if not 0 <= value <= U64_MAX:
        raise AmountError(f"{what} {value} out of range")
    return value


@dataclass(frozen=True, slots=True, order=True)
class AmountSat:
    sat: int

    def __post_init__(self) -> None:
        if not isinstance(self.sat, int) or isinstance(self.sat, bool):
            raise AmountError(f"satoshi amount must be an integer, not {self.sat!r}")
        _checked(self.sat, "satoshi amount")

    def __add__(self, other: AmountSat) -> AmountSat:
        return AmountSat(_checked(self.sat + other.sat, "sum"))

    def __sub__(self, other: AmountSat) -> AmountSat:
        return AmountSat(_checked(self.sat - other.sat, "difference"))

    def __mul__(self, factor: int) -> AmountSat:
        return AmountSat(_checked(self.sat * factor, "product"))

    def __floordiv__(self, divisor: int) -> AmountSat:
        return AmountSat(self.sat // divisor)

    def __bool__(self) -> bool:
        return self.sat != 0

    def to_msat(self) -> AmountMsat:
        return AmountMsat(_checked(self.sat * MSAT_PER_SAT, "millisatoshi amount"))

    def to_btc_str(self) -> str:
        return f"{self.sat // SAT_PER_BTC}.{self.sat % SAT_PER_BTC:08d}btc"

    def __str__(self) -> str:
        return f"{self.sat}sat"


@dataclass(frozen=True, slots=True, order=True)
class AmountMsat:
    msat: int

    def __post_init__(self) -> None:
        if not isinstance(self.msat, int) or isinstance(self.msat, bool):
            raise AmountError(f"millisatoshi amount must be an integer, not {self.msat!r}")
        _checked(self.msat, "millisatoshi amount")

    def __add__(self, other: AmountMsat) -> AmountMsat:
        return AmountMsat(_checked(self.msat + other.msat, "sum"))

    def __sub__(self, other: AmountMsat) -> AmountMsat:
        return AmountMsat(_checked(self.msat - other.msat, "difference"))

    def __mul__(self, factor: int) -> AmountMsat:
        return AmountMsat(_checked(self.msat * factor, "product"))

    def __floordiv__(self, divisor: int) -> AmountMsat:
        return AmountMsat(self.msat // divisor)

    def __bool__(self) -> bool:
        return self.msat != 0

    def to_sat_floor(self) -> AmountSat:
        """Whole satoshis, rounding down: what an on-chain output can carry."""
        return AmountSat(self.msat // MSAT_PER_SAT)

    def to_sat_exact(self) -> AmountSat:
        if self.msat % MSAT_PER_SAT:
            raise AmountError(f"{self.msat}msat is not a whole number of satoshis")
        return AmountSat(self.msat // MSAT_PER_SAT)

    def __str__(self) -> str:
        return f"{self.msat}msat"


_AMOUNT_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>msat|sat|btc)?$")


def _parse_msat(text: str, bare_unit_msat: int) -> int:
    """Millisatoshis in `text`; a bare number counts `bare_unit_msat` each."""
    match = _AMOUNT_RE.match(text.strip())
    if not match:
        raise AmountError(f"'{text}' is not an amount (e.g. 1000sat, 1000msat, 0.001btc)")
    num, unit = match["num"], match["unit"]
    per_unit = {"msat": 1, "sat": MSAT_PER_SAT, "btc": SAT_PER_BTC * MSAT_PER_SAT}.get(
        unit or "", bare_unit_msat
    )
    try:
        value = Decimal(num) * per_unit
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise AmountError(f"'{text}' is not an amount") from exc
    if value != value.to_integral_value():
        raise AmountError(f"'{text}' is finer than a millisatoshi")
    return _checked(int(value), "amount")


def parse_sat(value: str | int) -> AmountSat:
    """A satoshi amount as CLN's RPC takes it: 1000, "1000", "1000sat", "0.00001btc"."""
    if isinstance(value, bool):
        raise AmountError("an amount must be a number or a string, not a boolean")
    if isinstance(value, int):
        return AmountSat(_checked(value, "amount"))
    return AmountMsat(_parse_msat(value, MSAT_PER_SAT)).to_sat_exact()


def parse_msat(value: str | int) -> AmountMsat:
    """A millisatoshi amount as CLN's RPC takes it: 1000 (msat), "1000msat", "1sat"."""
    if isinstance(value, bool):
        raise AmountError("an amount must be a number or a string, not a boolean")
    if isinstance(value, int):
        return AmountMsat(_checked(value, "amount"))
    return AmountMsat(_parse_msat(value, 1))


def parse_sat_or_all(value: str | int) -> AmountSat | None:
    """Like parse_sat, but "all" gives None: the caller spends everything it may."""
    if value == "all":
        return None
    return parse_sat(value)
