#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian machine, only where it is missing:
# make, Python's venv module, and Node.js/npm (for the bcoin regtest node).
# Everything else comes from PyPI through `make setup`.
set -euo pipefail
need=()
command -v make >/dev/null 2>&1 || need+=(make)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The regtest chain falls back to bcoin from npm when Bitcoin Core's bitcoind is absent.
command -v bitcoind >/dev/null 2>&1 || command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${need[@]}"
fi
