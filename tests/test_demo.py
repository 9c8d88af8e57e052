"""The README's first command runs contrib/demo_connect.py: keep it working."""

import subprocess
import sys
from pathlib import Path


def test_demo_connect_runs():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "contrib.demo_connect"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "bob authenticated alice's node id" in out.stdout
    assert "static_remotekey/even" in out.stdout
    assert "ping -> pong with 16 bytes" in out.stdout
