"""A file rewritten while it is hashed is reported, never digested as bytes that never coexisted.

The rewrite happens inside the hashing progress hook, which runs in the hashing thread after
each MiB: the attack lands between two reads of the same file, deterministically.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trainwarden.errors import ConfigError, InputError
from trainwarden.manifest import (
    MIN_SHARD_SIZE,
    TreeChanged,
    UnsupportedTree,
    checkpoint_digest,
    digest_path,
    file_digest,
    hash_tree,
    walk_tree,
)

MIB = 1 << 20


def _tick() -> None:
    # File times have the kernel's clock granularity (a few ms on older kernels): make sure
    # the rewrite lands on a later tick than the walk. Not a timing assertion: nothing
    # below depends on how long anything takes.
    time.sleep(0.02)


def rewrite_in_place(path: Path, *, keep_mtime: bool) -> None:
    """Overwrite the first MiB with other bytes of the same length (size unchanged)."""
    st = path.stat()
    _tick()
    with path.open("r+b") as fh:
        fh.write(b"\xee" * MIB)
    if keep_mtime:
        # An insider covering tracks restores the mtime; the ctime still moves.
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def replace_by_rename(path: Path) -> None:
    _tick()
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(b"\xee" * path.stat().st_size)
    tmp.replace(path)


def grow(path: Path) -> None:
    _tick()
    with path.open("ab") as fh:
        fh.write(b"appended")


def once(action: Callable[[], None]) -> Callable[[int, int], None]:
    """A progress hook that runs ``action`` the first time it is called (after one MiB)."""
    fired: list[bool] = []

    def hook(done: int, total: int) -> None:
        if not fired:
            fired.append(True)
            action()

    return hook


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """A checkpoint directory with one 3 MiB file and a small one."""
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "weights.bin").write_bytes(os.urandom(3 * MIB))
    (root / "config.json").write_text("{}")
    return root


@pytest.mark.parametrize(
    "attack",
    [
        lambda p: rewrite_in_place(p, keep_mtime=False),
        lambda p: rewrite_in_place(p, keep_mtime=True),
        replace_by_rename,
        grow,
    ],
    ids=["rewrite", "rewrite-mtime-restored", "replace-by-rename", "grow"],
)
@pytest.mark.parametrize("shard_size", [MIN_SHARD_SIZE, 1 << 28], ids=["3-shards", "1-shard"])
def test_file_changed_while_hashed_is_never_digested(
    big: Path, attack: Callable[[Path], None], shard_size: int
) -> None:
    target = big / "weights.bin"
    with pytest.raises(TreeChanged, match=r"weights\.bin") as info:
        digest_path(big, shard_size=shard_size, workers=1, progress=once(lambda: attack(target)))
    assert "never existed together" in str(info.value)


def test_hash_tree_lists_the_changed_file(big: Path) -> None:
    target = big / "weights.bin"
    tree = walk_tree(big)
    result = hash_tree(
        tree, shard_size=MIN_SHARD_SIZE, workers=2, progress=once(lambda: grow(target))
    )
    assert result.changed == {"weights.bin"}
    assert [rel for rel, _ in result.failed] == ["weights.bin"]
    assert [e.path for e in result.entries] == ["config.json"]


def test_file_changed_between_walk_and_hash(big: Path) -> None:
    tree = walk_tree(big)
    rewrite_in_place(big / "weights.bin", keep_mtime=True)
    result = hash_tree(tree)
    assert result.changed == {"weights.bin"}
    assert "after the walk" in dict(result.failed)["weights.bin"]


def test_empty_file_written_after_the_walk(tmp_path: Path) -> None:
    (tmp_path / "DONE").write_bytes(b"")
    tree = walk_tree(tmp_path)
    _tick()
    (tmp_path / "DONE").write_bytes(b"late")
    result = hash_tree(tree)
    assert result.changed == {"DONE"}


def test_unchanged_tree_digests_the_same_with_and_without_progress(big: Path) -> None:
    seen: list[tuple[int, int]] = []
    a = digest_path(
        big, shard_size=MIN_SHARD_SIZE, workers=2, progress=lambda d, t: seen.append((d, t))
    )
    b = digest_path(big, shard_size=MIN_SHARD_SIZE, workers=1)
    assert a == b
    total = 3 * MIB + 2
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # one call at a time, increasing
    assert checkpoint_digest(big, shard_size=MIN_SHARD_SIZE) == a.digest


def test_file_digest_is_plain_sha256_and_refuses_special_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    assert file_digest(path) == "sha256:" + hashlib.sha256(b"abc" * 1000).hexdigest()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="FIFO"):
        file_digest(tmp_path / "fifo")  # never opened for a blocking read
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(InputError, match="symlink loop"):
        file_digest(tmp_path / "loop")
    with pytest.raises(InputError, match="directory"):
        file_digest(tmp_path)


def test_digest_path_refuses_what_it_cannot_cover(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w").write_bytes(b"w")
    (tmp_path / "d" / "link").symlink_to(tmp_path / "d" / "w")
    with pytest.raises(UnsupportedTree, match="link is a symlink"):
        digest_path(tmp_path / "d")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UnsupportedTree, match="it is a symlink"):
        digest_path(tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsupportedTree, match="not a regular file"):
        digest_path(tmp_path / "fifo")
    with pytest.raises(InputError, match="cannot read"):
        digest_path(tmp_path / "missing")
    with pytest.raises(ConfigError, match="shard_size"):
        digest_path(tmp_path / "d", shard_size=1000)
    with pytest.raises(ConfigError, match="method"):
        hash_tree(walk_tree(tmp_path / "d" / "w"), method="md5")
