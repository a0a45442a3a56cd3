"""Run the interpreter's own tests of socketserver, and of the stdlib servers built on it, against sockserve.

Usage (any Python 3.10+, nothing to install)::

    python tests/compat/stdlib_suite.py [--src DIR] [--suite NAME ...] [--only TEST_ID ...] [--jobs N]

Each suite (by default all of SUITES) runs twice, each time in a fresh
subprocess with its own temporary working directory: once against the stdlib's
``socketserver`` (the baseline: what fails there is the interpreter's
business), once with ``sys.modules["socketserver"]`` pointing at sockserve,
set before ``http.server``, ``xmlrpc.server`` or ``wsgiref.simple_server`` is
imported, so that their servers and handlers are built on sockserve. The child
(suite_child.py) checks that they were, and stops with an error if not.

A test that hangs (no result after --test-timeout seconds) or kills its
process counts as failed, with every thread's stack; the run goes on with the
tests after it in a new process, so one hang hides nothing else.

Failures are compared per test id. The exit status is 0 when sockserve fails
nothing that the stdlib passes, apart from the tests listed in NOT_APPLICABLE,
each with the reason it checks an internal of the stdlib rather than
behaviour. The suites are imported from the interpreter's own ``test``
package, never copied.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUITES = ("test_socketserver", "test_httpservers", "test_xmlrpc", "test_docxmlrpc", "test_wsgiref")
# Started longest first, so that parallel runs end together: test_xmlrpc takes
# about 30 s in the stdlib itself (most of it waiting), the others a few.
START_ORDER = ("test_xmlrpc", "test_httpservers", "test_docxmlrpc", "test_socketserver", "test_wsgiref")
MODES = ("stdlib", "sockserve")
CHILD = Path(__file__).resolve().parent / "suite_child.py"

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

# A run that hangs this often gives up on the tests left, so that a broken
# server cannot hold CI for a test timeout per test.
MAX_HANGS = 8


@dataclass
class Run:
    """The outcome of one suite in one mode, over one or more child processes."""

    suite: str
    mode: str
    tests: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    hung: list[str] = field(default_factory=list)  # tests that ended their process
    started: set[str] = field(default_factory=set)  # by any of the run's children: never run twice
    env_altered: bool = False
    seconds: float = 0.0
    python: str = ""
    socketserver: str = ""
    crash: str = ""  # set when tests were left unrun: nothing to compare them by


def _stderr_tail(stderr: str, lines: int = 60) -> str:
    """The end of a dead child's stderr, from faulthandler's dump when there is one."""
    start = stderr.rfind("Timeout (")
    text = stderr[start:] if start >= 0 else stderr
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_child(run: Run, env: dict[str, str], only: list[str], timeouts: tuple[float, float]) -> list[str]:
    """Run one child and fold its events into `run`. Returns the tests still to run when a test
    hung or ended the process; none when the child finished, or died outside any test (then
    `run.crash` says how)."""
    timeout, test_timeout = timeouts
    with tempfile.TemporaryDirectory(prefix=f"compat-{run.suite}-{run.mode}-") as workdir:
        events_path = os.path.join(workdir, "events.jsonl")
        command = [sys.executable, str(CHILD), run.mode, run.suite, events_path, str(test_timeout), *only]
        started = time.monotonic()
        try:
            proc = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
            clean_exit, status, stderr = proc.returncode == 0, f"exit status {proc.returncode}", proc.stderr
        except subprocess.TimeoutExpired as exc:
            clean_exit, status = False, f"still running after {timeout:.0f} s, killed"
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        run.seconds += time.monotonic() - started
        events_file = Path(events_path)
        events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.exists() else []
    plan: list[str] = []
    current = None
    finished = False
    for event in events:
        if "plan" in event:
            plan = event["plan"]
            run.python, run.socketserver = event["python"], event["socketserver"]
            run.tests = run.tests or len(plan)  # a resumed child plans only the rest
        elif "start" in event:
            current = event["start"]
            run.started.add(current)
        elif "stop" in event:
            current = None
        elif "fail" in event:
            run.failed[event["fail"]] = event["traceback"]
        elif "skip" in event:
            run.skipped += 1
        elif "end" in event:
            run.env_altered |= event["env_altered"]
            finished = clean_exit
    if finished:
        return []
    if current is None:  # died outside any test: at import, in the wiring check, in a module fixture
        run.crash = f"{status} before any test ran" if not plan else f"{status} between tests"
        run.crash += ":\n" + _stderr_tail(stderr)
        return []
    run.hung.append(current)
    what = f"no result after {test_timeout:.0f} s" if "Timeout (" in stderr else "the process died"
    run.failed[current] = f"{what} ({status}); its output ends:\n{_stderr_tail(stderr)}"
    return [test_id for test_id in plan if test_id not in run.started]


def run_suite(
    suite: str, mode: str, src: str | None, only: list[str], timeouts: tuple[float, float], max_hangs: int = MAX_HANGS
) -> Run:
    """Run one suite in one mode: in a fresh child, and after a hang in another
    for the tests left, until every test has run or `max_hangs` tests hung."""
    env = dict(os.environ)
    if mode == "sockserve" and src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    run = Run(suite, mode)
    left = _run_child(run, env, only, timeouts)
    while left and len(run.hung) < max_hangs:
        left = _run_child(run, env, left, timeouts)
    if left:
        run.crash = f"gave up after {len(run.hung)} hung tests, with {len(left)} left unrun"
    return run


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
        counts = (v.ours.tests, len(v.baseline.failed), len(v.ours.failed), len(v.new), len(v.not_applicable))
        cells = [*map(str, counts), str(v.ours.skipped), f"{max(v.baseline.seconds, v.ours.seconds):.1f}"]
        row = "".join(f" {cell:>{max(len(c), 5)}}" for c, cell in zip(columns, cells, strict=True))
        lines.append(f"  {v.suite:<18}{row}" + ("  INCOMPLETE" if v.baseline.crash or v.ours.crash else ""))
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
        lines += [f"  hung or died on sockserve: {t}" for t in v.ours.hung if t in v.new]
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
    problems += [f"tests were left unrun, so not compared, in {', '.join(crashed)}"] if crashed else []
    lines.append(f"FAILED ({seconds:.0f} s): {'; '.join(problems)}" if problems else f"{OK_LINE} ({seconds:.0f} s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="directory to put first on PYTHONPATH for sockserve (e.g. src)")
    parser.add_argument("--suite", action="append", choices=SUITES, help="run this suite only (repeatable)")
    parser.add_argument("--only", nargs="+", default=[], metavar="TEST_ID", help="run these tests only")
    parser.add_argument("--jobs", type=int, default=4, help="subprocesses at a time (default 4: most of it waits)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one child process may take")
    parser.add_argument("--test-timeout", type=float, default=30.0, help="seconds one test may take (default 30)")
    parser.add_argument("--max-hangs", type=int, default=MAX_HANGS, help="hung tests before a run gives up")
    args = parser.parse_args(argv)
    wanted = set(args.suite or ()) | {_suite_of(test_id) for test_id in args.only}
    if not wanted <= set(SUITES):
        parser.error(f"--only names a test outside {', '.join(SUITES)}")
    suites = [s for s in SUITES if s in (wanted or SUITES)]

    src = os.path.abspath(args.src) if args.src else None
    timeouts = (args.timeout, args.test_timeout)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            (suite, mode): pool.submit(
                run_suite, suite, mode, src, [t for t in args.only if _suite_of(t) == suite], timeouts, args.max_hangs
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
