#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian machine, only where it is missing:
# make, and Python's venv module. Everything else comes from PyPI through `make setup`.
set -euo pipefail
need=()
command -v make >/dev/null 2>&1 || need+=(make)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${need[@]}"
fi
