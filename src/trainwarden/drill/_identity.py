"""Who the insider is: another uid when the drill runs as root, else a second key identity.

Attribution is only worth showing when it is real: the insider's files must be owned by
another uid and its signals must carry another sender uid. When the drill runs as root it
starts the insider as root and the insider drops to :data:`INSIDER_UID` itself, after it has
imported everything it needs (the Python installation may live where that uid cannot read,
such as ``/root``). It keeps ``CAP_KILL`` only for T6: on a real cluster an insider signals a
job through a shared service account; here the kernel then reports the insider's own uid as
the sender, which is what the supervisor's attribution has to show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from trainwarden.errors import InputError

__all__ = [
    "INSIDER_GID",
    "INSIDER_UID",
    "TEAM_GID",
    "InsiderAccount",
    "choose_account",
    "drop_privileges",
]

#: The insider's uid and gid when the drill runs as root (no passwd entry is needed).
INSIDER_UID = 4242
INSIDER_GID = 4242
#: The team group that owns the shared directories (environment, checkpoints, ledger).
TEAM_GID = 4240

_PR_SET_KEEPCAPS = 8
_CAP_KILL = 5
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@dataclass(frozen=True, slots=True)
class InsiderAccount:
    """The OS account the insider's processes run as.

    Attributes:
        uid: uid to switch to, or ``None`` to stay the caller's (``same-uid`` mode).
        gid: Primary gid to switch to.
        groups: Supplementary groups (the team group).
        team_gid: Group owning the shared directories (``None``: the caller's group).
        mode: ``separate-uid`` or ``same-uid``.
        note: Why the mode was chosen, for the drill's output.
    """

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    team_gid: int | None
    mode: str
    note: str


def _mapped(kind: str, ids: tuple[int, ...]) -> bool:
    """Whether every id of ``ids`` exists in this user namespace (``/proc/self/uid_map``)."""
    try:
        with open(f"/proc/self/{kind}_map", encoding="ascii") as fh:  # noqa: PTH123
            ranges = [tuple(int(x) for x in line.split()) for line in fh if line.strip()]
    except (OSError, ValueError):
        return True  # not Linux, or no user namespaces: nothing restricts the ids
    return all(any(start <= i < start + count for start, _, count in ranges) for i in ids)


def choose_account() -> InsiderAccount:
    """The insider account for this process: uid 4242 as root, the same uid otherwise."""
    separate = os.geteuid() == 0
    note = ""
    if separate and not (
        _mapped("uid", (INSIDER_UID,)) and _mapped("gid", (INSIDER_GID, TEAM_GID))
    ):
        separate = False
        note = f" (uid {INSIDER_UID} does not exist in this user namespace)"
    if separate:
        return InsiderAccount(
            uid=INSIDER_UID,
            gid=INSIDER_GID,
            groups=(TEAM_GID,),
            team_gid=TEAM_GID,
            mode="separate-uid",
            note=(
                f"the insider ran as uid {INSIDER_UID} (group {TEAM_GID} shared with the job's "
                "owner), so file owners and signal senders name it"
            ),
        )
    return InsiderAccount(
        uid=None,
        gid=None,
        groups=(),
        team_gid=None,
        mode="same-uid",
        note=(
            f"the insider is a second key identity under the drill's own uid{note or ' (not root)'}"
            ": attribution rests on keys and process ids, not on uids"
        ),
    )


def drop_privileges(account: InsiderAccount, *, keep_kill: bool = False) -> None:
    """Switch this process to the insider's uid/gid (no-op in ``same-uid`` mode).

    With ``keep_kill``, keep ``CAP_KILL`` (and nothing else) across the switch, so the
    process can signal the job's ranks while every signal still carries its own uid.

    Raises:
        InputError: The switch failed (not root, or capabilities refused).
    """
    if account.uid is None or account.gid is None:
        return
    try:
        if keep_kill:
            _prctl(_PR_SET_KEEPCAPS, 1)
        os.setgroups(list(account.groups))
        os.setgid(account.gid)
        os.setuid(account.uid)
        if keep_kill:
            _set_capabilities(1 << _CAP_KILL)
    except OSError as exc:
        raise InputError(
            f"cannot switch to the insider's uid {account.uid}: {exc.strerror or exc}"
        ) from exc
    if os.getuid() != account.uid or os.geteuid() != account.uid:
        raise InputError(f"the insider is still uid {os.geteuid()} after switching")


def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl: {os.strerror(err)}")


def _set_capabilities(mask: int) -> None:
    """Make ``mask`` the effective and permitted capability sets (Linux ``capset``)."""
    import ctypes

    class _Header(ctypes.Structure):
        _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))

    class _Data(ctypes.Structure):
        _fields_ = (
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        )

    libc = ctypes.CDLL(None, use_errno=True)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
