"""BOLT #8 Noise_XK handshake as a pure state machine over bytes (no sockets).

The node's static private key lives in hsmd, never here: the static-key ECDH
(`es` for the responder, `se` for the initiator) is done by an `ecdh(point)`
callable returning the 32-byte BOLT #8 ECDH result (SHA-256 of the compressed
shared point).  Ephemeral keys are generated here.

Two layers:
- `InitiatorHandshake` / `ResponderHandshake`: one method per act, with the
  static ECDH split out so the caller may do it synchronously or asynchronously.
- `initiator_steps` / `responder_steps`: the whole exchange as a generator
  yielding `Send`, `Recv` and `Ecdh` requests, so the blocking and the asyncio
  drivers in common/peer_io.py share one sequence.  A `Recv` must be answered
  with the bytes read, which may be short only on EOF (reported as
  ACTn_READ_FAILED).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

import coincurve

from common.cryptomsg import CryptoState, DecryptError, decrypt_with_ad, encrypt_with_ad
from common.cryptomsg import hkdf_two_keys as hkdf

__all__ = [
    "ACT_ONE_SIZE",
    "ACT_THREE_SIZE",
    "ACT_TWO_SIZE",
    "AsyncEcdhFn",
    "Ecdh",
    "EcdhFn",
    "HandshakeError",
    "HandshakeFailure",
    "HandshakeResult",
    "HandshakeStep",
    "HandshakeTimeout",
    "InitiatorHandshake",
    "Recv",
    "ResponderHandshake",
    "Send",
    "initiator_steps",
    "privkey_ecdh",
    "responder_steps",
]

# BOLT #8: "Act One: 50 bytes", "Act Two: 50 bytes", "Act Three: 66 bytes"
ACT_ONE_SIZE = 50
ACT_TWO_SIZE = 50
ACT_THREE_SIZE = 66

PROTOCOL_NAME = b"Noise_XK_secp256k1_ChaChaPoly_SHA256"
PROLOGUE = b"lightning"
HANDSHAKE_VERSION = 0

EcdhFn = Callable[[bytes], bytes]
AsyncEcdhFn = Callable[[bytes], bytes | Awaitable[bytes]]


class HandshakeFailure(enum.Enum):
    """Why a handshake failed; names follow the BOLT #8 Appendix A error names."""

    ACT1_READ_FAILED = "act one: short read"
    ACT1_BAD_VERSION = "act one: unknown handshake version"
    ACT1_BAD_PUBKEY = "act one: bad ephemeral public key"
    ACT1_BAD_TAG = "act one: bad MAC (peer does not know our node id)"
    ACT2_READ_FAILED = "act two: short read"
    ACT2_BAD_VERSION = "act two: unknown handshake version"
    ACT2_BAD_PUBKEY = "act two: bad ephemeral public key"
    ACT2_BAD_TAG = "act two: bad MAC"
    ACT3_READ_FAILED = "act three: short read"
    ACT3_BAD_VERSION = "act three: unknown handshake version"
    ACT3_BAD_CIPHERTEXT = "act three: bad MAC on encrypted static key"
    ACT3_BAD_PUBKEY = "act three: bad static public key"
    ACT3_BAD_TAG = "act three: bad MAC"
    # Not in the spec: local failures.
    ECDH_FAILED = "ECDH (hsmd) returned an invalid result"
    TIMEOUT = "handshake timed out"


class HandshakeError(Exception):
    """The handshake failed; `failure` says where.  The connection must be dropped."""

    def __init__(self, failure: HandshakeFailure, detail: str = "") -> None:
        self.failure = failure
        super().__init__(f"{failure.name}: {failure.value}{' (' + detail + ')' if detail else ''}")


class HandshakeTimeout(HandshakeError, TimeoutError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(HandshakeFailure.TIMEOUT, detail)


@dataclass(frozen=True)
class HandshakeResult:
    state: CryptoState
    # For the responder, the initiator's static key learnt in act three.
    remote_pubkey: bytes


def privkey_ecdh(secret: bytes) -> EcdhFn:
    """An `ecdh` callable from a raw private key, for tests and tools (hsmd does the real one)."""
    key = coincurve.PrivateKey(secret)

    def ecdh(point: bytes) -> bytes:
        # coincurve's ecdh is exactly BOLT #8's: SHA-256 of the compressed shared point.
        return key.ecdh(point)

    return ecdh


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _parse_pubkey(data: bytes, failure: HandshakeFailure) -> bytes:
    """Check `data` is a valid compressed secp256k1 point; return it unchanged."""
    if len(data) != 33 or data[0] not in (2, 3):
        raise HandshakeError(failure, "not a compressed point")
    try:
        coincurve.PublicKey(data)
    except ValueError as e:
        raise HandshakeError(failure, "not on the curve") from e
    return data


def _check_ecdh(ss: bytes) -> bytes:
    if not isinstance(ss, bytes) or len(ss) != 32:
        raise HandshakeError(HandshakeFailure.ECDH_FAILED, f"got {ss!r:.40}")
    return ss


def _new_ephemeral(ephemeral: bytes | None) -> coincurve.PrivateKey:
    # BOLT #8: "a node MUST generate a new ephemeral key with strong cryptographic
    # randomness"; an injected key is for the Appendix A test vectors only.
    return coincurve.PrivateKey(ephemeral) if ephemeral is not None else coincurve.PrivateKey()


def _check_static_pubkey(pubkey: bytes) -> bytes:
    try:
        coincurve.PublicKey(pubkey)
    except (ValueError, TypeError) as e:
        raise ValueError("static public key must be a valid 33-byte compressed point") from e
    if len(pubkey) != 33:
        raise ValueError("static public key must be compressed (33 bytes)")
    return pubkey


class _SymmetricState:
    """`ck` and `h` with the Noise mixing operations."""

    def __init__(self, responder_pubkey: bytes) -> None:
        # BOLT #8: "h = SHA-256(protocolName)", "ck = h", "h = SHA-256(h || prologue)",
        # then both sides mix in the responder's static public key.
        h = _sha256(PROTOCOL_NAME)
        self.ck = h
        self.h = _sha256(_sha256(h, PROLOGUE), responder_pubkey)

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h, data)

    def mix_key(self, ss: bytes) -> bytes:
        """`ck, temp_k = HKDF(ck, ss)`; returns temp_k."""
        self.ck, temp_k = hkdf(self.ck, ss)
        return temp_k

    def split(self) -> tuple[bytes, bytes]:
        # BOLT #8: "`sk, rk = HKDF(ck, zero)`" (initiator order; responder swaps)
        return hkdf(self.ck, b"")


def _parse_act(
    m: bytes, size: int, read_failed: HandshakeFailure, bad_version: HandshakeFailure
) -> bytes:
    """Length and version checks shared by all three acts; returns m without the version."""
    if len(m) != size:
        raise HandshakeError(read_failed, f"got {len(m)} of {size} bytes")
    # BOLT #8: "If `v` is an unrecognized handshake version, then the responder MUST
    # abort the connection attempt."
    if m[0] != HANDSHAKE_VERSION:
        raise HandshakeError(bad_version, f"version {m[0]}")
    return m[1:]


def _finish(sym: _SymmetricState, initiator: bool) -> CryptoState:
    k1, k2 = sym.split()
    sk, rk = (k1, k2) if initiator else (k2, k1)
    # BOLT #8: "`rn = 0, sn = 0`" and "`rck = sck = ck`"
    return CryptoState(sk=sk, rk=rk, sn=0, rn=0, sck=sym.ck, rck=sym.ck)


class InitiatorHandshake:
    """Initiator side: `act_one()`, `read_act_two(m)`, then `act_three(ecdh(remote_ephemeral))`."""

    def __init__(
        self, local_pubkey: bytes, remote_pubkey: bytes, ephemeral: bytes | None = None
    ) -> None:
        self.local_pubkey = _check_static_pubkey(local_pubkey)
        self.remote_pubkey = _check_static_pubkey(remote_pubkey)
        self._e = _new_ephemeral(ephemeral)
        self._sym = _SymmetricState(remote_pubkey)
        self._temp_k2: bytes | None = None
        self.remote_ephemeral: bytes | None = None
        self.result: HandshakeResult | None = None

    def act_one(self) -> bytes:
        """BOLT #8 Act One, sender: `-> e, es`."""
        e_pub = self._e.public_key.format(compressed=True)
        self._sym.mix_hash(e_pub)
        temp_k1 = self._sym.mix_key(self._e.ecdh(self.remote_pubkey))
        c = encrypt_with_ad(temp_k1, 0, self._sym.h, b"")
        self._sym.mix_hash(c)
        return bytes([HANDSHAKE_VERSION]) + e_pub + c

    def read_act_two(self, m: bytes) -> None:
        """BOLT #8 Act Two, receiver: `<- e, ee`.  Needs no static key."""
        F = HandshakeFailure
        body = _parse_act(m, ACT_TWO_SIZE, F.ACT2_READ_FAILED, F.ACT2_BAD_VERSION)
        re = _parse_pubkey(body[:33], F.ACT2_BAD_PUBKEY)
        c = body[33:]
        self._sym.mix_hash(re)
        temp_k2 = self._sym.mix_key(self._e.ecdh(re))
        try:
            decrypt_with_ad(temp_k2, 0, self._sym.h, c)
        except DecryptError as e:
            # BOLT #8: "If the MAC check in this operation fails, then the initiator MUST
            # terminate the connection without any further messages."
            raise HandshakeError(F.ACT2_BAD_TAG) from e
        self._sym.mix_hash(c)
        self._temp_k2 = temp_k2
        self.remote_ephemeral = re

    def act_three(self, se: bytes) -> bytes:
        """BOLT #8 Act Three, sender: `-> s, se`; `se` = ECDH(ls.priv, remote_ephemeral)."""
        if self._temp_k2 is None:
            raise RuntimeError("act_three before read_act_two")
        c = encrypt_with_ad(self._temp_k2, 1, self._sym.h, self.local_pubkey)
        self._sym.mix_hash(c)
        temp_k3 = self._sym.mix_key(_check_ecdh(se))
        t = encrypt_with_ad(temp_k3, 0, self._sym.h, b"")
        self.result = HandshakeResult(_finish(self._sym, initiator=True), self.remote_pubkey)
        return bytes([HANDSHAKE_VERSION]) + c + t


class ResponderHandshake:
    """Responder side: `read_act_one(m)` -> point, `act_two(ecdh(point))`, `read_act_three(m)`."""

    def __init__(self, local_pubkey: bytes, ephemeral: bytes | None = None) -> None:
        self.local_pubkey = _check_static_pubkey(local_pubkey)
        self._e = _new_ephemeral(ephemeral)
        self._sym = _SymmetricState(local_pubkey)
        self._act_one_tag: bytes | None = None
        self._re: bytes | None = None
        self._temp_k2: bytes | None = None

    def read_act_one(self, m: bytes) -> bytes:
        """BOLT #8 Act One, receiver, up to the ECDH: returns `re` for `es = ECDH(s.priv, re)`."""
        F = HandshakeFailure
        body = _parse_act(m, ACT_ONE_SIZE, F.ACT1_READ_FAILED, F.ACT1_BAD_VERSION)
        self._re = _parse_pubkey(body[:33], F.ACT1_BAD_PUBKEY)
        self._act_one_tag = body[33:]
        self._sym.mix_hash(self._re)
        return self._re

    def act_two(self, es: bytes) -> bytes:
        """Finish Act One (MAC check with `es`), then BOLT #8 Act Two, sender: `<- e, ee`."""
        if self._re is None or self._act_one_tag is None:
            raise RuntimeError("act_two before read_act_one")
        temp_k1 = self._sym.mix_key(_check_ecdh(es))
        try:
            decrypt_with_ad(temp_k1, 0, self._sym.h, self._act_one_tag)
        except DecryptError as e:
            # BOLT #8: "the initiator does _not_ know the responder's static public key ...
            # the responder MUST terminate the connection without any further messages."
            raise HandshakeError(HandshakeFailure.ACT1_BAD_TAG) from e
        self._sym.mix_hash(self._act_one_tag)

        e_pub = self._e.public_key.format(compressed=True)
        self._sym.mix_hash(e_pub)
        self._temp_k2 = self._sym.mix_key(self._e.ecdh(self._re))
        c = encrypt_with_ad(self._temp_k2, 0, self._sym.h, b"")
        self._sym.mix_hash(c)
        return bytes([HANDSHAKE_VERSION]) + e_pub + c

    def read_act_three(self, m: bytes) -> HandshakeResult:
        """BOLT #8 Act Three, receiver: recovers and authenticates the initiator's static key."""
        if self._temp_k2 is None:
            raise RuntimeError("read_act_three before act_two")
        F = HandshakeFailure
        body = _parse_act(m, ACT_THREE_SIZE, F.ACT3_READ_FAILED, F.ACT3_BAD_VERSION)
        c, t = body[:49], body[49:]
        try:
            rs = decrypt_with_ad(self._temp_k2, 1, self._sym.h, c)
        except DecryptError as e:
            raise HandshakeError(F.ACT3_BAD_CIPHERTEXT) from e
        rs = _parse_pubkey(rs, F.ACT3_BAD_PUBKEY)
        self._sym.mix_hash(c)
        temp_k3 = self._sym.mix_key(self._e.ecdh(rs))
        try:
            decrypt_with_ad(temp_k3, 0, self._sym.h, t)
        except DecryptError as e:
            raise HandshakeError(F.ACT3_BAD_TAG) from e
        return HandshakeResult(_finish(self._sym, initiator=False), rs)


# -- I/O-free drivers ------------------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Recv:
    """Read exactly `size` bytes (fewer only at EOF) and send them back into the generator."""

    size: int


@dataclass(frozen=True)
class Ecdh:
    """Do the static-key ECDH with `point` and send the 32-byte result back."""

    point: bytes


HandshakeStep = Generator[Send | Recv | Ecdh, bytes | None, HandshakeResult]


def initiator_steps(
    local_pubkey: bytes, remote_pubkey: bytes, ephemeral: bytes | None = None
) -> HandshakeStep:
    hs = InitiatorHandshake(local_pubkey, remote_pubkey, ephemeral)
    yield Send(hs.act_one())
    hs.read_act_two((yield Recv(ACT_TWO_SIZE)) or b"")
    assert hs.remote_ephemeral is not None
    se = yield Ecdh(hs.remote_ephemeral)
    yield Send(hs.act_three(se or b""))
    assert hs.result is not None
    return hs.result


def responder_steps(local_pubkey: bytes, ephemeral: bytes | None = None) -> HandshakeStep:
    hs = ResponderHandshake(local_pubkey, ephemeral)
    re = hs.read_act_one((yield Recv(ACT_ONE_SIZE)) or b"")
    es = yield Ecdh(re)
    yield Send(hs.act_two(es or b""))
    return hs.read_act_three((yield Recv(ACT_THREE_SIZE)) or b"")
