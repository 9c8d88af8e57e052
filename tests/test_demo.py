"""The README's first command runs contrib/regtest_demo.py: keep it working."""

import subprocess
import sys
from pathlib import Path


def test_regtest_demo_opens_a_channel():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "contrib.regtest_demo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"direction": "out"' in out.stdout
    assert out.stdout.count(": CHANNELD_NORMAL short_channel_id ") == 2
    assert "to_us 500000000msat of 500000000msat" in out.stdout
