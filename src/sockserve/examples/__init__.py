"""The four examples of the classic SocketServer article, on sockserve.

Each is a script (``python examples/echo.py``), a module once installed
(``python -m sockserve.examples.echo``), and a step of ``sockserve demo``.
"""

from __future__ import annotations

# In the order the demo walks through them: module name, one-line summary.
EXAMPLES = (
    ("logging_echo", "an echo server that logs every hook, in the order the framework calls them"),
    ("echo", "the same echo, with a plain TCPServer and a handler that only has handle()"),
    ("threaded_echo", "ThreadingMixIn: the reply names the thread that handled the request"),
    ("forking_echo", "ForkingMixIn: the reply carries the process id of the child that handled it"),
)
