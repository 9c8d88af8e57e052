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
    assert '"direction": "out"' in out.stdout
    assert '"connected": true' in out.stdout
    assert out.stdout.count("lightning-cli stop -> Shutdown complete") == 2
