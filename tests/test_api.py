"""The public API: one place, a superset of the stdlib's, typed."""

from __future__ import annotations

import importlib.resources
import inspect
import shutil
import socketserver
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sockserve

ROOT = Path(__file__).resolve().parent.parent


def test_every_stdlib_name_is_exported() -> None:
    missing = set(socketserver.__all__) - set(sockserve.__all__)
    assert not missing


def test_all_names_resolve_to_sockserve_objects() -> None:
    for name in sockserve.__all__:
        obj = getattr(sockserve, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("sockserve"), name


def test_every_public_class_of_the_package_is_exported() -> None:
    exported = {getattr(sockserve, n) for n in sockserve.__all__}
    for module_name in ("_base_server", "_inet_servers", "_unix_servers", "_handlers", "_combos", "_errors"):
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
