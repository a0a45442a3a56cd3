"""Dropping root after binding. The drops run in a subprocess (a process that
gave up root cannot get it back, and pytest must keep it); the look-ups and
refusals, which change nothing, run here."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sockserve._privileges import PrivilegeError, drop_privileges, resolve_identity

IS_ROOT = os.geteuid() == 0
requires_root = pytest.mark.skipif(not IS_ROOT, reason="changing user and group needs root (CI runs tests as root)")


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _nobody()
requires_nobody = pytest.mark.skipif(NOBODY is None, reason="this machine has no user 'nobody'")

# Binds as root, drops, then reports what it is and serves one connection on the socket bound before.
DROP_AND_SERVE = r"""
import json, os, sys
from sockserve import StreamRequestHandler, TCPServer, UnixStreamServer
from sockserve._privileges import drop_privileges

class Who(StreamRequestHandler):
    def handle(self):
        self.wfile.write(f"{os.getuid()} {os.getgid()}\n".encode())

user, group, umask, unix_path = json.loads(sys.argv[1])
server = TCPServer(("127.0.0.1", 0), Who)           # bound as root
drop_privileges(user, group, umask)
unix_server = UnixStreamServer(unix_path, Who)      # bound after the drop: the umask's mode
unix_mode = os.stat(unix_path).st_mode & 0o777
unix_owner = os.stat(unix_path).st_uid
unix_server.server_close()
mask = os.umask(0); os.umask(mask)
regain = []
for call in (os.setuid, os.setgid, os.seteuid):
    try:
        call(0)
        regain.append(call.__name__)
    except PermissionError:
        pass
print(json.dumps({
    "port": server.server_address[1], "resuid": os.getresuid(), "resgid": os.getresgid(),
    "groups": sorted(os.getgroups()), "umask": mask, "unix_mode": unix_mode, "unix_owner": unix_owner,
    "regain": regain,
}), flush=True)
server.timeout = 30
server.handle_request()
server.server_close()
"""


@pytest.fixture
def drop_dir(short_tmp: str) -> str:
    """A directory the dropped user may create its Unix socket in."""
    os.chmod(short_tmp, 0o777)
    return short_tmp


def _run(args: list[object]) -> Iterator[tuple[dict[str, Any], subprocess.Popen[str]]]:
    with subprocess.Popen(
        [sys.executable, "-c", DROP_AND_SERVE, json.dumps(args)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"the child failed (status {proc.wait(10)})"
            yield json.loads(line), proc
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        return client.makefile().readline().strip()


@requires_root
@requires_nobody
def test_drop_to_nobody_keeps_serving_the_socket_bound_as_root(drop_dir: str) -> None:
    assert NOBODY is not None
    unix_path = os.path.join(drop_dir, "after.sock")
    for report, _proc in _run(["nobody", None, 0o027, unix_path]):
        uid, gid = NOBODY.pw_uid, NOBODY.pw_gid  # no group given: the user's own
        assert report["resuid"] == [uid] * 3
        assert report["resgid"] == [gid] * 3
        assert report["groups"] == sorted(set(os.getgrouplist("nobody", gid)))
        assert 0 not in report["groups"]  # root's group is not kept as a supplementary one
        assert report["regain"] == []
        assert report["umask"] == 0o027
        assert report["unix_mode"] == 0o750  # 0o777 less the umask
        assert report["unix_owner"] == uid
        assert _ask(report["port"]) == f"{uid} {gid}"  # the socket bound as root serves the new user's code
    assert not os.path.exists(unix_path)


@requires_root
def test_drop_to_ids_without_entries_sets_just_that_group(drop_dir: str) -> None:
    unix_path = os.path.join(drop_dir, "after.sock")
    for report, _proc in _run([54321, "54322", 0o077, unix_path]):
        assert report["resuid"] == [54321] * 3
        assert report["resgid"] == [54322] * 3
        assert report["groups"] == [54322]
        assert report["regain"] == []
        assert report["unix_mode"] == 0o700
        assert _ask(report["port"]) == "54321 54322"


NOT_ROOT = r"""
import os, sys
from sockserve._privileges import PrivilegeError, drop_privileges
if os.geteuid() == 0:
    drop_privileges("nobody", None, None)
drop_privileges(os.geteuid(), os.getegid(), 0o022)   # already who it asks to be: a no-op, no root needed
try:
    drop_privileges(0, 0, None)
except PrivilegeError as error:
    print(error)
else:
    print("became root again")
"""


@requires_nobody
def test_a_change_needs_root_and_says_so() -> None:
    done = subprocess.run([sys.executable, "-c", NOT_ROOT], capture_output=True, text=True, timeout=30, check=True)
    message = done.stdout.strip()
    assert "cannot switch to user root (uid 0)" in message
    assert "only root can change its user or group" in message


def test_unknown_names_are_refused_by_name() -> None:
    with pytest.raises(PrivilegeError, match="unknown user 'no-such-user-x'"):
        drop_privileges("no-such-user-x", None, None)
    with pytest.raises(PrivilegeError, match="unknown group 'no-such-group-x'"):
        drop_privileges(0, "no-such-group-x", None)


def test_an_id_without_an_entry_needs_its_group_named() -> None:
    with pytest.raises(PrivilegeError, match="user 54321 has no entry in the user database: name its group too"):
        resolve_identity(54321, None)
    identity = resolve_identity(54321, 54321)
    assert identity is not None
    assert (identity.uid, identity.gid, identity.groups) == (54321, 54321, (54321,))


@requires_nobody
def test_the_users_own_group_by_default() -> None:
    assert NOBODY is not None
    identity = resolve_identity("nobody", None)
    assert identity is not None
    assert (identity.uid, identity.gid, identity.user_name) == (NOBODY.pw_uid, NOBODY.pw_gid, "nobody")
    assert identity.describe().startswith(f"user nobody (uid {NOBODY.pw_uid}), ")
    assert resolve_identity(str(NOBODY.pw_uid), None) == identity


@pytest.mark.parametrize("value", [-1, 0o1000, True, "022"])
def test_a_bad_umask_is_refused(value: object) -> None:
    with pytest.raises(PrivilegeError, match="a umask is a number from 0 to 0o777"):
        drop_privileges(None, None, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-3, True, 2**32 - 1, "99999999999"])
def test_a_bad_id_is_refused(value: object) -> None:
    with pytest.raises(PrivilegeError, match="a user or group"):
        resolve_identity(value, None)  # type: ignore[arg-type]
    with pytest.raises(PrivilegeError, match="a user or group"):
        resolve_identity(0, value)  # type: ignore[arg-type]


def test_the_umask_alone_needs_no_root(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        drop_privileges(None, None, 0o077)
        (tmp_path / "f").write_text("x")
        assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600
        drop_privileges(None, None, None)  # nothing asked: nothing changes
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(before)


@requires_nobody
def test_a_process_that_could_regain_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If setuid(0) still works after the switch (a saved id of 0, a kept
    capability), the drop fails instead of returning. Simulated: the switch
    calls are recorded, not made, so setuid(0) "succeeds"."""
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for name in ("setgroups", "setgid", "setuid"):
        monkeypatch.setattr(os, name, lambda value, name=name: calls.append((name, value)))
    with pytest.raises(PrivilegeError, match="could still regain root's user"):
        drop_privileges("nobody", None, None)
    assert NOBODY is not None
    # the order that leaves no way back: groups, group, user; then the check
    assert [name for name, _ in calls] == ["setgroups", "setgid", "setuid", "setuid"]
    assert calls[2] == ("setuid", NOBODY.pw_uid)
    assert calls[3] == ("setuid", 0)
