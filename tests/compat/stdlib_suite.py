"""Run the interpreter's own ``test.test_socketserver`` against sockserve.

Usage (any Python 3.10+, nothing to install)::

    python tests/compat/stdlib_suite.py [--src DIR]

The suite runs twice, each time in a fresh subprocess: once against the
stdlib's ``socketserver`` (the baseline: what fails there is the interpreter's
business), once with ``sys.modules["socketserver"]`` pointing at sockserve.
The exit status is 0 when sockserve fails nothing that the stdlib passes,
apart from the tests listed in NOT_APPLICABLE, each with the reason it checks
an internal of the stdlib rather than behaviour. The suite is imported from
the interpreter's own ``test`` package, never copied.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import unittest

NOT_APPLICABLE = {
    "test.test_socketserver.MiscTestCase.test_all": (
        "It collects the public objects whose __module__ is the string 'socketserver' and compares "
        "them with __all__. sockserve's classes are defined in sockserve's own modules, so none "
        "carries that module name and the expected list comes out empty. It checks where classes "
        "were defined, not what they do; tests/test_api.py checks the property that matters: "
        "every name in the running stdlib's socketserver.__all__ is in sockserve.__all__."
    ),
}


def _run_suite(mode: str) -> dict[str, object]:
    if mode == "sockserve":
        import sockserve

        sys.modules["socketserver"] = sockserve
    import test.support

    test.support.verbose = False  # the suite prints progress to stdout when verbose
    from test import test_socketserver

    module = sys.modules["socketserver"]
    if mode == "sockserve" and not module.__name__.startswith("sockserve"):
        raise SystemExit("the suite did not pick up sockserve")
    suite = unittest.defaultTestLoader.loadTestsFromModule(test_socketserver)
    stream = io.StringIO()
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    return {
        "python": sys.version.split()[0],
        "mode": mode,
        "module": module.__file__,
        "run": result.testsRun,
        "failed": sorted(test.id() for test, _ in result.failures + result.errors),
        "skipped": sorted(test.id() for test, _ in result.skipped),
        "log": stream.getvalue(),
    }


def _run_in_subprocess(mode: str, src: str | None) -> dict[str, object]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run crashed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="directory to put first on PYTHONPATH (e.g. src)")
    parser.add_argument("--child", choices=["stdlib", "sockserve"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report = _run_suite(args.child)
        print(json.dumps(report))
        return 0

    baseline = _run_in_subprocess("stdlib", None)
    ours = _run_in_subprocess("sockserve", args.src)
    base_failed = set(baseline["failed"])  # type: ignore[arg-type]
    new_failures = [t for t in ours["failed"] if t not in base_failed]  # type: ignore[attr-defined]
    unexplained = [t for t in new_failures if t not in NOT_APPLICABLE]
    print(f"Python {ours['python']}: test.test_socketserver, {ours['run']} tests")
    print(f"  stdlib socketserver: {len(base_failed)} failed, {len(baseline['skipped'])} skipped")  # type: ignore[arg-type]
    print(f"  sockserve ({ours['module']}): {len(ours['failed'])} failed, {len(ours['skipped'])} skipped")  # type: ignore[arg-type]
    for test_id in new_failures:
        reason = NOT_APPLICABLE.get(test_id)
        print(f"  {'not applicable' if reason else 'NEW FAILURE'}: {test_id}")
        if reason:
            print(f"    why: {reason}")
    if unexplained:
        print(ours["log"])
        print(f"FAILED: {len(unexplained)} new failure(s) against the stdlib baseline")
        return 1
    print("OK: no failure that the stdlib itself does not have")
    return 0


if __name__ == "__main__":
    sys.exit(main())
