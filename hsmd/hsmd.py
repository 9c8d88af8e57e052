"""hsmd: the only process that reads hsm_secret, and signs on request.

    fd 0 == lightningd, the master client

Every other client is one end of a socketpair hsmd makes when lightningd asks
(hsmd_client_hsmfd), bound to one peer and channel and to a set of
capabilities. A request outside a client's capabilities, for another
channel, or malformed, gets hsmd_bad_request and the client is cut off;
hsmd and its other clients carry on. Each client is served by its own
asyncio task, so a stuck or hostile client never blocks another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bitcointx.core import (
    COutPoint,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
)
from bitcointx.core.script import CScript, CScriptWitness
from bitcointx.wallet import CBitcoinExtPubKey
from coincurve import PrivateKey

from common import subdaemon
from common.amount import AmountSat
from common.chainparams import chain_by_hash
from common.daemon_conn import AsyncDaemonConn, DaemonConnError
from common.gossip_sign import (
    channel_announcement_hash,
    channel_update_hash,
    node_announcement_hash,
)
from common.key_derive import is_valid_pubkey
from common.scripts import funding_script, p2wpkh
from common.signature import der_to_compact, script_sig, sign_hash_compact, sign_segwit_input
from common.status import FailReason, FatalError, Status, async_sender
from hsmd import hsmd_wiregen as wire
from hsmd.capabilities import MASTER_CAPABILITIES, Capability
from hsmd.derive import (
    DevOverrides,
    SecretDeriver,
    parse_dev_force_bip32_seed,
    parse_dev_force_channel_secrets,
    parse_dev_force_privkey,
)
from wire import peer_wiregen as peer_wire
from wire.fundamental import WireError

HSM_VERSION = 1
HSM_SECRET_LEN = 32


class BadRequest(Exception):
    """The client asked for something it may not have: refuse and cut it off."""


class SecretFileError(Exception):
    """hsm_secret is missing, unreadable, malformed or too widely readable."""


@dataclass
class Client:
    name: str
    conn: AsyncDaemonConn
    capabilities: Capability
    peer_id: bytes | None = None
    dbid: int = 0

    @property
    def is_master(self) -> bool:
        return bool(self.capabilities & Capability.MASTER)

    def require(self, capability: Capability) -> None:
        if not self.capabilities & capability:
            raise BadRequest(f"{self.name} lacks capability {capability.name}")

    def channel(self) -> tuple[bytes, int]:
        if self.peer_id is None or not self.dbid:
            raise BadRequest(f"{self.name} is not bound to a channel")
        return self.peer_id, self.dbid


@dataclass(frozen=True)
class FundingPin:
    """The funding output a channel's first signature committed hsmd to."""

    txid: bytes
    outnum: int
    amount: AmountSat
    remote_funding_key: bytes


# ---------------------------------------------------------------------------
# Start-up: the secret file and the master's init


def load_or_create_hsm_secret(path: str) -> bytes:
    """Read hsm_secret, creating it (mode 0400) on first start."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    except FileExistsError:
        return _read_hsm_secret(path)
    except OSError as exc:
        raise SecretFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.write(fd, secrets.token_bytes(HSM_SECRET_LEN))
        os.fsync(fd)
    finally:
        os.close(fd)
    dirfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return _read_hsm_secret(path)


def _read_hsm_secret(path: str) -> bytes:
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise SecretFileError(
                f"{path} is accessible to every user (mode {stat.S_IMODE(mode):o}): "
                "chmod 0400 it before starting"
            )
        with open(path, "rb") as f:
            data = f.read(HSM_SECRET_LEN + 1)
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) != HSM_SECRET_LEN:
        raise SecretFileError(f"{path} must hold exactly {HSM_SECRET_LEN} bytes, not {len(data)}")
    return data


def dev_overrides_from(options: dict[str, str | None]) -> DevOverrides:
    """CLN's --dev-force-* testing options, as lightningd passes them to hsmd."""

    def value(name: str) -> str | None:
        text = options.get(name)
        if name in options and text is None:
            raise ValueError(f"--{name} needs a value")
        return text

    privkey, seed, chan = (
        value(n) for n in ("dev-force-privkey", "dev-force-bip32-seed", "dev-force-channel-secrets")
    )
    return DevOverrides(
        force_privkey=parse_dev_force_privkey(privkey) if privkey else None,
        force_bip32_seed=parse_dev_force_bip32_seed(seed) if seed else None,
        force_channel_secrets=parse_dev_force_channel_secrets(chan) if chan else None,
    )


# ---------------------------------------------------------------------------
# The signer


# A reply, and descriptors to send with it (closed once sent).
Reply = tuple[bytes, list[int]]
Handler = Callable[[Client, object], Awaitable[bytes | Reply]]


class Hsmd:
    def __init__(self, status: Status, dev: DevOverrides) -> None:
        self.status = status
        self.dev = dev
        self.secrets: SecretDeriver | None = None
        self.hrp = "bcrt"
        self.chain_hash = b""
        self.pins: dict[tuple[bytes, int], FundingPin] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.next_client = 1
        self.handlers: dict[type, Handler] = {
            wire.HsmdInit: self.handle_init,
            wire.HsmdClientHsmfd: self.handle_client_hsmfd,
            wire.HsmdEcdhReq: self.handle_ecdh,
            wire.HsmdGetChannelBasepoints: self.handle_get_channel_basepoints,
            wire.HsmdGetPerCommitmentPoint: self.handle_get_per_commitment_point,
            wire.HsmdSignRemoteCommitmentTx: self.handle_sign_remote_commitment_tx,
            wire.HsmdSignWithdrawal: self.handle_sign_withdrawal,
            wire.HsmdCannouncementSigReq: self.handle_cannouncement_sig,
            wire.HsmdCupdateSigReq: self.handle_cupdate_sig,
            wire.HsmdNodeAnnouncementSigReq: self.handle_node_announcement_sig,
        }

    @property
    def deriver(self) -> SecretDeriver:
        if self.secrets is None:
            raise BadRequest("hsmd_init has not been received")
        return self.secrets

    # -- the loop: one task per client -------------------------------------

    async def serve(self, client: Client) -> None:
        try:
            while True:
                msg = await client.conn.recv()
                try:
                    reply = await self.dispatch(client, msg)
                except BadRequest as exc:
                    await self.refuse(client, str(exc))
                    if client.is_master:
                        continue
                    return
                except (ValueError, ArithmeticError) as exc:
                    # Our own bug, or input we failed to vet: never sign, never die for it.
                    self.status.broken(f"{client.name}: {type(exc).__name__}: {exc}")
                    await self.refuse(client, f"internal error: {exc}")
                    if client.is_master:
                        continue
                    return
                msg_out, fds = reply
                try:
                    await client.conn.send(msg_out, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
        except DaemonConnError as exc:
            if client.is_master:
                raise
            self.status.debug(f"{client.name} went away: {exc}")
        finally:
            if not client.is_master:
                client.conn.close()

    async def dispatch(self, client: Client, msg: bytes) -> Reply:
        try:
            request = wire.decode(msg)
        except WireError as exc:
            raise BadRequest(f"malformed request: {exc}") from None
        handler = self.handlers.get(type(request))
        if handler is None:
            raise BadRequest(f"{type(request).NAME} is not a request")
        if self.secrets is None and not isinstance(request, wire.HsmdInit):
            raise BadRequest(f"{type(request).NAME} before hsmd_init")
        result = await handler(client, request)
        if isinstance(result, tuple):
            return result
        return result, []

    async def refuse(self, client: Client, reason: str) -> None:
        self.status.unusual(f"refused {client.name}: {reason}")
        with contextlib.suppress(DaemonConnError):
            await client.conn.send(wire.HsmdBadRequest(reason=reason).encode())

    def add_client(self, client: Client) -> None:
        task = asyncio.get_running_loop().create_task(self.serve(client))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- requests ------------------------------------------------------------

    async def handle_init(self, client: Client, req: wire.HsmdInit) -> bytes:
        if not client.is_master or self.secrets is not None:
            raise BadRequest("hsmd_init is the master's first message, once")
        chain = chain_by_hash(req.chain_hash)
        if chain is None:
            raise BadRequest(f"unknown chain {req.chain_hash.hex()}")
        try:
            secret = load_or_create_hsm_secret(req.hsm_secret_path)
        except SecretFileError as exc:
            raise FatalError(FailReason.FATAL_CONFIG, str(exc)) from None
        self.secrets = SecretDeriver(secret, self.dev)
        self.hrp = chain.bech32_hrp
        self.chain_hash = req.chain_hash
        account = self.secrets.wallet_account(self.hrp)
        return wire.HsmdInitReply(
            node_id=self.secrets.node_id(),
            bip32_account_xpub=str(CBitcoinExtPubKey.from_bytes(account.neuter())),
            hsm_version=HSM_VERSION,
        ).encode()

    async def handle_client_hsmfd(self, client: Client, req: wire.HsmdClientHsmfd) -> Reply:
        client.require(Capability.MASTER)
        caps = Capability(req.capabilities)
        if not is_valid_pubkey(req.id):
            raise BadRequest(f"client for invalid node id {req.id.hex()}")
        if caps & Capability.MASTER or req.capabilities & ~sum(Capability):
            raise BadRequest(f"capabilities {req.capabilities:#x} may not be granted")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        name = f"client {self.next_client} ({req.id.hex()[:16]}.../{req.dbid}, {caps!r})"
        self.next_client += 1
        new = Client(name, AsyncDaemonConn(ours), caps, req.id, req.dbid)
        self.add_client(new)
        # The reply carries the other end; serve() closes our copy once it is sent.
        return wire.HsmdClientHsmfdReply().encode(), [theirs.detach()]

    async def handle_ecdh(self, client: Client, req: wire.HsmdEcdhReq) -> bytes:
        client.require(Capability.ECDH)
        if not is_valid_pubkey(req.point):
            raise BadRequest(f"ecdh: invalid point {req.point.hex()}")
        ss = PrivateKey(self.deriver.node_privkey()).ecdh(req.point)
        return wire.HsmdEcdhResp(ss=ss).encode()

    async def handle_get_channel_basepoints(
        self, client: Client, req: wire.HsmdGetChannelBasepoints
    ) -> bytes:
        if req.peerid is not None:
            client.require(Capability.MASTER)
            channel = (req.peerid, req.dbid)
        else:
            client.require(Capability.COMMITMENT_POINT)
            channel = client.channel()
        if not channel[1]:
            raise BadRequest("dbid 0 names no channel")
        chan = self.deriver.channel_secrets(*channel)
        return wire.HsmdGetChannelBasepointsReply(
            basepoints=wire.Basepoints(
                revocation=chan.revocation_basepoint,
                payment=chan.payment_basepoint,
                htlc=chan.htlc_basepoint,
                delayed_payment=chan.delayed_payment_basepoint,
            ),
            funding_pubkey=chan.funding_pubkey,
        ).encode()

    async def handle_get_per_commitment_point(
        self, client: Client, req: wire.HsmdGetPerCommitmentPoint
    ) -> bytes:
        client.require(Capability.COMMITMENT_POINT)
        chan = self.deriver.channel_secrets(*client.channel())
        if req.n >= 2**48:
            raise BadRequest(f"commitment number {req.n} out of range")
        # The secret for n-2 may be revealed once commitment n exists (BOLT #2 revoke_and_ack).
        old = chan.per_commitment_secret(req.n - 2) if req.n >= 2 else None
        return wire.HsmdGetPerCommitmentPointReply(
            per_commitment_point=chan.per_commitment_point(req.n), old_commitment_secret=old
        ).encode()

    async def handle_sign_remote_commitment_tx(
        self, client: Client, req: wire.HsmdSignRemoteCommitmentTx
    ) -> bytes:
        client.require(Capability.SIGN_REMOTE_TX)
        channel = client.channel()
        if not is_valid_pubkey(req.remote_funding_key):
            raise BadRequest("remote funding key is not a valid point")
        tx = _parse_tx(req.tx)
        pin = FundingPin(
            req.funding_txid, req.funding_outnum, req.funding_amount, req.remote_funding_key
        )
        self.check_funding_pin(channel, pin)
        if len(tx.vin) != 1:
            raise BadRequest(f"a commitment tx has one input, not {len(tx.vin)}")
        prevout = tx.vin[0].prevout
        if (prevout.hash, prevout.n) != (pin.txid, pin.outnum):
            raise BadRequest("commitment tx does not spend this channel's funding output")
        total_out = sum(out.nValue for out in tx.vout)
        if total_out > pin.amount.sat:
            raise BadRequest(f"outputs total {total_out}sat above funding {pin.amount.sat}sat")
        chan = self.deriver.channel_secrets(*channel)
        wscript = funding_script(chan.funding_pubkey, pin.remote_funding_key)
        der = sign_segwit_input(chan.funding_privkey, tx, 0, wscript, pin.amount.sat)
        return wire.HsmdSignTxReply(sig=der_to_compact(der)).encode()

    def check_funding_pin(self, channel: tuple[bytes, int], pin: FundingPin) -> None:
        """The first signature pins the channel to one funding output; later ones must match."""
        known = self.pins.setdefault(channel, pin)
        if known != pin:
            raise BadRequest("funding output or remote key differs from this channel's")

    async def handle_sign_withdrawal(self, client: Client, req: wire.HsmdSignWithdrawal) -> bytes:
        client.require(Capability.SIGN_ONCHAIN_TX)
        tx = _parse_tx(req.tx)
        utxos = {(u.txid, u.outnum): u for u in req.utxos}
        if len(utxos) != len(req.utxos) or len(utxos) != len(tx.vin):
            raise BadRequest("need exactly one distinct wallet utxo per input")
        witnesses = []
        for i, txin in enumerate(tx.vin):
            utxo = utxos.get((txin.prevout.hash, txin.prevout.n))
            if utxo is None:
                raise BadRequest(f"input {i} spends no listed wallet output")
            key = self.deriver.wallet_key(utxo.keyindex, self.hrp)
            # BIP143: a P2WPKH input signs the P2PKH form of its key's script.
            script_code = CScript(b"\x76\xa9\x14" + p2wpkh(key.pubkey)[2:] + b"\x88\xac")
            der = sign_segwit_input(key.privkey, tx, i, script_code, utxo.amount.sat)
            witnesses.append(CTxInWitness(CScriptWitness([script_sig(der), key.pubkey])))
        # A new tx with the witnesses: cheaper than a mutable copy (bitcointx's from_tx).
        signed = CTransaction(tx.vin, tx.vout, tx.nLockTime, tx.nVersion, CTxWitness(witnesses))
        return wire.HsmdSignWithdrawalReply(tx=signed.serialize()).encode()

    # -- gossip --------------------------------------------------------------------------

    async def handle_cannouncement_sig(
        self, client: Client, req: wire.HsmdCannouncementSigReq
    ) -> bytes:
        """Our node and bitcoin signatures on a channel_announcement for the named channel.

        BOLT #7: `bitcoin_key_1`/`_2` are "`node_id_1` and `node_id_2`'s respective
        `funding_pubkey`s": our funding key must sit on our node id's side, and the other
        node id must be the channel's peer, or the signatures would vouch for a stranger."""
        client.require(Capability.SIGN_GOSSIP)
        channel = (req.peerid, req.dbid)
        if not client.is_master and channel != client.channel():
            raise BadRequest("a client may only sign its own channel's announcement")
        if not req.dbid:
            raise BadRequest("dbid 0 names no channel")
        ann = _decode_gossip(req.ca, peer_wire.ChannelAnnouncement)
        if ann.chain_hash != self.chain_hash:
            raise BadRequest("channel_announcement for another chain")
        ours = self.deriver.node_id()
        chan = self.deriver.channel_secrets(*channel)
        expected = (ours, chan.funding_pubkey, req.peerid)
        sides = (
            (ann.node_id_1, ann.bitcoin_key_1, ann.node_id_2),
            (ann.node_id_2, ann.bitcoin_key_2, ann.node_id_1),
        )
        if expected not in sides:
            raise BadRequest("channel_announcement does not hold our node id and funding key")
        # BOLT #7: "`node_id_1` is the lexicographically-lesser of the two compressed keys".
        if not ann.node_id_1 < ann.node_id_2:
            raise BadRequest("channel_announcement node ids are not in ascending order")
        h = channel_announcement_hash(req.ca)
        return wire.HsmdCannouncementSigReply(
            node_signature=sign_hash_compact(self.deriver.node_privkey(), h),
            bitcoin_signature=sign_hash_compact(chan.funding_privkey, h),
        ).encode()

    async def handle_cupdate_sig(self, client: Client, req: wire.HsmdCupdateSigReq) -> bytes:
        """A channel_update of ours, signed with the node key (BOLT #7: "the signature of the
        double-SHA256 of the entire remaining packet after `signature`")."""
        client.require(Capability.SIGN_GOSSIP)
        update = _decode_gossip(req.cu, peer_wire.ChannelUpdate)
        if update.chain_hash != self.chain_hash:
            raise BadRequest("channel_update for another chain")
        sig = sign_hash_compact(self.deriver.node_privkey(), channel_update_hash(req.cu))
        return wire.HsmdCupdateSigReply(cu=req.cu[:2] + sig + req.cu[2 + len(sig) :]).encode()

    async def handle_node_announcement_sig(
        self, client: Client, req: wire.HsmdNodeAnnouncementSigReq
    ) -> bytes:
        client.require(Capability.SIGN_GOSSIP)
        ann = _decode_gossip(req.announcement, peer_wire.NodeAnnouncement)
        if ann.node_id != self.deriver.node_id():
            raise BadRequest("node_announcement is not for our node id")
        h = node_announcement_hash(req.announcement)
        return wire.HsmdNodeAnnouncementSigReply(
            signature=sign_hash_compact(self.deriver.node_privkey(), h)
        ).encode()


G = TypeVar("G", peer_wire.ChannelAnnouncement, peer_wire.ChannelUpdate, peer_wire.NodeAnnouncement)


def _decode_gossip(raw: bytes, kind: type[G]) -> G:
    try:
        msg = peer_wire.decode(raw)
    except WireError as exc:
        raise BadRequest(f"malformed {kind.NAME}: {exc}") from None
    if not isinstance(msg, kind):
        raise BadRequest(f"expected {kind.NAME}, got {type(msg).NAME}")
    return msg


def _parse_tx(raw: bytes) -> CTransaction:
    try:
        return CTransaction.deserialize(raw)
    except Exception as exc:  # bitcointx raises several types for bad bytes
        raise BadRequest(f"unparsable transaction: {exc}") from None


# ---------------------------------------------------------------------------
# warm-up (in the zygote)

# A public, throwaway secret: the warm-up below must never see hsm_secret.
WARM_UP_SECRET = b"\x01" * 32


def warm_up() -> None:
    """Run the signing paths once, in the zygote before it forks (lightningd/zygote.py):
    what they build on first use (bitcointx's secp256k1 context, its dispatch caches) is
    then shared by every hsmd instead of built, and copied, in each."""
    deriver = SecretDeriver(WARM_UP_SECRET)
    chan = deriver.channel_secrets(deriver.node_id(), 1)
    chan.per_commitment_point(0)
    key = deriver.wallet_key(0, "bcrt")
    deriver.wallet_account("bcrt").neuter()
    tx = CTransaction([CTxIn(COutPoint(bytes(32), 0))], [CTxOut(1000, p2wpkh(key.pubkey))])
    wscript = funding_script(chan.funding_pubkey, key.pubkey)
    der = sign_segwit_input(chan.funding_privkey, _parse_tx(tx.serialize()), 0, wscript, 1000)
    der_to_compact(der)
    wire.decode(wire.HsmdSignTxReply(sig=der_to_compact(der)).encode())


# ---------------------------------------------------------------------------
# main


async def run_hsmd(sub: subdaemon.Subdaemon) -> None:
    master_conn = AsyncDaemonConn(sub.master.sock)
    status = Status(async_sender(master_conn))
    try:
        dev = dev_overrides_from(sub.args.dev_options)
    except ValueError as exc:
        raise FatalError(FailReason.FATAL_CONFIG, str(exc)) from None
    hsmd = Hsmd(status, dev)
    master = Client("lightningd", master_conn, MASTER_CAPABILITIES)
    await hsmd.serve(master)


def main(sub: subdaemon.Subdaemon) -> None:
    asyncio.run(run_hsmd(sub))


if __name__ == "__main__":
    subdaemon.run("hsmd", main, sys.argv[1:])
