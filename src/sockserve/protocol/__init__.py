"""Sans-IO protocol pieces: bytes in, results out. Nothing here touches a
socket, a clock or a logger, so each can be unit-tested and fuzzed alone."""

from __future__ import annotations

from .framers import DEFAULT_MAX_REQUEST as DEFAULT_MAX_REQUEST
from .framers import Framer as Framer
from .framers import LengthPrefixFramer as LengthPrefixFramer
from .framers import LineFramer as LineFramer
from .lines import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from .lines import LineSplitter as LineSplitter

__all__ = ["DEFAULT_MAX_LINE", "DEFAULT_MAX_REQUEST", "Framer", "LengthPrefixFramer", "LineFramer", "LineSplitter"]
