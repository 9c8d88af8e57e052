"""kill -9 at each stage of a channel open, for the opener and the accepter.

Two ways to kill at a precise point:

- lightningd itself (and with it the lock-in "channeld", lightningd/channel_control.py):
  the developer-only crash hook LIGHTNINGD_DEV_CRASH_AT=<stage> (lightningd/lightningd.py)
  makes the victim SIGKILL itself at a named point; the counterparty is a second lightningd.
- lightningd, openingd and hsmd at a wire message: the counterparty is
  tests/opening_peer.py, which stops there, and the test sends SIGKILL to the pid; hsmd
  is also killed after the open (broadcast, and 1 of 3 confirmations).

After the kill and a restart, exactly one outcome is allowed, and which one is fixed by the
stage: the channel never existed (not listed, the wallet neither spent nor reserved
anything), or it exists on both sides and reaches CHANNELD_NORMAL once blocks are mined.
(An accepter killed between storing the channel and sending funding_signed has it until
the opener, reconnecting, fails it with an error: then it forgets it, having nothing in
it.) Every satoshi of the opener is accounted for: wallet +
channel + fee on chain = before. The fast slice is a representative subset; `make stress`
runs the whole matrix.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass

import pytest
from pyln.client import RpcError

from lightningd.chaintopology import parse_block
from lightningd.lightningd import DEV_CRASH_ENV
from tests.node import wait_for
from tests.opening_peer import Background, OpeningPeer
from tests.test_fundchannel import ELSEWHERE, FAST, funded_node, mine_until_normal
from wire import peer_wiregen as wire

AMOUNT = 250_000  # sat
NONE, CHANNEL = "never existed", "reaches NORMAL"


@dataclass(frozen=True)
class HookCase:
    victim: str  # "opener" or "accepter": which lightningd kills itself
    stage: str  # a LIGHTNINGD_DEV_CRASH_AT stage
    outcome: str

    def __str__(self) -> str:
        return f"{self.victim}-lightningd-{self.stage}"


@dataclass(frozen=True)
class PeerCase:
    victim: str  # lightningd's role; tests/opening_peer.py plays the other one
    process: str  # "lightningd", "openingd" or "hsmd"
    stage: str  # the last message the peer read or sent before the kill

    def __str__(self) -> str:
        return f"{self.victim}-{self.process}-after-{self.stage}"


@dataclass(frozen=True)
class AfterOpenCase:
    """hsmd killed once the channel is stored on both sides (openingd is gone by then)."""

    victim: str
    stage: str  # "broadcast": fundchannel returned; "lockin": 1 of 3 confirmations

    def __str__(self) -> str:
        return f"{self.victim}-hsmd-after-{self.stage}"


# The accepter's funding_signed never left: the opener cannot broadcast, so the accepter
# keeps a channel whose funding never appears, with nothing of its own in it, until it
# forgets it 2016 blocks later (BOLT #2; tests/test_chain_outage.py).
HOOK_FAST = [
    HookCase("opener", "funding_reserved", NONE),
    HookCase("opener", "channel_stored", CHANNEL),
    # The opener never got funding_signed: on reconnection it answers the restarted
    # accepter's channel_reestablish with an error, and the accepter forgets the channel.
    HookCase("accepter", "channel_stored", NONE),
    HookCase("accepter", "funding_signed_sent", CHANNEL),
]
HOOK_STRESS = [
    HookCase("accepter", "open_offer", NONE),
    HookCase("opener", "funding_broadcast", CHANNEL),
    HookCase("opener", "lockin", CHANNEL),
    HookCase("accepter", "lockin", CHANNEL),
]
PEER_FAST = [
    PeerCase("opener", "hsmd", "open_channel"),
    PeerCase("opener", "openingd", "funding_created"),
]
PEER_STRESS = [
    PeerCase("opener", "lightningd", "open_channel"),
    PeerCase("opener", "lightningd", "funding_created"),
    PeerCase("accepter", "lightningd", "accept_channel"),
    PeerCase("opener", "openingd", "open_channel"),
    PeerCase("opener", "hsmd", "funding_created"),
    PeerCase("accepter", "hsmd", "accept_channel"),
]
AFTER_OPEN_STRESS = [
    AfterOpenCase(victim, stage)
    for victim in ("opener", "accepter")
    for stage in ("broadcast", "lockin")
]


# -- what the wallet and the chain say --------------------------------------------------------


def wallet_msat(node) -> int:
    """Every output the wallet still owns (confirmed, unconfirmed or reserved)."""
    return sum(o["amount_msat"] for o in node.rpc.listfunds()["outputs"])


def assert_untouched(node, before_msat: int) -> None:
    """No channel, nothing spent, nothing reserved: as if the open never began."""
    assert node.rpc.getinfo()["id"] == node.id
    wait_for(lambda: node.rpc.listpeerchannels()["channels"] == [], what="no channel")
    funds = node.rpc.listfunds(spent=True)
    assert funds["channels"] == []
    assert [o for o in funds["outputs"] if o["status"] == "spent" or o.get("reserved")] == []
    assert wallet_msat(node) == before_msat


def chain_outputs_sat(bitcoind, scid: str) -> int:
    """The sum of the funding tx's outputs, read from the block its scid names."""
    height, index, _ = (int(x) for x in scid.split("x"))
    block_hash = bitcoind.rpc("getblockhash", height)
    block = parse_block(bytes.fromhex(bitcoind.rpc("getblock", block_hash, 0)))
    return sum(out.nValue for out in block.txs[index].vout)


def assert_accounted(opener, before_msat: int, funding_outputs_sat: int) -> None:
    """Wallet + channel + the fee the chain shows = what the opener had before."""
    (chan,) = opener.rpc.listpeerchannels()["channels"]
    spent = [o for o in opener.rpc.listfunds(spent=True)["outputs"] if o["status"] == "spent"]
    fee_msat = sum(o["amount_msat"] for o in spent) - funding_outputs_sat * 1000
    assert 0 < fee_msat < 20_000_000
    assert chan["to_us_msat"] == AMOUNT * 1000
    assert wallet_msat(opener) + chan["to_us_msat"] + fee_msat == before_msat
    assert not [o for o in opener.rpc.listfunds()["outputs"] if o.get("reserved")]


def kill(node, process: str) -> None:
    """SIGKILL lightningd or one of its subdaemons; wait until lightningd is back up."""
    if process == "lightningd":
        assert node.proc is not None
        node.proc.kill()
        wait_killed(node)
    else:
        os.kill(subdaemon_pid(node, process), signal.SIGKILL)
    if process == "hsmd":
        # Without hsmd nothing can be signed: lightningd stops (exit 1), as CLN does.
        wait_killed(node, 1)
        assert "hsmd died" in node.logs()
    if process != "openingd":
        node.start()


def subdaemon_pid(node, name: str) -> int:
    """The pid of the node's latest `name` in this run (a restarted node's log goes on)."""
    started = re.compile(rf"{name}: started, pid (\d+)")
    pids = wait_for(
        lambda: started.findall(node.logs()[node.log_offset :]), what=f"{name} to start"
    )
    return int(pids[-1])


def wait_killed(node, code: int = -signal.SIGKILL) -> None:
    """The victim is gone, with code; its subdaemons went with it (nothing holds its pipes)."""
    assert node.proc is not None
    assert node.proc.wait(timeout=30) == code
    node.check_clean_exit()


# -- lightningd killing itself at a named stage -----------------------------------------------


def start_crashing_at(node, stage: str, monkeypatch) -> None:
    """Start `node` (stopped) with lightningd set to kill itself at `stage`."""
    monkeypatch.setenv(DEV_CRASH_ENV, stage)
    node.start()
    monkeypatch.delenv(DEV_CRASH_ENV)


def check_open_result(opening: Background, case: HookCase) -> None:
    """What fundchannel said: the open outlived the accepter's death only if funding_signed
    had left; a dead opener's own RPC connection broke (pyln raises OSError or ValueError)."""
    if case.stage == "lockin" or (case.victim, case.outcome) == ("accepter", CHANNEL):
        assert len(opening.result()["txid"]) == 64
    elif case.victim == "accepter":
        with pytest.raises(RpcError):
            opening.result()
    else:
        with pytest.raises((OSError, ValueError)):
            opening.result()


def run_hook_case(node_factory, bitcoind, monkeypatch, case: HookCase) -> None:
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST, start=False)
    victim = l1 if case.victim == "opener" else l2
    before = wallet_msat(l1)
    if victim is l1:
        l1.stop()
    start_crashing_at(victim, case.stage, monkeypatch)
    if victim is l1:
        l2.start()
    l1.rpc.connect(l2.uri())
    opening = Background(l1.rpc.fundchannel, l2.id, AMOUNT)
    if case.stage == "lockin":
        opening.result()
        bitcoind.generate(3, ELSEWHERE)
    victim.wait_for_log(f"{DEV_CRASH_ENV}={case.stage}: killing ourselves")
    wait_killed(victim)
    check_open_result(opening, case)
    victim.start()
    l1.rpc.connect(l2.uri())
    if case.outcome == CHANNEL:
        mine_until_normal(bitcoind, l1, l2)
        (chan,) = l1.rpc.listpeerchannels()["channels"]
        assert_accounted(l1, before, chain_outputs_sat(bitcoind, chan["short_channel_id"]))
        return
    bitcoind.generate(6, ELSEWHERE)  # whatever was going to confirm would now
    assert_untouched(l1, before)
    assert_untouched(l2, 0)


@pytest.mark.parametrize("case", HOOK_FAST, ids=str)
def test_lightningd_killed(node_factory, bitcoind, monkeypatch, case):
    run_hook_case(node_factory, bitcoind, monkeypatch, case)


@pytest.mark.stress
@pytest.mark.parametrize("case", HOOK_STRESS, ids=str)
def test_lightningd_killed_full_matrix(node_factory, bitcoind, monkeypatch, case):
    run_hook_case(node_factory, bitcoind, monkeypatch, case)


def test_opener_killed_in_multifundchannel_before_the_tx_is_recorded(
    node_factory, bitcoind, monkeypatch
):
    """multifundchannel stores its channels before it records (and sends) their funding tx:
    killed in between, the opener forgets them at the next start and its wallet gets the
    inputs back; each accepter, not reconnected to, keeps a channel with nothing of its own
    in it (until BOLT #2's 2016 blocks)."""
    l1, _ = funded_node(node_factory, bitcoind)
    accepters = node_factory.get_nodes(2, *FAST)
    before = wallet_msat(l1)
    l1.stop()
    start_crashing_at(l1, "multifund_stored", monkeypatch)
    for peer in accepters:
        l1.rpc.connect(peer.uri())
    opening = Background(
        l1.rpc.multifundchannel, [{"id": peer.id, "amount": AMOUNT} for peer in accepters]
    )
    l1.wait_for_log(f"{DEV_CRASH_ENV}=multifund_stored: killing ourselves")
    wait_killed(l1)
    with pytest.raises((OSError, ValueError)):
        opening.result()
    l1.start()
    assert len(re.findall("Forgetting channel .* was never recorded", l1.logs())) == 2
    bitcoind.generate(6, ELSEWHERE)  # whatever was going to confirm would now
    assert_untouched(l1, before)
    for peer in accepters:
        (chan,) = peer.rpc.listpeerchannels()["channels"]
        assert (chan["state"], chan["to_us_msat"]) == ("CHANNELD_AWAITING_LOCKIN", 0)


# -- openingd or hsmd killed while the scripted peer holds the open ---------------------------


def drive_to(node, peer: OpeningPeer, case: PeerCase) -> Background | None:
    """Play the peer's side of the open up to the case's stage."""
    if case.victim == "opener":
        peer.connected_from(node)
        opening = Background(node.rpc.fundchannel, peer.node_id.hex(), AMOUNT)
        peer.read_open_channel()
        if case.stage == "funding_created":
            peer.send_accept_channel()
            peer.read_funding_created()
        return opening
    peer.connect_to(node)
    peer.send_open_channel()
    peer.read_accept_channel()
    return None


def run_peer_case(node_factory, bitcoind, case: PeerCase) -> None:
    node, _ = funded_node(node_factory, bitcoind)
    before = wallet_msat(node)
    peer = OpeningPeer()
    opening = drive_to(node, peer, case)
    kill(node, case.process)
    if opening is not None and case.process == "openingd":
        with pytest.raises(RpcError, match="openingd died"):
            opening.result()
    elif opening is not None:  # lightningd went down under the call
        with pytest.raises((RpcError, OSError, ValueError)):
            opening.result()
    assert peer.closed_by_other_side()
    assert_untouched(node, before)


@pytest.mark.parametrize("case", PEER_FAST, ids=str)
def test_subdaemon_killed(node_factory, bitcoind, case):
    run_peer_case(node_factory, bitcoind, case)


@pytest.mark.stress
@pytest.mark.parametrize("case", PEER_STRESS, ids=str)
def test_subdaemon_killed_full_matrix(node_factory, bitcoind, case):
    run_peer_case(node_factory, bitcoind, case)


def test_crash_hook_needs_developer(node_factory, monkeypatch):
    """Without --developer the variable is never read: a real node cannot be crashed by it."""
    monkeypatch.setenv(DEV_CRASH_ENV, "open_offer")
    l1 = node_factory.get_node()
    monkeypatch.delenv(DEV_CRASH_ENV)
    peer = OpeningPeer()
    peer.connect_to(l1)
    peer.send_open_channel()
    assert isinstance(peer.read_accept_channel(), wire.AcceptChannel)
    assert l1.proc.poll() is None


@pytest.mark.stress
@pytest.mark.parametrize("case", AFTER_OPEN_STRESS, ids=str)
def test_hsmd_killed_after_open(node_factory, bitcoind, case):
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node(*FAST)
    before = wallet_msat(l1)
    l1.rpc.connect(l2.uri())
    l1.rpc.fundchannel(l2.id, AMOUNT)
    if case.stage == "lockin":
        bitcoind.generate(1, ELSEWHERE)
    kill(l1 if case.victim == "opener" else l2, "hsmd")
    l1.rpc.connect(l2.uri())
    mine_until_normal(bitcoind, l1, l2)
    (chan,) = l1.rpc.listpeerchannels()["channels"]
    assert_accounted(l1, before, chain_outputs_sat(bitcoind, chan["short_channel_id"]))
