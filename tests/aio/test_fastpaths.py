"""The asyncio fast paths: one switch, one loop-detection function, one module
that touches asyncio's internals. (The whole of tests/aio also runs with the
switch off: ``SOCKSERVE_ASYNCIO_FAST_PATHS=0 .venv/bin/pytest tests/aio``.)"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import subprocess
import sys
from unittest import mock

import pytest

from sockserve import aio
from sockserve.aio import _fastpaths
from sockserve.aio._loop import loop_kind
from sockserve.aio._reader import AsyncStreamReader, new_reader

SRC = pathlib.Path(aio.__file__).resolve().parents[2]  # src/


@pytest.mark.parametrize(
    ("value", "on"),
    [
        (None, True),
        ("1", True),
        ("", True),
        ("yes", True),
        ("0", False),
        ("false", False),
        (" OFF ", False),
        ("no", False),
    ],
)
def test_what_the_switch_values_mean(value: str | None, on: bool) -> None:
    assert _fastpaths.switch_is_on(value) is on


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_switch_is_read_from_the_environment_at_import(value: str) -> None:
    env = {**os.environ, _fastpaths.SWITCH: value}
    probe = "from sockserve.aio import _fastpaths; print(_fastpaths.ENABLED)"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == str(value == "1")


def test_loop_kind_tells_the_loops_apart() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert loop_kind(loop) == "asyncio"
    finally:
        loop.close()
    if aio.uvloop_available():
        loop = aio.new_event_loop("uvloop")
        try:
            assert loop_kind(loop) == "uvloop"
        finally:
            loop.close()

    class Elsewhere(asyncio.AbstractEventLoop):
        pass

    assert loop_kind(Elsewhere()) == "other"


# asyncio's (private) class of stream transports on its selector loop
_SelectorSocketTransport = vars(asyncio.selector_events)["_SelectorSocketTransport"]


class FakeTransport:
    max_size = _SelectorSocketTransport.max_size  # what asyncio's stream transports read at once

    def abort(self) -> None:
        pass


def test_asyncio_still_has_what_capped_reads_change() -> None:
    """asyncio's selector transport reads ``max_size`` bytes per recv() (256 KiB,
    which CPython allocates with mmap); the capped reads set it per transport."""
    assert _SelectorSocketTransport.max_size > _fastpaths.READ_SIZE


@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
def test_the_switch_decides_every_fast_path_on_asyncios_loop(enabled: bool) -> None:
    loop = asyncio.new_event_loop()
    try:
        with mock.patch.object(_fastpaths, "ENABLED", enabled):
            reader = new_reader(loop, ("client", 1))
        transport = FakeTransport()
        reader.connection_made(transport)  # type: ignore[arg-type]
        assert (transport.max_size == _fastpaths.READ_SIZE) is enabled  # capped reads
        waiter = reader.readline()  # nothing is due in this turn: eager resume, if on
        assert isinstance(waiter, _fastpaths.Wakeup) is enabled
        assert asyncio.isfuture(waiter)
        reader.connection_lost(None)
        assert loop.run_until_complete(asyncio.ensure_future(waiter, loop=loop)) == b""
    finally:
        loop.close()


def test_on_uvloop_no_fast_path_applies() -> None:
    if not aio.uvloop_available():
        pytest.skip("uvloop is not installed")
    loop = aio.new_event_loop("uvloop")
    try:
        reader = new_reader(loop, ("client", 1))
        assert type(reader) is AsyncStreamReader
        waiter = reader.readline()
        assert not isinstance(waiter, _fastpaths.Wakeup)
        reader.connection_lost(None)
        assert loop.run_until_complete(asyncio.ensure_future(waiter, loop=loop)) == b""
    finally:
        loop.close()


def test_the_process_state_is_what_the_environment_says() -> None:
    """So that a run with the switch off really runs without the fast paths."""
    assert _fastpaths.ENABLED is _fastpaths.switch_is_on(os.environ.get(_fastpaths.SWITCH))


def sources() -> dict[str, str]:
    found = {str(path.relative_to(SRC)): path.read_text() for path in SRC.rglob("sockserve/**/*.py")}
    assert "sockserve/aio/_fastpaths.py" in found
    return found


def test_asyncio_internals_are_touched_in_one_module_only() -> None:
    for name, text in sources().items():
        if name.startswith("sockserve/aio/") and name != "sockserve/aio/_fastpaths.py":
            assert not re.search(r"\._ready\b|Wakeup\(|attr-defined", text), name


def test_loops_are_told_apart_in_one_function_only() -> None:
    for name, text in sources().items():
        if name != "sockserve/aio/_loop.py":
            assert not re.search(r"BaseEventLoop|__module__\.startswith|uvloop\.Loop", text), name
