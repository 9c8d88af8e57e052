"""BOLT #3 per-commitment secrets: generation from a seed and compact storage.

The sender derives each secret from its shachain seed (inside hsmd); the
receiver keeps at most 49 of the secrets it was sent (`Shachain`) and can
rederive every older one from them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from coincurve import PrivateKey

SHACHAIN_BITS = 48
# BOLT #3: The first secret used: MUST be index 281474976710655
FIRST_INDEX = (1 << SHACHAIN_BITS) - 1
SECRET_LEN = 32
_ENTRY = struct.Struct(">Q32s")


class ShachainError(ValueError):
    """A secret or index that a Shachain cannot accept or answer."""


class SecretMismatchError(ShachainError):
    """The new secret does not derive the secrets already stored (different seed)."""


def shachain_index(commitment_number: int) -> int:
    """Commitment number 0 uses index 2^48-1, and each later one the index below.

    BOLT #3: The first secret used: MUST be index 281474976710655, and from
    there, the index is decremented.
    """
    _check_index(commitment_number, "commitment number")
    return FIRST_INDEX - commitment_number


def generate_from_seed(seed: bytes, index: int) -> bytes:
    """BOLT #3 generate_from_seed(seed, I): the I'th secret."""
    _check_secret(seed, "seed")
    _check_index(index, "index")
    return _derive(bytes(seed), SHACHAIN_BITS, index)


def per_commitment_secret(seed: bytes, commitment_number: int) -> bytes:
    """The per_commitment_secret for a commitment number."""
    return generate_from_seed(seed, shachain_index(commitment_number))


def per_commitment_point(seed: bytes, commitment_number: int) -> bytes:
    """BOLT #3: per_commitment_point = per_commitment_secret * G (33 bytes, compressed)."""
    secret = per_commitment_secret(seed, commitment_number)
    return PrivateKey(secret).public_key.format(compressed=True)


@dataclass(frozen=True)
class _Known:
    index: int
    secret: bytes


class Shachain:
    """Receiver-side store of per-commitment secrets ("Efficient Per-commitment
    Secret Storage"): entry b holds the latest secret whose index has b
    trailing zeros, which derives every index sharing its prefix.
    """

    def __init__(self) -> None:
        self._known: list[_Known] = []
        self._min_index: int | None = None

    @property
    def min_index(self) -> int | None:
        """The lowest (most recent) index received, or None when empty."""
        return self._min_index

    @property
    def next_index(self) -> int | None:
        """The index insert_secret accepts next; None once index 0 is in."""
        if self._min_index is None:
            return FIRST_INDEX
        return self._min_index - 1 if self._min_index > 0 else None

    def insert_secret(self, secret: bytes, index: int) -> None:
        """Store the secret for `index`, the one after the last inserted.

        Raises SecretMismatchError if it does not derive the secrets already
        held, ShachainError if it is out of order; the store is then unchanged.
        """
        _check_secret(secret, "secret")
        _check_index(index, "index")
        if index != self.next_index:
            raise ShachainError(
                f"secret index {index} out of order: expected {self.next_index} "
                "(secrets arrive in descending order from 2^48-1)"
            )
        bucket = _where_to_put_secret(index)
        # BOLT #3: A double-check, that all previous secrets derive correctly, is
        # needed; if this check fails, the secrets were not generated from the same seed
        for b in range(min(bucket, len(self._known))):
            known = self._known[b]
            if _derive(bytes(secret), bucket, known.index) != known.secret:
                raise SecretMismatchError(
                    f"secret for index {index} does not derive the stored secret "
                    f"for index {known.index}: not generated from the same seed"
                )
        entry = _Known(index, bytes(secret))
        if bucket < len(self._known):
            self._known[bucket] = entry
        else:
            # Descending insertion fills buckets in order, so this only ever appends.
            self._known.append(entry)
        self._min_index = index

    def derive_old_secret(self, index: int) -> bytes:
        """The secret for an already received index (BOLT #3 derive_old_secret)."""
        _check_index(index, "index")
        for b, known in enumerate(self._known):
            # BOLT #3: Mask off the non-zero prefix of the index.
            if index & ~((1 << b) - 1) == known.index:
                return _derive(known.secret, b, index)
        raise ShachainError(f"index {index} hasn't been received yet")

    def can_derive(self, index: int) -> bool:
        """Whether derive_old_secret(index) would succeed."""
        return self._min_index is not None and self._min_index <= index <= FIRST_INDEX

    def to_bytes(self) -> bytes:
        """Count byte, then (u64 big-endian index, 32-byte secret) per bucket in order."""
        return bytes([len(self._known)]) + b"".join(
            _ENTRY.pack(k.index, k.secret) for k in self._known
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Shachain:
        """Rebuild a store from to_bytes(), checking it is one insert_secret could build."""
        if not data:
            raise ShachainError("serialised shachain is empty")
        count = data[0]
        if count > SHACHAIN_BITS + 1 or len(data) != 1 + count * _ENTRY.size:
            raise ShachainError(f"serialised shachain has bad length {len(data)} for {count}")
        known = [_Known(*_ENTRY.unpack_from(data, 1 + b * _ENTRY.size)) for b in range(count)]
        chain = cls()
        if known:
            _check_layout(known)
            _check_consistency(known)
            chain._known = known
            chain._min_index = min(k.index for k in known)
        return chain

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shachain) and self._known == other._known

    def __repr__(self) -> str:
        return f"Shachain(min_index={self._min_index}, entries={len(self._known)})"


def _derive(base: bytes, bits: int, index: int) -> bytes:
    """BOLT #3 derive_secret(base, bits, I): flip and hash bits bits-1..0 set in I."""
    value = bytearray(base)
    for b in reversed(range(bits)):
        if index >> b & 1:
            # BOLT #3: "flip(B)" alternates the (B mod 8) bit of the (B div 8) byte
            value[b // 8] ^= 1 << (b % 8)
            value[:] = hashlib.sha256(value).digest()
    return bytes(value)


def _bucket_index(bucket: int, min_index: int) -> int | None:
    """Which index bucket `bucket` holds once min_index has been inserted.

    That is the latest (smallest) index >= min_index with `bucket` trailing
    zeros, or None if there is none yet.
    """
    if bucket == SHACHAIN_BITS:
        return 0 if min_index == 0 else None
    step, offset = 1 << (bucket + 1), 1 << bucket
    index = min_index - min_index % step + offset
    if index < min_index:
        index += step
    return index if index <= FIRST_INDEX else None


def _check_layout(known: list[_Known]) -> None:
    for entry in known:
        _check_index(entry.index, "stored index")
    min_index = min(k.index for k in known)
    expected = [_bucket_index(b, min_index) for b in range(SHACHAIN_BITS + 1)]
    expected = [i for i in expected if i is not None]
    if [k.index for k in known] != expected:
        raise ShachainError(f"stored indices do not form a shachain down to {min_index}")


def _check_consistency(known: list[_Known]) -> None:
    # Each entry must derive the later entries that lie under its prefix.
    for high, parent in enumerate(known):
        for child in known[:high]:
            if parent.index <= child.index < parent.index + (1 << high) and (
                _derive(parent.secret, high, child.index) != child.secret
            ):
                raise SecretMismatchError(
                    f"stored secret for index {parent.index} does not derive index {child.index}"
                )


def _where_to_put_secret(index: int) -> int:
    """Count trailing zeros; index 0 (the seed itself) goes in bucket 48."""
    if index == 0:
        return SHACHAIN_BITS
    return (index & -index).bit_length() - 1


def _check_index(index: int, what: str) -> None:
    if not 0 <= index <= FIRST_INDEX:
        raise ShachainError(f"{what} {index} outside 0..2^48-1")


def _check_secret(secret: bytes, what: str) -> None:
    if len(secret) != SECRET_LEN:
        raise ShachainError(f"{what} must be {SECRET_LEN} bytes, got {len(secret)}")
