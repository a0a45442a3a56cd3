"""``JsonFormatter``: log records as one JSON object per line, for log
shippers (Loki, Elasticsearch, CloudWatch) that read structured lines.

It only formats: which handler writes the lines, and where, stays the
application's choice (the ``sockserve serve`` command installs it for
``--log-format json``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

__all__ = ["JsonFormatter"]

# What every line carries, in this order, before the record's own fields.
BASE_FIELDS = ("time", "level", "logger", "message", "pid")

# The attributes every LogRecord has: what is left in a record's __dict__
# beyond them came from ``extra=`` (or from a filter that set it). Read off a
# real record, so that attributes a later Python adds (3.12's taskName) are
# known without a list kept by hand; "message" and "asctime" are set by
# Formatter.format() on the record itself.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# A value nested deeper than this is written as its str(): a structure that
# contains itself must end somewhere.
_MAX_DEPTH = 8


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC, milliseconds),
    ``level``, ``logger``, ``message``, ``pid``, then every field the record
    got through ``extra=`` (the access log's ``client``, ``duration``,
    ``bytes_received``, ``bytes_sent``, ``closed_by``), then ``exc_info`` and
    ``stack_info`` as strings when the record has them.

    Never raises: a field JSON cannot hold (an address object, a set, a float
    NaN, a dict with tuple keys) is written as its ``str()`` (``repr()`` if
    that fails), and a message whose arguments do not fit its format is
    written as the format and the arguments. An ``extra`` field named like a
    base field is written as ``extra_<name>``, so neither is lost. The line is
    ASCII (``\\u`` escapes), so no byte in a message can break it in two.

    ``fmt`` and ``style`` are accepted, for ``logging.config``, and ignored;
    ``datefmt`` too: the time is always RFC 3339.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
            "pid": record.process if record.process is not None else os.getpid(),
        }
        for name, value in record.__dict__.items():
            if name in _RECORD_ATTRIBUTES or name.startswith("_"):
                continue
            while name in fields:  # a base field's name, or an extra that took extra_<name>
                name = f"extra_{name}"
            fields[name] = value
        if record.exc_info and not record.exc_text:
            # Cached on the record, as logging.Formatter does: every handler
            # that formats this record shares the one traceback text.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc_info"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        try:
            # The usual record holds strings and numbers only: one call.
            return _encode(fields)
        except (TypeError, ValueError, RecursionError):
            # Non-string keys, NaN, a cycle, an int too long for str():
            # rebuilt value by value into what JSON holds.
            return _encode(_jsonable(fields, 0))


def _as_text(value: object) -> str:
    """A value JSON cannot hold, as text: str(), else repr(), else its type."""
    try:
        return str(value)
    except Exception:  # noqa: S110 - a broken __str__: repr() may still work
        pass
    try:
        return repr(value)
    except Exception:  # noqa: S110 - nothing to print it with: its type says what it was
        pass
    return f"<unprintable {type(value).__name__}>"


# One encoder for every record: json.dumps() with options builds a new one per call.
_encode = json.JSONEncoder(allow_nan=False, default=_as_text).encode

# The last second formatted, and its text: a busy access log writes many
# lines a second, and strftime() is most of a timestamp's cost. Replaced as
# one tuple, so a thread never reads one second with another's text.
_second: tuple[int, str] = (-1, "")


def _rfc3339(created: float) -> str:
    """2026-12-01T17:22:47.123Z: the record's time in UTC, to the millisecond."""
    global _second
    seconds = math.floor(created)
    millis = min(int((created - seconds) * 1000), 999)
    cached, text = _second
    if cached != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    return f"{text}.{millis:03d}Z"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        # logging would print a traceback to stderr and lose the line; the
        # format and its arguments still say what the caller meant.
        return f"{_as_text(record.msg)} (arguments that do not fit the format: {_as_text(record.args)})"


def _jsonable(value: object, depth: int) -> object:
    """``value`` as what json.dumps(allow_nan=False) accepts, whatever it is."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        try:
            json.dumps(value)  # an int too long to write (sys.set_int_max_str_digits) raises
        except ValueError:
            return f"<int of {value.bit_length()} bits>"
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return _as_text(value)
    if isinstance(value, dict):
        return {_key(key): _jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, depth + 1) for item in value]
    return _as_text(value)


def _key(key: object) -> str:
    if isinstance(key, str):
        return key
    return _as_text(key)
