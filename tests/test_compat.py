"""The interpreter's own test.test_socketserver passes against sockserve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parent / "compat" / "stdlib_suite.py"


def test_stdlib_regression_suite_shows_no_new_failure() -> None:
    proc = subprocess.run([sys.executable, str(SUITE)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: no failure that the stdlib itself does not have" in proc.stdout
