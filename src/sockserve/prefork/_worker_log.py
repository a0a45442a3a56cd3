"""In a worker process, put the worker's pid at the start of every message
that sockserve's loggers emit, so interleaved lines from several workers can
be told apart whatever format the application configured.

It wraps the log record factory rather than adding a ``logging.Filter``: a
logger's filters see only the records logged on that very logger, not those
of its children, so a filter would have to be added to every ``sockserve.*``
logger, including ones created after the fork. The factory sees every record
as it is made, whatever logger made it. Handlers, levels and the loggers
themselves are left as the application set them, and it is installed only in
the worker after fork(), so the supervisor's process is untouched.
"""

from __future__ import annotations

import logging
from typing import Any

ROOT = "sockserve"


def mark_worker_records(pid: int) -> None:
    """Prefix ``worker <pid>: `` to the message of every record of the
    ``sockserve`` logger and its children made in this process from now on."""
    make_record = logging.getLogRecordFactory()
    prefix = f"worker {pid}: "
    child = ROOT + "."

    def worker_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        name = record.name
        if name == ROOT or (isinstance(name, str) and name.startswith(child)):
            # str(): getMessage() calls str() on a msg that is not a string
            # (an exception, say); the prefix has no "%" to confuse its args.
            record.msg = prefix + str(record.msg)
        return record

    logging.setLogRecordFactory(worker_record)
