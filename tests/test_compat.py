"""The compatibility runner: the stdlib's own suites against sockserve.

The full run (five suites on every interpreter, about half a minute each) is
scripts/test's job. Here: test_socketserver end to end on this interpreter,
and the runner's own promises: it compares per test id, it stops loudly when
the stdlib servers did not pick up sockserve, and it names a test that hangs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .compat import stdlib_suite
from .compat.stdlib_suite import NOT_APPLICABLE, OK_LINE, SUITES, Run, compare, report

SUITE = Path(stdlib_suite.__file__).resolve()


def _run(*args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=SUITE.parent
    )


def test_stdlib_socketserver_suite_shows_no_new_failure() -> None:
    proc = _run(str(SUITE), "--suite", "test_socketserver")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert OK_LINE in proc.stdout


def test_a_server_module_imported_before_the_switch_stops_the_run() -> None:
    # http.server imported first would keep the stdlib's socketserver for good.
    script = f"""
        import http.server, runpy, sys
        sys.argv = [{str(SUITE)!r}, "--child", "sockserve", "--suite", "test_wsgiref", "--report", "unused"]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """
    proc = _run("-c", textwrap.dedent(script))
    assert proc.returncode != 0
    assert "imported before the switch" in proc.stderr
    assert "http.server" in proc.stderr


def test_a_module_holding_the_stdlib_socketserver_fails_the_wiring_check() -> None:
    script = f"""
        import runpy, socketserver, sys
        import sockserve
        sys.modules["socketserver"] = sockserve
        runner = runpy.run_path({str(SUITE)!r})
        runner["_check_wiring"]("sockserve")
    """
    proc = _run("-c", textwrap.dedent(script))
    assert proc.returncode != 0
    assert "did not pick up sockserve" in proc.stderr
    assert "__main__.socketserver is <module 'socketserver'" in proc.stderr


def test_a_hanging_test_is_named_and_the_run_fails() -> None:
    # This test waits about 3 s in the stdlib itself; a 0.5 s limit makes it "hang".
    test_id = "test.test_xmlrpc.MultiPathServerTestCase.test_path3"
    proc = _run(str(SUITE), "--only", test_id, "--test-timeout", "0.5")
    assert proc.returncode == 1
    assert f"CRASH: test_xmlrpc against sockserve: exit status 1 during {test_id}" in proc.stdout
    assert "a run crashed, so nothing was compared, in test_xmlrpc" in proc.stdout


def _run_with(mode: str, failed: dict[str, str]) -> Run:
    return Run("test_x", mode, tests=5, failed=failed, python="3.x", socketserver="/s/__init__.py")


def test_only_failures_the_stdlib_does_not_have_count() -> None:
    not_applicable = next(iter(NOT_APPLICABLE))
    baseline = _run_with("stdlib", {"test.test_x.A.test_flaky": "tb0"})
    ours = _run_with(
        "sockserve",
        {
            "test.test_x.A.test_flaky": "tb0",
            f"{not_applicable} (case=1)": "tb1",  # a subTest of a listed test
            "test.test_x.B.test_one": "same",
            "test.test_x.B.test_two": "same",
        },
    )
    verdict = compare("test_x", baseline, ours)
    assert verdict.new == ["test.test_x.B.test_one", "test.test_x.B.test_two"]
    assert verdict.not_applicable == [f"{not_applicable} (case=1)"]
    assert not verdict.ok
    lines = report([verdict], 1.0)
    assert "  fails on the stdlib too (the interpreter's business): test.test_x.A.test_flaky" in lines
    assert sum("NEW FAILURE" in line for line in lines) == 2
    assert sum(line.strip() == "same" for line in lines) == 1  # one traceback for the two tests
    assert lines[-1].startswith("FAILED")


def test_a_crashed_run_is_never_a_pass() -> None:
    verdict = compare("test_x", _run_with("stdlib", {}), Run("test_x", "sockserve", crash="exit status -9"))
    assert not verdict.ok
    assert report([verdict], 1.0)[-1].startswith("FAILED")


@pytest.mark.parametrize("test_id", sorted(NOT_APPLICABLE))
def test_each_not_applicable_entry_names_a_suite_and_says_why(test_id: str) -> None:
    assert test_id.split(".")[1] in SUITES
    assert len(NOT_APPLICABLE[test_id]) > 80
