"""Secrets at runtime: hsm_secret's and the RPC socket's modes, which processes hold
hsm_secret open, and that no secret leaks into logs, output, files or RPC replies.

tests/test_secret_isolation.py proves statically that only hsmd's code reads
hsm_secret; this watches two real nodes open a channel to CHANNELD_NORMAL at
--log-level=debug, then searches everything they wrote for the secret and for every
private key derived from it that the nodes use (derived here with hsmd/derive.py).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from bitcointx.wallet import CBitcoinExtKey

from common.scripts import funding_script, p2wsh
from hsmd.derive import SecretDeriver
from tests.node import Node
from tests.test_fundchannel import ELSEWHERE, funded_node, mine_until_normal

CHANNEL_SAT = 500_000
# Wallet key indexes searched: past every index the run hands out (newaddr, change).
WALLET_INDEXES = range(0, 30)
# Channel dbids searched; the test checks the real ones are among them.
DBIDS = range(1, 6)


def hsm_secret_path(node: Node) -> Path:
    return node.dir / "regtest" / "hsm_secret"


def process_tree(root: int) -> dict[int, str]:
    """pid -> title of `root` and all its descendants (the zygote and subdaemons)."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, ppid in parents.items() if ppid == pid]
        tree.update(children)
        frontier += children
    return {pid: titles.get(pid, "?") for pid in tree}


def holders(root: int, target: Path) -> set[str]:
    """Titles of the processes in `root`'s tree with an open fd on `target`."""
    found = set()
    for pid, title in process_tree(root).items():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(target):
                    found.add(title)
            except OSError:
                continue
    return found


class FdWatcher(threading.Thread):
    """Samples both nodes' process trees all through the run (openingd lives only
    while a channel opens), recording who ever held hsm_secret open."""

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.stop_event = threading.Event()
        self.seen: set[str] = set()
        self.holding: set[str] = set()

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                self.seen.update(process_tree(node.proc.pid).values())
                self.holding |= holders(node.proc.pid, hsm_secret_path(node))

    def finish(self) -> None:
        self.stop_event.set()
        self.join()


def secrets_of(node: Node, dbids: range) -> dict[str, bytes]:
    """Every private key the node uses, by name, from its hsm_secret."""
    secret = hsm_secret_path(node).read_bytes()
    deriver = SecretDeriver(secret)
    root = deriver.bip32_root()
    found = {
        "hsm_secret": secret,
        "node key": deriver.node_privkey(),
        "bip32 seed": deriver.bip32_seed(),
        "bip32 root": root.priv.secret_bytes,
        "bip32 account": root.derive_path("m/84'/1'/0'").priv.secret_bytes,
        "bip32 root xprv": str(CBitcoinExtKey.from_bytes(bytes(root))).encode(),
    }
    for change in (False, True):
        for index in WALLET_INDEXES:
            found[f"wallet key {int(change)}/{index}"] = deriver.wallet_key(
                index, "bcrt", change
            ).privkey
    peer_ids = [bytes.fromhex(c["peer_id"]) for c in node.rpc.listpeerchannels()["channels"]]
    for peer_id in peer_ids:
        for dbid in dbids:
            chan = deriver.channel_secrets(peer_id, dbid)
            for name in (
                "funding_privkey",
                "revocation_basepoint_secret",
                "payment_basepoint_secret",
                "delayed_payment_basepoint_secret",
                "htlc_basepoint_secret",
                "shaseed",
            ):
                found[f"channel {dbid} {name}"] = getattr(chan, name)
    return found


def leaks(secrets: dict[str, bytes], where: str, data: bytes) -> list[str]:
    """Secrets found in `data` raw, or as hex in any mix of case."""
    lowered = data.lower()
    return [
        f"{name} in {where}"
        for name, secret in secrets.items()
        if secret in data or secret.hex().encode() in lowered
    ]


def test_secret_file_and_socket_modes(node_factory):
    node = node_factory.get_node()
    # hsmd creates hsm_secret readable by its owner only, like CLN.
    assert stat.S_IMODE(hsm_secret_path(node).stat().st_mode) == 0o400
    rpc = (node.dir / "regtest" / "lightning-rpc").stat()
    assert stat.S_ISSOCK(rpc.st_mode) and stat.S_IMODE(rpc.st_mode) == 0o600


def test_no_secret_leaks_during_a_full_run(node_factory, bitcoind):
    l1, _ = funded_node(node_factory, bitcoind)
    l2 = node_factory.get_node("--developer", "--dev-bitcoind-poll=1")
    watcher = FdWatcher([l1, l2])
    watcher.start()
    replies: list[object] = []
    try:
        replies.append(l1.rpc.connect(l2.uri()))
        replies.append(opened := l1.rpc.fundchannel(l2.id, CHANNEL_SAT))
        mine_until_normal(bitcoind, l1, l2)
        for node in (l1, l2):
            replies += [node.rpc.getinfo(), node.rpc.listfunds(), node.rpc.listpeerchannels()]
            replies += [node.rpc.listpeers(), node.rpc.newaddr()]
        replies.append(l1.rpc.withdraw(ELSEWHERE, 20_000))
        replies.append(l1.rpc.listfunds(spent=True))
    finally:
        watcher.finish()

    # hsmd reads hsm_secret once and closes it; no process keeps it open, least of all
    # lightningd, gossipd or openingd.
    assert watcher.holding == set()
    # The watcher did see the subdaemons (openingd too, most runs: it lives only briefly).
    for name in ("lightning_hsmd", "lightning_gossipd"):
        assert any(title.startswith(name) for title in watcher.seen), watcher.seen

    # The derivation is the nodes' own: their funding pubkeys make the funding output.
    tx = bitcoind.rpc("getrawtransaction", opened["txid"], True)
    funding_spk = tx["vout"][opened["outnum"]]["scriptPubKey"]["hex"]
    secrets = {}
    for node in (l1, l2):
        named = secrets_of(node, DBIDS)
        secrets.update({f"{node.dir.name} {k}": v for k, v in named.items()})
    assert any(
        p2wsh(funding_script(a, b)).hex() == funding_spk
        for a in _funding_pubkeys(l1)
        for b in _funding_pubkeys(l2)
    ), "the channel keys derived here are not the ones the nodes used"

    outputs = [(str(r) + repr(r)).encode() for r in replies]
    for node in (l1, l2):
        node.rpc.stop()
        out, err = node.proc.communicate(timeout=30)
        assert "Traceback" not in out + err
        outputs += [out.encode(), err.encode()]
    found = [leak for i, data in enumerate(outputs) for leak in leaks(secrets, f"output {i}", data)]
    for node in (l1, l2):
        for path in node.dir.rglob("*"):
            if path.is_file() and path != hsm_secret_path(node):
                found += leaks(secrets, str(path.relative_to(node.dir)), path.read_bytes())
    assert found == []


def _funding_pubkeys(node: Node) -> list[bytes]:
    deriver = SecretDeriver(hsm_secret_path(node).read_bytes())
    peer_id = bytes.fromhex(node.rpc.listpeerchannels()["channels"][0]["peer_id"])
    return [deriver.channel_secrets(peer_id, dbid).funding_pubkey for dbid in DBIDS]
