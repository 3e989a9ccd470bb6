"""The access audit names who besides the job's owner can write what the job trusts.

The tests run as root, which can write everything; the audit is about *other* accounts, so
each case gives files to other uids and gids (``os.chown``) and sets modes and POSIX ACLs
(written as the kernel's xattr, so no ``setfacl`` is needed).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import ClassVar

import pytest

from trainwarden.supervise import Writer, audit_access, parse_acl
from trainwarden.supervise._access import ACL_ACCESS, ACL_DEFAULT, encode_acl

ALICE, BOB = 4242, 4343
ML_TEAM, INTERNS = 5151, 5252
# ACL tags (linux/posix_acl_xattr.h).
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


class FakeAccounts:
    """The :class:`trainwarden.supervise.Accounts` interface over fixed tables."""

    users: ClassVar[dict[int, str]] = {0: "root", ALICE: "alice", BOB: "bob"}
    groups: ClassVar[dict[int, str]] = {0: "root", ML_TEAM: "ml-team", INTERNS: "interns"}
    members_of: ClassVar[dict[int, tuple[str, ...]]] = {
        ML_TEAM: ("alice", "bob"),
        INTERNS: ("mallory",),
    }

    def user(self, uid: int) -> str:
        return self.users.get(uid, f"uid:{uid}")

    def group(self, gid: int) -> str:
        return self.groups.get(gid, f"gid:{gid}")

    def members(self, gid: int) -> tuple[str, ...]:
        return self.members_of.get(gid, ())


def _audit(path: Path, **kwargs: object) -> tuple[Writer, ...]:
    result = audit_access(path, role="environment", owner=0, accounts=FakeAccounts(), **kwargs)  # type: ignore[arg-type]
    return result.writers


def _names(writers: tuple[Writer, ...], scope: str = "path") -> set[tuple[str, str, str]]:
    return {(w.kind, w.name, w.via) for w in writers if w.scope == scope}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "site-packages"
    (root / "torch" / "optim").mkdir(parents=True)
    for rel in ("torch/__init__.py", "torch/optim/adamw.py", "torch/optim/sgd.py"):
        (root / rel).write_text("# code\n")
        (root / rel).chmod(0o644)
    for d in (root, root / "torch", root / "torch" / "optim"):
        d.chmod(0o755)
    return root


def _acl_supported(path: Path) -> bool:
    try:
        os.setxattr(
            path, ACL_ACCESS, encode_acl([(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)])
        )
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    os.removexattr(path, ACL_ACCESS)
    return True


def test_a_private_tree_has_no_other_writers(tree: Path) -> None:
    result = audit_access(tree, role="environment", owner=0, accounts=FakeAccounts())
    assert result.writers == ()
    assert result.complete
    assert result.checked >= 6


def test_group_writable_file_names_the_group_and_its_members(tree: Path) -> None:
    target = tree / "torch" / "optim" / "adamw.py"
    os.chown(target, 0, ML_TEAM)
    target.chmod(0o664)
    (writer,) = _audit(tree)
    assert (writer.kind, writer.name, writer.via) == ("group", "ml-team", "mode")
    assert writer.members == ("alice", "bob")
    assert writer.example == str(target)
    assert "group ml-team (alice, bob) via mode" in writer.describe()


def test_world_writable_and_foreign_owner(tree: Path) -> None:
    (tree / "torch" / "__init__.py").chmod(0o646)
    os.chown(tree / "torch" / "optim" / "sgd.py", ALICE, 0)
    assert _names(_audit(tree)) == {("other", "everyone", "mode"), ("user", "alice", "owner")}


def test_a_directory_needs_write_and_search_to_plant_files(tree: Path) -> None:
    optim = tree / "torch" / "optim"
    os.chown(optim, 0, INTERNS)
    optim.chmod(0o765)  # g+rw, no g+x: cannot create entries
    assert _audit(tree) == ()
    optim.chmod(0o775)
    assert _names(_audit(tree)) == {("group", "interns", "mode")}


def test_writable_parent_directories_can_swap_the_tree(tmp_path: Path, tree: Path) -> None:
    os.chown(tmp_path, 0, INTERNS)
    tmp_path.chmod(0o775)
    writers = _audit(tree)
    assert _names(writers, "parent") == {("group", "interns", "mode")}
    assert _names(writers) == set()
    # A sticky parent (like /tmp) does not let others rename what they do not own.
    tmp_path.chmod(0o1777)
    assert _audit(tree) == ()


def test_a_missing_path_is_audited_through_its_nearest_parent(tmp_path: Path) -> None:
    tmp_path.chmod(0o757)
    result = audit_access(
        tmp_path / "ckpt" / "later", role="checkpoints", owner=0, accounts=FakeAccounts()
    )
    assert result.path == str(tmp_path / "ckpt" / "later")
    assert ("other", "everyone", "mode") in _names(result.writers)


def test_posix_acls_name_users_and_groups_through_the_mask(tree: Path) -> None:
    target = tree / "torch" / "optim" / "adamw.py"
    if not _acl_supported(target):
        pytest.skip("this filesystem has no POSIX ACLs")
    entries = [
        (USER_OBJ, 6, 0xFFFFFFFF),
        (USER, 6, BOB),
        (GROUP_OBJ, 4, 0xFFFFFFFF),
        (GROUP, 7, INTERNS),
        (MASK, 6, 0xFFFFFFFF),
        (OTHER, 4, 0xFFFFFFFF),
    ]
    os.setxattr(target, ACL_ACCESS, encode_acl(entries))
    assert parse_acl(os.getxattr(target, ACL_ACCESS)) == entries
    assert _names(_audit(tree)) == {("user", "bob", "acl"), ("group", "interns", "acl")}
    # A mask without w makes the same entries powerless.
    os.setxattr(target, ACL_ACCESS, encode_acl([*entries[:4], (MASK, 4, 0xFFFFFFFF), entries[5]]))
    assert _audit(tree) == ()


def test_default_acls_of_directories_are_reported(tree: Path) -> None:
    optim = tree / "torch" / "optim"
    if not _acl_supported(optim):
        pytest.skip("this filesystem has no POSIX ACLs")
    default = [
        (USER_OBJ, 7, 0xFFFFFFFF),
        (GROUP_OBJ, 5, 0xFFFFFFFF),
        (GROUP, 7, ML_TEAM),
        (MASK, 7, 0xFFFFFFFF),
        (OTHER, 5, 0xFFFFFFFF),
    ]
    os.setxattr(optim, ACL_DEFAULT, encode_acl(default))
    (writer,) = _audit(tree)
    assert (writer.kind, writer.name, writer.default_acl) == ("group", "ml-team", True)


def test_trusted_writers_are_set_apart(tree: Path) -> None:
    os.chown(tree / "torch", ALICE, 0)
    result = audit_access(
        tree, role="environment", owner=0, accounts=FakeAccounts(), trusted_users=["alice"]
    )
    assert result.writers == ()
    assert [w.name for w in result.trusted] == ["alice"]


def test_skipped_subtrees_and_limits(tree: Path) -> None:
    (tree / "torch" / "optim" / "sgd.py").chmod(0o666)
    assert _audit(tree, skip=[tree / "torch" / "optim"]) == ()
    result = audit_access(tree, role="environment", owner=0, accounts=FakeAccounts(), limit=3)
    assert not result.complete
    assert "limit" in result.errors[-1]


def test_sticky_shared_ledger_directories_may_be_created_in(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    (ledger / "writers").mkdir(parents=True)
    os.chown(ledger / "writers", 0, ML_TEAM)
    (ledger / "writers").chmod(0o1775)
    as_ledger = audit_access(
        ledger, role="ledger", owner=0, accounts=FakeAccounts(), sticky_create_ok=True
    )
    assert as_ledger.writers == ()
    elsewhere = audit_access(ledger, role="code", owner=0, accounts=FakeAccounts())
    assert _names(elsewhere.writers) == {("group", "ml-team", "mode")}


@pytest.mark.parametrize("blob", [b"", b"\x02\x00\x00\x00\x01", b"\x03\x00\x00\x00"])
def test_malformed_acls_are_refused(blob: bytes) -> None:
    with pytest.raises(ValueError, match="ACL"):
        parse_acl(blob)


def test_the_system_accounts_resolve_real_names() -> None:
    from trainwarden.supervise import SystemAccounts

    accounts = SystemAccounts()
    assert accounts.user(0) == "root"
    assert accounts.group(0) == "root"
    assert accounts.user(4242424) == "uid:4242424"
    assert "root" in accounts.members(0)
