"""Only hsmd reads hsm_secret; every other process gets keys through messages."""

from __future__ import annotations

import ast
import asyncio
import builtins
import os
from pathlib import Path

from common.chainparams import CHAINS
from common.status import LogLevel
from lightningd.hsm_control import HsmControl
from lightningd.log import NodeLog

ROOT = Path(__file__).resolve().parent.parent
NOT_HSMD = ["common", "wire", "lightningd", "openingd", "gossipd"]
SECRET_MODULES = {"hsmd.hsmd", "hsmd.derive"}


def sources():
    for folder in NOT_HSMD:
        yield from sorted((ROOT / folder).rglob("*.py"))


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_other_process_imports_the_secret_code():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            imported_modules(ast.parse(path.read_text())) & SECRET_MODULES
        )
        for path in sources()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_other_process_opens_hsm_secret():
    """No open()/os.open() outside hsmd names the secret file."""
    offenders = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            is_open = isinstance(node, ast.Call) and "open" in ast.unparse(node.func)
            if is_open and "hsm_secret" in ast.unparse(node):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_master_process_never_opens_the_file(tmp_path, monkeypatch):
    """Start hsmd as lightningd does and watch every open in this (the master's) process."""
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)

    async def main():
        hsm = HsmControl(NodeLog(LogLevel.BROKEN, []))
        info = await hsm.start(str(tmp_path / "hsm_secret"), CHAINS["regtest"].chain_hash)
        await hsm.stop()
        return info

    info = asyncio.run(main())
    monkeypatch.undo()
    assert len(info.node_id) == 33
    assert (tmp_path / "hsm_secret").stat().st_size == 32  # hsmd made and read it...
    assert [p for p in opened if "hsm_secret" in p] == []  # ...and the master never touched it
