"""hsmd as a real subprocess over real sockets: happy paths and every refusal."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest
from bitcointx.core import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CTransaction,
)
from bitcointx.core.script import CScript, CScriptWitness
from bitcointx.core.scripteval import SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS, VerifyScript
from coincurve import PrivateKey

import common.secp  # noqa: F401
from common.amount import AmountSat
from common.chainparams import CHAINS
from common.daemon_conn import DaemonConn, DaemonConnClosed, encode_frame
from common.key_derive import pubkey_from_privkey
from common.scripts import funding_script, p2wpkh, p2wsh
from common.signature import compact_to_der, segwit_sighash, verify_hash
from common.status import LogLevel
from hsmd import hsmd_wiregen as wire
from hsmd.capabilities import OPENINGD_CAPABILITIES, Capability
from hsmd.derive import SecretDeriver
from lightningd.hsm_control import HsmControl, HsmError
from lightningd.log import NodeLog

REGTEST = CHAINS["regtest"].chain_hash
# Core Lightning's test suite writes "lightning-1" padded with zeros as l1's hsm_secret.
CLN_L1_SECRET = b"lightning-1".ljust(32, b"\0")
CLN_L1_NODE_ID = "0266e4598d1d3c415f572a8488830b60f7e744ed9235eb0b1ba93283b315c03518"
PEER = PrivateKey(b"\x11" * 32).public_key.format()
OTHER_PEER = PrivateKey(b"\x22" * 32).public_key.format()


def write_secret(path, secret: bytes, mode: int = 0o400) -> None:
    with open(path, "wb") as f:
        f.write(secret)
    os.chmod(path, mode)


def Logs() -> NodeLog:
    """An in-memory node log (it also prints to stdout, which pytest captures)."""
    return NodeLog(LogLevel.DEBUG, [])


async def started(tmp_path, secret: bytes | None = CLN_L1_SECRET, args=None):
    path = tmp_path / "hsm_secret"
    if secret is not None:
        write_secret(path, secret)
    logs = Logs()
    hsm = HsmControl(logs)
    await hsm.start(str(path), REGTEST, args)
    return hsm, logs


def run(coro):
    return asyncio.run(coro)


def test_node_id_matches_core_lightning(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        assert hsm.info.node_id.hex() == CLN_L1_NODE_ID
        assert hsm.info.bip32_account_xpub.startswith("xpub")
        await hsm.stop()
        assert hsm.exit_status == 0

    run(main())


def test_creates_secret_0400_on_first_start(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path, secret=None)
        path = tmp_path / "hsm_secret"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
        data = path.read_bytes()
        assert len(data) == 32
        assert hsm.info.node_id == SecretDeriver(data).node_id()
        await hsm.stop()
        # A second start reads the same secret: the node keeps its id.
        again, _ = await started(tmp_path, secret=None)
        assert again.info.node_id == hsm.info.node_id
        await again.stop()

    run(main())


@pytest.mark.parametrize(
    ("secret", "mode", "message"),
    [
        (CLN_L1_SECRET, 0o444, "accessible to every user"),
        (CLN_L1_SECRET[:31], 0o400, "exactly 32 bytes, not 31"),
        (CLN_L1_SECRET + b"x", 0o400, "exactly 32 bytes, not 33"),
    ],
)
def test_refuses_bad_secret_file(tmp_path, secret, mode, message):
    async def main():
        write_secret(tmp_path / "hsm_secret", secret, mode)
        hsm = HsmControl(Logs())
        with pytest.raises(HsmError, match=message):
            await hsm.start(str(tmp_path / "hsm_secret"), REGTEST)
        assert hsm.exit_status == 0x85  # 0x80 | FATAL_CONFIG

    run(main())


def test_refuses_unreadable_secret(tmp_path):
    if os.geteuid() == 0:
        # root reads a 0000 file anyway; a directory in its place is unreadable to anyone.
        (tmp_path / "hsm_secret").mkdir(mode=0o700)
    else:
        write_secret(tmp_path / "hsm_secret", CLN_L1_SECRET, 0)

    async def main():
        hsm = HsmControl(Logs())
        with pytest.raises(HsmError, match="cannot read"):
            await hsm.start(str(tmp_path / "hsm_secret"), REGTEST)

    run(main())


def test_ecdh_matches_node_key(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        other = PrivateKey(b"\x07" * 32)
        ss = await hsm.ecdh(other.public_key.format())
        node_key = PrivateKey(SecretDeriver(CLN_L1_SECRET).node_privkey())
        assert ss == other.ecdh(node_key.public_key.format())
        with pytest.raises(HsmError, match="invalid point"):
            await hsm.ecdh(b"\x02" + b"\xff" * 32)
        # The master is never cut off: it keeps working after a refusal.
        assert await hsm.ecdh(other.public_key.format()) == ss
        await hsm.stop()

    run(main())


def test_cancelled_request_does_not_shift_the_replies(tmp_path):
    """A caller cancelled while hsmd works on its request (a failed open cancels its
    funding signature): the next request still gets its own reply, not that one."""

    async def main():
        hsm, _ = await started(tmp_path)
        other = PrivateKey(b"\x07" * 32)
        expected = await hsm.ecdh(other.public_key.format())
        for _ in range(20):
            first = asyncio.ensure_future(hsm.ecdh(PrivateKey(b"\x08" * 32).public_key.format()))
            await asyncio.sleep(0)  # sent, not yet answered
            first.cancel()
            assert await hsm.ecdh(other.public_key.format()) == expected
        await hsm.stop()

    run(main())


def test_dev_force_privkey(tmp_path):
    async def main():
        key = "01" * 32
        hsm, _ = await started(tmp_path, args=["--developer", f"--dev-force-privkey={key}"])
        assert hsm.info.node_id == pubkey_from_privkey(bytes.fromhex(key))
        await hsm.stop()

    run(main())


def test_bad_dev_option_is_a_clear_error(tmp_path):
    async def main():
        with pytest.raises(HsmError, match="dev-force-privkey"):
            await started(tmp_path, args=["--developer", "--dev-force-privkey=zz"])

    run(main())


# --- subdaemon clients -------------------------------------------------------


def client_request(conn: DaemonConn, msg) -> object:
    conn.send(msg.encode())
    return wire.decode(conn.recv())


async def client(hsm, peer=PEER, dbid=1, caps=OPENINGD_CAPABILITIES) -> DaemonConn:
    return DaemonConn(socket.socket(fileno=await hsm.client_fd(peer, dbid, caps)))


def assert_cut_off(conn: DaemonConn, reply, reason: str) -> None:
    assert isinstance(reply, wire.HsmdBadRequest), reply
    assert reason in reply.reason
    with pytest.raises(DaemonConnClosed):
        conn.recv()


def test_openingd_client_gets_its_channel(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm)
        chan = SecretDeriver(CLN_L1_SECRET).channel_secrets(PEER, 1)
        reply = client_request(conn, wire.HsmdGetPerCommitmentPoint(n=0))
        assert reply.per_commitment_point == chan.per_commitment_point(0)
        assert reply.old_commitment_secret is None
        reply = client_request(conn, wire.HsmdGetPerCommitmentPoint(n=5))
        assert reply.old_commitment_secret == chan.per_commitment_secret(3)
        reply = client_request(conn, wire.HsmdGetChannelBasepoints(peerid=None, dbid=0))
        assert reply.funding_pubkey == chan.funding_pubkey
        assert reply.basepoints.payment == chan.payment_basepoint
        # The master may ask for any channel's basepoints by name.
        master = await hsm.request(
            wire.HsmdGetChannelBasepoints(peerid=PEER, dbid=1), wire.HsmdGetChannelBasepointsReply
        )
        assert master.basepoints.revocation == chan.revocation_basepoint
        await hsm.stop()

    run(main())


@pytest.mark.parametrize(
    ("request_msg", "reason"),
    [
        (wire.HsmdEcdhReq(point=bytes.fromhex("02" + "55" * 32)), "lacks capability ECDH"),
        (wire.HsmdGetChannelBasepoints(peerid=OTHER_PEER, dbid=1), "lacks capability MASTER"),
        (wire.HsmdClientHsmfd(id=PEER, dbid=2, capabilities=1), "lacks capability MASTER"),
        (wire.HsmdInit(hsm_secret_path="x", chain_hash=REGTEST), "once"),
        (wire.HsmdEcdhResp(ss=b"\0" * 32), "is not a request"),
    ],
)
def test_client_refused_and_cut_off(tmp_path, request_msg, reason):
    async def main():
        hsm, logs = await started(tmp_path)
        conn = await client(hsm)
        assert_cut_off(conn, client_request(conn, request_msg), reason)
        # hsmd and its other clients carry on.
        other = await client(hsm, dbid=2)
        reply = client_request(other, wire.HsmdGetPerCommitmentPoint(n=0))
        assert isinstance(reply, wire.HsmdGetPerCommitmentPointReply)
        await hsm.stop()
        assert any(reason in line for line in logs.tail())

    run(main())


def test_client_sending_garbage_is_cut_off(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm)
        conn.sock.sendall(encode_frame(b"\x00\x13garbage"))
        assert_cut_off(conn, wire.decode(conn.recv()), "malformed request")
        # A client that dies halfway through a frame harms nobody.
        half = await client(hsm, dbid=3)
        half.sock.sendall(b"\x00\x00\x10\x00abc")
        half.close()
        assert await hsm.ecdh(PrivateKey(b"\x09" * 32).public_key.format())
        await hsm.stop()

    run(main())


def test_master_may_not_grant_master(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        with pytest.raises(HsmError, match="invalid node id"):
            await hsm.client_fd(b"\x02" + b"\x11" * 32, 1, OPENINGD_CAPABILITIES)
        with pytest.raises(HsmError, match="may not be granted"):
            await hsm.client_fd(PEER, 1, Capability.MASTER | Capability.ECDH)
        with pytest.raises(HsmError, match="may not be granted"):
            await hsm.client_fd(PEER, 1, Capability(1 << 20))
        await hsm.stop()

    run(main())


# --- signing the peer's first commitment tx ----------------------------------

FUNDING_TXID = bytes.fromhex("ab" * 32)
REMOTE_FUNDING = PrivateKey(b"\x05" * 32).public_key.format()


def commitment_like(txid=FUNDING_TXID, outnum=0, outputs=(600_000, 399_000), inputs=1):
    vin = [CMutableTxIn(COutPoint(txid, outnum + i), nSequence=0x80000000) for i in range(inputs)]
    vout = [CMutableTxOut(v, p2wpkh(REMOTE_FUNDING)) for v in outputs]
    return CMutableTransaction(vin, vout, nLockTime=0x20000000)


def sign_request(tx, txid=FUNDING_TXID, outnum=0, amount=1_000_000, remote=REMOTE_FUNDING):
    return wire.HsmdSignRemoteCommitmentTx(
        tx=tx.serialize(),
        funding_txid=txid,
        funding_outnum=outnum,
        funding_amount=AmountSat(amount),
        remote_funding_key=remote,
    )


def test_signs_remote_commitment_for_its_channel(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm)
        tx = commitment_like()
        reply = client_request(conn, sign_request(tx))
        assert isinstance(reply, wire.HsmdSignTxReply)
        chan = SecretDeriver(CLN_L1_SECRET).channel_secrets(PEER, 1)
        wscript = funding_script(chan.funding_pubkey, REMOTE_FUNDING)
        sighash = segwit_sighash(CTransaction.from_tx(tx), 0, wscript, 1_000_000)
        assert verify_hash(chan.funding_pubkey, sighash, compact_to_der(reply.sig))
        # The same funding output again is fine (e.g. a retransmission).
        assert isinstance(client_request(conn, sign_request(tx)), wire.HsmdSignTxReply)
        await hsm.stop()

    run(main())


@pytest.mark.parametrize(
    ("tx_kwargs", "req_kwargs", "reason"),
    [
        ({"inputs": 2}, {}, "one input, not 2"),
        ({"outnum": 1}, {}, "does not spend this channel's funding output"),
        ({"outputs": (900_000, 100_001)}, {}, "above funding"),
        ({}, {"remote": b"\x02" + b"\xff" * 32}, "not a valid point"),
    ],
)
def test_refuses_bad_commitment(tmp_path, tx_kwargs, req_kwargs, reason):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm)
        reply = client_request(conn, sign_request(commitment_like(**tx_kwargs), **req_kwargs))
        assert_cut_off(conn, reply, reason)
        await hsm.stop()

    run(main())


def test_funding_output_is_pinned(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm)
        assert isinstance(
            client_request(conn, sign_request(commitment_like())), wire.HsmdSignTxReply
        )
        other_txid = bytes.fromhex("cd" * 32)
        reply = client_request(
            conn, sign_request(commitment_like(txid=other_txid), txid=other_txid)
        )
        assert_cut_off(conn, reply, "differs from this channel's")
        await hsm.stop()

    run(main())


def test_openingd_cannot_sign_wallet_tx(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        conn = await client(hsm)
        req = wire.HsmdSignWithdrawal(utxos=(), tx=commitment_like().serialize())
        assert_cut_off(conn, client_request(conn, req), "lacks capability SIGN_ONCHAIN_TX")
        await hsm.stop()

    run(main())


# --- the wallet ----------------------------------------------------------------


def wallet_spend(deriver: SecretDeriver, indexes, amounts):
    prev = [bytes([i + 1]) * 32 for i in range(len(indexes))]
    utxos = tuple(
        wire.WalletUtxo(txid=p, outnum=0, amount=AmountSat(a), keyindex=k)
        for p, a, k in zip(prev, amounts, indexes, strict=True)
    )
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(p, 0)) for p in prev],
        [CMutableTxOut(sum(amounts) - 500, p2wsh(b"\x51"))],
    )
    return utxos, tx


def test_signs_wallet_inputs(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        deriver = SecretDeriver(CLN_L1_SECRET)
        utxos, tx = wallet_spend(deriver, [0, 7], [50_000, 70_000])
        reply = await hsm.request(
            wire.HsmdSignWithdrawal(utxos=utxos, tx=tx.serialize()),
            wire.HsmdSignWithdrawalReply,
        )
        signed = CTransaction.deserialize(reply.tx)
        for i, (index, amount) in enumerate([(0, 50_000), (7, 70_000)]):
            key = deriver.wallet_key(index, "bcrt")
            witness: CScriptWitness = signed.wit.vtxinwit[i].scriptWitness
            assert witness.stack[1] == key.pubkey
            VerifyScript(
                CScript(),
                CScript(p2wpkh(key.pubkey)),
                signed,
                i,
                amount=amount,
                witness=witness,
                flags={SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS},
            )
        await hsm.stop()

    run(main())


def test_refuses_inputs_not_in_wallet(tmp_path):
    async def main():
        hsm, _ = await started(tmp_path)
        deriver = SecretDeriver(CLN_L1_SECRET)
        utxos, tx = wallet_spend(deriver, [0, 1], [50_000, 70_000])
        with pytest.raises(HsmError, match="exactly one distinct wallet utxo per input"):
            await hsm.request(
                wire.HsmdSignWithdrawal(utxos=utxos[:1], tx=tx.serialize()),
                wire.HsmdSignWithdrawalReply,
            )
        stranger = (
            utxos[0],
            wire.WalletUtxo(txid=b"\x99" * 32, outnum=0, amount=AmountSat(1), keyindex=1),
        )
        with pytest.raises(HsmError, match="input 1 spends no listed wallet output"):
            await hsm.request(
                wire.HsmdSignWithdrawal(utxos=stranger, tx=tx.serialize()),
                wire.HsmdSignWithdrawalReply,
            )
        with pytest.raises(HsmError, match="unparsable transaction"):
            await hsm.request(
                wire.HsmdSignWithdrawal(utxos=(), tx=b"\x01\x02"), wire.HsmdSignWithdrawalReply
            )
        await hsm.stop()

    run(main())
