"""Access audit: who besides the job's owner can write what the job trusts.

The lesson of the incident: a colleague with write access to the shared PyTorch install, the
code or the checkpoints needs no exploit. For each path the job trusts (and every file below
it, and every directory above it), this names the users and groups that can change it:

- the owner, when it is not the job's owner (an owner can always ``chmod`` and write);
- the group and "everyone" through the mode bits (``g+w``, ``o+w``; a directory also needs
  ``x`` to create or replace entries in it);
- named users and groups of a POSIX ACL (``system.posix_acl_access``, parsed here; the ACL
  mask limits them), and a directory's default ACL (what new files will grant);
- every directory above a path: whoever can write it can rename the path away and put
  another in its place, unless it is sticky (``/tmp``-like) and the path is not theirs.

root can write everything and is the platform itself: it is not listed.
"""

# os.path: string paths and lstat results in a walk of 100k entries.
# ruff: noqa: PTH100, PTH116

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ACL_ACCESS",
    "ACL_DEFAULT",
    "AccessResult",
    "Accounts",
    "SystemAccounts",
    "Writer",
    "audit_access",
    "parse_acl",
]

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
# ACL tags and permission bits (linux/posix_acl_xattr.h, version 2).
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_W = 0x02
_X = 0x01
_ENTRY = struct.Struct("<HHI")
_ACL_UNSUPPORTED = {errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)}
_DEFAULT_LIMIT = 500_000


class Accounts(Protocol):
    """Names of users and groups, and who is in a group."""

    def user(self, uid: int) -> str:
        """The login name of ``uid`` (or ``uid:<n>``)."""
        ...

    def group(self, gid: int) -> str:
        """The name of ``gid`` (or ``gid:<n>``)."""
        ...

    def members(self, gid: int) -> tuple[str, ...]:
        """Users in ``gid``: listed members and users whose primary group it is."""
        ...


class SystemAccounts:
    """:class:`Accounts` from the system databases (``pwd``/``grp``, NSS included)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        self._members: dict[int, tuple[str, ...]] = {}
        self._primary: dict[int, list[str]] | None = None

    def user(self, uid: int) -> str:
        """The login name of ``uid``."""
        if uid not in self._users:
            import pwd

            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = f"uid:{uid}"
        return self._users[uid]

    def group(self, gid: int) -> str:
        """The name of ``gid``."""
        if gid not in self._groups:
            import grp

            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = f"gid:{gid}"
        return self._groups[gid]

    def members(self, gid: int) -> tuple[str, ...]:
        """Listed members plus users whose primary group is ``gid``."""
        if gid not in self._members:
            import grp
            import pwd

            try:
                listed = list(grp.getgrgid(gid).gr_mem)
            except KeyError:
                listed = []
            if self._primary is None:
                self._primary = {}
                with contextlib.suppress(OSError):
                    for entry in pwd.getpwall():
                        self._primary.setdefault(entry.pw_gid, []).append(entry.pw_name)
            names = sorted({*listed, *self._primary.get(gid, [])})
            self._members[gid] = tuple(names)
        return self._members[gid]


@dataclass(frozen=True, slots=True)
class Writer:
    """Someone besides the job's owner who can write a trusted path.

    Attributes:
        kind: ``user``, ``group`` or ``other`` (everyone).
        name: The user or group name (``everyone`` for ``other``).
        via: ``owner``, ``mode`` or ``acl``.
        members: For a group, its users.
        example: The first path where this writer was found.
        count: On how many paths (files and directories) it was found.
        scope: ``path`` (the path or below it) or ``parent`` (a directory above it).
        default_acl: Found in a directory's default ACL (applies to new files).
    """

    kind: str
    name: str
    via: str
    members: tuple[str, ...] = ()
    example: str = ""
    count: int = 1
    scope: str = "path"
    default_acl: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The ``writers`` item of ``preflight.access``."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "via": self.via,
            "example": self.example,
            "count": self.count,
            "scope": self.scope,
        }
        if self.kind == "group":
            out["members"] = list(self.members)
        if self.default_acl:
            out["default_acl"] = True
        return out

    def describe(self) -> str:
        """``group ml-team (alice, bob) via mode on /opt/env/lib/.../torch``."""
        who = {"user": f"user {self.name}", "group": f"group {self.name}", "other": "everyone"}
        members = f" ({', '.join(self.members)})" if self.kind == "group" and self.members else ""
        where = "a parent directory " if self.scope == "parent" else ""
        more = f" and {self.count - 1} more" if self.count > 1 else ""
        return f"{who[self.kind]}{members} via {self.via} on {where}{self.example}{more}"


@dataclass(frozen=True, slots=True)
class AccessResult:
    """Who can write one trusted path.

    Attributes:
        path: The path audited.
        role: ``environment``, ``code``, ``checkpoints``, ``data``, ``ledger`` or ``run``.
        writers: Untrusted writers (not the job's owner, not root, not trusted by flag).
        trusted: Writers excused by ``trusted_users``/``trusted_groups``.
        checked: Paths examined (below and above).
        acl: ``supported``, ``unsupported`` (the filesystem has no ACLs) or ``mixed``.
        complete: Every entry was examined (no limit hit, nothing unreadable).
        errors: What could not be examined, and why.
    """

    path: str
    role: str
    writers: tuple[Writer, ...]
    trusted: tuple[Writer, ...]
    checked: int
    acl: str
    complete: bool
    errors: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The ``preflight.access`` data (without the verdict, which policy decides)."""
        return {
            "path": self.path,
            "role": self.role,
            "writers": [w.to_dict() for w in self.writers],
            "trusted": [w.to_dict() for w in self.trusted],
            "checked": self.checked,
            "acl": self.acl,
            "complete": self.complete,
            "errors": list(self.errors[:20]),
        }


def parse_acl(blob: bytes) -> list[tuple[int, int, int]]:
    """Parse a ``system.posix_acl_*`` xattr value into ``(tag, perm, id)`` entries.

    Raises:
        ValueError: Not a version-2 POSIX ACL.
    """
    if len(blob) < 4 or (len(blob) - 4) % _ENTRY.size:
        raise ValueError("not a POSIX ACL (bad length)")
    if int.from_bytes(blob[:4], "little") != _ACL_VERSION:
        raise ValueError("unsupported POSIX ACL version")
    return [_ENTRY.unpack_from(blob, 4 + i * _ENTRY.size) for i in range((len(blob) - 4) // 8)]


def encode_acl(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """The xattr value of ``(tag, perm, id)`` entries (for tests and tools)."""
    return _ACL_VERSION.to_bytes(4, "little") + b"".join(_ENTRY.pack(*e) for e in entries)


class _Collector:
    def __init__(
        self,
        owner: int,
        accounts: Accounts,
        trusted_users: frozenset[str],
        trusted_groups: frozenset[str],
    ) -> None:
        self.owner = owner
        self.accounts = accounts
        self.trusted_users = trusted_users
        self.trusted_groups = trusted_groups
        self.found: dict[tuple[str, str, str, str, bool], list[Any]] = {}
        self.acl_seen = {"supported": 0, "unsupported": 0}
        self.errors: list[str] = []
        self.checked = 0

    def add(
        self, kind: str, ident: int | None, via: str, path: str, scope: str, default: bool = False
    ) -> None:
        if kind == "user":
            if ident in (0, self.owner):
                return
            name = self.accounts.user(ident or 0)
        elif kind == "group":
            name = self.accounts.group(ident or 0)
        else:
            name = "everyone"
        key = (kind, name, via, scope, default)
        slot = self.found.get(key)
        if slot is None:
            members = self.accounts.members(ident or 0) if kind == "group" else ()
            self.found[key] = [path, 1, members]
        else:
            slot[1] += 1

    def result(self, path: str, role: str, complete: bool) -> AccessResult:
        writers: list[Writer] = []
        trusted: list[Writer] = []
        for (kind, name, via, scope, default), (example, count, members) in sorted(
            self.found.items()
        ):
            writer = Writer(kind, name, via, tuple(members), example, count, scope, default)
            if (kind == "user" and name in self.trusted_users) or (
                kind == "group" and name in self.trusted_groups
            ):
                trusted.append(writer)
            else:
                writers.append(writer)
        acl = (
            "mixed"
            if all(self.acl_seen.values())
            else "unsupported"
            if self.acl_seen["unsupported"]
            else "supported"
        )
        return AccessResult(
            path,
            role,
            tuple(writers),
            tuple(trusted),
            self.checked,
            acl,
            complete and not self.errors,
            tuple(self.errors),
        )


def _acl(path: str, name: str, collector: _Collector) -> list[tuple[int, int, int]] | None:
    try:
        blob = os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _ACL_UNSUPPORTED:
            collector.acl_seen["unsupported"] += 1
            return None
        if exc.errno == getattr(errno, "ENODATA", 61):
            collector.acl_seen["supported"] += 1
        return None
    collector.acl_seen["supported"] += 1
    try:
        return parse_acl(blob)
    except ValueError:
        collector.errors.append(f"{path}: unreadable ACL")
        return None


def _examine(path: str, st: os.stat_result, collector: _Collector, scope: str) -> None:
    """Record who can modify ``path`` (a file, or a directory's entries)."""
    collector.checked += 1
    mode = st.st_mode
    if st.st_uid != collector.owner and st.st_uid != 0:
        collector.add("user", st.st_uid, "owner", path, scope)
    is_dir = stat.S_ISDIR(mode)
    # Writing a file needs w; creating or replacing entries in a directory needs w and x.
    need = _W | _X if is_dir else _W
    group_class = (mode >> 3) & 0o7
    # With an ACL, the group bits of the mode are the ACL mask, which bounds every named
    # user and group entry: without w there, no ACL entry can grant writing, and the ACL
    # need not be read (most files are 0644: this halves the system calls of a walk).
    if group_class & _W:
        entries = _acl(path, ACL_ACCESS, collector)
        if entries:
            mask = next((perm for tag, perm, _ in entries if tag == _MASK), 0o7)
            group_obj = group_class
            for tag, perm, ident in entries:
                if tag == _GROUP_OBJ:
                    group_obj = perm
                elif tag == _USER and (perm & mask & need) == need:
                    collector.add("user", ident, "acl", path, scope)
                elif tag == _GROUP and (perm & mask & need) == need:
                    collector.add("group", ident, "acl", path, scope)
            if (group_obj & mask & need) == need:
                collector.add("group", st.st_gid, "acl", path, scope)
        elif (group_class & need) == need:
            collector.add("group", st.st_gid, "mode", path, scope)
    if (mode & need) == need:
        collector.add("other", None, "mode", path, scope)
    if is_dir and scope == "path":
        default = _acl(path, ACL_DEFAULT, collector)
        if default:
            mask = next((perm for tag, perm, _ in default if tag == _MASK), 0o7)
            for tag, perm, ident in default:
                if tag == _USER and perm & mask & _W:
                    collector.add("user", ident, "acl", path, scope, default=True)
                elif tag == _GROUP and perm & mask & _W:
                    collector.add("group", ident, "acl", path, scope, default=True)


def _examine_parent(path: str, st: os.stat_result, child: os.stat_result, c: _Collector) -> None:
    """Who can replace ``child`` inside the directory ``path``."""
    if st.st_mode & stat.S_ISVTX:
        # Sticky: only the directory's owner and the child's owner can rename or remove it.
        c.checked += 1
        c.add("user", st.st_uid, "owner", path, "parent")
        c.add("user", child.st_uid, "owner", path, "parent")
        return
    _examine(path, st, c, "parent")


def audit_access(
    path: str | os.PathLike[str],
    *,
    role: str,
    owner: int | None = None,
    accounts: Accounts | None = None,
    trusted_users: Sequence[str] = (),
    trusted_groups: Sequence[str] = (),
    recursive: bool = True,
    skip: Sequence[str | os.PathLike[str]] = (),
    sticky_create_ok: bool = False,
    limit: int = _DEFAULT_LIMIT,
    progress: Callable[[int], None] | None = None,
) -> AccessResult:
    """Name everyone besides ``owner`` (and root) who can write ``path``.

    Args:
        path: The trusted path. If it does not exist yet (a checkpoint directory the job
            will create), its nearest existing parent is audited in its place.
        role: What the job trusts it for (recorded as is).
        owner: The job's uid (default: this process's effective uid).
        accounts: User and group names (default: the system's).
        trusted_users: Users whose write access is expected (the platform's deploy account).
        trusted_groups: Groups whose write access is expected.
        recursive: Examine everything below ``path`` too.
        skip: Directories below ``path`` not to descend into (audited under another role).
        sticky_create_ok: In sticky directories, the right to *create* entries is expected
            (a shared ledger: everyone adds their own writer file, none can touch others').
        limit: Stop after this many entries (the result is then marked incomplete).
        progress: Called with the count of entries examined, every 10,000.
    """
    uid = os.geteuid() if owner is None else owner
    collector = _Collector(
        uid, accounts or SystemAccounts(), frozenset(trusted_users), frozenset(trusted_groups)
    )
    target = Path(os.path.abspath(path))
    shown = str(target)
    while not os.path.lexists(target) and target.parent != target:
        target = target.parent
    try:
        top = os.lstat(target)
    except OSError as exc:
        collector.errors.append(f"{target}: {exc.strerror or exc}")
        return collector.result(shown, role, False)
    # Directories above: whoever can write one of them can swap what is below.
    child, child_st = target, top
    for parent in target.parents:
        try:
            pst = os.stat(parent)
        except OSError as exc:
            collector.errors.append(f"{parent}: {exc.strerror or exc}")
            break
        _examine_parent(str(parent), pst, child_st, collector)
        child, child_st = parent, pst
    del child
    complete = True
    if stat.S_ISLNK(top.st_mode):
        # The link itself cannot be written through, but its target is what the job opens.
        with contextlib.suppress(OSError):
            top = os.stat(target)
    skipped = {os.path.abspath(s) for s in skip}
    stack = [(str(target), top)]
    while stack:
        current, st = stack.pop()
        sticky_dir = stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_ISVTX)
        if sticky_dir and sticky_create_ok:
            collector.checked += 1
            collector.add("user", st.st_uid, "owner", current, "path")
        else:
            _examine(current, st, collector, "path")
        if collector.checked >= limit:
            complete = False
            collector.errors.append(f"stopped after {limit} entries (limit)")
            break
        if progress is not None and collector.checked % 10_000 == 0:
            progress(collector.checked)
        if not recursive or not stat.S_ISDIR(st.st_mode):
            continue
        try:
            with os.scandir(current) as it:
                for entry in it:
                    full = entry.path
                    if full in skipped or (entry.name == "objects" and current.endswith(".git")):
                        continue
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        collector.errors.append(f"{full}: {exc.strerror or exc}")
                        continue
                    if stat.S_ISLNK(est.st_mode):
                        continue  # a link's own bits mean nothing; its target is elsewhere
                    stack.append((full, est))
        except OSError as exc:
            collector.errors.append(f"{current}: {exc.strerror or exc}")
    return collector.result(shown, role, complete)
