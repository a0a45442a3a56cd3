"""The settings of ``sockserve serve``: one frozen value (:class:`ServeSettings`),
read from a TOML file and from command-line flags (a flag wins over the file,
the file over the default), every value checked as it is read.

Each setting has one name, the same in the file (``max_connections = 100``)
and as a flag (``--max-connections 100``): the table :data:`SETTINGS` drives
the parser's flags, the file's keys, the checks and the ``--check`` output. A
bad value is a :class:`ConfigError` whose message is one line naming the
setting and where it came from (the file or the flag); the CLI prints it and
exits with status 2. What can only be checked by importing or opening
something (the handler, the TLS files, the user) is ``_cli_serve``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ._access import parse_networks
from ._drain import DEFAULT_GRACE
from ._errors import SockserveError
from ._limits import MAX_SECONDS
from ._proxy_stage import DEFAULT_PROXY_TIMEOUT
from ._socket_activation import Bind, parse_bind
from ._tls import DEFAULT_HANDSHAKE_TIMEOUT

__all__ = [
    "MODELS",
    "SETTINGS",
    "ConfigError",
    "ServeSettings",
    "Setting",
    "add_flags",
    "flag_values",
    "load_settings",
    "to_toml",
]

MODELS = ("sequential", "thread", "pool", "framed", "fork", "async")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
CLIENT_CERT_MODES = ("none", "optional", "required")
DEFAULT_BIND = "tcp://127.0.0.1:8000"
# The most worker processes --workers takes. Each is a whole Python process
# (tens of MB of memory, its own threads and connections); a machine with
# more cores than this is rare, and a value beyond it is a typo (an extra
# zero) that would otherwise fork until the memory or the pid limit runs out.
MAX_WORKERS = 1024

# C0 controls, DEL and C1 controls: in a path or a name they split a log line
# in two (or forge one), end a --check comment early, and a NUL cannot reach
# the kernel at all.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ConfigError(SockserveError, ValueError):
    """A bad setting; ``str()`` is the one line the CLI prints."""


# --- converters: a raw value (TOML's type, or a flag's text) -> the setting's value ---
# Each raises ValueError with what was expected; the caller adds where it came from.


def _text(value: object) -> str:
    """Non-empty text with no control character, that UTF-8 can write (every
    setting's text is written back as TOML by --check, and logged)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    if _CONTROL.search(value):
        raise ValueError(f"a control character (a newline, a NUL, ...) is not allowed here, got {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError:  # a command-line byte that is not UTF-8 (surrogateescape)
        raise ValueError(f"expected UTF-8 text, got {value!r}") from None
    return value


def _optional(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    """``"none"`` (a flag overriding the file's value, or the file's own
    spelling of the default) means no value."""

    def convert_optional(value: object) -> Any:
        return None if value == "none" else convert(value)

    convert_optional.__doc__ = convert.__doc__
    return convert_optional


def _whole(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    def whole(value: object) -> int:
        number = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value
        if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
            raise ValueError(f"expected a whole number, {minimum} or more, got {value!r}")
        if maximum is not None and number > maximum:
            raise ValueError(f"expected a whole number from {minimum} to {maximum}, got {value!r}")
        return number

    return whole


def _seconds(positive: bool) -> Callable[[object], float]:
    def seconds(value: object) -> float:
        number = math.nan
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if not (math.isfinite(number) and (number > 0 if positive else number >= 0)):
            floor = "more than 0" if positive else "0 or more"
            raise ValueError(f"expected a number of seconds, {floor}, got {value!r}")
        if number > MAX_SECONDS:
            # Each becomes a wait, which epoll bounds (_limits.MAX_SECONDS):
            # a larger one passed here and then broke the server.
            raise ValueError(f"expected at most {MAX_SECONDS:.0f} seconds (about 11.6 days), got {value!r}")
        return number

    return seconds


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _choice(*options: str) -> Callable[[object], str]:
    def choice(value: object) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return choice


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]  # the file's `allow = "10.0.0.0/8"` for `allow = ["10.0.0.0/8"]`
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(_text(item) for item in value)


def _binds(value: object) -> tuple[Bind, ...]:
    texts = _strings(value)
    if not texts:
        raise ValueError("expected at least one bind")
    return tuple(parse_bind(text) for text in texts)  # parse_bind's ValueError names the bind


def _networks(value: object) -> tuple[str, ...]:
    texts = _strings(value)
    for text in texts:
        try:
            parse_networks([text], "")  # what the server will do with it
        except ValueError:
            raise ValueError(f"{text!r} is not an IP network or address (such as 10.0.0.0/8 or ::1)") from None
    return texts


def _handler(value: object) -> str:
    text = _text(value)
    module, colon, attr = text.partition(":")
    names = module.split(".") + attr.split(".")
    if not colon or not all(name.isidentifier() for name in names):
        raise ValueError(f"expected MODULE:ATTRIBUTE, such as myapp.handlers:Echo, got {value!r}")
    return text


def _umask(value: object) -> int:
    """An octal mask: ``"027"`` (text) or ``0o027`` (a TOML octal number)."""
    mask = value
    if isinstance(value, str):
        try:
            mask = int(value, 8)
        except ValueError:
            raise ValueError(f"expected an octal mask such as 027, got {value!r}") from None
    if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask <= 0o777:
        shown = f"0o{mask:o}" if isinstance(mask, int) and not isinstance(value, str) else repr(value)
        raise ValueError(f"expected an octal mask from 000 to 777, got {shown}")
    return mask


def _principal(value: object) -> str | int:
    """A user or group: a name, or a number."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return _text(value)


def _admin_address(value: object) -> str:
    """``HOST:PORT`` or ``[V6]:PORT`` (checked as a tcp bind), or ``unix:PATH``."""
    text = _text(value)
    bind = parse_bind(text if text.startswith("unix:") else f"tcp://{text}")
    if bind.name is not None:
        raise ValueError(f"the admin listener takes no ?name=, got {value!r}")
    return text


# --- the table -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name (the TOML key; the flag is ``--`` + the name with
    dashes), how a raw value becomes its value, and its help."""

    name: str
    convert: Callable[[object], Any]
    help: str
    metavar: str | None = None
    many: bool = False  # a list: the flag is repeated, the file gives an array
    group: str = "serving"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _table() -> tuple[Setting, ...]:
    s = Setting
    return (
        s("handler", _handler, "the request handler class, MODULE:ATTRIBUTE (the positional argument)"),
        s(
            "bind",
            _binds,
            "where to listen: tcp://HOST:PORT, udp://HOST:PORT, unix:PATH, unixgram:PATH (Unix datagrams), "
            "unix:@NAME (or unixgram:@NAME) for a name in Linux's abstract namespace, "
            "each optionally ?name=NAME (a systemd FileDescriptorName); repeat for several "
            f"(default {DEFAULT_BIND})",
            "URL",
            many=True,
        ),
        s(
            "model",
            _choice(*MODELS),
            "how requests run: "
            + "|".join(MODELS)
            + " (default: the one that fits the handler: pool, framed or async)",
            "MODEL",
        ),
        s(
            "workers",
            _whole(1, MAX_WORKERS),
            f"worker processes, up to {MAX_WORKERS}; more than 1 serves with a prefork supervisor (default 1)",
            "N",
        ),
        s(
            "grace",
            _seconds(False),
            f"on SIGTERM/SIGINT, seconds requests in flight may finish (default {DEFAULT_GRACE:g})",
            "SECONDS",
        ),
        s(
            "drain_delay",
            _seconds(False),
            "after SIGTERM, seconds to keep serving while readiness fails, before the drain starts (default 0)",
            "SECONDS",
        ),
        s("max_connections", _optional(_whole(1)), "connections open at once (default: no limit)", "N", group="limits"),
        s(
            "max_connections_per_ip",
            _optional(_whole(1)),
            "connections open at once from one client address",
            "N",
            group="limits",
        ),
        s(
            "idle_timeout",
            _optional(_seconds(True)),
            "seconds a connection may wait for the client's next bytes",
            "SECONDS",
            group="limits",
        ),
        s(
            "connection_timeout",
            _optional(_seconds(True)),
            "seconds a connection may stay open in all",
            "SECONDS",
            group="limits",
        ),
        s(
            "max_line",
            _optional(_whole(1)),
            "the longest line the line readers return, in bytes",
            "BYTES",
            group="limits",
        ),
        s(
            "tls_cert",
            _optional(_text),
            "PEM certificate chain (with the key unless --tls-key): serve TLS",
            "FILE",
            group="tls",
        ),
        s("tls_key", _optional(_text), "PEM private key, when not in the certificate file", "FILE", group="tls"),
        s(
            "tls_client_ca",
            _optional(_text),
            "PEM CA certificates that client certificates must chain to",
            "FILE",
            group="tls",
        ),
        s(
            "tls_client_cert",
            _choice(*CLIENT_CERT_MODES),
            "ask for client certificates: "
            + "|".join(CLIENT_CERT_MODES)
            + " (default none; required when --tls-client-ca is given)",
            "MODE",
            group="tls",
        ),
        s(
            "tls_alpn",
            _strings,
            "an application protocol to offer (ALPN); repeat in order of preference",
            "PROTOCOL",
            many=True,
            group="tls",
        ),
        s(
            "tls_handshake_timeout",
            _seconds(True),
            "seconds a client has to complete its TLS handshake",
            "SECONDS",
            group="tls",
        ),
        s(
            "proxy_trusted",
            _networks,
            "a network (CIDR) of proxies whose PROXY protocol headers are believed; repeat for several",
            "CIDR",
            many=True,
            group="proxy",
        ),
        s("proxy_required", _boolean, "trusted peers must send a PROXY header (default true)", group="proxy"),
        s(
            "proxy_timeout",
            _seconds(True),
            "seconds a trusted peer may take to send its PROXY header",
            "SECONDS",
            group="proxy",
        ),
        s("proxy_trust_unix", _boolean, "believe PROXY headers arriving on Unix sockets", group="proxy"),
        s(
            "allow",
            _networks,
            "serve only clients in this network (CIDR); repeat for several",
            "CIDR",
            many=True,
            group="access",
        ),
        s(
            "deny",
            _networks,
            "close connections from this network (CIDR) at once; repeat for several",
            "CIDR",
            many=True,
            group="access",
        ),
        s(
            "admin",
            _optional(_admin_address),
            "serve /healthz, /readyz and /metrics on HOST:PORT",
            "HOST:PORT",
            group="operations",
        ),
        s("user", _optional(_principal), "after binding, run as this user (name or uid)", "USER", group="operations"),
        s(
            "group",
            _optional(_principal),
            "after binding, run as this group (name or gid)",
            "GROUP",
            group="operations",
        ),
        s("umask", _optional(_umask), "the process umask after binding (octal, e.g. 027)", "MASK", group="operations"),
        s(
            "pid_file",
            _optional(_text),
            "write the server's pid to this file while it runs",
            "FILE",
            group="operations",
        ),
        s(
            "reload",
            _boolean,
            "development: restart the server when a .py file under the current directory changes",
            group="operations",
        ),
        s("log_level", _choice(*LOG_LEVELS), "|".join(LOG_LEVELS) + " (default info)", "LEVEL", group="logging"),
        s("log_format", _choice(*LOG_FORMATS), "|".join(LOG_FORMATS) + " (default text)", "FORMAT", group="logging"),
        s("access_log", _boolean, "log one line per connection (logger sockserve.access)", group="logging"),
    )


SETTINGS: tuple[Setting, ...] = _table()
_BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Every setting of ``sockserve serve``, checked one by one (see :data:`SETTINGS`).

    ``sources`` says where each value came from: ``"--flag"``, the config
    file's name, or ``"default"``; checks made later (importing the handler,
    loading the TLS files) name it in their errors.
    """

    handler: str | None = None
    bind: tuple[Bind, ...] = (parse_bind(DEFAULT_BIND),)
    model: str | None = None
    workers: int = 1
    grace: float = DEFAULT_GRACE
    drain_delay: float = 0.0
    max_connections: int | None = None
    max_connections_per_ip: int | None = None
    idle_timeout: float | None = None
    connection_timeout: float | None = None
    max_line: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_client_cert: str = "none"
    tls_alpn: tuple[str, ...] = ()
    tls_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    proxy_trusted: tuple[str, ...] = ()
    proxy_required: bool = True
    proxy_timeout: float = DEFAULT_PROXY_TIMEOUT
    proxy_trust_unix: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    admin: str | None = None
    user: str | int | None = None
    group: str | int | None = None
    umask: int | None = None
    pid_file: str | None = None
    reload: bool = False
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = False
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def where(self, name: str) -> str:
        """How an error names setting ``name``: ``--max-connections``,
        ``app.toml: max_connections``, or ``max_connections`` (a default, or
        the handler given as the positional argument)."""
        source = self.sources.get(name, "default")
        if source.startswith("--"):
            return source
        return name if source in ("default", "argument") else f"{source}: {name}"

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(name)}: {problem}")


def _defaults() -> dict[str, Any]:
    return {
        field.name: getattr(ServeSettings, field.name)
        for field in dataclasses.fields(ServeSettings)
        if field.name != "sources"
    }


# --- flags -------------------------------------------------------------------------


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; a flag not given leaves no attribute (so the file's value stands)."""
    parser.add_argument(
        "handler",
        nargs="?",
        default=argparse.SUPPRESS,
        metavar="MODULE:ATTRIBUTE",
        help="the request handler class, e.g. myapp.handlers:Echo (or handler= in the config file)",
    )
    parser.add_argument("--config", metavar="FILE", help="read settings from this TOML file; flags override it")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check every setting (without binding), print the effective settings as TOML, exit",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in SETTINGS[1:]:
        group = groups.get(setting.group)
        if group is None:
            group = groups[setting.group] = parser.add_argument_group(setting.group)
        if setting.convert is _boolean:
            group.add_argument(
                setting.flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=setting.help
            )
        else:
            group.add_argument(
                setting.flag,
                action="append" if setting.many else "store",
                default=argparse.SUPPRESS,
                metavar=setting.metavar,
                help=setting.help,
            )


# --- loading -----------------------------------------------------------------------


def load_settings(flags: Mapping[str, Any], config: str | None = None) -> ServeSettings:
    """The effective settings: defaults, then ``config`` (a TOML file) if
    given, then ``flags`` (setting name -> raw value, as :func:`add_flags`
    parses them). Raises :class:`ConfigError` for the first bad setting."""
    values = _defaults()
    sources: dict[str, str] = {}
    if config is not None:
        try:
            label = _text(config)  # as the user wrote it: every error about the file names it
        except ValueError as exc:
            raise ConfigError(f"--config: {exc}") from None
        for name, raw in _read_toml(config, label).items():
            setting = _BY_NAME.get(name)
            if setting is None:
                raise ConfigError(f"unknown setting {name!r} in {label}{_did_you_mean(name)}")
            values[name] = _convert(setting, raw, f"{label}: {name}")
            sources[name] = label
    for name, raw in flags.items():
        setting = _BY_NAME[name]
        where = "handler" if name == "handler" else setting.flag
        values[name] = _convert(setting, raw, where)
        sources[name] = "argument" if name == "handler" else where
    return ServeSettings(**values, sources=sources)


def _convert(setting: Setting, raw: object, where: str) -> Any:
    try:
        return setting.convert(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_toml(path: str, label: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the same parser, backported (a dependency on 3.10 only)
        try:
            import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
        except ImportError:  # a dependency on 3.10: only a broken install lacks it
            raise ConfigError("--config needs tomli on Python 3.10: pip install tomli") from None
    try:
        with open(path, "rb") as file:
            data: dict[str, Any] = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib decodes the whole file first
        raise ConfigError(
            f"{label}: not valid TOML: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    for name, value in data.items():
        if isinstance(value, dict):  # a [table]: sockserve's settings are all top-level keys
            raise ConfigError(
                f"unknown setting {name!r} in {label}: settings are top-level keys, not [tables]{_did_you_mean(name)}"
            )
    return data


# --- writing TOML back -------------------------------------------------------------


def to_toml(settings: ServeSettings, notes: Mapping[str, str] | None = None) -> str:
    """The settings as a TOML file a user could paste back: every setting in
    the table's order, a ``#`` line for one that has no value, a comment
    from ``notes`` beside a setting when there is one."""
    notes = notes or {}
    lines = []
    group = SETTINGS[0].group
    for setting in SETTINGS:
        if setting.group != group:
            group = setting.group
            lines.append(f"\n# {group}")
        value = getattr(settings, setting.name)
        note = notes.get(setting.name)
        comment = f"  # {note}" if note else ""
        if value is None:
            lines.append(f'# {setting.name} = "none"{comment}')
        else:
            lines.append(f"{setting.name} = {_toml_value(setting.name, value)}{comment}")
    return "\n".join(lines) + "\n"


def _toml_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if name == "umask" and isinstance(value, int):
        return f"0o{value:03o}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(name, item) for item in value) + "]"
    # A TOML basic string takes JSON's escapes (\", \\, \n, \uXXXX) as they are.
    return json.dumps(str(value), ensure_ascii=False)


def flag_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags in a parsed namespace (``add_flags`` leaves out the others)."""
    given = vars(namespace)
    return {setting.name: given[setting.name] for setting in SETTINGS if setting.name in given}
