"""Walking and hashing trees: shards, parallel hashing, and never leaving the tree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from trainwarden.errors import InputError
from trainwarden.manifest import Manifest, hash_tree, walk_tree
from trainwarden.manifest._tree import open_beneath


def test_walk_lists_regular_files_and_reports_the_rest(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f.bin").write_bytes(b"x" * 5)
    (tmp_path / "g").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "g")
    (tmp_path / "dirlink").symlink_to(tmp_path / "d", target_is_directory=True)
    os.mkfifo(tmp_path / "fifo")
    tree = walk_tree(tmp_path)
    assert tree.is_dir
    assert tree.files == (("d/e/f.bin", 5), ("g", 0))
    assert tree.symlinks == ("dirlink", "link")
    assert tree.special == ("fifo",)


def test_walk_of_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        walk_tree(tmp_path / "nope")


def test_shards_hash_exact_ranges_in_parallel(tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 20) + 3)
    (tmp_path / "w").write_bytes(data)
    (tmp_path / "small").write_bytes(b"abc")
    result = hash_tree(walk_tree(tmp_path), shard_size=1 << 20, workers=3)
    assert not result.failed
    by_path = {e.path: e for e in result.entries}
    shards = by_path["w"].shards
    assert [(s.start, s.end) for s in shards] == [
        (i << 20, min((i + 1) << 20, len(data))) for i in range(6)
    ]
    for s in shards:
        assert s.digest == hashlib.sha256(data[s.start : s.end]).hexdigest()
    assert by_path["small"].shards[0].digest == hashlib.sha256(b"abc").hexdigest()


def test_files_method_hashes_whole_files_and_empty_ones(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"hello")
    (tmp_path / "e").write_bytes(b"")
    result = hash_tree(walk_tree(tmp_path), method="files")
    digests = {e.path: e.shards[0].digest for e in result.entries}
    assert digests == {
        "a": hashlib.sha256(b"hello").hexdigest(),
        "e": hashlib.sha256(b"").hexdigest(),
    }
    manifest = Manifest(name="t", files=result.entries, method="files")
    assert [name for name, _ in manifest.resources()] == ["a", "e"]


def test_file_replaced_by_symlink_after_walk_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w").write_bytes(b"weights")
    (tmp_path / "secret").write_bytes(b"weights")
    tree = walk_tree(tmp_path / "ckpt")
    # Race: swap the file for a symlink between the walk and the hash.
    (tmp_path / "ckpt" / "w").unlink()
    (tmp_path / "ckpt" / "w").symlink_to(tmp_path / "secret")
    result = hash_tree(tree)
    assert result.entries == ()
    assert [rel for rel, _ in result.failed] == ["w"]


def test_directory_replaced_by_symlink_after_walk_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "sub" / "w").write_bytes(b"weights")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w").write_bytes(b"weights")
    tree = walk_tree(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "sub" / "w").unlink()
    (tmp_path / "ckpt" / "sub").rmdir()
    (tmp_path / "ckpt" / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(OSError):
        open_beneath(tmp_path / "ckpt", True, "sub/w")
    assert [rel for rel, _ in hash_tree(tree).failed] == ["sub/w"]


def test_file_truncated_after_walk_is_reported(tmp_path: Path) -> None:
    (tmp_path / "w").write_bytes(b"x" * 1000)
    tree = walk_tree(tmp_path)
    os.truncate(tmp_path / "w", 10)
    result = hash_tree(tree)
    assert result.failed
    assert "size changed from 1000 to 10 bytes" in result.failed[0][1]
    assert result.changed == {"w"}
