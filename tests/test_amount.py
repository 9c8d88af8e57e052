import pytest

from common.amount import (
    U64_MAX,
    AmountError,
    AmountMsat,
    AmountSat,
    parse_msat,
    parse_sat,
    parse_sat_or_all,
)


@pytest.mark.parametrize(
    ("text", "sat"),
    [
        ("1000", 1000),
        (1000, 1000),
        ("1000sat", 1000),
        ("1000000msat", 1000),
        ("0.001btc", 100_000),
        ("21000000btc", 21_000_000 * 100_000_000),
        ("0.00000001btc", 1),
    ],
)
def test_parse_sat(text, sat):
    assert parse_sat(text) == AmountSat(sat)


@pytest.mark.parametrize(
    "text",
    ["", "sat", "-1", "1.5sat", "1001msat", "0.000000001btc", "1e3", "12 apples", True, 2**64],
)
def test_parse_sat_rejects(text):
    with pytest.raises(AmountError):
        parse_sat(text)


@pytest.mark.parametrize(
    ("text", "msat"),
    [("1000", 1000), (7, 7), ("1000msat", 1000), ("1sat", 1000), ("0.00000000001btc", 1)],
)
def test_parse_msat(text, msat):
    assert parse_msat(text) == AmountMsat(msat)


def test_parse_msat_rejects_sub_msat():
    with pytest.raises(AmountError, match="finer than a millisatoshi"):
        parse_msat("0.000000000001btc")


def test_all():
    assert parse_sat_or_all("all") is None
    assert parse_sat_or_all("5sat") == AmountSat(5)


def test_arithmetic_is_checked():
    assert AmountSat(5) + AmountSat(6) == AmountSat(11)
    assert AmountSat(5) - AmountSat(5) == AmountSat(0)
    with pytest.raises(AmountError):
        AmountSat(5) - AmountSat(6)
    with pytest.raises(AmountError):
        AmountMsat(U64_MAX) + AmountMsat(1)
    with pytest.raises(AmountError):
        AmountSat(U64_MAX).to_msat()
    with pytest.raises(AmountError):
        AmountSat(-1)
    with pytest.raises(AmountError):
        AmountSat(1.5)  # type: ignore[arg-type]
    assert AmountSat(3) * 4 == AmountSat(12)
    assert AmountMsat(1999).to_sat_floor() == AmountSat(1)
    with pytest.raises(AmountError):
        AmountMsat(1999).to_sat_exact()
    assert AmountSat(7).to_msat() == AmountMsat(7000)


def test_string_forms():
    assert str(AmountSat(1000)) == "1000sat"
    assert str(AmountMsat(1000)) == "1000msat"
    assert AmountSat(123_456_789).to_btc_str() == "1.23456789btc"
    assert AmountSat(1) < AmountSat(2)
