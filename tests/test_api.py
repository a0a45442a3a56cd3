"""The public API: one place, a superset of the stdlib's, typed, and listed
in full in each public module's ``__all__``."""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import inspect
import pickle
import pkgutil
import shutil
import socketserver
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

import sockserve

ROOT = Path(__file__).resolve().parent.parent

# The modules a user imports from. Every other module is private (a name
# with a leading underscore somewhere in its path) or listed in NOT_API.
PUBLIC_MODULES = [
    "sockserve",
    "sockserve.aio",
    "sockserve.prefork",
    "sockserve.protocol",
    "sockserve.pytest_plugin",
    "sockserve.testing",
]
NOT_API = {
    "sockserve.cli": "the `sockserve` command; its interface is the command line",
    "sockserve.examples": "programs to read and run (`python -m sockserve.examples.echo`), not to import from",
    "sockserve.protocol.lines": "the module behind sockserve.protocol, which re-exports its API",
    "sockserve.protocol.framers": "the module behind sockserve.protocol, which re-exports its API",
    "sockserve.protocol.proxy": "the module behind sockserve.protocol, which re-exports its main API",
}
# Public-looking names of a public module that are deliberately not in its
# __all__, each with the reason. The test below fails on any other.
_TYPE_CHECKING = {"TYPE_CHECKING": "typing.TYPE_CHECKING without importing typing: for type checkers, not API"}
_PYTEST_HOOKS = {
    "pytest_configure": "a hook pytest calls (registers the markers), not for users to import",
    "pytest_generate_tests": "a hook pytest calls (the markers' parametrization), not for users to import",
}
NOT_EXPORTED: dict[str, dict[str, str]] = {
    "sockserve": _TYPE_CHECKING,
    "sockserve.protocol": _TYPE_CHECKING,
    "sockserve.pytest_plugin": _PYTEST_HOOKS,
}


def test_every_stdlib_name_is_exported() -> None:
    missing = set(socketserver.__all__) - set(sockserve.__all__)
    assert not missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_names_resolve_to_sockserve_objects(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("sockserve"), name


def test_every_public_class_of_the_package_is_exported() -> None:
    exported = {getattr(sockserve, n) for n in sockserve.__all__}
    for module_name in (
        "_base_server",
        "_inet_servers",
        "_unix_servers",
        "_handlers",
        "_combos",
        "_pool_servers",
        "_errors",
    ):
        module = importlib.import_module(f"sockserve.{module_name}")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
                assert obj in exported, f"sockserve.{module_name}.{name} is public but not in sockserve.__all__"


def test_the_stdlib_attributes_exist_with_the_stdlib_defaults() -> None:
    for cls_name in ("TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer"):
        ours, theirs = getattr(sockserve, cls_name), getattr(socketserver, cls_name)
        for attr in ("address_family", "socket_type", "request_queue_size", "allow_reuse_address", "timeout"):
            assert getattr(ours, attr) == getattr(theirs, attr), (cls_name, attr)
    assert sockserve.UDPServer.max_packet_size == socketserver.UDPServer.max_packet_size
    assert sockserve.ForkingMixIn.max_children == socketserver.ForkingMixIn.max_children
    assert sockserve.ForkingMixIn.timeout == socketserver.ForkingMixIn.timeout
    for attr in ("rbufsize", "wbufsize", "timeout", "disable_nagle_algorithm"):
        assert getattr(sockserve.StreamRequestHandler, attr) == getattr(socketserver.StreamRequestHandler, attr)
    for mixin in ("ThreadingMixIn", "ForkingMixIn"):
        assert getattr(sockserve, mixin).block_on_close is True


def test_every_stdlib_method_exists() -> None:
    for name in socketserver.__all__:
        theirs, ours = getattr(socketserver, name), getattr(sockserve, name)
        for attr, value in vars(theirs).items():
            if callable(value) and not attr.startswith("_"):
                assert hasattr(ours, attr), f"{name}.{attr}"


def test_the_package_is_typed() -> None:
    assert importlib.resources.files("sockserve").joinpath("py.typed").is_file()


def test_every_package_directory_is_a_package() -> None:
    """The wheel gets what setuptools' package finder finds under src/: only
    directories with an __init__.py. A folder of modules without one would be
    left out of a non-editable install."""
    src = ROOT / "src"
    for directory in (src / "sockserve").rglob("*"):
        if directory.is_dir() and any(directory.glob("*.py")):
            assert (directory / "__init__.py").is_file(), f"{directory.relative_to(src)} has no __init__.py"


@pytest.mark.slow
def test_an_editable_install_is_followed_by_mypy(tmp_path: Path) -> None:
    """`pip install -e .` must leave a tree mypy can follow. mypy reads the
    path lines of .pth files but does not run their import lines, so an
    editable install that works through setuptools' import hook (which a
    package mapped to a directory outside src/ forces) is invisible to it.

    Building the editable wheel with the project's build backend and unpacking
    it into a bare virtual environment is what pip does, less the fetching;
    then mypy, run from elsewhere with that environment's interpreter, must
    find sockserve and its py.typed. (tests/test_docs.py runs mypy through the
    suite's own installation too, which ./scripts/test makes editable.)"""
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns(".*", "*.egg-info", "__pycache__", "build", "dist", "benchmarks", "docs", "tests")
    shutil.copytree(ROOT, project, symlinks=True, ignore=ignore)
    build = "import sys; from setuptools import build_meta; build_meta.build_editable(sys.argv[1])"
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-c", build, str(wheels)], cwd=project, capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("*.whl")

    with zipfile.ZipFile(wheel) as archive:
        pth = [archive.read(name).decode() for name in archive.namelist() if name.endswith(".pth")]
        assert [line.strip() for text in pth for line in text.splitlines()] == [str(project / "src")], pth

        env = tmp_path / "env"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=60)
        site = subprocess.run(
            [str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        archive.extractall(site)

    user = tmp_path / "user"
    user.mkdir()
    (user / "server.py").write_text(
        "import sockserve\n\n\n"
        "class Echo(sockserve.StreamRequestHandler):\n"
        "    def handle(self) -> None:\n"
        "        self.wfile.write(self.rfile.readline())\n\n\n"
        'server = sockserve.TCPServer(("127.0.0.1", 0), Echo)\n'
    )
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(env / "bin" / "python"), "server.py"],
        cwd=user,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_the_public_modules_are_all_accounted_for() -> None:
    """A new module without a leading underscore is public: it must be listed
    here, with an __all__, or in NOT_API with the reason."""
    named = {info.name for info in pkgutil.walk_packages(sockserve.__path__, "sockserve.")} | {"sockserve"}
    public = {name for name in named if not any(part.startswith("_") for part in name.split("."))}
    public = {name for name in public if not any(name.startswith(f"{other}.") for other in NOT_API)}
    assert public == set(PUBLIC_MODULES) | set(NOT_API)


def _bound_at_top_level(module: types.ModuleType) -> set[str]:
    """The names a module's source binds at its top level (inside if/try too):
    classes, functions, assignments, and imports in the re-export form
    ``from m import X as X`` / ``import X as X``. Plain imports are left out."""
    assert module.__file__ is not None
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update(alias.asname for alias in node.names if alias.asname == alias.name)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                if isinstance(node, ast.Try):
                    for handler in node.handlers:
                        visit(handler.body)
                    visit(node.finalbody)
            elif type(node).__name__ == "TypeAlias":  # `type X = ...`, Python 3.12+
                names.add(node.name.id)  # type: ignore[attr-defined]

    visit(ast.parse(Path(module.__file__).read_text()).body)
    return names


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_lists_every_public_name_once(module_name: str) -> None:
    """``__all__`` is the module's public API, exactly.

    - every name in it exists, is not private, and is there once;
    - every public name the module defines or re-exports is in it: what its
      source binds at top level (see _bound_at_top_level), and what its
      namespace holds that comes from sockserve, unless NOT_EXPORTED says why.

    Not counted, by rule: names starting with ``_``; plain imports (``import
    threading``, ``from typing import Any``), the module's tools, not its API,
    which neither ``import *`` nor mypy --strict exports from a module with an
    ``__all__``; ``from __future__`` features; and submodules, which the import
    system sets on their package when they are imported (``sockserve.aio``
    after ``import sockserve.aio``) and which are reached by their dotted name.
    """
    module = importlib.import_module(module_name)
    listed = module.__all__
    assert len(listed) == len(set(listed)), sorted(name for name in listed if listed.count(name) > 1)
    assert [name for name in listed if not hasattr(module, name)] == []
    assert [name for name in listed if name.startswith("_")] == []

    allowed = NOT_EXPORTED.get(module_name, {})
    bound = {name for name in _bound_at_top_level(module) if not name.startswith("_")}
    assert sorted(bound - set(listed) - set(allowed)) == [], "defined or re-exported, but not in __all__"

    def ours(value: object) -> bool:  # a __future__ feature's __module__ is "__future__"
        return not isinstance(value, types.ModuleType) and str(getattr(value, "__module__", "")).startswith("sockserve")

    present = {name for name, value in vars(module).items() if not name.startswith("_") and ours(value)}
    assert sorted(present - set(listed) - set(allowed)) == [], "sockserve objects in the namespace, not in __all__"


def test_the_exceptions_to_all_are_current() -> None:
    for module_name, names in NOT_EXPORTED.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name} is gone: drop it from NOT_EXPORTED"
            assert name not in module.__all__, f"{module_name}.{name} is in __all__ now: drop it from NOT_EXPORTED"


# What ``import sockserve`` must not load: the package's own modules (each is
# imported when one of its names is first used) and the heavy stdlib modules
# they need. A program that only imports the package, or uses one server
# class, does not pay for the rest.
HEAVY_MODULES = {"dataclasses", "enum", "inspect", "ipaddress", "logging", "re", "selectors", "socket", "threading"}


def test_import_sockserve_loads_nothing_it_does_not_use() -> None:
    code = "import sys; before = set(sys.modules); import sockserve; print(' '.join(sorted(set(sys.modules) - before)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(done.stdout.split())
    assert loaded - {"__future__"} == {"sockserve"}, sorted(loaded)
    assert HEAVY_MODULES | {"typing"} <= set(sys.stdlib_module_names)  # the names above are real


# What a typical program's imports must not load: logging (until a line is
# logged), signal (until serve() or a thread starts) and the worker pool, its
# reactor and the framed connection (until a ThreadPool* name is used); nor
# dataclasses, which loads inspect, ast and dis and cost more than all of
# sockserve (issue 11).
NOT_FOR_A_TYPICAL_PROGRAM = {
    "dataclasses",
    "logging",
    "signal",
    "sockserve._pool",
    "sockserve._pool_model",
    "sockserve._worker_pool",
    "sockserve._reactor",
    "sockserve._framed_connection",
    # Annotations are for type checkers (TYPE_CHECKING imports); typing
    # would cost as much as the whole server, and brings in re.
    "typing",
    "re",
    "sockserve.protocol.framers",
    "sockserve.protocol.proxy",
}


@pytest.mark.parametrize(
    "names",
    [
        "ThreadingTCPServer, StreamRequestHandler",
        "ForkingTCPServer, StreamRequestHandler",
        "UDPServer, DatagramRequestHandler",
    ],
)
def test_a_typical_program_loads_neither_logging_signal_nor_the_pool(names: str) -> None:
    code = f"import sys; from sockserve import {names}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(done.stdout.split()) & NOT_FOR_A_TYPICAL_PROGRAM
    assert not loaded, sorted(loaded)


def test_the_pool_servers_are_still_found_where_they_were() -> None:
    from sockserve import _combos

    assert _combos.ThreadPoolTCPServer is sockserve.ThreadPoolTCPServer
    with pytest.raises(AttributeError):
        _combos.NoSuchServer  # noqa: B018 - the attribute access is the test


def test_a_public_name_loads_its_module_on_first_use() -> None:
    code = (
        "import sys, sockserve; assert 'sockserve._errors' not in sys.modules; "
        "error = sockserve.LineTooLong; assert 'sockserve._errors' in sys.modules; "
        "assert error is sys.modules['sockserve._errors'].LineTooLong; "
        "assert 'LineTooLong' in vars(sockserve); assert 'sockserve._pool' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchServer'"):
        sockserve.NoSuchServer  # noqa: B018 - the attribute access is the test
    assert set(sockserve.__all__) <= set(dir(sockserve))


def test_type_checkers_see_what_runs() -> None:
    """The imports under ``if TYPE_CHECKING:`` (what mypy and editors read) and
    the lazy table (what runs) name the same objects, and cover ``__all__``."""
    source = ast.parse((ROOT / "src" / "sockserve" / "__init__.py").read_text())
    (guard,) = [node for node in source.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    for_checkers = {
        alias.name: (node.module or "").lstrip(".")
        for node in guard.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    at_run_time = sockserve._MODULES
    assert for_checkers.keys() >= set(sockserve.__all__)
    assert {name: module for name, module in for_checkers.items() if name in at_run_time} == at_run_time
    for name in sockserve.__all__:
        module = importlib.import_module(f"sockserve.{for_checkers[name]}")
        assert getattr(sockserve, name) is getattr(module, name), name


def test_a_drain_report_is_a_frozen_value() -> None:
    report = sockserve.DrainReport(in_flight=3, forced=1, seconds=0.5)
    assert report == sockserve.DrainReport(3, 1, 0.5) != sockserve.DrainReport(3, 0, 0.5)
    assert hash(report) == hash(sockserve.DrainReport(3, 1, 0.5))
    assert repr(report) == "DrainReport(in_flight=3, forced=1, seconds=0.5)"
    assert not report.clean
    assert sockserve.DrainReport(3, 0, 0.5).clean
    with pytest.raises(AttributeError):
        report.forced = 0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(report)) == report
