"""The pid file: atomic, refused while its pid lives, replaced when stale,
removed only by the process that wrote it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockserve._pidfile import PidFile, PidFileError


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A process that is running until the test ends."""
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as proc:
        try:
            yield proc.pid
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)


def test_writes_our_pid_and_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    with PidFile(path) as pidfile:
        assert path.read_text() == f"{os.getpid()}\n"
        assert pidfile.pid == os.getpid()
        assert [p.name for p in tmp_path.iterdir()] == ["app.pid"]  # no temporary file left
    assert not path.exists()
    assert pidfile.pid is None


def test_refuses_a_live_process_by_pid(tmp_path: Path, live_pid: int) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{live_pid}\n")
    with pytest.raises(PidFileError, match=f"names pid {live_pid}, which is running") as caught:
        PidFile(path).acquire()
    assert "\n" not in str(caught.value)
    assert path.read_text() == f"{live_pid}\n"  # left as it was


def test_replaces_a_stale_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    path = tmp_path / "app.pid"
    path.write_bytes(done.stdout)  # that process has exited and been reaped
    with PidFile(path):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


# A zombie: exited, not yet reaped. kill(pid, 0) still finds it, yet it serves nothing.
ZOMBIE = r"""
import os, sys
from sockserve._pidfile import PidFile
child = os.fork()
if child == 0:
    os._exit(0)
os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)   # it has exited; not reaped yet
with open(sys.argv[1], "w") as f:
    f.write(f"{child}\n")
with PidFile(sys.argv[1]):
    print(open(sys.argv[1]).read() == f"{os.getpid()}\n")
os.waitpid(child, 0)
"""


def test_a_zombie_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    done = subprocess.run(
        [sys.executable, "-c", ZOMBIE, str(path)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "True"


def test_our_own_pid_is_stale(tmp_path: Path) -> None:
    """In a container the server is pid 1 on every start: the last run's file names it."""
    path = tmp_path / "app.pid"
    path.write_text(f"{os.getpid()}\n")
    with PidFile(path):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_an_empty_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text("")
    with PidFile(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_a_file_that_is_not_a_pid_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    with pytest.raises(PidFileError, match="which is not a pid: refusing to replace it"):
        PidFile(path).acquire()
    assert path.read_text() == "my notes\n"


def test_a_file_someone_else_rewrote_is_left_on_exit(tmp_path: Path, live_pid: int) -> None:
    path = tmp_path / "app.pid"
    with PidFile(path):
        path.write_text(f"{live_pid}\n")  # another server took over (its operator removed ours)
    assert path.read_text() == f"{live_pid}\n"


FORK = r"""
import os, sys
from sockserve._pidfile import PidFile
path = sys.argv[1]
with PidFile(path):
    child = os.fork()
    if child == 0:
        sys.exit(0)   # the child leaves the with block too
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    print(open(path).read() == f"{os.getpid()}\n")
print(os.path.exists(path))
"""


def test_a_forked_child_leaving_does_not_remove_the_parents_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    done = subprocess.run(
        [sys.executable, "-c", FORK, str(path)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == ["True", "False"]  # still there after the child; gone after the parent


def test_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(PidFileError, match="No such file or directory"):
        PidFile(tmp_path / "missing" / "app.pid").acquire()


def test_a_path_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "app.pid").mkdir()
    with pytest.raises(PidFileError, match="cannot be"):
        PidFile(tmp_path / "app.pid").acquire()
    assert [p.name for p in tmp_path.iterdir()] == ["app.pid"]  # the temporary file is cleaned up


def test_held_twice_is_an_error(tmp_path: Path) -> None:
    with PidFile(tmp_path / "app.pid") as pidfile, pytest.raises(PidFileError, match="already held"):
        pidfile.acquire()


def test_a_removal_that_fails_is_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "app.pid"

    def refuse(target: object) -> None:
        raise PermissionError(13, "Permission denied")

    with caplog.at_level(logging.WARNING, logger="sockserve"), PidFile(path):
        monkeypatch.setattr(os, "unlink", refuse)  # as after dropping root in /run
    monkeypatch.undo()
    assert [r.getMessage() for r in caplog.records] == [f"could not remove pid file {str(path)!r}: Permission denied"]
    assert path.exists()


def test_a_relative_path_survives_a_change_of_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    with PidFile("app.pid"):
        os.chdir("elsewhere")
    assert not (tmp_path / "app.pid").exists()
