"""BOLT #3 per-commitment key derivation.

Points are 33-byte compressed SEC1 encodings, secrets 32-byte big-endian
scalars.  The pubkey functions are safe anywhere; the privkey functions need
basepoint secrets, so only hsmd should ever call them.
"""

from __future__ import annotations

import hashlib

from coincurve import PrivateKey, PublicKey

PUBKEY_LEN = 33
SECRET_LEN = 32


def is_valid_pubkey(data: bytes) -> bool:
    """True for a 33-byte compressed point that lies on secp256k1.

    BOLT #2 "invalid pubkey" checks only admit the compressed form, so the
    65-byte uncompressed encoding coincurve would accept is refused here.
    """
    if len(data) != PUBKEY_LEN or data[0] not in (2, 3):
        return False
    try:
        PublicKey(bytes(data))
    except ValueError:
        return False
    return True


def pubkey_from_privkey(secret: bytes) -> bytes:
    """The compressed point secret * G."""
    return PrivateKey(_secret(secret, "secret")).public_key.format(compressed=True)


def derive_simple_pubkey(basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """localpubkey, local/remote_htlcpubkey, local/remote_delayedpubkey.

    BOLT #3: pubkey = basepoint + SHA256(per_commitment_point || basepoint) * G
    """
    tweak = _sha256(_point(per_commitment_point), _point(basepoint))
    return PublicKey(basepoint).add(tweak).format(compressed=True)


def derive_simple_privkey(
    basepoint_secret: bytes, basepoint: bytes, per_commitment_point: bytes
) -> bytes:
    """The secret for derive_simple_pubkey(basepoint, per_commitment_point).

    BOLT #3: privkey = basepoint_secret + SHA256(per_commitment_point || basepoint)
    """
    tweak = _sha256(_point(per_commitment_point), _point(basepoint))
    return PrivateKey(_secret(basepoint_secret, "basepoint_secret")).add(tweak).secret


def derive_revocation_pubkey(revocation_basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """BOLT #3: revocationpubkey = revocation_basepoint * SHA256(revocation_basepoint ||
    per_commitment_point) + per_commitment_point * SHA256(per_commitment_point ||
    revocation_basepoint)
    """
    base, point = _point(revocation_basepoint), _point(per_commitment_point)
    base_part = PublicKey(base).multiply(_sha256(base, point))
    point_part = PublicKey(point).multiply(_sha256(point, base))
    return PublicKey.combine_keys([base_part, point_part]).format(compressed=True)


def derive_revocation_privkey(
    revocation_basepoint_secret: bytes, per_commitment_secret: bytes
) -> bytes:
    """BOLT #3: revocationprivkey = revocation_basepoint_secret * SHA256(revocation_basepoint ||
    per_commitment_point) + per_commitment_secret * SHA256(per_commitment_point ||
    revocation_basepoint)
    """
    base_secret = PrivateKey(_secret(revocation_basepoint_secret, "revocation_basepoint_secret"))
    point_secret = PrivateKey(_secret(per_commitment_secret, "per_commitment_secret"))
    base = base_secret.public_key.format(compressed=True)
    point = point_secret.public_key.format(compressed=True)
    base_part = base_secret.multiply(_sha256(base, point))
    point_part = point_secret.multiply(_sha256(point, base))
    return base_part.add(point_part.secret).secret


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _point(data: bytes) -> bytes:
    # The hashes commit to the exact 33-byte encoding, so refuse any other form.
    if not is_valid_pubkey(data):
        raise ValueError(f"invalid compressed pubkey: {bytes(data).hex()}")
    return bytes(data)


def _secret(data: bytes, what: str) -> bytes:
    if len(data) != SECRET_LEN:
        raise ValueError(f"{what} must be {SECRET_LEN} bytes, got {len(data)}")
    return bytes(data)
