"""examples/async_echo.py runs as a user runs it, on each loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "async_echo.py"


def test_async_echo_example(loop_kind: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--loop", loop_kind], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines() == [
        "Sending : 'Hello, world'",
        "Received: 'Hello, world'",
        "Sending : 'Hello again'",
        "Received: 'Hello again'",
        "Stopped : every connection finished",
    ]
