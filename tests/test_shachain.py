"""BOLT #3 Appendix D (per-commitment secrets), read from the spec itself."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.shachain import (
    FIRST_INDEX,
    SecretMismatchError,
    Shachain,
    ShachainError,
    generate_from_seed,
    per_commitment_point,
    per_commitment_secret,
    shachain_index,
)

BOLT3 = Path(__file__).resolve().parents[1] / "doc" / "bolts" / "03-transactions.md"
# BOLT #3: For these tests a seed of `0xFFF...FF` is used
STORAGE_SEED = b"\xff" * 32


@dataclass
class Case:
    name: str
    fields: list[tuple[str, str]] = field(default_factory=list)


def _section(title: str, next_title: str) -> str:
    text = BOLT3.read_text()
    start = text.index(title)
    return text[start : text.index(next_title, start)]


def _cases(section: str) -> list[Case]:
    cases: list[Case] = []
    for key, value in re.findall(r"^\s*(\w+): (.+?)\s*$", section, re.M):
        if key == "name":
            cases.append(Case(value))
        elif cases:
            cases[-1].fields.append((key, value))
    return cases


GENERATION = _cases(_section("## Generation Tests", "## Storage Tests"))
STORAGE = _cases(_section("## Storage Tests", "# Appendix E"))


def _hex(value: str) -> bytes:
    assert value.startswith("0x")
    return bytes.fromhex(value[2:])


def test_vectors_parsed():
    assert len(GENERATION) == 5
    assert len(STORAGE) == 9
    assert sum(k == "output" and v == "ERROR" for c in STORAGE for k, v in c.fields) == 8


@pytest.mark.parametrize("case", GENERATION, ids=lambda c: c.name)
def test_generate_from_seed(case: Case):
    f = dict(case.fields)
    assert generate_from_seed(_hex(f["seed"]), int(f["I"], 0)) == _hex(f["output"])


def _steps(case: Case) -> list[tuple[int, bytes, str]]:
    keys = [k for k, _ in case.fields]
    assert keys == ["I", "secret", "output"] * (len(keys) // 3)
    values = [v for _, v in case.fields]
    return [
        (int(values[i], 0), _hex(values[i + 1]), values[i + 2]) for i in range(0, len(values), 3)
    ]


@pytest.mark.parametrize("case", STORAGE, ids=lambda c: c.name)
def test_insert_secret(case: Case):
    chain = Shachain()
    inserted: list[tuple[int, bytes]] = []
    steps = _steps(case)
    for n, (index, secret, outcome) in enumerate(steps):
        if outcome == "OK":
            chain.insert_secret(secret, index)
            inserted.append((index, secret))
            continue
        assert outcome == "ERROR"
        # BOLT #3 lists the failing insert last: it must fail exactly there.
        assert n == len(steps) - 1
        before = chain.to_bytes()
        with pytest.raises(SecretMismatchError, match="not generated from the same seed"):
            chain.insert_secret(secret, index)
        assert chain.to_bytes() == before  # a refused secret changes nothing
    # Everything accepted is still answerable, and round-trips through bytes.
    for index, secret in inserted:
        assert chain.derive_old_secret(index) == secret
    assert Shachain.from_bytes(chain.to_bytes()) == chain


def test_correct_sequence_matches_generation():
    chain = Shachain()
    for n in range(200):
        index = shachain_index(n)
        chain.insert_secret(generate_from_seed(STORAGE_SEED, index), index)
    for n in range(200):
        index = shachain_index(n)
        assert chain.derive_old_secret(index) == generate_from_seed(STORAGE_SEED, index)


def test_derive_unreceived_index_fails():
    chain = Shachain()
    with pytest.raises(ShachainError, match="hasn't been received"):
        chain.derive_old_secret(FIRST_INDEX)
    chain.insert_secret(generate_from_seed(STORAGE_SEED, FIRST_INDEX), FIRST_INDEX)
    assert chain.can_derive(FIRST_INDEX) and not chain.can_derive(FIRST_INDEX - 1)
    with pytest.raises(ShachainError, match="hasn't been received"):
        chain.derive_old_secret(FIRST_INDEX - 1)


def test_insert_out_of_order_fails():
    chain = Shachain()
    with pytest.raises(ShachainError, match="out of order"):
        chain.insert_secret(generate_from_seed(STORAGE_SEED, 5), 5)
    chain.insert_secret(generate_from_seed(STORAGE_SEED, FIRST_INDEX), FIRST_INDEX)
    with pytest.raises(ShachainError, match="out of order"):
        chain.insert_secret(generate_from_seed(STORAGE_SEED, FIRST_INDEX), FIRST_INDEX)
    assert chain.next_index == FIRST_INDEX - 1


def test_index_zero_is_the_seed():
    # generate_from_seed(seed, 0) is the seed; storing it (bucket 48) derives everything.
    assert generate_from_seed(STORAGE_SEED, 0) == STORAGE_SEED
    chain = Shachain.from_bytes(bytes([0]))
    assert chain.next_index == FIRST_INDEX
    # Build a chain that is one step from the end, then insert the seed.
    chain = _chain_down_to(1)
    chain.insert_secret(STORAGE_SEED, 0)
    assert chain.next_index is None
    assert chain.derive_old_secret(12345) == generate_from_seed(STORAGE_SEED, 12345)
    assert Shachain.from_bytes(chain.to_bytes()) == chain


def _chain_down_to(min_index: int) -> Shachain:
    """The state insert_secret would reach from FIRST_INDEX down to min_index.

    Built through the serialised form, since inserting 2^48 secrets is not an option.
    """
    entries = []
    for bucket in range(49):
        step, offset = 1 << (bucket + 1), 1 << bucket
        index = min_index - min_index % step + offset
        if index < min_index:
            index += step
        if bucket == 48:
            index = 0
        if index > FIRST_INDEX or (bucket == 48 and min_index != 0):
            break
        entries.append(index.to_bytes(8, "big") + generate_from_seed(STORAGE_SEED, index))
    return Shachain.from_bytes(bytes([len(entries)]) + b"".join(entries))


@settings(max_examples=50)
@given(st.integers(min_value=1, max_value=FIRST_INDEX))
def test_deep_chain_derives_all(min_index: int):
    chain = _chain_down_to(min_index)
    assert chain.min_index == min_index
    for index in {min_index, FIRST_INDEX, (min_index + FIRST_INDEX) // 2}:
        assert chain.derive_old_secret(index) == generate_from_seed(STORAGE_SEED, index)
    if min_index > 1:
        index = min_index - 1
        chain.insert_secret(generate_from_seed(STORAGE_SEED, index), index)
        assert chain.derive_old_secret(index + 1) == generate_from_seed(STORAGE_SEED, index + 1)


def test_serialisation_round_trip():
    chain = Shachain()
    assert Shachain.from_bytes(chain.to_bytes()) == chain
    for n in range(37):
        index = shachain_index(n)
        chain.insert_secret(generate_from_seed(STORAGE_SEED, index), index)
    data = chain.to_bytes()
    restored = Shachain.from_bytes(data)
    assert restored == chain
    assert restored.to_bytes() == data
    assert restored.min_index == chain.min_index == shachain_index(36)
    # The restored chain keeps accepting (and checking) the next secrets.
    index = shachain_index(37)
    with pytest.raises(SecretMismatchError):
        restored.insert_secret(generate_from_seed(bytes(32), index), index)
    restored.insert_secret(generate_from_seed(STORAGE_SEED, index), index)
    assert restored.derive_old_secret(shachain_index(5)) == generate_from_seed(
        STORAGE_SEED, shachain_index(5)
    )


def test_corrupt_serialisation_refused():
    chain = _chain_down_to(FIRST_INDEX - 40)
    data = bytearray(chain.to_bytes())
    with pytest.raises(ShachainError, match="bad length"):
        Shachain.from_bytes(bytes(data[:-1]))
    with pytest.raises(ShachainError, match="empty"):
        Shachain.from_bytes(b"")
    # A flipped bit in a stored secret breaks the derivation check.
    corrupt = bytearray(data)
    corrupt[-1] ^= 1
    with pytest.raises(SecretMismatchError):
        Shachain.from_bytes(bytes(corrupt))
    # An index that does not belong in its bucket.
    corrupt = bytearray(data)
    corrupt[1:9] = (FIRST_INDEX - 2).to_bytes(8, "big")
    with pytest.raises(ShachainError, match="do not form a shachain"):
        Shachain.from_bytes(bytes(corrupt))


def test_commitment_numbers():
    seed = bytes(range(32))
    assert shachain_index(0) == FIRST_INDEX == 281474976710655
    assert shachain_index(FIRST_INDEX) == 0
    with pytest.raises(ShachainError):
        shachain_index(FIRST_INDEX + 1)
    assert per_commitment_secret(seed, 3) == generate_from_seed(seed, FIRST_INDEX - 3)
    from coincurve import PrivateKey

    expected = PrivateKey(per_commitment_secret(seed, 3)).public_key.format(compressed=True)
    assert per_commitment_point(seed, 3) == expected


def test_bad_arguments():
    with pytest.raises(ShachainError, match="32 bytes"):
        generate_from_seed(bytes(31), 0)
    with pytest.raises(ShachainError, match="outside"):
        generate_from_seed(bytes(32), 1 << 48)
    with pytest.raises(ShachainError, match="32 bytes"):
        Shachain().insert_secret(bytes(33), FIRST_INDEX)
