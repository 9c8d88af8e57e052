"""Bad input on a real lightningd's RPC socket: each row gets CLN's exact error, and the
daemon answers getinfo afterwards with nothing half-done (no reserved output, no open).

One node serves the whole module (starting one per row would dominate the run): raw
bytes go straight to `<lightning-dir>/regtest/lightning-rpc`, typed requests through
pyln-client. The node runs with --developer, so bad parameter tokens are echoed as
CLN's developer mode echoes them (tests/test_jsonrpc.py covers the hidden form).
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from bitcointx.core.psbt import PartiallySignedTransaction
from pyln.client import RpcError

from tests.node import Node, NodeFactory, wait_for
from tests.opening_peer import Background, OpeningPeer, fake_funding_psbt
from tests.test_fundchannel import FAST

REGTEST_ADDR = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
MAINNET_BECH32 = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
MAINNET_P2PKH = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
UNKNOWN_PEER = "022d223620a359a47ff7f7ac447c85c46c923da53389221a0054c11c1e3ca31d59"
TXID = "ab" * 32
FEERATE_SHOULD = (
    "should be a feerate: urgent, normal, slow, minimum, <n>blocks, <n>perkw or <n>perkb"
)
NOT_ADDRESS = "Could not parse destination address, destination should be a valid address"
INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32600, -32601, -32602


@pytest.fixture(scope="module")
def node(tmp_path_factory, bitcoind):
    factory = NodeFactory(tmp_path_factory.mktemp("rpc-bad-input"), bitcoind)
    yield factory.get_node(*FAST)
    factory.teardown()  # stops it over RPC and checks: no Traceback anywhere


@pytest.fixture(autouse=True)
def still_serving(node: Node):
    """After every row: lightningd answers, and nothing was left reserved or opening."""
    yield
    assert node.rpc.getinfo()["id"] == node.id
    assert not any(o["reserved"] for o in node.rpc.listfunds()["outputs"])
    assert node.rpc.listpeerchannels()["channels"] == []


def rpc_path(node: Node) -> str:
    return str(node.dir / "regtest" / "lightning-rpc")


def exchange(node: Node, data: bytes) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, and read every reply until lightningd closes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(rpc_path(node))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return [json.loads(part) for part in received.split(b"\n\n") if part.strip()]


def error(node: Node, method: str, params: Any) -> dict[str, Any]:
    with pytest.raises(RpcError) as info:
        node.rpc.call(method, params)
    return info.value.error


def malformed(message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}}


# -- the envelope: raw bytes ------------------------------------------------------------------

ENVELOPE_ROWS = [
    # CLN (lightningd/jsonrpc.c read_json) answers unparseable input as a malformed
    # request, echoing it in hex, then closes.
    (b"nonsense", malformed("Invalid token in json input: '6e6f6e73656e7365'")),
    (b'{"a":}', malformed("Invalid token in json input: '7b2261223a7d'")),
    (b"\xff\xfe{}", malformed("Invalid UTF-8 in json input")),
    (b"[1,2]", malformed("Expected {} for json command")),
    (b"42", malformed("Expected {} for json command")),
    (b'"getinfo"', malformed("Expected {} for json command")),
    (b'{"jsonrpc":"2.0","method":"getinfo","params":[]}', malformed("No id")),
    (
        b'{"jsonrpc":"2.0","id":[1],"method":"getinfo","params":[]}',
        malformed("Expected string/primitive for id"),
    ),
    (
        b'{"id":1,"method":"getinfo","params":[]}',
        malformed('jsonrpc: "2.0" must be specified in the request'),
    ),
    (
        b'{"jsonrpc":"1.0","id":1,"method":"getinfo","params":[]}',
        malformed('jsonrpc: "2.0" must be specified in the request'),
    ),
    (
        b'{"jsonrpc":2.0,"id":1,"method":"getinfo","params":[]}',
        malformed('jsonrpc: "2.0" must be specified in the request'),
    ),
]


@pytest.mark.parametrize(("data", "reply"), ENVELOPE_ROWS)
def test_malformed_envelope(node: Node, data: bytes, reply: dict[str, Any]):
    assert exchange(node, data) == [reply]


# Once the id is known, CLN answers with it (and keeps the connection).
ID_ROWS = [
    ({"jsonrpc": "2.0", "id": 7, "params": []}, INVALID_REQUEST, "No method"),
    ({"jsonrpc": "2.0", "id": 7, "method": "getinfo"}, INVALID_REQUEST, "No params"),
    (
        {"jsonrpc": "2.0", "id": 7, "method": 5, "params": []},
        INVALID_REQUEST,
        "Expected string for method",
    ),
    (
        {"jsonrpc": "2.0", "id": 7, "method": "getinfo", "params": 5},
        INVALID_PARAMS,
        "Expected array or object for params",
    ),
    (
        {"jsonrpc": "2.0", "id": 7, "method": "nosuch", "params": []},
        METHOD_NOT_FOUND,
        "Unknown command 'nosuch'",
    ),
]


@pytest.mark.parametrize(("request_obj", "code", "message"), ID_ROWS)
def test_bad_request_with_id(node: Node, request_obj: dict, code: int, message: str):
    good = {"jsonrpc": "2.0", "id": 8, "method": "getinfo", "params": []}
    data = (json.dumps(request_obj) + json.dumps(good)).encode()
    bad_reply, good_reply = exchange(node, data)
    assert bad_reply == {"jsonrpc": "2.0", "id": 7, "error": {"code": code, "message": message}}
    # The connection survives a bad request that has an id: the next one is served.
    assert good_reply["id"] == 8 and good_reply["result"]["id"] == node.id


def test_partial_request_then_close(node: Node):
    """Half a request and a hang-up: nothing to answer, and nothing breaks."""
    assert exchange(node, b'{"jsonrpc":"2.0","id":1,"method":"getinfo","params":[') == []


def test_oversized_request(node: Node):
    """Over 10 MB without the request ending: refused, connection closed, memory freed."""
    data = b'{"jsonrpc":"2.0","id":1,"method":"getinfo","params":["' + b"x" * (10 * 2**20 + 1)
    assert exchange(node, data) == [malformed("Request too large: over 10485760 bytes")]


# -- parameters: pyln-client ------------------------------------------------------------------


def bad_token(name: str, should: str, token: Any) -> str:
    # common/json_param.c command_fail_badparam, as --developer words it.
    return f"{name}: {should}: invalid token '{json.dumps(token, separators=(',', ':'))}'"


def bad(method: str, params: Any, name: str, should: str, token: Any) -> tuple:
    """A row failing one parameter's parse: CLN's "<name>: <should>: invalid token"."""
    return (method, params, INVALID_PARAMS, bad_token(name, should, token))


BOOL = "should be 'true' or 'false'"
SCID = "should be a short_channel_id of form NxNxN"
SAT, MSAT, NODE_ID = (
    "should be a satoshi amount",
    "should be a millisatoshi amount",
    "should be a node id",
)
UNKNOWN_PARAM = (
    "unknown parameter: x, this may be caused by a failure to autodetect key=value-style"
    " parameters. Please try using the -k flag and explicit key=value pairs of parameters."
)
W = REGTEST_ADDR  # withdraw's destination where another parameter is under test

PARAM_ROWS = [
    # Counting and naming.
    ("getinfo", [1], INVALID_PARAMS, "too many parameters: got 1, expected 0"),
    ("listfunds", [True, 2], INVALID_PARAMS, "too many parameters: got 2, expected 1"),
    ("getinfo", {"x": 1}, INVALID_PARAMS, UNKNOWN_PARAM),
    ("withdraw", [W], INVALID_PARAMS, "missing required parameter: satoshi"),
    ("help", ["nosuch"], METHOD_NOT_FOUND, "Unknown command nosuch"),
    # Types, by position and by name.
    bad("listfunds", ["maybe"], "spent", BOOL, "maybe"),
    bad("listfunds", {"spent": 1}, "spent", BOOL, 1),
    bad("newaddr", ["p2pkh"], "addresstype", "should be one of: bech32, p2tr, all", "p2pkh"),
    bad("withdraw", [W, 10_000, None, -1], "minconf", "should be an integer", -1),
    bad(
        "withdraw",
        {"destination": W, "satoshi": 1, "minconf": "x"},
        "minconf",
        "should be an integer",
        "x",
    ),
    bad("withdraw", [W, 10_000, None, 2**32], "minconf", "should be an integer", 2**32),
    bad("feerates", ["perkx"], "style", "should be 'perkw' or 'perkb'", "perkx"),
    bad("reserveinputs", ["garbage"], "psbt", "Expected a PSBT", "garbage"),
    bad("unreserveinputs", [5], "psbt", "Expected a PSBT", 5),
    # Amounts: negative, overflowing, fractional, badly suffixed.
    *[
        bad("withdraw", [W, amount], "satoshi", SAT, amount)
        for amount in ("-1", -1, "18446744073709551616msat", 2**64, "1.5sat", 1.5, "1btcx")
    ],
    *[bad("withdraw", [W, amount], "satoshi", SAT, amount) for amount in ("allx", "", True)],
    bad("fundchannel", [UNKNOWN_PEER, "1.5sat"], "amount", SAT, "1.5sat"),
    bad("fundchannel_start", [UNKNOWN_PEER, "all"], "amount", SAT, "all"),
    bad(
        "fundchannel_start",
        [UNKNOWN_PEER, 1, None, None, None, "-5msat"],
        "push_msat",
        MSAT,
        "-5msat",
    ),
    # Node ids: malformed, and well-formed but unknown.
    bad("connect", ["02aa"], "id", NODE_ID, "02aa"),
    bad("connect", ["02" + "00" * 32], "id", NODE_ID, "02" + "00" * 32),  # not on the curve
    bad("listpeers", ["zz" * 33], "id", NODE_ID, "zz" * 33),
    bad("listpeerchannels", [42], "id", NODE_ID, 42),
    *[
        bad(
            "listpeers",
            [None, level],
            "level",
            "should be 'io', 'debug', 'info', or 'unusual'",
            level,
        )
        for level in (5, "trace5", "")
    ],
    bad("fundchannel", ["zz", 100_000], "id", NODE_ID, "zz"),
    ("connect", [UNKNOWN_PEER], 400, "Unable to connect, no address known for peer"),
    ("fundchannel", [UNKNOWN_PEER, 100_000], 305, "Peer not connected"),
    ("fundchannel_start", [UNKNOWN_PEER, 100_000], 305, "Peer not connected"),
    ("fundchannel_cancel", [UNKNOWN_PEER], 307, "No channel funding in progress."),
    ("disconnect", [UNKNOWN_PEER], -1, "Peer not connected"),
    # short_channel_ids (common/json_param.c param_short_channel_id).
    *[
        bad("listchannels", [scid], "short_channel_id", SCID, scid)
        for scid in ("5", "1x2", "1x2x3x4", "ax1x0", "16777216x0x0", "1x1x65536", 103)
    ],
    # Feerates.
    *[
        bad("withdraw", [W, 10_000, rate], "feerate", FEERATE_SHOULD, rate)
        for rate in ("fastest", "-1perkw", "1000perkbx", "perkw", 1.5)
    ],
    # Addresses: CLN fails these with -1, in parameter order (before the amount's check).
    ("withdraw", [MAINNET_BECH32, 10_000], -1, NOT_ADDRESS),
    ("withdraw", [REGTEST_ADDR[:-1] + "1", 10_000], -1, NOT_ADDRESS),  # bad checksum
    ("withdraw", ["garbage", "allx"], -1, NOT_ADDRESS),
    ("withdraw", [5, 10_000], -1, NOT_ADDRESS),
    ("withdraw", [MAINNET_P2PKH, 10_000], -1, "Destination address is not on network regtest"),
    # utxos strings (common/json_param.c param_outpoint_arr).
    (
        "withdraw",
        [W, 10_000, None, 1, "abc"],
        INVALID_PARAMS,
        'Could not decode the outpoint array for utxos: "abc" is not a valid outpoint array.',
    ),
    *[
        (
            "withdraw",
            [W, 10_000, None, 1, [utxo]],
            INVALID_PARAMS,
            f'Could not decode outpoint "{json.dumps(utxo)}", expected format: txid:output',
        )
        for utxo in ("abc", f"{TXID}:x", f"{TXID}:-1", f"{TXID}:4294967296", f"{TXID[2:]}:0", 7)
    ],
    ("withdraw", [W, 10_000, None, 1, [f"{TXID}:0"]], INVALID_PARAMS, f"Unknown UTXO {TXID}:0"),
    # fundchannel and multifundchannel parse `utxos` as withdraw does.
    (
        "fundchannel",
        [UNKNOWN_PEER, 1, None, None, None, "bad"],
        INVALID_PARAMS,
        'Could not decode the outpoint array for utxos: "bad" is not a valid outpoint array.',
    ),
    (
        "fundchannel",
        {"id": UNKNOWN_PEER, "amount": 1, "utxos": [f"{TXID}:-1"]},
        INVALID_PARAMS,
        f'Could not decode outpoint "{json.dumps(f"{TXID}:-1")}", expected format: txid:output',
    ),
    bad(
        "fundchannel_complete",
        [UNKNOWN_PEER, "bm90IGEgcHNidA=="],
        "psbt",
        "Expected a PSBT",
        "bm90IGEgcHNidA==",
    ),
]


@pytest.mark.parametrize(("method", "params", "code", "message"), PARAM_ROWS)
def test_bad_params(node: Node, method: str, params: Any, code: int, message: str):
    assert error(node, method, params) == {"code": code, "message": message}


# Parameter-parsing rows only: `check` runs no command.
CHECK_ROWS = [row for row in PARAM_ROWS if row[2] == INVALID_PARAMS and "UTXO" not in row[3]]


@pytest.mark.parametrize(("method", "params", "code", "message"), CHECK_ROWS)
def test_check_gives_the_same_errors(node: Node, method: str, params: Any, code: int, message: str):
    """`check` parses the same way without running the command."""
    if isinstance(params, list):
        checked: Any = [method, *params]
    else:
        checked = {"command_to_check": method, **params}
    assert error(node, "check", checked) == {"code": code, "message": message}


# -- fundchannel_complete with PSBTs that don't fund the channel -------------------------------

AMOUNT = 1_000_000


@pytest.fixture
def negotiated(node: Node):
    """An open negotiated up to fundchannel_complete with an independent accepter;
    cancelled afterwards, so the autouse check sees no channel."""
    peer = OpeningPeer()
    peer.connected_from(node)
    start = Background(
        node.rpc.call, "fundchannel_start", {"id": peer.node_id.hex(), "amount": AMOUNT}
    )
    peer.read_open_channel()
    peer.send_accept_channel()
    start.result()
    yield peer
    node.rpc.fundchannel_cancel(peer.node_id.hex())
    peer.close()
    wait_for(lambda: node.rpc.listpeers(peer.node_id.hex())["peers"] == [], what="disconnect")


def psbt_without_funding_output(peer: OpeningPeer) -> str:
    psbt = PartiallySignedTransaction.from_base64(
        fake_funding_psbt(peer.funding_script_pubkey(), AMOUNT, peer.seed).psbt
    )
    tx = psbt.unsigned_tx.to_mutable()
    del tx.vout[1]
    lacking = PartiallySignedTransaction(unsigned_tx=tx)
    lacking.set_utxo(psbt.inputs[0].witness_utxo, 0, force_witness_utxo=True)
    return lacking.to_base64()


def psbt_with_wrong_amount(peer: OpeningPeer) -> str:
    return fake_funding_psbt(peer.funding_script_pubkey(), AMOUNT - 1, peer.seed).psbt


PSBT_ROWS = [
    (psbt_without_funding_output, "Funding PSBT has no output to the funding address"),
    (psbt_with_wrong_amount, f"Output to open channel is {AMOUNT - 1}sat, should be {AMOUNT}sat"),
]


@pytest.mark.parametrize(("make_psbt", "message"), PSBT_ROWS)
def test_fundchannel_complete_bad_psbt(
    node: Node, negotiated: OpeningPeer, make_psbt: Callable[[OpeningPeer], str], message: str
):
    params = {"id": negotiated.node_id.hex(), "psbt": make_psbt(negotiated)}
    assert error(node, "fundchannel_complete", params) == {"code": 309, "message": message}
    # The negotiation is untouched: the peer was sent nothing, and still answers.
    assert negotiated.ping_pong()


def test_fundchannel_complete_garbage_psbt(node: Node, negotiated: OpeningPeer):
    params = {"id": negotiated.node_id.hex(), "psbt": "bm90IGEgcHNidA=="}  # "not a psbt"
    err = error(node, "fundchannel_complete", params)
    assert err == {
        "code": INVALID_PARAMS,
        "message": bad_token("psbt", "Expected a PSBT", "bm90IGEgcHNidA=="),
    }
    assert negotiated.ping_pong()


# -- seeded fuzzing: random parameters to every command, random bytes to the socket ----------

# stop ends the run; connect would dial whatever host a random string names.
NOT_FUZZED = {"stop", "connect"}
FAST_FUZZ_CASES = 300
FUZZ_CHARS = '0123456789abcdefmsatbtc:-.x\\"\u00e9\u2603'
STRESS_FUZZ_CASES = 100_000


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2**32, 2**64, -(2**63), rng.randrange(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1.5, 1e300, 1e-9, 100000.0])
    if kind == 4:
        return rng.choice(["", "all", "any", "1sat", "1msat", "0.1btc", UNKNOWN_PEER, TXID, W])
    if kind == 5:
        return "".join(rng.choice(FUZZ_CHARS) for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(random_json(rng, 2)): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_request(rng: random.Random, methods: list[str], names: dict[str, list[str]]) -> dict:
    method = rng.choice(methods)
    if rng.random() < 0.5:
        params: Any = [random_json(rng) for _ in range(rng.randrange(5))]
    else:
        keys = names[method] + ["x"]
        params = {rng.choice(keys): random_json(rng) for _ in range(rng.randrange(4))}
    return {"jsonrpc": "2.0", "id": rng.randrange(10**9), "method": method, "params": params}


def mangle(data: bytes, rng: random.Random) -> bytes:
    """A request with bytes flipped, dropped or inserted."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(out))
        op = rng.randrange(3)
        if op == 0:
            out[pos] = rng.randrange(256)
        elif op == 1:
            del out[pos]
        else:
            out.insert(pos, rng.randrange(256))
    return bytes(out)


def check_reply(reply: dict[str, Any]) -> str:
    """A well-formed JSON-RPC reply; returns "ok" or the error code as text."""
    assert reply["jsonrpc"] == "2.0"
    if "result" in reply:
        return "ok"
    assert isinstance(reply["error"]["code"], int) and isinstance(reply["error"]["message"], str)
    return str(reply["error"]["code"])


def fuzz(node: Node, cases: int, seed: int) -> dict[str, int]:
    """Random requests, one in ten mangled into raw bytes; every reply well-formed, and
    no command fails with an unexpected exception (logged **BROKEN** by jsonrpc)."""
    rng = random.Random(seed)
    usage = {h["command"].split()[0]: h["command"].split()[1:] for h in node.rpc.help()["help"]}
    methods = sorted(set(usage) - NOT_FUZZED)
    names = {m: [p.strip("[]") for p in usage[m]] for m in methods}
    log_start = len(node.logs())
    outcomes: dict[str, int] = {}
    for case in range(cases):
        data = json.dumps(random_request(rng, methods, names)).encode()
        if rng.random() < 0.1:
            data = mangle(data, rng)
        for reply in exchange(node, data):
            outcome = check_reply(reply)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if case % 100 == 0:
            assert node.rpc.getinfo()["id"] == node.id
    assert "**BROKEN**" not in node.logs()[log_start:]
    return outcomes


def test_fuzz_params(node: Node):
    outcomes = fuzz(node, FAST_FUZZ_CASES, seed=9)
    assert outcomes.get(str(INVALID_PARAMS), 0) > FAST_FUZZ_CASES // 4  # mostly refused


@pytest.mark.stress
@pytest.mark.timeout(900)  # about a minute alone; much longer on a loaded machine
def test_stress_fuzz_params(node: Node):
    start = time.perf_counter()
    outcomes = fuzz(node, STRESS_FUZZ_CASES, seed=10)
    elapsed = time.perf_counter() - start
    print(
        f"\nRPC fuzz: {STRESS_FUZZ_CASES} requests in {elapsed:.0f}s "
        f"({STRESS_FUZZ_CASES / elapsed:.0f}/s): {dict(sorted(outcomes.items()))}"
    )
