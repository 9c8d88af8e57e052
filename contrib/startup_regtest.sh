#!/usr/bin/env bash
# Regtest playground, as Core Lightning's contrib/startup_regtest.sh offers it.
#
#   . contrib/startup_regtest.sh     # defines the functions below (source it)
#   start_ln [N]                     # a regtest chain and N lightningd nodes (default 2)
#   fund_nodes                       # mine a mature coinbase to each node's wallet
#   l1-cli getinfo; l2-cli ...       # lightning-cli for each node
#   bt-cli getblockchaininfo         # the chain's RPC (Bitcoin Core's bitcoind, else bcoin)
#   stop_ln                          # stop everything
#
# Everything lives under $LIGHTNING_REGTEST_DIR (default /tmp/lightning-regtest).

REGTEST_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIGHTNING_REGTEST_DIR="${LIGHTNING_REGTEST_DIR:-/tmp/lightning-regtest}"
REGTEST_PY="$REGTEST_REPO/.venv/bin/python"
[ -x "$REGTEST_PY" ] || REGTEST_PY=python3

bt-cli() {
	(cd "$REGTEST_REPO" && "$REGTEST_PY" -m contrib.regtest_node rpc \
		--datadir="$LIGHTNING_REGTEST_DIR/chain" "$@")
}

start_ln() {
	local nodes="${1:-2}"
	mkdir -p "$LIGHTNING_REGTEST_DIR"
	local chain_opts
	chain_opts=$(cd "$REGTEST_REPO" && "$REGTEST_PY" -m contrib.regtest_node start \
		--datadir="$LIGHTNING_REGTEST_DIR/chain") || return 1
	echo "$nodes" > "$LIGHTNING_REGTEST_DIR/nodes"
	for i in $(seq 1 "$nodes"); do
		local dir="$LIGHTNING_REGTEST_DIR/l$i"
		mkdir -p "$dir"
		# shellcheck disable=SC2086
		"$REGTEST_REPO/lightningd/lightningd" --lightning-dir="$dir" --network=regtest \
			--addr="127.0.0.1:$((7170 + i))" --alias="l$i" --log-file=log --log-level=debug \
			--daemon --developer --dev-bitcoind-poll=1 $chain_opts || return 1
		# shellcheck disable=SC2139
		alias "l$i-cli"="$REGTEST_REPO/cli/lightning-cli --lightning-dir=$dir --network=regtest"
		# shellcheck disable=SC2139
		alias "l$i-log"="less $dir/regtest/log"
	done
	for i in $(seq 1 "$nodes"); do
		until [ -S "$LIGHTNING_REGTEST_DIR/l$i/regtest/lightning-rpc" ]; do sleep 0.1; done
	done
	echo "Started a regtest chain and $nodes nodes in $LIGHTNING_REGTEST_DIR."
	echo "Commands: l1-cli, l2-cli, ... (lightning-cli), bt-cli (chain RPC), fund_nodes, stop_ln"
	echo "Connect:  l1-cli connect \$(l2-cli getinfo | jq -r .id)@127.0.0.1:7172"
}

fund_nodes() {
	local nodes
	nodes=$(cat "$LIGHTNING_REGTEST_DIR/nodes")
	for i in $(seq 1 "$nodes"); do
		local addr
		addr=$("$REGTEST_REPO/cli/lightning-cli" --lightning-dir="$LIGHTNING_REGTEST_DIR/l$i" \
			--network=regtest newaddr | "$REGTEST_PY" -c 'import json,sys; print(json.load(sys.stdin)["bech32"])')
		bt-cli generatetoaddress 1 "$addr" > /dev/null
	done
	# Coinbases mature after 100 more blocks: mine them to the last node.
	bt-cli generatetoaddress 100 "$addr" > /dev/null
	echo "Each node's wallet holds a mature coinbase."
}

stop_ln() {
	local nodes
	nodes=$(cat "$LIGHTNING_REGTEST_DIR/nodes" 2>/dev/null || echo 0)
	for i in $(seq 1 "$nodes"); do
		"$REGTEST_REPO/cli/lightning-cli" --lightning-dir="$LIGHTNING_REGTEST_DIR/l$i" \
			--network=regtest stop > /dev/null 2>&1
		unalias "l$i-cli" "l$i-log" 2> /dev/null
	done
	for i in $(seq 1 "$nodes"); do
		while [ -e "$LIGHTNING_REGTEST_DIR/l$i/lightningd-regtest.pid" ]; do sleep 0.1; done
	done
	(cd "$REGTEST_REPO" && "$REGTEST_PY" -m contrib.regtest_node stop \
		--datadir="$LIGHTNING_REGTEST_DIR/chain")
	echo "Stopped."
}
