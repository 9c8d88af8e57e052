"""BOLT #8 message encryption: the cipher state both peers hold after the handshake.

`CryptoState` is deliberately small and serialisable: lightningd does the
handshake, then hands the socket (SCM_RIGHTS) and `CryptoState.to_bytes()` to a
subdaemon, which continues with `CryptoState.from_bytes()` exactly where the
master stopped, nonces, keys and key rotation included.

A packet on the wire is `lc || c`: the 2-byte length encrypted with its MAC
(18 bytes), then the body with its MAC (len + 16 bytes).  Readers decrypt the
header first (`decrypt_header`) to learn how many body bytes to read, then the
body (`decrypt_body`).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "HEADER_LEN",
    "KEY_ROTATION_INTERVAL",
    "MAC_LEN",
    "MAX_MSG_LEN",
    "STATE_LEN",
    "CryptoState",
    "DecryptError",
    "MessageTooLong",
    "decrypt_with_ad",
    "encrypt_with_ad",
    "hkdf_two_keys",
    "nonce",
]

MAC_LEN = 16
# BOLT #8: "Read _exactly_ 18 bytes from the network buffer." (2-byte length + MAC)
HEADER_LEN = 2 + MAC_LEN
# BOLT #8: "The *maximum* size of _any_ Lightning message MUST NOT exceed `65535` bytes."
MAX_MSG_LEN = 65535
# BOLT #8: "rotating the key once the nonce dedicated to it reaches 1000."
KEY_ROTATION_INTERVAL = 1000

_STATE_VERSION = 1
# version, sk, rk, sck, rck, sn, rn
_STATE_FMT = ">B32s32s32s32sQQ"
STATE_LEN = struct.calcsize(_STATE_FMT)


class DecryptError(ConnectionError):
    """A MAC check failed: the peer is not who it claims, or the stream is corrupt.

    A ConnectionError because the connection is finished: nothing after an unauthenticated
    packet can be trusted or even framed, so, as CLN does, the reader hangs up, and every
    reader's lost-connection handling applies to a hostile peer's garbage too.
    """


class MessageTooLong(ValueError):
    """An outgoing message exceeds the BOLT #8 limit of 65535 bytes."""


def nonce(n: int) -> bytes:
    """BOLT #8: nonce `n` encoded as 32 zero bits, followed by a *little-endian* 64-bit value."""
    return struct.pack("<4xQ", n)


def hkdf_two_keys(salt: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """BOLT #8 `HKDF(salt, ikm)`: RFC 5869 with empty info, 64 bytes split in two keys.

    Written out with HMAC since two SHA-256 blocks are all it ever needs.
    """
    prk = hmac.digest(salt, ikm, "sha256")
    t1 = hmac.digest(prk, b"\x01", "sha256")
    t2 = hmac.digest(prk, t1 + b"\x02", "sha256")
    return t1, t2


def encrypt_with_ad(key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    """BOLT #8 `encryptWithAD`: ChaCha20-Poly1305 (IETF), ciphertext || 16-byte MAC."""
    return ChaCha20Poly1305(key).encrypt(nonce(n), plaintext, ad)


def decrypt_with_ad(key: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    """BOLT #8 `decryptWithAD`; raises DecryptError when the MAC does not check."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(n), ciphertext, ad)
    except InvalidTag as e:
        raise DecryptError("bad MAC") from e


def _check_key(name: str, key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError(f"{name} must be 32 bytes")


def _check_nonce(name: str, n: int) -> None:
    if not isinstance(n, int) or not 0 <= n < KEY_ROTATION_INTERVAL:
        raise ValueError(f"{name} must be in [0, {KEY_ROTATION_INTERVAL})")


@dataclass
class CryptoState:
    """Per-direction keys, nonces and chaining keys after a BOLT #8 handshake.

    Encryption only touches (sk, sn, sck) and decryption only (rk, rn, rck), so
    one thread may send while another receives.
    """

    sk: bytes = field(repr=False)
    rk: bytes = field(repr=False)
    sn: int
    rn: int
    sck: bytes = field(repr=False)
    rck: bytes = field(repr=False)
    # ChaCha20Poly1305 objects are cached per key: building one per packet costs
    # about as much as encrypting a small message.
    _s_aead: tuple[bytes, ChaCha20Poly1305] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _r_aead: tuple[bytes, ChaCha20Poly1305] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in ("sk", "rk", "sck", "rck"):
            _check_key(name, getattr(self, name))
        _check_nonce("sn", self.sn)
        _check_nonce("rn", self.rn)

    # -- handover ---------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Fixed 145-byte layout: version, sk, rk, sck, rck, sn (u64 BE), rn (u64 BE).

        Refuses a state caught between a header and its body: a handover must
        happen on a message boundary, where both nonces are even.
        """
        if self.sn % 2 or self.rn % 2:
            raise ValueError("cannot serialise cipher state in the middle of a message")
        return struct.pack(
            _STATE_FMT, _STATE_VERSION, self.sk, self.rk, self.sck, self.rck, self.sn, self.rn
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CryptoState:
        if len(data) != STATE_LEN:
            raise ValueError(f"cipher state must be {STATE_LEN} bytes, got {len(data)}")
        version, sk, rk, sck, rck, sn, rn = struct.unpack(_STATE_FMT, data)
        if version != _STATE_VERSION:
            raise ValueError(f"unknown cipher state version {version}")
        if sn % 2 or rn % 2:
            raise ValueError("cipher state is in the middle of a message")
        return cls(sk=sk, rk=rk, sn=sn, rn=rn, sck=sck, rck=rck)

    # -- sending ----------------------------------------------------------

    def _send_aead(self) -> ChaCha20Poly1305:
        if self._s_aead is None or self._s_aead[0] != self.sk:
            self._s_aead = (self.sk, ChaCha20Poly1305(self.sk))
        return self._s_aead[1]

    def _advance_send(self) -> None:
        self.sn += 1
        if self.sn == KEY_ROTATION_INTERVAL:
            # BOLT #8: "`ck', k' = HKDF(ck, k)` ... Reset the nonce for the key to `n = 0`."
            self.sck, self.sk = hkdf_two_keys(self.sck, self.sk)
            self.sn = 0

    def _seal(self, plaintext: bytes) -> bytes:
        # BOLT #8: "A zero-length byte slice is to be passed as the AD"
        out = self._send_aead().encrypt(nonce(self.sn), plaintext, b"")
        # BOLT #8: "The nonce `sn` MUST be incremented after this step."
        self._advance_send()
        return out

    def encrypt_message(self, msg: bytes) -> bytes:
        """Return the packet `lc || c` (18 + len(msg) + 16 bytes) and advance `sn` by two."""
        if len(msg) > MAX_MSG_LEN:
            raise MessageTooLong(f"message of {len(msg)} bytes exceeds {MAX_MSG_LEN}")
        # BOLT #8: "Serialize `l` into 2 bytes encoded as a big-endian integer."
        header = self._seal(len(msg).to_bytes(2, "big"))
        return header + self._seal(msg)

    # -- receiving --------------------------------------------------------

    def _recv_aead(self) -> ChaCha20Poly1305:
        if self._r_aead is None or self._r_aead[0] != self.rk:
            self._r_aead = (self.rk, ChaCha20Poly1305(self.rk))
        return self._r_aead[1]

    def _advance_recv(self) -> None:
        self.rn += 1
        if self.rn == KEY_ROTATION_INTERVAL:
            self.rck, self.rk = hkdf_two_keys(self.rck, self.rk)
            self.rn = 0

    def _open(self, ciphertext: bytes) -> bytes:
        try:
            out = self._recv_aead().decrypt(nonce(self.rn), ciphertext, b"")
        except InvalidTag as e:
            raise DecryptError(f"bad MAC on incoming packet (rn={self.rn})") from e
        # BOLT #8: "The nonce `rn` MUST be incremented after this step."
        self._advance_recv()
        return out

    def decrypt_header(self, header: bytes) -> int:
        """Decrypt the 18-byte `lc`; return the body length `l` (read `l + 16` bytes next)."""
        if len(header) != HEADER_LEN:
            raise ValueError(f"header must be {HEADER_LEN} bytes, got {len(header)}")
        return int.from_bytes(self._open(header), "big")

    def decrypt_body(self, body: bytes) -> bytes:
        """Decrypt the `l + 16` body bytes that follow a header."""
        if len(body) < MAC_LEN:
            raise ValueError("body shorter than its MAC")
        return self._open(body)

    def decrypt_message(self, packet: bytes) -> bytes:
        """Decrypt one whole packet (header and body); it must contain nothing else.

        All or nothing: a packet that fails to decrypt leaves the receiving state as it was,
        never half-way through a message.
        """
        saved = (self.rk, self.rn, self.rck)
        try:
            if len(packet) < HEADER_LEN + MAC_LEN:
                raise DecryptError(f"packet of {len(packet)} bytes is shorter than two MACs")
            length = self.decrypt_header(packet[:HEADER_LEN])
            body = packet[HEADER_LEN:]
            if len(body) != length + MAC_LEN:
                raise DecryptError(
                    f"packet body is {len(body)} bytes, header says {length + MAC_LEN}"
                )
            return self.decrypt_body(body)
        except DecryptError:
            self.rk, self.rn, self.rck = saved
            raise
