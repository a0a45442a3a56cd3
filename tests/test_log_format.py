"""JsonFormatter: one JSON object per line, whatever the record holds."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve._log_format import JsonFormatter

RFC3339_UTC_MILLIS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own whose lines go, JSON-formatted, into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.json")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, out
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_the_base_fields_and_an_access_log_line_round_trip(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    extra = {"client": "203.0.113.7:40000", "duration": 0.25, "bytes_received": 12, "bytes_sent": None}
    log.info("closed %s", "by the client", extra={**extra, "closed_by": "client"})
    (line,) = lines(out)
    assert list(line)[:5] == ["time", "level", "logger", "message", "pid"]
    assert line == {
        "time": line["time"],
        "level": "INFO",
        "logger": "tests.json",
        "message": "closed by the client",
        "pid": os.getpid(),
        **extra,
        "closed_by": "client",
    }


def test_the_time_is_rfc3339_utc_to_the_millisecond() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.created = 1764609767.1239  # 2025-12-01T17:22:47.123Z
    line = json.loads(JsonFormatter().format(record))
    assert line["time"] == "2025-12-01T17:22:47.123Z"
    assert RFC3339_UTC_MILLIS.match(line["time"])
    parsed = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert parsed.utcoffset() == timezone.utc.utcoffset(None)
    assert abs(parsed.timestamp() - record.created) < 0.001


def test_each_records_own_second_is_written() -> None:
    """(The text of the last second is kept: records of another second must not get it.)"""
    formatter = JsonFormatter()

    def at(created: float) -> str:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
        record.created = created
        return str(json.loads(formatter.format(record))["time"])

    assert at(1764609767.999) == "2025-12-01T17:22:47.999Z"
    assert at(1764609768.0005) == "2025-12-01T17:22:48.000Z"
    assert at(1764609767.5) == "2025-12-01T17:22:47.500Z"
    assert at(0.25) == "1970-01-01T00:00:00.250Z"


def test_an_exception_is_one_string_field(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    try:
        raise ValueError("handler broke\non two lines")
    except ValueError:
        log.exception("request from %s failed", "client")
    (line,) = lines(out)
    assert line["message"] == "request from client failed"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert line["exc_info"].endswith("ValueError: handler broke\non two lines")


def test_the_stack_is_a_string_field(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    log.warning("where", stack_info=True)
    (line,) = lines(out)
    assert line["stack_info"].startswith("Stack (most recent call last):")


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_fields_json_cannot_hold_are_written_as_text(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    extra = {
        "address": ("::1", 8000, 0, 0),
        "peers": {("10.0.0.1", 1): "a"},  # a key JSON cannot hold: the slow path
        "ratio": math.nan,
        "tags": {"x"},
        "raw": b"\xff",
        "cycle": cyclic,
        "odd": Unprintable(),
    }
    log.info("odd fields", extra=extra)
    (line,) = lines(out)
    assert line["address"] == ["::1", 8000, 0, 0]
    assert line["peers"] == {"('10.0.0.1', 1)": "a"}
    assert line["ratio"] == "nan"
    assert line["tags"] == "{'x'}"
    assert line["raw"] == "b'\\xff'"
    assert isinstance(line["cycle"], list)
    assert line["odd"] == "<unprintable Unprintable>"


def test_an_object_field_takes_the_fast_path_as_its_str(logged: tuple[logging.Logger, io.StringIO]) -> None:
    import ipaddress

    log, out = logged
    log.info("peer", extra={"peer": ipaddress.ip_address("192.0.2.1")})
    assert lines(out)[0]["peer"] == "192.0.2.1"


def test_an_int_too_long_to_print_does_not_break_the_line(logged: tuple[logging.Logger, io.StringIO]) -> None:
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("Python prints ints of any length before 3.11")
    log, out = logged
    log.info("big", extra={"big": 10**5000})
    assert lines(out)[0]["big"] == f"<int of {(10**5000).bit_length()} bits>"


def test_an_extra_named_like_a_base_field_keeps_both(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    log.info("m", extra={"time": "yesterday", "level": 3, "pid": "other"})
    (line,) = lines(out)
    assert line["level"] == "INFO"
    assert line["pid"] == os.getpid()
    assert (line["extra_time"], line["extra_level"], line["extra_pid"]) == ("yesterday", 3, "other")


def test_an_extra_named_like_a_renamed_one_is_kept_too(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logged
    log.info("m", extra={"time": 1, "extra_time": 2})
    (line,) = lines(out)
    assert (line["extra_time"], line["extra_extra_time"]) in ((1, 2), (2, 1))


def test_arguments_that_do_not_fit_the_format_still_give_a_line() -> None:
    # The formatter alone: pytest's own capture handler would raise for the record first.
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d connections", ("many",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "%d connections (arguments that do not fit the format: ('many',))"


def test_every_handler_shares_the_cached_traceback() -> None:
    try:
        raise KeyError("k")
    except KeyError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m", (), sys.exc_info())
    formatter = JsonFormatter()
    first = json.loads(formatter.format(record))
    assert record.exc_text == first["exc_info"]
    assert json.loads(formatter.format(record))["exc_info"] == first["exc_info"]


# Any text, and extras of any JSON-ish or odd value under any name logging accepts.
_names = st.text(min_size=1, max_size=12).filter(
    lambda name: (
        not name.startswith("_")
        and name not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__
        and name not in ("message", "asctime")
    )
)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary(max_size=8)
    | st.builds(Unprintable)
    | st.sets(st.integers(), max_size=3)
)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4) | st.integers() | st.tuples(st.integers()), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(message=st.text(), extra=st.dictionaries(_names, _values, max_size=5))
def test_any_message_and_extra_give_one_valid_line(message: str, extra: dict[str, Any]) -> None:
    record = logging.makeLogRecord({"name": "p", "levelno": 20, "levelname": "INFO", "msg": message, **extra})
    text = JsonFormatter().format(record)
    assert len(text.splitlines()) == 1
    assert text.isascii()  # no U+2028 or stray surrogate that a reader would split or choke on
    line = json.loads(text)
    assert line["message"] == message
    assert line["level"] == "INFO"
    written = {name for name in line if name not in ("time", "level", "logger", "message", "pid")}
    assert len(written) == len(extra)  # none lost, whatever their names
