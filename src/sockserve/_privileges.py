"""Dropping root after binding: switch to an unprivileged user and group, and set the umask.

A server started as root binds its ports below 1024 (or its sockets in
``/run``) and should then stop being root before it serves a single byte. The
order is the one that leaves no way back: the supplementary groups first, then
the group, then the user (once the user is no longer root, it may not change
its groups any more); then a check that ``setuid(0)`` fails, so a process that
could still regain root is refused rather than left serving.

``HOME`` and the rest of the environment are left alone, on purpose: the
process's modules are already imported and configured under the environment it
started with, and changing ``HOME`` half-way would make ``~`` mean two things in
one process (``nobody``'s home is ``/nonexistent``). A service that needs the
new user's ``HOME`` gets it from its service manager (systemd's ``User=`` sets
it), or sets it itself.

Only this process changes. glibc applies ``setuid``/``setgid`` to every thread
of the process, so threads already running (a logging thread) change too;
children forked afterwards (prefork workers) inherit the new identity.
"""

from __future__ import annotations

import os

from ._errors import SockserveError
from ._frozen import FrozenValue
from ._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    _Entry = TypeVar("_Entry")

__all__ = ["Identity", "PrivilegeError", "drop_privileges", "resolve_identity"]


class PrivilegeError(SockserveError):
    """A privilege drop that cannot be done as asked: an unknown user or group,
    a change asked of a process that is not root, or a process that could
    still regain root afterwards. The message names the user or group."""


class Identity(FrozenValue):
    """Who the process becomes: user id, group id, the supplementary groups,
    and the names to print (``None`` for an id with no entry in the user or
    group database)."""

    __slots__ = ("gid", "group_name", "groups", "uid", "user_name")
    _fields = ("uid", "gid", "groups", "user_name", "group_name")

    uid: int
    gid: int
    groups: tuple[int, ...]
    user_name: str | None
    group_name: str | None

    def __init__(
        self, uid: int, gid: int, groups: tuple[int, ...], user_name: str | None, group_name: str | None
    ) -> None:
        self._freeze(uid, gid, groups, user_name, group_name)

    def describe(self) -> str:
        """``user nobody (uid 65534), group nogroup (gid 65534)`` for messages."""
        user = f"user {self.user_name} (uid {self.uid})" if self.user_name else f"uid {self.uid}"
        group = f"group {self.group_name} (gid {self.gid})" if self.group_name else f"gid {self.gid}"
        return f"{user}, {group}"


def _as_id(value: str | int) -> int | None:
    """An id written as an int or as ASCII digits (as chown takes "65534"), else None (a name)."""
    if isinstance(value, bool):
        raise PrivilegeError(f"a user or group is a name or a number, not {value!r}")
    if isinstance(value, int):
        number = value
    elif value.isascii() and value.isdigit():
        number = int(value)
    else:
        return None
    # 2**32 - 1 is (uid_t)-1, which setuid() takes as "leave unchanged".
    if not 0 <= number < 2**32 - 1:
        raise PrivilegeError(f"a user or group id is a number from 0 to {2**32 - 2} (got {value!r})")
    return number


def _look_up(
    value: str | int, by_id: Callable[[int], _Entry], by_name: Callable[[str], _Entry], kind: str
) -> _Entry | int:
    """``value`` (a name or an id) in the ``kind`` database: its entry, or
    the bare id when an id has none (a name must have one)."""
    number = _as_id(value)
    try:
        return by_id(number) if number is not None else by_name(str(value))
    except KeyError:
        if number is None:
            raise PrivilegeError(f"unknown {kind} {value!r}: no such entry in the {kind} database") from None
        return number


def resolve_identity(user: str | int | None, group: str | int | None) -> Identity | None:
    """Look ``user`` and ``group`` up without changing anything; None when both are None.

    A name must exist; a number need not (a container may run ids that
    ``/etc/passwd`` does not list). Without ``group``, the user's own group
    from the user database is taken: keeping root's group would leave the
    process able to read and write what root's group may. A user id with no
    entry, given without a group, is refused for that reason. With ``group``
    only, the user stays as it is. The supplementary groups are the user's
    (``initgroups``), or just the group when the user has no entry or is not
    changed.
    """
    import grp
    import pwd

    if user is None and group is None:
        return None
    user_name: str | None = None
    user_gid: int | None = None
    if user is None:
        uid = os.geteuid()
    else:
        entry = _look_up(user, pwd.getpwuid, pwd.getpwnam, "user")
        if isinstance(entry, int):
            uid = entry
        else:
            uid, user_name, user_gid = entry.pw_uid, entry.pw_name, entry.pw_gid
    group_name: str | None = None
    if group is None:
        if user_gid is None:
            raise PrivilegeError(f"user {user!r} has no entry in the user database: name its group too")
        gid = user_gid
    else:
        group_entry = _look_up(group, grp.getgrgid, grp.getgrnam, "group")
        if isinstance(group_entry, int):
            gid = group_entry
        else:
            gid, group_name = group_entry.gr_gid, group_entry.gr_name
    if group_name is None:
        try:
            group_name = grp.getgrgid(gid).gr_name
        except KeyError:
            pass  # a bare gid: described by its number
    # user_name is set only when a user with an entry was asked for.
    groups = tuple(os.getgrouplist(user_name, gid)) if user_name is not None else (gid,)
    return Identity(uid, gid, groups, user_name, group_name)


def drop_privileges(user: str | int | None, group: str | int | None, umask: int | None = None) -> None:
    """Become ``user`` and ``group`` (names or ids) and set ``umask``; call it after binding.

    ``None`` leaves that part as it is; all three ``None`` is a no-op. The
    umask is set whoever runs this. Changing user or group needs root; a
    process already running as the identity asked for is left alone (so the
    same configuration works when a service manager has already switched
    users). Raises :class:`PrivilegeError`, before changing anything, for an
    unknown name or a change that needs root; and after the change if
    ``setuid(0)`` still works (the caller must then exit, not serve).
    """
    if umask is not None and (isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777):
        raise PrivilegeError(f"a umask is a number from 0 to 0o777 (got {umask!r})")
    identity = resolve_identity(user, group)
    if identity is not None and _needs_change(identity, change_user=user is not None):
        if os.geteuid() != 0:
            raise PrivilegeError(
                f"cannot switch to {identity.describe()}: this process runs as uid {os.geteuid()}, "
                "and only root can change its user or group"
            )
        # Imported while root: after the switch, a Python installed where the new
        # user may not read (under /root, say) can import nothing more.
        import logging  # noqa: F401

        _switch(identity, change_user=user is not None)
        logger.info("dropped privileges: now %s, groups %s", identity.describe(), list(identity.groups))
    if umask is not None:
        os.umask(umask)


def _needs_change(identity: Identity, *, change_user: bool) -> bool:
    if change_user and (os.getuid(), os.geteuid()) != (identity.uid, identity.uid):
        return True
    ids = (os.getgid(), os.getegid())
    return ids != (identity.gid, identity.gid) or sorted(set(os.getgroups())) != sorted(set(identity.groups))


def _switch(identity: Identity, *, change_user: bool) -> None:
    # Groups first: setgroups() and setgid() need root, which setuid() gives up.
    # Called by root, setgid() and setuid() set the real, effective and saved
    # ids all three (POSIX), so no saved id is left to switch back to.
    os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    if not change_user:
        if identity.uid == 0:
            logger.warning("changed the group only: the process still runs as root (give a user to drop root)")
        return
    os.setuid(identity.uid)
    if identity.uid == 0:
        return  # asked to be root: nothing was given up, nothing to check
    # The proof, not the intention: a saved id of 0 (or a capability kept) would let these succeed.
    for regain, what in ((os.setuid, "user"), (os.setgid, "group")):
        if what == "group" and identity.gid == 0:
            continue  # root's group was asked for: having it is no escape
        try:
            regain(0)
        except PermissionError:
            continue
        raise PrivilegeError(f"after switching to {identity.describe()} the process could still regain root's {what}")
