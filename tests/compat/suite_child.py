"""One run of one stdlib suite, in this fresh interpreter, against the stdlib's socketserver or sockserve.

Started by stdlib_suite.py, never by hand::

    python suite_child.py MODE SUITE EVENTS_FILE TEST_TIMEOUT [TEST_ID ...]

It writes what happens to EVENTS_FILE, one JSON object a line, as it happens:
the plan (every test id it will run), then each test's start, failures, skip
and stop, then the end. So when a test hangs or kills the process, the events
so far survive it, and the runner can name the test and go on with the rest.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import sys
import sysconfig
import time
import types
import unittest
from collections.abc import Iterator
from typing import Any, TextIO

# The stdlib modules that import socketserver when they are imported, each
# with a server class that must come out built on sockserve.
SERVER_MODULES = {
    "http.server": "HTTPServer",
    "xmlrpc.server": "SimpleXMLRPCServer",
    "wsgiref.simple_server": "WSGIServer",
}


def check_wiring(mode: str) -> str:
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


class _EventLog:
    """Appends events to a file, flushed at once, from this process only (a
    test's forked child that returned into unittest must not write)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pid = os.getpid()

    def write(self, **event: Any) -> None:
        if os.getpid() == self._pid:
            self._stream.write(json.dumps(event) + "\n")
            self._stream.flush()


class _LoggingResult(unittest.TextTestResult):
    """Writes each outcome to the event log as it happens, and ends the
    process with every thread's stack if one test outlives `test_timeout`."""

    log: _EventLog
    test_timeout = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reported = 0

    def _flush_failures(self) -> None:
        # Failures come from the test, its subTests, and class or module fixtures
        # (outside any test), so they are collected from the lists, not the hooks.
        found = [(test.id(), text) for test, text in self.failures + self.errors]
        found += [(test.id(), "unexpected success") for test in self.unexpectedSuccesses]
        for test_id, text in found[self._reported :]:
            self.log.write(fail=test_id, traceback=text)
        self._reported = len(found)

    def startTest(self, test: unittest.TestCase) -> None:
        self._flush_failures()
        self.log.write(start=test.id())
        faulthandler.dump_traceback_later(self.test_timeout, exit=True)
        super().startTest(test)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self.log.write(skip=test.id())

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        faulthandler.cancel_dump_traceback_later()
        self._flush_failures()
        self.log.write(stop=test.id())

    def stopTestRun(self) -> None:
        super().stopTestRun()
        self._flush_failures()


def _flatten(tests: unittest.TestSuite | unittest.TestCase) -> Iterator[str]:
    if isinstance(tests, unittest.TestSuite):
        for test in tests:
            yield from _flatten(test)
    else:
        yield tests.id()


def run(mode: str, suite: str, log: _EventLog, test_timeout: float, only: list[str]) -> None:
    preloaded = sorted({"socketserver", *SERVER_MODULES} & set(sys.modules))
    if preloaded:
        raise SystemExit(f"imported before the switch, so they would keep the stdlib's socketserver: {preloaded}")
    if mode == "sockserve":
        import sockserve

        sys.modules["socketserver"] = sockserve
    import test.support

    test.support.verbose = False  # the suites print progress to stdout when verbose
    module = importlib.import_module(f"test.{suite}")
    socketserver_file = check_wiring(mode)
    loader = unittest.defaultTestLoader
    tests = loader.loadTestsFromNames(only) if only else loader.loadTestsFromModule(module)
    log.write(python=sys.version.split()[0], socketserver=socketserver_file, plan=list(_flatten(tests)))
    _LoggingResult.log = log
    _LoggingResult.test_timeout = test_timeout
    started = time.monotonic()
    with open(os.devnull, "w") as devnull:
        unittest.TextTestRunner(stream=devnull, resultclass=_LoggingResult).run(tests)
    env_altered = bool(getattr(test.support, "environment_altered", False))
    log.write(end=True, env_altered=env_altered, seconds=time.monotonic() - started)


def main(argv: list[str]) -> int:
    mode, suite, events_path, test_timeout, *only = argv
    if mode not in ("stdlib", "sockserve"):
        raise SystemExit(f"unknown mode {mode!r}")
    with open(events_path, "a") as stream:
        run(mode, suite, _EventLog(stream), float(test_timeout), only)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
