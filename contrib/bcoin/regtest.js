#!/usr/bin/env node
/*
 * Runs bcoin 1.0.2 as a regtest full node that looks like Bitcoin Core to a
 * JSON-RPC client. bcoin is the only full node the project's registries ship,
 * so the differences are bridged here, in-process, and never in the daemon:
 *
 *   - network: Core's regtest address prefixes (bcrt), ports, BIP34/65/66 at
 *     height 1, CSV and segwit active from genesis, no seeds;
 *   - policy: Core's min relay fee, RBF-signalling txs accepted, witness v1+
 *     outputs standard, Core's maxfeerate check in sendrawtransaction;
 *   - RPC: Core's result shapes, error codes and amount formatting (numbers
 *     with exactly 8 decimals), HTTP status codes and user+password auth.
 *
 * Usage: node regtest.js --datadir=DIR --rpcuser=U --rpcpassword=P
 *          [--rpcport=18443] [--port=18444] [--loglevel=info] [--stdin-watch]
 */

'use strict';

// bcrypto's native bindings are not built (npm install --ignore-scripts).
process.env.NODE_BACKEND = 'js';

const assert = require('assert');
const networks = require('bcoin/lib/protocol/networks');
const consensus = require('bcoin/lib/protocol/consensus');
const policy = require('bcoin/lib/protocol/policy');
const {VerifyError} = require('bcoin/lib/protocol/errors');
const Chain = require('bcoin/lib/blockchain/chain');
const {thresholdStates} = require('bcoin/lib/blockchain/common');
const Mempool = require('bcoin/lib/mempool/mempool');
const Script = require('bcoin/lib/script/script');
const Address = require('bcoin/lib/primitives/address');
const TX = require('bcoin/lib/primitives/tx');
const HTTP = require('bcoin/lib/node/http');
const Pool = require('bcoin/lib/net/pool');
const pkg = require('bcoin/lib/pkg');
const {RPCError} = require('bweb');

// The Bitcoin Core release whose RPC this bridge imitates (getnetworkinfo.version).
const CORE_VERSION = 250100;
const CORE_GENESIS = '0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206';
const MAX_CONF_TARGET = 1008;
const DEFAULT_MAX_FEERATE = 10000000; // sat/kvB: Core's 0.10 BTC/kvB

// Core's RPC error codes (src/rpc/protocol.h).
const E = {
  MISC: -1,
  TYPE: -3,
  INVALID_ADDRESS_OR_KEY: -5,
  INVALID_PARAMETER: -8,
  DESERIALIZATION: -22,
  VERIFY: -25,
  VERIFY_REJECTED: -26,
  VERIFY_ALREADY_IN_CHAIN: -27,
  METHOD_NOT_FOUND: -32601,
  INVALID_REQUEST: -32600
};

/*
 * Command line
 */

function parseArgs(argv) {
  const opts = {
    rpcport: 18443,
    port: 18444,
    loglevel: 'info',
    stdinWatch: false
  };
  for (const arg of argv) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m)
      throw new Error(`bad argument: ${arg}`);
    const [, key, value] = m;
    switch (key) {
      case 'datadir': opts.datadir = value; break;
      case 'rpcuser': opts.rpcuser = value; break;
      case 'rpcpassword': opts.rpcpassword = value; break;
      case 'rpcport': opts.rpcport = Number(value); break;
      case 'port': opts.port = Number(value); break;
      case 'loglevel': opts.loglevel = value; break;
      case 'stdin-watch': opts.stdinWatch = true; break;
      default: throw new Error(`unknown option --${key}`);
    }
  }
  for (const key of ['datadir', 'rpcuser', 'rpcpassword'])
    assert(opts[key], `--${key} is required`);
  return opts;
}

/*
 * Storage: bcoin 1.0.2's bdb was written for leveldown 4; 5.6.0 is the one with
 * prebuilt binaries. leveldown 5 turns an unset (null) range bound into the string
 * "null", so every iteration (chain tips, scans) came back empty: drop null bounds.
 */

function patchLeveldown() {
  const LevelDOWN = require(require.resolve('leveldown',
    {paths: [require('path').dirname(require.resolve('bdb'))]}));
  const iterator = LevelDOWN.prototype.iterator;
  LevelDOWN.prototype.iterator = function(options) {
    const clean = {};
    for (const key of Object.keys(options || {})) {
      if (options[key] != null)
        clean[key] = options[key];
    }
    return iterator.call(this, clean);
  };
}

/*
 * Signatures: bcrypto's pure-JavaScript ECDSA verification takes ~2.3 ms a signature,
 * libsecp256k1 compiled to WebAssembly (tiny-secp256k1, Core's own library) ~0.2 ms.
 * bcrypto still parses the DER (laxly, as Core) and normalizes S; only the curve
 * arithmetic moves. Every script check (mempool and blocks) goes through verify().
 */

function patchVerify() {
  const tiny = require('tiny-secp256k1');
  const secp256k1 = require('bcrypto/lib/secp256k1');
  const backend = require('bcrypto/lib/internal/secp256k1');
  secp256k1.verify = function verify(msg, sig, key) {
    assert(Buffer.isBuffer(msg) && Buffer.isBuffer(sig) && Buffer.isBuffer(key));
    if (sig.length !== 64 || key.length === 0)
      return false;
    try {
      return tiny.verify(msg, key, backend.signatureNormalize(sig));
    } catch (e) {
      return false; // not a point, not a 32-byte hash: as bcrypto, invalid
    }
  };
}

/*
 * Network and consensus: Core's regtest (src/kernel/chainparams.cpp)
 */

function patchNetwork(opts) {
  // bcoin asks DNS servers on the internet for its external IP; Core's regtest does not.
  Pool.prototype.discoverExternal = async function() {};

  const regtest = networks.regtest;
  assert.strictEqual(revHex(regtest.genesis.hash), CORE_GENESIS,
    'bcoin regtest genesis differs from Core');
  regtest.seeds = [];
  regtest.port = opts.port;
  regtest.rpcPort = opts.rpcport;
  regtest.requireStandard = true;
  regtest.block.bip34height = 1;
  regtest.block.bip65height = 1;
  regtest.block.bip66height = 1;
  regtest.keyPrefix.privkey = 0xef;
  regtest.keyPrefix.xpubkey = 0x043587cf;
  regtest.keyPrefix.xprivkey = 0x04358394;
  regtest.keyPrefix.xpubkey58 = 'tpub';
  regtest.keyPrefix.xprivkey58 = 'tprv';
  regtest.addressPrefix.pubkeyhash = 0x6f;
  regtest.addressPrefix.scripthash = 0xc4;
  regtest.addressPrefix.bech32 = 'bcrt';
}

// Core buries CSV (height 1) and segwit (height 0) on regtest: no signalling.
function patchDeployments() {
  const getState = Chain.prototype.getState;
  Chain.prototype.getState = async function(prev, deployment) {
    if (deployment.name === 'csv' || deployment.name === 'segwit')
      return thresholdStates.ACTIVE;
    return getState.call(this, prev, deployment);
  };
}

function patchPolicy() {
  // Core relays outputs to any witness version >= 1 (taproot, future).
  const isStandard = Script.prototype.isStandard;
  Script.prototype.isStandard = function() {
    const program = this.getProgram();
    if (program && program.version >= 1)
      return true;
    return isStandard.call(this);
  };

  // Core rejects txs paying less than the min relay fee (bcoin used priority).
  const verify = Mempool.prototype.verify;
  Mempool.prototype.verify = async function(entry, view) {
    const minFee = policy.getMinFee(entry.size, this.options.minRelay);
    if (entry.fee < minFee) {
      throw new VerifyError(entry.tx, 'insufficientfee',
        `min relay fee not met, ${entry.fee} < ${minFee}`, 0);
    }
    return verify.call(this, entry, view);
  };
}

/*
 * JSON: Core prints amounts as numbers with exactly 8 decimals.
 */

const AMOUNT_MARK = '@@btc@@';

class Amount {
  constructor(sats) {
    this.sats = sats;
  }

  toJSON() {
    const sign = this.sats < 0 ? '-' : '';
    const abs = Math.abs(this.sats);
    const whole = Math.floor(abs / 1e8);
    const frac = String(abs % 1e8).padStart(8, '0');
    return `${AMOUNT_MARK}${sign}${whole}.${frac}${AMOUNT_MARK}`;
  }
}

function btc(sats) {
  return new Amount(sats);
}

function stringify(json) {
  const re = new RegExp(`"${AMOUNT_MARK}(-?\\d+\\.\\d{8})${AMOUNT_MARK}"`, 'g');
  return JSON.stringify(json).replace(re, '$1');
}

// Parse a BTC amount (number or string) to satoshis, as Core's AmountFromValue.
function satsFromValue(value) {
  const n = typeof value === 'string' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0)
    throw new RPCError(E.TYPE, 'Amount out of range');
  return Math.round(n * 1e8);
}

/*
 * HTTP: Core's status codes and user+password basic auth.
 */

function patchHttp(opts) {
  const base = Object.getPrototypeOf(HTTP.prototype);

  HTTP.prototype.basicAuth = function(options) {
    return base.basicAuth.call(this, {...options, username: opts.rpcuser});
  };

  HTTP.prototype.jsonRPC = function() {
    const rpc = this.rpc;
    return async (req, res) => {
      if (req.method !== 'POST' || req.pathname !== '/')
        return;
      const out = await rpc.call(req.body, req.query);
      res.send(httpStatus(req.body, out), stringify(out) + '\n', 'application/json');
    };
  };
}

function httpStatus(body, out) {
  if (Array.isArray(body) || !out || !out.error)
    return 200;
  if (out.error.code === E.METHOD_NOT_FOUND)
    return 404;
  if (out.error.code === E.INVALID_REQUEST)
    return 400;
  return 500;
}

/*
 * Core-shaped objects
 */

function revHex(hex) {
  return Buffer.from(hex, 'hex').reverse().toString('hex');
}

function hex32(n) {
  return (n >>> 0).toString(16).padStart(8, '0');
}

const BECH32_CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
const BECH32_CONST = 1;
const BECH32M_CONST = 0x2bc830a3;

function bech32Polymod(values) {
  const gen = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
  let chk = 1;
  for (const v of values) {
    const top = chk >>> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (let i = 0; i < 5; i++) {
      if ((top >>> i) & 1)
        chk ^= gen[i];
    }
  }
  return chk >>> 0;
}

function hrpExpand(hrp) {
  const out = [];
  for (const c of hrp) out.push(c.charCodeAt(0) >> 5);
  out.push(0);
  for (const c of hrp) out.push(c.charCodeAt(0) & 31);
  return out;
}

function convertBits(data, from, to, pad) {
  let acc = 0;
  let bits = 0;
  const out = [];
  const maxv = (1 << to) - 1;
  for (const value of data) {
    acc = (acc << from) | value;
    bits += from;
    while (bits >= to) {
      bits -= to;
      out.push((acc >> bits) & maxv);
    }
  }
  if (pad && bits > 0)
    out.push((acc << (to - bits)) & maxv);
  else if (!pad && (bits >= from || ((acc << (to - bits)) & maxv)))
    return null;
  return out;
}

// Segwit addresses as Core (BIP350): bech32 for v0, bech32m for v1+.
function encodeSegwit(hrp, version, program) {
  const data = [version, ...convertBits(program, 8, 5, true)];
  const constant = version === 0 ? BECH32_CONST : BECH32M_CONST;
  const poly = bech32Polymod([...hrpExpand(hrp), ...data, 0, 0, 0, 0, 0, 0]) ^ constant;
  let out = `${hrp}1`;
  for (const d of data) out += BECH32_CHARSET[d];
  for (let i = 0; i < 6; i++) out += BECH32_CHARSET[(poly >>> (5 * (5 - i))) & 31];
  return out;
}

function decodeSegwit(hrp, addr) {
  const str = addr.toLowerCase();
  if (str !== addr && addr.toUpperCase() !== addr)
    return null;
  const pos = str.lastIndexOf('1');
  if (pos < 1 || str.slice(0, pos) !== hrp || str.length - pos < 7)
    return null;
  const data = [];
  for (const c of str.slice(pos + 1)) {
    const v = BECH32_CHARSET.indexOf(c);
    if (v === -1)
      return null;
    data.push(v);
  }
  const check = bech32Polymod([...hrpExpand(hrp), ...data]);
  const version = data[0];
  if (check !== (version === 0 ? BECH32_CONST : BECH32M_CONST))
    return null;
  const program = convertBits(data.slice(1, -6), 5, 8, false);
  if (!program || program.length < 2 || program.length > 40 || version > 16)
    return null;
  if (version === 0 && program.length !== 20 && program.length !== 32)
    return null;
  return {version, program: Buffer.from(program)};
}

function parseAddress(str, network) {
  const segwit = decodeSegwit(network.addressPrefix.bech32, str);
  if (segwit)
    return Address.fromProgram(segwit.version, segwit.program);
  try {
    return Address.fromBase58(str, network);
  } catch (e) {
    throw new RPCError(E.INVALID_ADDRESS_OR_KEY, 'Error: Invalid address');
  }
}

// Core's TxoutType names (src/script/solver.cpp).
function scriptType(script) {
  const program = script.getProgram();
  if (program) {
    if (program.version === 0 && program.data.length === 20)
      return 'witness_v0_keyhash';
    if (program.version === 0 && program.data.length === 32)
      return 'witness_v0_scripthash';
    if (program.version === 1 && program.data.length === 32)
      return 'witness_v1_taproot';
    if (program.version !== 0)
      return 'witness_unknown';
    return 'nonstandard';
  }
  if (script.isPubkey()) return 'pubkey';
  if (script.isPubkeyhash()) return 'pubkeyhash';
  if (script.isScripthash()) return 'scripthash';
  if (script.isMultisig()) return 'multisig';
  if (script.isNulldata()) return 'nulldata';
  return 'nonstandard';
}

function scriptAddress(script, network) {
  const program = script.getProgram();
  if (program)
    return encodeSegwit(network.addressPrefix.bech32, program.version, program.data);
  if (script.isPubkeyhash() || script.isScripthash())
    return script.getAddress().toBase58(network);
  return undefined;
}

// Core's ScriptToAsmStr: small pushes as numbers, others as hex, ops by name.
function scriptAsm(script) {
  const out = [];
  for (const op of script.code) {
    if (op.value === -1) {
      out.push('[error]');
      break;
    }
    if (op.data) {
      out.push(op.data.length <= 4 ? String(scriptNum(op.data)) : op.data.toString('hex'));
      continue;
    }
    out.push(opName(op.value));
  }
  return out.join(' ');
}

function scriptNum(data) {
  if (data.length === 0)
    return 0;
  let n = 0;
  for (let i = 0; i < data.length; i++) n += data[i] * 2 ** (8 * i);
  const last = data[data.length - 1];
  if (last & 0x80)
    return -(n - 0x80 * 2 ** (8 * (data.length - 1)));
  return n;
}

function opName(value) {
  if (value === 0x00) return '0';
  if (value === 0x4f) return '-1';
  if (value >= 0x51 && value <= 0x60) return String(value - 0x50);
  const name = Script.opcodesByVal[value];
  if (!name) return 'OP_UNKNOWN';
  if (name === 'OP_NOP2') return 'OP_CHECKLOCKTIMEVERIFY';
  if (name === 'OP_NOP3') return 'OP_CHECKSEQUENCEVERIFY';
  return name;
}

function scriptPubKeyJSON(script, network) {
  const json = {asm: scriptAsm(script), hex: script.toRaw().toString('hex')};
  const address = scriptAddress(script, network);
  if (address)
    json.address = address;
  json.type = scriptType(script);
  return json;
}

function txJSON(tx, network) {
  const vin = tx.inputs.map((input) => {
    const json = {};
    if (tx.isCoinbase()) {
      json.coinbase = input.script.toRaw().toString('hex');
    } else {
      json.txid = input.prevout.txid();
      json.vout = input.prevout.index;
      json.scriptSig = {
        asm: scriptAsm(input.script),
        hex: input.script.toRaw().toString('hex')
      };
    }
    if (input.witness.items.length > 0)
      json.txinwitness = input.witness.items.map(item => item.toString('hex'));
    json.sequence = input.sequence;
    return json;
  });
  const vout = tx.outputs.map((output, n) => ({
    value: btc(output.value),
    n,
    scriptPubKey: scriptPubKeyJSON(output.script, network)
  }));
  return {
    txid: tx.txid(),
    hash: tx.wtxid(),
    version: tx.version,
    size: tx.getSize(),
    vsize: tx.getVirtualSize(),
    weight: tx.getWeight(),
    locktime: tx.locktime,
    vin,
    vout
  };
}

/*
 * RPC methods, written from Core's documentation of each call.
 */

class CoreBridge {
  constructor(node) {
    this.node = node;
    this.network = node.network;
    this.chain = node.chain;
    this.mempool = node.mempool;
    this.fees = node.fees;
    this.rpc = node.rpc;
  }

  install() {
    const methods = {
      getblockchaininfo: this.getBlockchainInfo,
      getnetworkinfo: this.getNetworkInfo,
      getblock: this.getBlock,
      getblockheader: this.getBlockHeader,
      getchaintips: this.getChainTips,
      getmempoolinfo: this.getMempoolInfo,
      getrawmempool: this.getRawMempool,
      getmempoolentry: this.getMempoolEntry,
      gettxout: this.getTxOut,
      getrawtransaction: this.getRawTransaction,
      decoderawtransaction: this.decodeRawTransaction,
      decodescript: this.decodeScript,
      sendrawtransaction: this.sendRawTransaction,
      estimatesmartfee: this.estimateSmartFee,
      generatetoaddress: this.generateToAddress,
      validateaddress: this.validateAddress,
      uptime: this.uptime,
      stop: this.stop
    };
    for (const [name, fn] of Object.entries(methods))
      this.rpc.calls[name] = fn.bind(this);
  }

  async getBlockchainInfo(args) {
    noArgs('getblockchaininfo', args);
    const tip = this.chain.tip;
    return {
      chain: 'regtest',
      blocks: this.chain.height,
      headers: this.chain.height,
      bestblockhash: tip.rhash(),
      difficulty: difficulty(tip.bits),
      time: tip.time,
      mediantime: await this.chain.getMedianTime(tip),
      verificationprogress: 1,
      initialblockdownload: !this.chain.synced,
      chainwork: tip.chainwork.toString('hex', 64),
      size_on_disk: 0,
      pruned: false,
      warnings: ''
    };
  }

  async getNetworkInfo(args) {
    noArgs('getnetworkinfo', args);
    const pool = this.node.pool;
    const {inbound, outbound} = pool.peers;
    return {
      version: CORE_VERSION,
      subversion: `/bcoin:${pkg.version}/`,
      protocolversion: pool.options.version,
      localservices: hex32(pool.options.services).padStart(16, '0'),
      localservicesnames: ['NETWORK', 'WITNESS'],
      localrelay: true,
      timeoffset: 0,
      networkactive: true,
      connections: inbound + outbound,
      connections_in: inbound,
      connections_out: outbound,
      networks: [],
      relayfee: btc(this.network.minRelay),
      incrementalfee: btc(this.network.minRelay),
      localaddresses: [],
      warnings: ''
    };
  }

  async entryFor(hashArg) {
    const hash = parseHash(hashArg, 'blockhash');
    const entry = await this.chain.getEntry(hash);
    if (!entry)
      throw new RPCError(E.INVALID_ADDRESS_OR_KEY, 'Block not found');
    return entry;
  }

  async headerJSON(entry, block) {
    const next = await this.chain.getNextHash(entry.hash);
    const json = {
      hash: entry.rhash(),
      confirmations: (await this.chain.isMainChain(entry))
        ? this.chain.height - entry.height + 1 : -1,
      height: entry.height,
      version: entry.version,
      versionHex: hex32(entry.version),
      merkleroot: revHex(entry.merkleRoot),
      time: entry.time,
      mediantime: await this.chain.getMedianTime(entry),
      nonce: entry.nonce,
      bits: hex32(entry.bits),
      difficulty: difficulty(entry.bits),
      chainwork: entry.chainwork.toString('hex', 64),
      nTx: block.txs.length
    };
    if (entry.prevBlock !== consensus.NULL_HASH)
      json.previousblockhash = revHex(entry.prevBlock);
    if (next)
      json.nextblockhash = revHex(next);
    return json;
  }

  // Core: verbosity 0 hex, 1 txids, 2 (and 3) full txs; booleans mean 0/1.
  async getBlock(args) {
    if (args.length < 1 || args.length > 2)
      throw usage('getblock "blockhash" ( verbosity )');
    const verbosity = parseVerbosity(args[1], 1);
    const entry = await this.entryFor(args[0]);
    const block = await this.chain.getBlock(entry.hash);
    if (!block)
      throw new RPCError(E.MISC, 'Block not available');
    if (verbosity === 0)
      return block.toRaw().toString('hex');
    const json = await this.headerJSON(entry, block);
    json.strippedsize = block.getBaseSize();
    json.size = block.getSize();
    json.weight = block.getWeight();
    json.tx = block.txs.map((tx) => {
      if (verbosity === 1)
        return tx.txid();
      const txj = txJSON(tx, this.network);
      txj.hex = tx.toRaw().toString('hex');
      return txj;
    });
    return json;
  }

  async getBlockHeader(args) {
    if (args.length < 1 || args.length > 2)
      throw usage('getblockheader "blockhash" ( verbose )');
    const verbose = args.length < 2 || Boolean(args[1]);
    const entry = await this.entryFor(args[0]);
    if (!verbose)
      return entry.toRaw().toString('hex', 0, 80);
    return this.headerJSON(entry, await this.chain.getBlock(entry.hash));
  }

  // Core lists the active tip too, and other branches by their status.
  async getChainTips(args) {
    noArgs('getchaintips', args);
    const hashes = new Set(await this.chain.getTips());
    hashes.add(this.chain.tip.hash);
    const tips = [];
    for (const hash of hashes) {
      const entry = await this.chain.getEntry(hash);
      if (!entry)
        continue;
      let fork = entry;
      while (!(await this.chain.isMainChain(fork)))
        fork = await this.chain.getPrevious(fork);
      const branchlen = entry.height - fork.height;
      tips.push({
        height: entry.height,
        hash: entry.rhash(),
        branchlen,
        status: branchlen === 0 ? 'active' : 'valid-fork'
      });
    }
    return tips.sort((a, b) => b.height - a.height);
  }

  async getMempoolInfo(args) {
    noArgs('getmempoolinfo', args);
    let fees = 0;
    for (const entry of this.mempool.map.values()) fees += entry.fee;
    const minRelay = btc(this.mempool.options.minRelay);
    return {
      loaded: true,
      size: this.mempool.map.size,
      bytes: this.mempool.getSize(),
      usage: this.mempool.getSize(),
      total_fee: btc(fees),
      maxmempool: this.mempool.options.maxSize,
      mempoolminfee: minRelay,
      minrelaytxfee: minRelay,
      incrementalrelayfee: btc(this.network.minRelay),
      unbroadcastcount: 0,
      fullrbf: false
    };
  }

  mempoolEntryJSON(entry) {
    const ancestors = this.mempool.getAncestors(entry);
    const descendants = this.mempool.getDescendants(entry);
    const sum = (list, f) => list.reduce((acc, e) => acc + f(e), 0);
    const hash = entry.tx.hash('hex');
    const spentby = descendants
      .filter(d => d.tx.inputs.some(input => input.prevout.hash === hash))
      .map(d => d.txid());
    return {
      vsize: entry.size,
      weight: entry.tx.getWeight(),
      time: entry.time,
      height: entry.height,
      descendantcount: descendants.length + 1,
      descendantsize: entry.size + sum(descendants, e => e.size),
      ancestorcount: ancestors.length + 1,
      ancestorsize: entry.size + sum(ancestors, e => e.size),
      wtxid: entry.tx.wtxid(),
      fees: {
        base: btc(entry.fee),
        modified: btc(entry.deltaFee),
        ancestor: btc(entry.fee + sum(ancestors, e => e.fee)),
        descendant: btc(entry.fee + sum(descendants, e => e.fee))
      },
      depends: this.mempool.getDepends(entry.tx).map(revHex),
      spentby,
      'bip125-replaceable': [entry, ...ancestors].some(e => signalsRBF(e.tx)),
      unbroadcast: false
    };
  }

  async getRawMempool(args) {
    if (args.length > 2)
      throw usage('getrawmempool ( verbose mempool_sequence )');
    if (!args[0])
      return this.mempool.getSnapshot().map(revHex);
    const out = {};
    for (const entry of this.mempool.map.values())
      out[entry.txid()] = this.mempoolEntryJSON(entry);
    return out;
  }

  async getMempoolEntry(args) {
    if (args.length !== 1)
      throw usage('getmempoolentry "txid"');
    const entry = this.mempool.getEntry(parseHash(args[0], 'txid'));
    if (!entry)
      throw new RPCError(E.INVALID_ADDRESS_OR_KEY, 'Transaction not in mempool');
    return this.mempoolEntryJSON(entry);
  }

  // Core: null when unknown, spent in the chain, or (with mempool) spent there.
  async getTxOut(args) {
    if (args.length < 2 || args.length > 3)
      throw usage('gettxout "txid" n ( include_mempool )');
    const hash = parseHash(args[0], 'txid');
    const index = parseUint(args[1], 'n');
    const includeMempool = args.length < 3 || Boolean(args[2]);
    let coin = null;
    if (includeMempool) {
      if (this.mempool.isSpent(hash, index))
        return null;
      coin = this.mempool.getCoin(hash, index);
    }
    if (!coin)
      coin = await this.chain.getCoin(hash, index);
    if (!coin)
      return null;
    return {
      bestblock: this.chain.tip.rhash(),
      confirmations: coin.height === -1 ? 0 : this.chain.height - coin.height + 1,
      value: btc(coin.value),
      scriptPubKey: scriptPubKeyJSON(coin.script, this.network),
      coinbase: coin.coinbase
    };
  }

  async getRawTransaction(args) {
    if (args.length < 1 || args.length > 3)
      throw usage('getrawtransaction "txid" ( verbose "blockhash" )');
    const hash = parseHash(args[0], 'txid');
    const verbose = parseVerbosity(args[1], 0) > 0;
    const meta = await this.node.getMeta(hash);
    if (!meta) {
      throw new RPCError(E.INVALID_ADDRESS_OR_KEY,
        'No such mempool or blockchain transaction. '
        + 'Use gettransaction for wallet transactions.');
    }
    const hex = meta.tx.toRaw().toString('hex');
    if (!verbose)
      return hex;
    const json = txJSON(meta.tx, this.network);
    json.hex = hex;
    if (meta.block) {
      const entry = await this.chain.getEntry(meta.block);
      json.blockhash = revHex(meta.block);
      json.confirmations = this.chain.height - entry.height + 1;
      json.time = entry.time;
      json.blocktime = entry.time;
    }
    return json;
  }

  async decodeRawTransaction(args) {
    if (args.length < 1 || args.length > 2)
      throw usage('decoderawtransaction "hexstring" ( iswitness )');
    return txJSON(parseTx(args[0]), this.network);
  }

  async decodeScript(args) {
    if (args.length !== 1)
      throw usage('decodescript "hexstring"');
    const script = Script.fromRaw(parseHex(args[0]));
    const json = scriptPubKeyJSON(script, this.network);
    delete json.hex;
    if (json.type !== 'scripthash' && !script.getProgram()) {
      const p2sh = Script.fromScripthash(script.hash160());
      json.p2sh = scriptAddress(p2sh, this.network);
    }
    return json;
  }

  // Core validates synchronously and answers with the reason of a rejection.
  async sendRawTransaction(args) {
    if (args.length < 1 || args.length > 3)
      throw usage('sendrawtransaction "hexstring" ( maxfeerate maxburnamount )');
    const tx = parseTx(args[0]);
    const maxFeeRate = args[1] == null ? DEFAULT_MAX_FEERATE : satsFromValue(args[1]);
    const hash = tx.hash('hex');

    if (this.mempool.hasEntry(hash))
      return tx.txid();
    if (await this.chain.hasCoins(tx))
      throw new RPCError(E.VERIFY_ALREADY_IN_CHAIN, 'Transaction outputs already in utxo set');
    await this.checkMaxFee(tx, maxFeeRate);

    let missing;
    try {
      missing = await this.mempool.addTX(tx);
    } catch (err) {
      if (err.type !== 'VerifyError')
        throw err;
      if (err.reason === 'txn-already-in-mempool')
        return tx.txid();
      throw rejection(err);
    }
    if (missing) {
      // Core keeps no orphans from RPC.
      if (this.mempool.hasOrphan(hash))
        this.mempool.removeOrphan(hash);
      throw new RPCError(E.VERIFY, 'bad-txns-inputs-missingorspent');
    }
    return tx.txid();
  }

  async checkMaxFee(tx, maxFeeRate) {
    if (maxFeeRate === 0)
      return;
    const view = await this.mempool.getCoinView(tx);
    if (!tx.hasCoins(view))
      return;
    const maxFee = Math.floor(maxFeeRate * tx.getVirtualSize() / 1000);
    if (tx.getFee(view) > maxFee) {
      throw new RPCError(E.VERIFY,
        'Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)');
    }
  }

  // bcoin tracks targets up to 15 blocks: Core's 1..1008 are clamped to it.
  async estimateSmartFee(args) {
    if (args.length < 1 || args.length > 2)
      throw usage('estimatesmartfee conf_target ( "estimate_mode" )');
    const target = parseUint(args[0], 'conf_target');
    if (target < 1 || target > MAX_CONF_TARGET) {
      throw new RPCError(E.INVALID_PARAMETER,
        `Invalid conf_target, must be between 1 and ${MAX_CONF_TARGET}`);
    }
    const mode = String(args[1] == null ? 'unset' : args[1]).toLowerCase();
    if (!['unset', 'economical', 'conservative'].includes(mode)) {
      throw new RPCError(E.INVALID_PARAMETER,
        'Invalid estimate_mode parameter, must be one of: '
        + '"unset" "economical" "conservative"');
    }
    const blocks = Math.min(Math.max(target, 2), this.fees.feeStats.maxConfirms);
    const rate = this.fees.estimateFee(blocks, true);
    if (!rate)
      return {errors: ['Insufficient data or no feerate found'], blocks: 0};
    return {feerate: btc(Math.max(rate, this.mempool.options.minRelay)), blocks};
  }

  async generateToAddress(args) {
    if (args.length < 2 || args.length > 3)
      throw usage('generatetoaddress nblocks "address" ( maxtries )');
    const blocks = parseUint(args[0], 'nblocks');
    const addr = parseAddress(String(args[1]), this.network);
    return this.rpc.mineBlocks(blocks, addr);
  }

  async validateAddress(args) {
    if (args.length !== 1)
      throw usage('validateaddress "address"');
    let addr;
    try {
      addr = parseAddress(String(args[0]), this.network);
    } catch (e) {
      return {isvalid: false, error: 'Invalid address'};
    }
    const script = Script.fromAddress(addr);
    const program = script.getProgram();
    const json = {
      isvalid: true,
      address: scriptAddress(script, this.network),
      scriptPubKey: script.toRaw().toString('hex'),
      isscript: script.isScripthash() || (program !== null && program.data.length === 32),
      iswitness: program !== null
    };
    if (program) {
      json.witness_version = program.version;
      json.witness_program = program.data.toString('hex');
    }
    return json;
  }

  async uptime(args) {
    noArgs('uptime', args);
    return Math.floor(process.uptime());
  }

  // Core answers, then shuts down; the launcher exits once the node is closed.
  async stop(args) {
    setImmediate(() => shutdown(this.node, 0));
    return 'Bitcoin Core stopping';
  }
}

// BIP125 as Core reads it; bcoin's tx.isRBF() ignores version 2 txs.
function signalsRBF(tx) {
  return tx.inputs.some(input => input.sequence < 0xfffffffe);
}

// Core's rejection reasons and codes for bcoin's mempool errors.
function rejection(err) {
  switch (err.reason) {
    case 'bad-txns-inputs-spent':
      return new RPCError(E.VERIFY_REJECTED, 'txn-mempool-conflict');
    case 'txn-already-known':
      return new RPCError(E.VERIFY_ALREADY_IN_CHAIN, 'Transaction outputs already in utxo set');
    case 'mandatory-script-verify-flag':
    case 'non-mandatory-script-verify-flag':
      return new RPCError(E.VERIFY_REJECTED, `${err.reason}-failed`);
    default:
      return new RPCError(E.VERIFY_REJECTED, err.reason);
  }
}

/*
 * Argument parsing as Core's errors
 */

function usage(text) {
  return new RPCError(E.MISC, text);
}

function noArgs(name, args) {
  if (args.length !== 0)
    throw usage(name);
}

function parseHash(value, name) {
  if (typeof value !== 'string' || !/^[0-9a-fA-F]{64}$/.test(value)) {
    throw new RPCError(E.INVALID_PARAMETER,
      `${name} must be of length 64 (not ${String(value).length}, for '${value}')`);
  }
  return revHex(value.toLowerCase());
}

function parseHex(value) {
  if (typeof value !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(value))
    throw new RPCError(E.DESERIALIZATION, 'argument must be hexadecimal string');
  return Buffer.from(value, 'hex');
}

function parseTx(value) {
  try {
    return TX.fromRaw(parseHex(value));
  } catch (e) {
    throw new RPCError(E.DESERIALIZATION,
      'TX decode failed. Make sure the tx has at least one input.');
  }
}

function parseUint(value, name) {
  if (!Number.isInteger(value) || value < 0)
    throw new RPCError(E.TYPE, `JSON value of type ${typeof value} for ${name} is not an integer`);
  return value;
}

function parseVerbosity(value, fallback) {
  if (value == null)
    return fallback;
  if (typeof value === 'boolean')
    return value ? 1 : 0;
  const n = parseUint(value, 'verbosity');
  return Math.min(n, 2);
}

function difficulty(bits) {
  let shift = (bits >>> 24) & 0xff;
  let diff = 0x0000ffff / (bits & 0x00ffffff);
  while (shift < 29) {
    diff *= 256;
    shift++;
  }
  while (shift > 29) {
    diff /= 256;
    shift--;
  }
  return diff;
}

/*
 * Process lifetime
 */

let closing = false;

async function shutdown(node, code) {
  if (closing)
    return;
  closing = true;
  try {
    await node.close();
  } catch (e) {
    console.error(e);
    code = code || 1;
  }
  process.exit(code);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  patchLeveldown();
  patchVerify();
  patchNetwork(opts);
  patchDeployments();
  patchPolicy();
  patchHttp(opts);

  const FullNode = require('bcoin/lib/node/fullnode');
  const node = new FullNode({
    network: 'regtest',
    prefix: opts.datadir,
    memory: false,
    workers: false,
    logFile: true,
    logConsole: false,
    logLevel: opts.loglevel,
    indexTX: true,
    checkpoints: false,
    host: '127.0.0.1',
    port: opts.port,
    listen: true,
    httpHost: '127.0.0.1',
    httpPort: opts.rpcport,
    apiKey: opts.rpcpassword,
    requireStandard: true,
    rejectAbsurdFees: false,
    replaceByFee: true,
    limitFree: false
  });
  // FullNode passes no option for these: Core has neither priority nor free relay.
  node.mempool.options.relayPriority = false;
  node.mempool.options.limitFree = false;
  new CoreBridge(node).install();

  node.on('error', err => console.error(err.stack || err));
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'])
    process.on(signal, () => shutdown(node, 0));
  if (opts.stdinWatch) {
    // The parent holds our stdin: when it dies, so do we.
    process.stdin.on('end', () => shutdown(node, 0));
    process.stdin.on('error', () => shutdown(node, 0));
    process.stdin.resume();
  }

  await node.ensure();
  await node.open();
  await node.connect();
  node.startSync();
  console.log(`bcoin ${pkg.version} regtest ready: rpc 127.0.0.1:${opts.rpcport} `
    + `p2p ${opts.port} datadir ${opts.datadir}`);
}

main().catch((err) => {
  console.error(err.stack || err);
  process.exit(1);
});
