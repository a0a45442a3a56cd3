"""The ``sockserve`` command: argument parsing, and calls into the library as a
user's program would. It is also the only place that configures logging.

    sockserve demo                          walk through the four classic examples
    sockserve echo --listen 127.0.0.1:7000  a real echo server; Ctrl-C or SIGTERM stops it
    sockserve serve myapp:Handler --bind tcp://0.0.0.0:9000 [--config app.toml] [--check]
                                            serve a user's handler (settings: _config,
                                            what runs: _cli_serve)
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ._bind_errors import why_bind_failed
from ._framed import FramedRequestHandler
from ._log import format_address
from ._pool_servers import ThreadPoolTCPServer, ThreadPoolUnixStreamServer
from ._serve import serve

log = logging.getLogger("sockserve.cli")


def parse_listen(value: str) -> tuple[str, Any]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH`` -> (kind, address).

    Only the syntax is checked here; whether the host resolves and the address
    can be bound is found out by binding it.
    """
    if value.startswith("unix:"):
        if not value[5:]:
            raise argparse.ArgumentTypeError("unix: needs a path, e.g. unix:/tmp/echo.sock")
        return "unix", value[5:]
    host, sep, port = value.rpartition(":")
    # isascii(): str.isdigit() also accepts digits such as "²" that int() refuses.
    if not sep or not (port.isascii() and port.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, [V6ADDR]:PORT or unix:PATH, got {value!r}")
    if int(port) > 65535:
        raise argparse.ArgumentTypeError(f"the port must be 0 to 65535, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"only an IPv6 address goes in brackets, got {value!r}") from None
    elif "[" in host or "]" in host:
        raise argparse.ArgumentTypeError(f"brackets enclose the whole IPv6 address, as in [::1]:7007, got {value!r}")
    elif ":" in host:
        # Without brackets "::1:80" could be [::1]:80 or [::1:80] with no port.
        raise argparse.ArgumentTypeError(f"an IPv6 address goes in brackets, as in [::1]:7007, got {value!r}")
    else:
        try:
            # What bind() does with a host name; a non-ASCII name it cannot
            # encode would fail there with a TypeError, not an OSError.
            host.encode("idna")
        except UnicodeError:
            raise argparse.ArgumentTypeError(f"{host!r} is not a valid host name, got {value!r}") from None
    return "tcp", (host or "0.0.0.0", int(port))


def parse_grace(value: str) -> float:
    """``--grace``: seconds, finite and not negative."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, got {value!r}")
    return seconds


def parse_workers(value: str) -> int:
    """``--workers``: 0 (serve in this process) or a number of worker processes."""
    try:
        workers = int(value)
    except ValueError:
        workers = -1
    if workers < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 (one process) or more, got {value!r}")
    return workers


class EchoHandler(FramedRequestHandler):
    """Sends back each line it receives (up to 64 KiB), until the client closes.

    A framed handler: the pool's workers run only complete lines, so clients
    that connect and trickle bytes, or stay idle, hold no thread.
    """

    def handle_request(self, request: bytes) -> None:
        self.send(request)


def _run_echo(args: argparse.Namespace) -> int:
    kind, address = args.listen
    server_class = ThreadPoolUnixStreamServer if kind == "unix" else ThreadPoolTCPServer
    if args.workers:
        from .prefork import Prefork

        supervisor = Prefork(server_class, address, EchoHandler, workers=args.workers, grace=args.grace)
        try:
            supervisor.bind()
        except OSError as exc:
            return _cannot_listen(kind, address, exc)
        print(
            f"sockserve echo: listening on {format_address(supervisor.server_address)} "
            f"with {supervisor.workers} worker processes",
            flush=True,
        )
        code = supervisor.run()
        print("sockserve echo: stopped", flush=True)
        return code
    try:
        server = server_class(address, EchoHandler)
    except OSError as exc:
        return _cannot_listen(kind, address, exc)
    print(f"sockserve echo: listening on {format_address(server.server_address)}", flush=True)
    # First SIGTERM/SIGINT: stop accepting, let connections finish (up to
    # --grace seconds); a second one, or SIGQUIT: close them at once.
    report = serve(server, grace=args.grace)
    print(
        f"sockserve echo: stopped ({report.in_flight} connection(s) in flight, {report.forced} closed early)",
        flush=True,
    )
    return 0


def _cannot_listen(kind: str, address: Any, exc: OSError) -> int:
    """Report a bind that failed for a reason outside the program (the address
    is taken, the host does not resolve, ...) as one line; exit status 1.

    Only ``OSError`` from creating and binding the listening socket gets here:
    anything else is a bug and keeps its traceback.
    """
    print(
        f"sockserve echo: cannot listen on {format_address(address)}: {why_bind_failed(kind, address, exc)}",
        file=sys.stderr,
    )
    return 1


def _run_demo(args: argparse.Namespace) -> int:
    # The examples are a package of their own (src/sockserve/examples; examples/ at the top links there).
    examples = importlib.import_module("sockserve.examples").EXAMPLES

    logging.getLogger().setLevel(logging.DEBUG)
    for number, (name, summary) in enumerate(examples, 1):
        print(f"\n=== {number}. {name}: {summary}", flush=True)
        print(f"    (run it alone: python -m sockserve.examples.{name})\n", flush=True)
        module = importlib.import_module(f"sockserve.examples.{name}")
        module.main()
        sys.stdout.flush()
    print("\nAll four examples ran; each server was shut down and closed.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockserve", description="A framework for network servers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="walk through the four classic SocketServer examples")
    demo.set_defaults(run=_run_demo)
    echo = commands.add_parser("echo", help="run an echo server until Ctrl-C or SIGTERM")
    echo.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen("127.0.0.1:7007"),
        metavar="ADDRESS",
        help="HOST:PORT, [V6ADDR]:PORT or unix:PATH (default 127.0.0.1:7007; port 0 picks a free one)",
    )
    echo.add_argument(
        "--grace",
        type=parse_grace,
        default=10.0,
        metavar="SECONDS",
        help="on the first SIGTERM/SIGINT, how long connections may finish (default 10)",
    )
    echo.add_argument(
        "--workers",
        type=parse_workers,
        default=0,
        metavar="N",
        help="serve with N prefork worker processes (default 0: one process); "
        "SIGHUP reloads, SIGTTIN/SIGTTOU add/remove a worker",
    )
    echo.set_defaults(run=_run_echo)
    # Listed here for --help; main() hands its arguments to build_serve_parser()'s parser.
    commands.add_parser("serve", help="serve a handler: sockserve serve MODULE:ATTRIBUTE [options]", add_help=False)
    return parser


class _OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (and exit status 2), like every
    other bad setting of ``sockserve serve``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_serve_parser() -> argparse.ArgumentParser:
    from ._config import add_flags

    parser = _OneLineParser(
        prog="sockserve serve",
        description="Serve a request handler: sockserve serve myapp.handlers:Echo --bind tcp://0.0.0.0:9000. "
        "Every setting may also be given in a TOML file (--config), under the flag's name with underscores; "
        "flags override the file.",
    )
    add_flags(parser)
    return parser


def _configure_logging(level: str, log_format: str, access_log: bool) -> None:
    """``sockserve serve``'s logging: every line on stderr (where systemd's
    journal and container runtimes collect it), as text or one JSON object per
    line. The access log's INFO lines are written whatever ``--log-level``
    says: asking for them is asking to see them."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from ._log_format import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    if access_log:
        logging.getLogger("sockserve.access").setLevel(logging.INFO)


def _run_serve(argv: Sequence[str]) -> int:
    from ._cli_serve import serve_command
    from ._config import ConfigError, flag_values, load_settings

    args = build_serve_parser().parse_args(argv)
    try:
        settings = load_settings(flag_values(args), args.config)
        _configure_logging(settings.log_level, settings.log_format, settings.access_log)
        return serve_command(settings, argv, check_only=args.check)
    except ConfigError as exc:
        print(f"sockserve serve: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        return _run_serve(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    return int(args.run(args))


def console_main() -> None:
    """Entry point of the console script."""
    sys.exit(main())
