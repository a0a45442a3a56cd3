"""Run the interpreter's own tests of socketserver, and of the stdlib servers built on it, against sockserve.

Usage (any Python 3.10+, nothing to install)::

    python tests/compat/stdlib_suite.py [--src DIR] [--suite NAME ...] [--only TEST_ID ...] [--jobs N]

Each suite (by default all of SUITES) runs twice, each time in a fresh
subprocess with its own temporary working directory: once against the stdlib's
``socketserver`` (the baseline: what fails there is the interpreter's
business), once with ``sys.modules["socketserver"]`` pointing at sockserve,
set before ``http.server``, ``xmlrpc.server`` or ``wsgiref.simple_server`` is
imported, so that their servers and handlers are built on sockserve. The child
checks that they were, and stops with an error if not.

Failures are compared per test id. The exit status is 0 when sockserve fails
nothing that the stdlib passes, apart from the tests listed in NOT_APPLICABLE,
each with the reason it checks an internal of the stdlib rather than
behaviour. The suites are imported from the interpreter's own ``test``
package, never copied.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import faulthandler
import importlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
import unittest
from dataclasses import dataclass, field
from pathlib import Path

SUITES = ("test_socketserver", "test_httpservers", "test_xmlrpc", "test_docxmlrpc", "test_wsgiref")
# Started longest first, so that parallel runs end together: test_xmlrpc takes
# about 30 s in the stdlib itself (most of it waiting), the others a few.
START_ORDER = ("test_xmlrpc", "test_httpservers", "test_docxmlrpc", "test_socketserver", "test_wsgiref")
MODES = ("stdlib", "sockserve")

# The stdlib modules that import socketserver when they are imported, each
# with a server class that must come out built on sockserve.
SERVER_MODULES = {
    "http.server": "HTTPServer",
    "xmlrpc.server": "SimpleXMLRPCServer",
    "wsgiref.simple_server": "WSGIServer",
}

# Only for a test that checks an internal of the stdlib, never to hide a
# difference in behaviour. A subTest's failure is looked up by its test's id.
NOT_APPLICABLE = {
    "test.test_socketserver.MiscTestCase.test_all": (
        "It collects the public objects whose __module__ is the string 'socketserver' and compares "
        "them with __all__. sockserve's classes are defined in sockserve's own modules, so none "
        "carries that module name and the expected list comes out empty. It checks where classes "
        "were defined, not what they do; tests/test_api.py checks the property that matters: "
        "every name in the running stdlib's socketserver.__all__ is in sockserve.__all__."
    ),
}

OK_LINE = "OK: no failure that the stdlib itself does not have"


# --- the child: one suite, one mode, one fresh interpreter ------------------


def _check_wiring(mode: str) -> str:
    """Fail loudly unless every server module in this process uses the socketserver of `mode`.

    Returns the file of the socketserver in use."""
    for name in SERVER_MODULES:
        importlib.import_module(name)
    active = sys.modules["socketserver"]
    stdlib_file = os.path.realpath(os.path.join(sysconfig.get_paths()["stdlib"], "socketserver.py"))
    if mode == "stdlib":
        if os.path.realpath(active.__file__ or "") != stdlib_file:
            raise SystemExit(f"baseline: socketserver is {active.__file__}, not the stdlib's {stdlib_file}")
        return stdlib_file
    import sockserve

    problems = []
    if active is not sockserve:
        problems.append(f"sys.modules['socketserver'] is {active!r}")
    for name, server_class in SERVER_MODULES.items():
        if not issubclass(getattr(sys.modules[name], server_class), sockserve.TCPServer):
            problems.append(f"{name}.{server_class} is not built on sockserve.TCPServer")
    for name, module in list(sys.modules.items()):
        if os.path.realpath(getattr(module, "__file__", None) or "") == stdlib_file:
            problems.append(f"the stdlib's socketserver is loaded as {name!r}")
        imported = getattr(module, "socketserver", None)
        if isinstance(imported, types.ModuleType) and imported is not sockserve:
            problems.append(f"{name}.socketserver is {imported!r}")
    if problems:
        raise SystemExit("the suite did not pick up sockserve:\n  " + "\n  ".join(problems))
    return sockserve.__file__ or "?"


class _WatchedResult(unittest.TextTestResult):
    """Notes which test is running, and ends the process (with every thread's stack) if one hangs."""

    current_path = ""
    test_timeout = 120.0

    def startTest(self, test: unittest.TestCase) -> None:
        Path(self.current_path).write_text(test.id())
        faulthandler.dump_traceback_later(self.test_timeout, exit=True)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        faulthandler.cancel_dump_traceback_later()


def run_child(mode: str, suite: str, report_path: str, only: list[str], test_timeout: float) -> None:
    preloaded = sorted({"socketserver", *SERVER_MODULES} & set(sys.modules))
    if preloaded:
        raise SystemExit(f"imported before the switch, so they would keep the stdlib's socketserver: {preloaded}")
    if mode == "sockserve":
        import sockserve

        sys.modules["socketserver"] = sockserve
    import test.support

    test.support.verbose = False  # the suites print progress to stdout when verbose
    module = importlib.import_module(f"test.{suite}")
    socketserver_file = _check_wiring(mode)
    loader = unittest.defaultTestLoader
    tests = loader.loadTestsFromNames(only) if only else loader.loadTestsFromModule(module)
    _WatchedResult.current_path = report_path + ".current"
    _WatchedResult.test_timeout = test_timeout
    started = time.monotonic()
    with open(os.devnull, "w") as devnull:
        result = unittest.TextTestRunner(stream=devnull, resultclass=_WatchedResult).run(tests)
    failed = {test.id(): text for test, text in result.failures + result.errors}
    failed.update((test.id(), "unexpected success") for test in result.unexpectedSuccesses)
    report = {
        "python": sys.version.split()[0],
        "socketserver": socketserver_file,
        "tests": tests.countTestCases(),  # testsRun leaves skipped tests out on some versions (3.12.1)
        "failed": failed,
        "skipped": len(result.skipped),
        "env_altered": bool(getattr(test.support, "environment_altered", False)),
        "seconds": time.monotonic() - started,
    }
    Path(report_path).write_text(json.dumps(report))


# --- the parent: run the children, compare, report --------------------------


@dataclass
class Run:
    """What one child reported, or how it died."""

    suite: str
    mode: str
    tests: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    env_altered: bool = False
    seconds: float = 0.0
    python: str = ""
    socketserver: str = ""
    crash: str = ""  # set when the child wrote no report


def _run_in_subprocess(suite: str, mode: str, src: str | None, only: list[str], timeouts: tuple[float, float]) -> Run:
    env = dict(os.environ)
    if mode == "sockserve" and src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    timeout, test_timeout = timeouts
    with tempfile.TemporaryDirectory(prefix=f"compat-{suite}-{mode}-") as workdir:
        report_path = os.path.join(workdir, "report.json")
        command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--suite", suite]
        command += ["--report", report_path, "--test-timeout", str(test_timeout), *(["--only", *only] if only else [])]
        try:
            proc = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return Run(suite, mode, crash=f"still running after {timeout:.0f} s; killed")
        if proc.returncode == 0 and os.path.exists(report_path):
            return Run(suite, mode, **json.loads(Path(report_path).read_text()))
        current = Path(report_path + ".current")
        during = f" during {current.read_text()}" if current.exists() else ""
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        return Run(suite, mode, crash=f"exit status {proc.returncode}{during}:\n{tail}")


def _suite_of(test_id: str) -> str:
    """'test.test_xmlrpc.SimpleServerTestCase.test_simple1' -> 'test_xmlrpc'."""
    return test_id.split(".")[1] if test_id.startswith("test.") else test_id


def _base_id(test_id: str) -> str:
    """The test a subTest's id belongs to: 'mod.Class.test (x=1)' -> 'mod.Class.test'."""
    return test_id.split(" ", 1)[0]


@dataclass
class Verdict:
    """One suite's two runs, compared."""

    suite: str
    baseline: Run
    ours: Run
    new: list[str] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.new or self.baseline.crash or self.ours.crash)


def compare(suite: str, baseline: Run, ours: Run) -> Verdict:
    verdict = Verdict(suite, baseline, ours)
    for test_id in sorted(ours.failed):
        if test_id in baseline.failed:
            continue
        if _base_id(test_id) in NOT_APPLICABLE:
            verdict.not_applicable.append(test_id)
        else:
            verdict.new.append(test_id)
    return verdict


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def _table(verdicts: list[Verdict]) -> list[str]:
    columns = ("tests", "stdlib fails", "sockserve fails", "new", "not applicable", "skipped", "seconds")
    lines = [f"  {'suite':<18}" + "".join(f" {c:>{max(len(c), 5)}}" for c in columns)]
    for v in verdicts:
        if v.baseline.crash or v.ours.crash:
            lines.append(f"  {v.suite:<18} CRASHED")
            continue
        counts = (v.ours.tests, len(v.baseline.failed), len(v.ours.failed), len(v.new), len(v.not_applicable))
        cells = [*map(str, counts), str(v.ours.skipped), f"{max(v.baseline.seconds, v.ours.seconds):.1f}"]
        lines.append(
            f"  {v.suite:<18}" + "".join(f" {cell:>{max(len(c), 5)}}" for c, cell in zip(columns, cells, strict=True))
        )
    return lines


def report(verdicts: list[Verdict], seconds: float) -> list[str]:
    ours = next((v.ours for v in verdicts if not v.ours.crash), None)
    python = ours.python if ours else sys.version.split()[0]
    lines = [f"Python {python} ({sys.executable}): the stdlib's server suites against sockserve"]
    if ours:
        lines.append(f"  sockserve: {ours.socketserver}")
    lines += _table(verdicts)
    for v in verdicts:
        for run in (v.baseline, v.ours):
            if run.crash:
                first, _, rest = run.crash.partition("\n")
                lines += [f"  CRASH: {v.suite} against {run.mode}: {first}", *([_indent(rest)] if rest else [])]
        if v.baseline.tests and v.ours.tests and v.baseline.tests != v.ours.tests:
            lines.append(f"  note: {v.suite} has {v.baseline.tests} tests on the stdlib, {v.ours.tests} on sockserve")
        lines += [f"  fails on the stdlib too (the interpreter's business): {t}" for t in sorted(v.baseline.failed)]
        if v.ours.env_altered and not v.baseline.env_altered:
            lines.append(f"  note: {v.suite} left threads or processes behind on sockserve, not on the stdlib")
        for test_id in v.not_applicable:
            lines += [f"  not applicable: {test_id}", f"    why: {NOT_APPLICABLE[_base_id(test_id)]}"]
        # Tests that fail the same way (often in a shared setUp) are listed above one traceback.
        by_traceback: dict[str, list[str]] = {}
        for test_id in v.new:
            by_traceback.setdefault(v.ours.failed[test_id], []).append(test_id)
        for traceback, test_ids in by_traceback.items():
            lines += [f"  NEW FAILURE: {test_id}" for test_id in test_ids]
            lines.append(_indent(traceback))
    failing = [v.suite for v in verdicts if v.new]
    crashed = [v.suite for v in verdicts if v.baseline.crash or v.ours.crash]
    problems = [f"sockserve fails where the stdlib passes in {', '.join(failing)}"] if failing else []
    problems += [f"a run crashed, so nothing was compared, in {', '.join(crashed)}"] if crashed else []
    lines.append(f"FAILED ({seconds:.0f} s): {'; '.join(problems)}" if problems else f"{OK_LINE} ({seconds:.0f} s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="directory to put first on PYTHONPATH for sockserve (e.g. src)")
    parser.add_argument("--suite", action="append", choices=SUITES, help="run this suite only (repeatable)")
    parser.add_argument("--only", nargs="+", default=[], metavar="TEST_ID", help="run these tests only")
    parser.add_argument("--jobs", type=int, default=4, help="subprocesses at a time (default 4: most of it waits)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a whole suite may take")
    parser.add_argument("--test-timeout", type=float, default=120.0, help="seconds one test may take")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    wanted = set(args.suite or ()) | {_suite_of(test_id) for test_id in args.only}
    if not wanted <= set(SUITES):
        parser.error(f"--only names a test outside {', '.join(SUITES)}")
    suites = [s for s in SUITES if s in (wanted or SUITES)]
    if args.child:
        run_child(args.child, suites[0], args.report, args.only, args.test_timeout)
        return 0

    src = os.path.abspath(args.src) if args.src else None
    timeouts = (args.timeout, args.test_timeout)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            (suite, mode): pool.submit(
                _run_in_subprocess, suite, mode, src, [t for t in args.only if _suite_of(t) == suite], timeouts
            )
            for suite in sorted(suites, key=START_ORDER.index)
            for mode in MODES
        }
    runs = {key: future.result() for key, future in futures.items()}
    verdicts = [compare(s, runs[s, "stdlib"], runs[s, "sockserve"]) for s in suites]
    print("\n".join(report(verdicts, time.monotonic() - started)), flush=True)
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
