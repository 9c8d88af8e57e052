"""What differs between the networks a node can run on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChainParams:
    network: str
    # BOLT #0: chain_hash is the genesis block hash in internal (little-endian) byte order.
    chain_hash: bytes
    bech32_hrp: str
    default_port: int
    bitcoind_rpcport: int
    testnet: bool


def _genesis(display_hex: str) -> bytes:
    return bytes.fromhex(display_hex)[::-1]


CHAINS: dict[str, ChainParams] = {
    p.network: p
    for p in (
        ChainParams(
            "bitcoin",
            _genesis("000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"),
            "bc",
            9735,
            8332,
            False,
        ),
        ChainParams(
            "testnet",
            _genesis("000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943"),
            "tb",
            19735,
            18332,
            True,
        ),
        ChainParams(
            "signet",
            _genesis("00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6"),
            "tb",
            39735,
            38332,
            True,
        ),
        ChainParams(
            "regtest",
            _genesis("0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"),
            "bcrt",
            19846,
            18443,
            True,
        ),
    )
}


def chain_by_name(network: str) -> ChainParams:
    try:
        return CHAINS[network]
    except KeyError:
        raise ValueError(f"unknown network '{network}' (one of {', '.join(CHAINS)})") from None


def chain_by_hash(chain_hash: bytes) -> ChainParams | None:
    return next((c for c in CHAINS.values() if c.chain_hash == chain_hash), None)
