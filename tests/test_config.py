"""``sockserve serve``'s settings (``_config``): the TOML file and the flags,
flags over the file over the defaults, every bad value a one-line
``ConfigError`` naming the setting and where it came from, and the
``--check`` TOML that reads back as the same settings. In process: the
command itself runs in a subprocess in test_cli_serve.py."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from sockserve._config import SETTINGS, ConfigError, ServeSettings, load_settings, to_toml
from sockserve._socket_activation import parse_bind
from sockserve.cli import build_serve_parser

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def _flags(*argv: str) -> dict[str, Any]:
    from sockserve._config import flag_values

    return flag_values(build_serve_parser().parse_args(list(argv)))


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # config files named as a user names them: app.toml


def _write(tmp_path: Path, text: str, name: str = "app.toml") -> str:
    (tmp_path / name).write_text(text)
    return name


def test_every_setting_is_a_field_and_a_flag() -> None:
    fields = [field.name for field in dataclasses.fields(ServeSettings) if field.name != "sources"]
    assert [setting.name for setting in SETTINGS] == fields
    parser = build_serve_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    for setting in SETTINGS[1:]:  # the handler is the positional argument
        assert setting.flag in flags


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == ServeSettings()
    assert settings.bind == (parse_bind("tcp://127.0.0.1:8000"),)
    assert settings.model is None  # chosen from the handler's kind
    assert settings.workers == 1


def test_flags_override_the_file(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        'handler = "tests.cli_app:Echo"\n'
        'bind = ["tcp://127.0.0.1:9000", "unix:/tmp/app.sock"]\n'
        "max_connections = 100\n"
        "idle_timeout = 30\n"
        "access_log = true\n"
        'allow = ["10.0.0.0/8"]\n'
        "umask = 0o027\n",
    )
    flags = _flags("--max-connections", "5", "--bind", "udp://[::1]:5353", "--no-access-log", "--umask", "077")
    settings = load_settings(flags, config)
    assert settings.handler == "tests.cli_app:Echo"
    assert settings.max_connections == 5  # the flag
    assert settings.idle_timeout == 30.0  # the file
    assert settings.bind == (parse_bind("udp://[::1]:5353"),)  # a flag's list replaces the file's
    assert settings.access_log is False
    assert settings.allow == ("10.0.0.0/8",)
    assert settings.umask == 0o077
    assert settings.sources["max_connections"] == "--max-connections"
    assert settings.sources["idle_timeout"] == "app.toml"
    assert settings.where("idle_timeout") == "app.toml: idle_timeout"
    assert settings.where("grace") == "grace"


def test_repeated_flags_make_a_list() -> None:
    settings = load_settings(_flags("--bind", "tcp://127.0.0.1:0", "--bind", "unix:@app", "--deny", "10.1.0.0/16"))
    assert settings.bind == (parse_bind("tcp://127.0.0.1:0"), parse_bind("unix:@app"))
    assert settings.deny == ("10.1.0.0/16",)


def test_none_in_a_flag_unsets_the_files_limit(tmp_path: Path) -> None:
    config = _write(tmp_path, "max_connections = 100\n")
    assert load_settings(_flags("--max-connections", "none"), config).max_connections is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-connections", "-3"], "--max-connections: expected a whole number, 1 or more, got '-3'"),
        (["--max-connections", "0"], "--max-connections: expected a whole number, 1 or more, got '0'"),
        (["--workers", "two"], "--workers: expected a whole number, 1 or more, got 'two'"),
        (["--grace", "-1"], "--grace: expected a number of seconds, 0 or more, got '-1'"),
        (["--grace", "nan"], "--grace: expected a number of seconds, 0 or more, got 'nan'"),
        (["--idle-timeout", "0"], "--idle-timeout: expected a number of seconds, more than 0, got '0'"),
        (
            ["--model", "threads"],
            "--model: expected one of sequential, thread, pool, framed, fork, async, got 'threads'",
        ),
        (["--bind", "tcp://127.0.0.1"], "--bind: bad bind 'tcp://127.0.0.1': no port (expected HOST:PORT)"),
        (
            ["--bind", "http://x:1"],
            "--bind: bad bind 'http://x:1': unknown scheme 'http' (expected tcp, udp, unix or unixgram)",
        ),
        (
            ["--bind", "@abstract"],
            "--bind: bad bind '@abstract': expected tcp://HOST:PORT, udp://HOST:PORT, unix:PATH, unix:@NAME "
            "or unixgram:PATH",
        ),
        # Longer than a wait can be (epoll: 2**31-1 ms); they passed, then broke the server.
        (["--grace", "1e300"], "--grace: expected at most 1000000 seconds (about 11.6 days), got '1e300'"),
        (["--drain-delay", "1e300"], "--drain-delay: expected at most 1000000 seconds"),
        (["--idle-timeout", "1e300"], "--idle-timeout: expected at most 1000000 seconds"),
        (["--connection-timeout", "1e300"], "--connection-timeout: expected at most 1000000 seconds"),
        (["--proxy-timeout", "2592000"], "--proxy-timeout: expected at most 1000000 seconds"),
        (["--tls-handshake-timeout", "2592000"], "--tls-handshake-timeout: expected at most 1000000 seconds"),
        (["--workers", "100000"], "--workers: expected a whole number from 1 to 1024, got '100000'"),
        # Control characters split a log line (log injection) and broke --check's TOML.
        (
            ["--bind", "unix:/tmp/new\nline.sock"],
            "--bind: a control character (a newline, a NUL, ...) is not allowed here, got 'unix:/tmp/new\\nline.sock'",
        ),
        (["--pid-file", "/tmp/a\x1b[2Jb.pid"], "--pid-file: a control character (a newline, a NUL, ...) is not"),
        (["--tls-cert", "/tmp/a\rb.pem"], "--tls-cert: a control character"),
        (["--user", "nobody\n"], "--user: a control character"),
        (["--admin", "unix:/tmp/a\tb"], "--admin: a control character"),
        (["--pid-file", "/tmp/\udcff.pid"], "--pid-file: expected UTF-8 text, got '/tmp/\\udcff.pid'"),
        (
            ["--bind", "unix:/" + "x" * 107],
            "--bind: bad bind 'unix:/" + "x" * 107 + "': the Unix socket path is 108 bytes, over the 107",
        ),
        (
            ["--allow", "10.0.0.300/8"],
            "--allow: '10.0.0.300/8' is not an IP network or address (such as 10.0.0.0/8 or ::1)",
        ),
        (["--proxy-trusted", "proxy"], "--proxy-trusted: 'proxy' is not an IP network or address"),
        (["--umask", "999"], "--umask: expected an octal mask such as 027, got '999'"),
        (["--umask", "1777"], "--umask: expected an octal mask from 000 to 777, got '1777'"),
        (["--log-level", "loud"], "--log-level: expected one of debug, info, warning, error, got 'loud'"),
        (["--log-format", "xml"], "--log-format: expected one of text, json, got 'xml'"),
        (["--tls-client-cert", "maybe"], "--tls-client-cert: expected one of none, optional, required, got 'maybe'"),
        (["--admin", "localhost"], "--admin: bad bind 'tcp://localhost': no port (expected HOST:PORT)"),
        (
            ["tests/cli_app.py"],
            "handler: expected MODULE:ATTRIBUTE, such as myapp.handlers:Echo, got 'tests/cli_app.py'",
        ),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_flags(*argv))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_conections = 3\n", "unknown setting 'max_conections' in app.toml (did you mean max_connections?)"),
        ("colour = 'blue'\n", "unknown setting 'colour' in app.toml"),
        ("[limits]\nmax_connections = 3\n", "unknown setting 'limits' in app.toml: settings are top-level keys"),
        ("max_connections = '3x'\n", "app.toml: max_connections: expected a whole number, 1 or more, got '3x'"),
        ("max_connections = 2.5\n", "app.toml: max_connections: expected a whole number, 1 or more, got 2.5"),
        ("access_log = 'yes'\n", "app.toml: access_log: expected true or false, got 'yes'"),
        ("workers = true\n", "app.toml: workers: expected a whole number, 1 or more, got True"),
        ("bind = []\n", "app.toml: bind: expected at least one bind"),
        ("bind = [1]\n", "app.toml: bind: expected a non-empty string, got 1"),
        ("grace = inf\n", "app.toml: grace: expected a number of seconds, 0 or more, got inf"),
        ("idle_timeout = 1e300\n", "app.toml: idle_timeout: expected at most 1000000 seconds (about 11.6 days)"),
        ("workers = 99999999999999999999\n", "app.toml: workers: expected a whole number from 1 to 1024"),
        # A NUL passed --check, then "ValueError: embedded null byte" when serving.
        ('pid_file = "/tmp/a\\u0000b.pid"\n', "app.toml: pid_file: a control character (a newline, a NUL, ...)"),
        ('tls_cert = "/tmp/a\\u0000b.pem"\n', "app.toml: tls_cert: a control character"),
        ('tls_key = "/tmp/key\\n.pem"\n', "app.toml: tls_key: a control character"),
        ('tls_client_ca = "\\u009b"\n', "app.toml: tls_client_ca: a control character"),
        ('bind = ["unix:/tmp/a\\nb"]\n', "app.toml: bind: a control character"),
        ("handler = 'app'\n", "app.toml: handler: expected MODULE:ATTRIBUTE"),
        ("max_connections = \n", "app.toml: not valid TOML: "),
    ],
)
def test_a_bad_file_is_one_line_naming_the_setting_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, _write(tmp_path, text))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    # tomllib decodes the whole file first: a UnicodeDecodeError, a traceback until now.
    (tmp_path / "app.toml").write_bytes(b'handler = "tests.cli_app:Echo"\n\xff\n')
    with pytest.raises(ConfigError) as caught:
        load_settings({}, "app.toml")
    assert str(caught.value) == "app.toml: not valid TOML: not UTF-8 (byte 0xff at offset 31)"


def test_a_config_path_with_a_control_character(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, "app\n.toml")
    assert str(caught.value).startswith("--config: a control character (a newline, a NUL, ...) is not allowed here")
    assert "\n" not in str(caught.value)


def test_the_bounds_themselves_are_accepted() -> None:
    settings = load_settings(_flags("--workers", "1024", "--idle-timeout", "1000000", "--grace", "1e6"))
    assert (settings.workers, settings.idle_timeout, settings.grace) == (1024, 1_000_000.0, 1_000_000.0)
    path = "/" + "x" * 106  # 107 bytes, the most sun_path holds
    assert load_settings(_flags("--bind", f"unix:{path}")).bind == (parse_bind(f"unix:{path}"),)


def test_the_help_names_the_abstract_namespace_as_a_bind_takes_it() -> None:
    text = build_serve_parser().format_help()
    assert "@ABSTRACT" not in text
    assert "unix:@NAME" in " ".join(text.split())


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: cannot read .*nope.toml: No such file or directory$"):
        load_settings({}, str(tmp_path / "nope.toml"))


def test_the_check_output_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        'handler = "tests.cli_app:Echo"\n'
        'bind = ["tcp://[::1]:9000?name=web", "unix:@abstract", "unix:/tmp/a \\"quoted\\" path"]\n'
        'model = "thread"\nworkers = 3\ngrace = 2.5\nmax_connections = 10\nmax_line = 4096\n'
        'tls_alpn = ["h2", "http/1.1"]\nproxy_trusted = ["10.0.0.0/8"]\nproxy_required = false\n'
        'deny = ["192.0.2.0/24"]\nuser = "nobody"\ngroup = 65534\numask = 0o027\nlog_level = "debug"\n',
    )
    settings = load_settings({}, config)
    text = to_toml(settings, {"model": "a note # with a hash"})
    again = load_settings({}, _write(tmp_path, text, "again.toml"))
    assert again == settings
    assert tomllib.loads(text)["umask"] == 0o027
    assert '# max_connections_per_ip = "none"' in text  # no value: a comment, which also parses back
