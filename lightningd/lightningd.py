"""lightningd: the master process.

It owns the JSON-RPC socket, the database and (later) the wallet and the
bitcoind connection. It never holds a secret key (hsmd does) and hands peer
connections to subdaemons when a channel needs one. The story of a run:
options, log, pid file, hsmd, database, listening sockets, JSON-RPC, then
serve until `stop` or a signal, then shut everything down in reverse.

Crash testing (developer only): started with --developer and the environment variable
LIGHTNINGD_DEV_CRASH_AT=<stage>, lightningd kills itself with SIGKILL when it reaches the
named point (`LightningD.dev_crash`), which no outside observer could hit precisely. The
stages (tests/test_crash_matrix.py):

- `open_offer`: accepter, open_channel arrived, before lightningd answers openingd;
- `funding_reserved`: opener (fundchannel), wallet inputs reserved for the funding txid,
  before funding_created;
- `channel_stored`: the new channel is on disk, before funding_signed goes out (accepter)
  or before the funding tx is broadcast (opener);
- `funding_signed_sent`: accepter, right after funding_signed left;
- `funding_broadcast`: opener, the funding tx is broadcast, before fundchannel returns;
- `multifund_stored`: opener (multifundchannel), every channel is stored, before the
  funding tx is recorded and broadcast: the next start forgets those channels and releases
  the tx's inputs;
- `lockin`: the funding tx reached minimum_depth and the short_channel_id is stored,
  before channel_ready goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
from typing import IO

from common.features import our_features
from common.version import VERSION
from lightningd.bitcoind import Bitcoind, BitcoindStartupError
from lightningd.chaintopology import ChainTopology
from lightningd.channel import Channel, ChannelState, load_channels
from lightningd.channel_control import ChannelControl
from lightningd.connect_control import ConnectControl
from lightningd.db import Database, DatabaseError
from lightningd.gossip_control import GossipControl
from lightningd.hsm_control import HsmControl, HsmError
from lightningd.jsonrpc import JsonRpcServer
from lightningd.log import NodeLog
from lightningd.opening_control import OpeningControl
from lightningd.options import Config, EarlyExit, OptionError, parse_options
from lightningd.peer_control import PING_INTERVAL, NetAddress, PeerControl
from lightningd.subd import fork_zygote, start_zygote
from lightningd.wallet import Wallet

SOURCE = "lightningd"
DEV_CRASH_ENV = "LIGHTNINGD_DEV_CRASH_AT"
DB_FILE = "lightningd.sqlite3"

# Word lists for the default alias (two words picked by the node id, as Core Lightning does).
_ADJECTIVES = (
    "BLUE",
    "BRAVE",
    "CALM",
    "CLEVER",
    "EAGER",
    "FAIR",
    "GENTLE",
    "HAPPY",
    "JOLLY",
    "KIND",
    "LIVELY",
    "NIMBLE",
    "PROUD",
    "QUIET",
    "SILENT",
    "WITTY",
)
_NOUNS = (
    "ARTIST",
    "BEAM",
    "CAT",
    "COMET",
    "DRAGON",
    "FALCON",
    "GARDEN",
    "HARBOR",
    "KNIGHT",
    "LANTERN",
    "MONK",
    "OTTER",
    "PILOT",
    "RIVER",
    "SPARK",
    "WIZARD",
)


def default_alias(node_id: bytes, developer: bool) -> str:
    """As Core Lightning picks it: two words chosen by node id bytes 3-10 and 11-18.

    In developer mode the tail of the version is appended, within 32 characters.
    """
    adjective = int.from_bytes(node_id[3:11], "little") % len(_ADJECTIVES)
    noun = int.from_bytes(node_id[11:19], "little") % len(_NOUNS)
    name = _ADJECTIVES[adjective] + _NOUNS[noun]
    if developer:
        tail = min(31 - len(name), len(VERSION))
        name += "-" + VERSION[len(VERSION) - tail :]
    return name


class StartupError(Exception):
    """Something the operator must fix; printed without a traceback."""


class LightningD:
    def __init__(self, config: Config, log: NodeLog) -> None:
        self.config = config
        self.log = log
        self.hsm = HsmControl(log, on_death=self._hsmd_died)
        self.db: Database
        self.rpc = JsonRpcServer(log, developer=config.developer)
        self.peers = PeerControl(self)
        self.connect = ConnectControl(self)
        self.opening = OpeningControl(self)
        self.gossip = GossipControl(self)
        self.channel_control = ChannelControl(self)
        # Our own announcements, once signed, go to gossipd to be checked and spread.
        self.channel_control.on_local_gossip = self.gossip.local_gossip
        self.channels: list[Channel] = []
        self.bitcoind = Bitcoind.from_config(config, log)
        self.topology: ChainTopology | None = None
        self.wallet: Wallet | None = None
        self.node_id = b""
        self.alias = ""
        self.color = b""
        self.ping_interval = PING_INTERVAL
        self.stopping = asyncio.Event()
        self.exit_code = 0
        # Never read without --developer: no environment variable can crash a real node.
        self._dev_crash_at = os.environ.get(DEV_CRASH_ENV) if config.developer else None

    def dev_crash(self, stage: str) -> None:
        """Die here, at once and uncleanly, if LIGHTNINGD_DEV_CRASH_AT names `stage`."""
        if self._dev_crash_at == stage:
            self.log.info(SOURCE, f"{DEV_CRASH_ENV}={stage}: killing ourselves")
            self.log.close()
            os.kill(os.getpid(), signal.SIGKILL)

    # -- start-up ---------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        os.makedirs(cfg.network_dir, mode=0o700, exist_ok=True)
        # Every subdaemon, hsmd first, forks from the zygote in milliseconds. main() forked
        # it; should that have failed, a fresh-interpreter one costs ~0.3 s once.
        await asyncio.get_running_loop().run_in_executor(None, start_zygote, True)
        for name in cfg.ignored_dev_options:
            self.log.unusual(SOURCE, f"Option {name} accepted but not implemented: ignoring it")
        try:
            info = await self.hsm.start(
                os.path.join(cfg.network_dir, "hsm_secret"), cfg.chain.chain_hash, self.hsmd_args()
            )
        except HsmError as exc:
            raise StartupError(str(exc)) from None
        self.node_id = info.node_id
        self.alias = cfg.alias or default_alias(self.node_id, cfg.developer)
        # Core Lightning's default color: the node id's first three bytes.
        self.color = cfg.rgb or self.node_id[:3]
        try:
            self.db = Database.open(os.path.join(cfg.network_dir, DB_FILE), cfg.chain.chain_hash)
            self.channels = load_channels(self.db)
        except DatabaseError as exc:
            raise StartupError(str(exc)) from None
        await self.start_chain(info.bip32_account_xpub)
        await self.gossip.start()
        self.gossip.register_commands()
        await self.connect.listen(self.listen_addresses())
        self.register_commands()
        self.peers.register_commands()
        self.connect.register_commands()
        self.opening.register_commands()
        await self.rpc.start(cfg.rpc_path, int(cfg.rpc_file_mode, 8))
        self.log.info(
            SOURCE,
            f"Server started with public key {self.node_id.hex()}, alias {self.alias} "
            f"(color #{self.color.hex()}) and lightningd {VERSION}",
        )

    async def start_chain(self, account_xpub: str) -> None:
        """bitcoind, the block topology and the wallet; the wallet must see every block."""
        cfg = self.config
        try:
            await self.bitcoind.check_chain()
        except BitcoindStartupError as exc:
            raise StartupError(str(exc)) from None
        self.topology = ChainTopology(
            self.bitcoind, self.db, self.log, cfg.network, poll_interval=cfg.dev_bitcoind_poll
        )
        self.wallet = Wallet(self.db, self.hsm, self.topology, self.log, cfg.chain, account_xpub)
        self.wallet.channels_json = self.funds_channels_json
        # Channels first: a crash before the release finds the same unsent txs next time.
        self.opening.forget_unfunded(self.wallet.unsent_txids())
        self.wallet.release_unsent()
        self.channel_control.start()
        await self.topology.start()
        self.topology.register_commands(self.rpc)
        self.wallet.register_commands(self.rpc)

    def funds_channels_json(self) -> list[dict]:
        """listfunds' `channels`: what each channel holds for us."""
        return [
            {
                "peer_id": c.peer_id.hex(),
                "connected": c.peer_id in self.peers.peers,
                "state": c.state.name,
                "channel_id": c.opened.channel_id.hex(),
                **({"short_channel_id": c.short_channel_id} if c.short_channel_id else {}),
                "our_amount_msat": c.our_msat.msat,
                "amount_msat": c.total.msat,
                "funding_txid": c.to_json(False)["funding_txid"],
                "funding_output": c.opened.funding_outnum,
            }
            for c in self.channels
        ]

    def hsmd_args(self) -> list[str]:
        """hsmd alone gets the --dev-force-* secrets: nobody else has use for them."""
        cfg = self.config
        if not cfg.developer:
            return []
        args = ["--developer"]
        for name in ("dev_force_privkey", "dev_force_bip32_seed", "dev_force_channel_secrets"):
            value = getattr(cfg, name)
            if value:
                args.append(f"--{name.replace('_', '-')}={value}")
        return args

    def listen_addresses(self) -> list[NetAddress]:
        """--addr/--bind-addr; with neither, all interfaces on the network's port, as CLN."""
        addrs = self.config.listen_addrs
        if not addrs:
            return [NetAddress("0.0.0.0", self.config.chain.default_port)]
        unsupported = [str(a) for a in addrs if a.kind not in ("ipv4", "ipv6", "dns", "wildcard")]
        if unsupported:
            raise StartupError(f"Cannot listen on {', '.join(unsupported)}: not supported yet")
        return [NetAddress("0.0.0.0" if a.kind == "wildcard" else a.host, a.port) for a in addrs]

    # -- serving ------------------------------------------------------------------------

    def register_commands(self) -> None:
        self.rpc.register(
            "getinfo",
            self.json_getinfo,
            [],
            category="utility",
            description="Show information about this node",
        )
        self.rpc.register(
            "stop",
            self.json_stop,
            [],
            category="utility",
            description="Shut down the lightningd process",
        )

    async def json_getinfo(self) -> dict:
        ours = our_features().hex()
        return {
            "id": self.node_id.hex(),
            "alias": self.alias,
            "color": self.color.hex(),
            "num_peers": len(self.peers.peers),
            **self.channel_counts(),
            "address": [
                {"type": a.kind, "address": a.host, "port": a.port}
                for a in self.announced_addresses()
            ],
            "binding": [b.to_json() for b in self.connect.bindings],
            "version": VERSION,
            "blockheight": self.topology.height if self.topology else 0,
            "network": self.config.network,
            "fees_collected_msat": 0,
            "lightning-dir": self.config.network_dir,
            "our_features": {"init": ours, "node": ours, "channel": "", "invoice": ""},
        }

    def channels_of(self, node_id: bytes) -> list[Channel]:
        return [c for c in self.channels if c.peer_id == node_id]

    def channel_counts(self) -> dict[str, int]:
        """getinfo's counts, as Core Lightning groups the states."""
        opening = len(self.opening.uncommitted_json(None))
        awaiting = sum(c.state == ChannelState.CHANNELD_AWAITING_LOCKIN for c in self.channels)
        active = sum(c.state == ChannelState.CHANNELD_NORMAL for c in self.channels)
        return {
            "num_pending_channels": opening + awaiting,
            "num_active_channels": active,
            "num_inactive_channels": len(self.channels) - awaiting - active,
        }

    def announced_addresses(self) -> list:
        """What we tell the network; like CLN, localhost only with --dev-allow-localhost."""
        local = ("127.", "::1", "localhost")
        return [
            a
            for a in self.config.announce_addrs
            if a.kind in ("ipv4", "ipv6", "dns")
            and (self.config.dev_allow_localhost or not a.host.startswith(local))
        ]

    async def json_stop(self) -> str:
        # Answer first: the reply must leave before the RPC socket closes.
        asyncio.get_running_loop().call_later(0.05, self.stopping.set)
        return "Shutdown complete"

    async def _hsmd_died(self, reason: str) -> None:
        # Without hsmd nothing can be signed or decrypted: Core Lightning stops too.
        self.log.broken(SOURCE, f"hsmd died: {reason}; shutting down")
        self.exit_code = 1
        self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.log.reopen)
        await self.stopping.wait()
        await self.shutdown()
        return self.exit_code

    async def shutdown(self) -> None:
        self.log.info(SOURCE, "Shutting down")
        await self.rpc.stop()
        if self.topology is not None:
            await self.topology.stop()
        await self.connect.shutdown()
        await self.opening.shutdown()
        await self.peers.shutdown()
        await self.gossip.stop()
        await self.hsm.stop()
        if hasattr(self, "db"):
            self.db.close()


# -- the process ---------------------------------------------------------------------------


def lock_pid_file(path: str) -> IO[str]:
    """Core Lightning refuses to run twice on one directory: the pid file is the lock."""
    f = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise StartupError(f"lightningd already running? Could not lock pid file {path}") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def daemonize() -> None:
    """--daemon: detach from the terminal the way a classic Unix daemon does."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


async def amain(config: Config, log: NodeLog) -> int:
    ld = LightningD(config, log)
    try:
        await ld.start()
    except (StartupError, RuntimeError, OSError) as exc:
        log.broken(SOURCE, str(exc))
        await ld.shutdown()
        print(f"lightningd: {exc}", file=sys.stderr)
        return 1
    return await ld.run()


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_options(sys.argv[1:] if argv is None else argv)
    except EarlyExit as exc:
        print(exc.text)
        return exc.code
    except OptionError as exc:
        print(f"lightningd: {exc}", file=sys.stderr)
        return 1
    try:
        os.makedirs(config.network_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        print(f"lightningd: Could not create {config.network_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    if config.daemon:
        daemonize()
    # Before anything is opened: the zygote is a fork of this process (lightningd/zygote.py).
    fork_zygote()
    try:
        pid_file = lock_pid_file(config.pid_path)
    except StartupError as exc:
        print(f"lightningd: {exc}", file=sys.stderr)
        return 1
    log = NodeLog(
        config.log_level,
        config.log_file,
        config.log_prefix,
        config.log_timestamps,
        filters=config.log_level_filters,
    )
    if log.open_errors:
        print(f"lightningd: Failed to open log file {'; '.join(log.open_errors)}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(amain(config, log))
    except KeyboardInterrupt:
        return 0
    finally:
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(config.pid_path)
        pid_file.close()


if __name__ == "__main__":
    sys.exit(main())
