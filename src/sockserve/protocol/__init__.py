"""Sans-IO protocol pieces: bytes in, results out. Nothing here touches a
socket, a clock or a logger, so each can be unit-tested and fuzzed alone."""

from __future__ import annotations

from .lines import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from .lines import LineSplitter as LineSplitter

__all__ = ["DEFAULT_MAX_LINE", "LineSplitter"]
