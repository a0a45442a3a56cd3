"""The compatibility runner: the stdlib's own suites against sockserve.

The full run (five suites on every interpreter, about half a minute each) is
scripts/test's job. Here: test_socketserver end to end on this interpreter,
and the runner's own promises: it compares per test id, it stops loudly when
the stdlib servers did not pick up sockserve, and a test that hangs is named
and fails without hiding the tests after it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .compat import stdlib_suite
from .compat.stdlib_suite import CHILD, NOT_APPLICABLE, OK_LINE, SUITES, Run, compare, report

SUITE = Path(stdlib_suite.__file__).resolve()
# MultiPathServerTestCase's tests wait about 3 s each in the stdlib itself:
# with a limit of half a second, they hang.
SLOW = [
    f"test.test_xmlrpc.MultiPathServerTestCase.{name}"
    for name in ("test_path3", "test_invalid_path", "test_empty_path", "test_root_path")
]


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
        sys.argv = [{str(CHILD)!r}, "sockserve", "test_wsgiref", "/dev/null", "5"]
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
        child = runpy.run_path({str(CHILD)!r})
        child["check_wiring"]("sockserve")
    """
    proc = _run("-c", textwrap.dedent(script))
    assert proc.returncode != 0
    assert "did not pick up sockserve" in proc.stderr
    assert "__main__.socketserver is <module 'socketserver'" in proc.stderr


def test_a_hanging_test_fails_and_the_tests_after_it_still_run() -> None:
    proc = _run(str(SUITE), "--only", *SLOW[:2], "--test-timeout", "0.5")
    # Both hang on the stdlib as well, so they are the interpreter's business.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for test_id in SLOW[:2]:
        assert f"fails on the stdlib too (the interpreter's business): {test_id}" in proc.stdout


def test_a_run_that_keeps_hanging_gives_up_and_fails() -> None:
    proc = _run(str(SUITE), "--only", *SLOW, "--test-timeout", "0.5", "--max-hangs", "3")
    assert proc.returncode == 1
    assert "CRASH: test_xmlrpc against sockserve: gave up after 3 hung tests, with 1 left unrun" in proc.stdout
    assert "tests were left unrun, so not compared, in test_xmlrpc" in proc.stdout


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
    verdict = compare(
        "test_x", _run_with("stdlib", {}), Run("test_x", "sockserve", crash="exit status -9 before any test ran")
    )
    assert not verdict.ok
    assert report([verdict], 1.0)[-1].startswith("FAILED")


@pytest.mark.parametrize("test_id", sorted(NOT_APPLICABLE))
def test_each_not_applicable_entry_names_a_suite_and_says_why(test_id: str) -> None:
    assert test_id.split(".")[1] in SUITES
    assert len(NOT_APPLICABLE[test_id]) > 80
