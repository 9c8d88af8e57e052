"""BOLT #3 Appendix E (key derivation), read from the spec itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.key_derive import (
    derive_revocation_privkey,
    derive_revocation_pubkey,
    derive_simple_privkey,
    derive_simple_pubkey,
    is_valid_pubkey,
    pubkey_from_privkey,
)

BOLT3 = Path(__file__).resolve().parents[1] / "doc" / "bolts" / "03-transactions.md"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _appendix_e() -> dict[str, bytes]:
    """Every `name: 0x...` line of Appendix E (comment lines excluded)."""
    text = BOLT3.read_text()
    start = text.index("# Appendix E: Key Derivation Test Vectors")
    end = text.index("# Appendix F", start)
    values = {}
    for match in re.finditer(r"^\s*(\w+): 0x([0-9a-f]+)\s*$", text[start:end], re.M):
        values[match[1]] = bytes.fromhex(match[2])
    return values


VECTORS = _appendix_e()


def test_appendix_e_parsed():
    # Guard against a parser that silently finds nothing.
    assert set(VECTORS) == {
        "base_secret",
        "per_commitment_secret",
        "base_point",
        "per_commitment_point",
        "localpubkey",
        "localprivkey",
        "revocationpubkey",
        "revocationprivkey",
    }


def test_points_from_secrets():
    assert pubkey_from_privkey(VECTORS["base_secret"]) == VECTORS["base_point"]
    assert pubkey_from_privkey(VECTORS["per_commitment_secret"]) == VECTORS["per_commitment_point"]


def test_derivation_of_pubkey():
    got = derive_simple_pubkey(VECTORS["base_point"], VECTORS["per_commitment_point"])
    assert got == VECTORS["localpubkey"]


def test_derivation_of_privkey():
    got = derive_simple_privkey(
        VECTORS["base_secret"], VECTORS["base_point"], VECTORS["per_commitment_point"]
    )
    assert got == VECTORS["localprivkey"]
    assert pubkey_from_privkey(got) == VECTORS["localpubkey"]


def test_derivation_of_revocation_pubkey():
    got = derive_revocation_pubkey(VECTORS["base_point"], VECTORS["per_commitment_point"])
    assert got == VECTORS["revocationpubkey"]


def test_derivation_of_revocation_privkey():
    got = derive_revocation_privkey(VECTORS["base_secret"], VECTORS["per_commitment_secret"])
    assert got == VECTORS["revocationprivkey"]
    assert pubkey_from_privkey(got) == VECTORS["revocationpubkey"]


def test_remotepubkey_is_not_tweaked():
    # BOLT #3: The `remotepubkey` is simply the remote node's `payment_basepoint`:
    # the simple derivation must actually change the key, or to_remote would not differ.
    assert (
        derive_simple_pubkey(VECTORS["base_point"], VECTORS["per_commitment_point"])
        != (VECTORS["base_point"])
    )


_scalars = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(lambda n: n.to_bytes(32, "big"))


@given(_scalars, _scalars)
def test_private_and_public_derivations_agree(base_secret: bytes, commit_secret: bytes):
    base = pubkey_from_privkey(base_secret)
    point = pubkey_from_privkey(commit_secret)
    simple = derive_simple_privkey(base_secret, base, point)
    assert pubkey_from_privkey(simple) == derive_simple_pubkey(base, point)
    revocation = derive_revocation_privkey(base_secret, commit_secret)
    assert pubkey_from_privkey(revocation) == derive_revocation_pubkey(base, point)


@pytest.mark.parametrize(
    ("data", "valid"),
    [
        (VECTORS["base_point"], True),
        (VECTORS["per_commitment_point"], True),
        (VECTORS["base_point"][:-1], False),  # too short
        (VECTORS["base_point"] + b"\x00", False),  # too long
        (b"\x04" + VECTORS["base_point"][1:], False),  # bad prefix
        (b"\x02" + b"\xff" * 32, False),  # x >= field prime
        (b"\x02" + bytes(32), False),  # x = 0 is not on the curve
        (b"", False),
    ],
)
def test_is_valid_pubkey(data: bytes, valid: bool):
    assert is_valid_pubkey(data) is valid


def test_uncompressed_pubkey_refused():
    from coincurve import PrivateKey

    uncompressed = PrivateKey(VECTORS["base_secret"]).public_key.format(compressed=False)
    assert not is_valid_pubkey(uncompressed)
    with pytest.raises(ValueError, match="invalid compressed pubkey"):
        derive_simple_pubkey(uncompressed, VECTORS["per_commitment_point"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        derive_revocation_pubkey(VECTORS["base_point"], b"\x02" + bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        derive_revocation_privkey(VECTORS["base_secret"][:31], VECTORS["per_commitment_secret"])
    with pytest.raises(ValueError):
        derive_simple_privkey(bytes(32), VECTORS["base_point"], VECTORS["per_commitment_point"])
