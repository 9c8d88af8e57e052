"""Feerates as Core Lightning's RPC takes them.

"253perkw" (satoshi per 1000 weight units), "1000perkb" (per 1000 virtual
bytes: a quarter of that per kw), a bare number (perkb, CLN's default style),
or a name: slow, normal, urgent, minimum, opening. Until the chain backend
gives estimates, a name maps to the regtest defaults below. A number below the
floor is raised to it, as CLN's param_feerate_val does: "0perkw" means 253perkw.
"""

from __future__ import annotations

from typing import Any

from lightningd.jsonrpc import ParamError

# BOLT #3 / Bitcoin Core: nothing below 253 sat/kw relays (1 sat/vbyte, rounded up).
FEERATE_FLOOR_PERKW = 253
NAMED_FEERATES_PERKW = {
    "minimum": FEERATE_FLOOR_PERKW,
    "slow": 1875,
    "normal": 7500,
    "opening": 7500,
    "urgent": 15000,
}


def parse_feerate(value: Any) -> int:
    """A feerate parameter in sat per 1000 weight units."""
    if isinstance(value, str) and value in NAMED_FEERATES_PERKW:
        return NAMED_FEERATES_PERKW[value]
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise ParamError("should be a feerate")
    number, per_kw = text, False
    if text.endswith("perkw"):
        number, per_kw = text[: -len("perkw")], True
    elif text.endswith("perkb"):
        number = text[: -len("perkb")]
    # CLN reads the number as a u32 (json_to_number): ASCII digits, below 2^32.
    if not (number.isascii() and number.isdigit()) or int(number) >= 1 << 32:
        raise ParamError("should be a feerate")
    perkw = int(number) if per_kw else int(number) // 4
    # Nothing below the floor relays: a lower rate would only make a stuck transaction.
    return max(perkw, FEERATE_FLOOR_PERKW)
