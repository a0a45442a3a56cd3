"""The public API: one place, a superset of the stdlib's, typed."""

from __future__ import annotations

import importlib.resources
import inspect
import socketserver
from pathlib import Path

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
