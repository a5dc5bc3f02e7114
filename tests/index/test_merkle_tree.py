"""The Merkle tree of directories: exact change sets, incremental equals rebuilt, persisted."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from index.merkle_tree import DirectoryTree
from index.workspace import WorkspaceIndex

from .conftest import write


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


FILES = {
    "a/b/c.py": _sha("c"),
    "a/b/d.py": _sha("d"),
    "a/e.py": _sha("e"),
    "f/g.py": _sha("g"),
    "top.py": _sha("top"),
}


def test_editing_one_file_changes_exactly_the_directories_on_its_path() -> None:
    tree = DirectoryTree.build(FILES)
    before = dict(tree.dirs)
    changed = tree.apply({"a/b/c.py": _sha("c2")})
    assert set(changed) == {"a/b", "a", ""}
    assert {d for d in tree.dirs if tree.dirs[d] != before[d]} == {"a/b", "a", ""}
    assert tree.dirs["f"] == before["f"]


def test_incremental_updates_equal_a_fresh_build_and_are_order_free() -> None:
    tree = DirectoryTree.build(FILES)
    tree.apply({"a/b/c.py": None, "x/y/z.py": _sha("z"), "top.py": _sha("top2")})
    expected = {**FILES, "x/y/z.py": _sha("z"), "top.py": _sha("top2")}
    del expected["a/b/c.py"]
    assert tree.dirs == DirectoryTree.build(expected).dirs
    assert tree.verify()
    reordered = DirectoryTree.build(dict(reversed(list(expected.items()))))
    assert reordered.root_hash == tree.root_hash


def test_a_rename_and_deletes_drop_empty_directories() -> None:
    tree = DirectoryTree.build(FILES)
    changed = tree.apply({"f/g.py": None, "h/g.py": FILES["f/g.py"]})
    assert changed["f"] is None and changed["h"] is not None and "" in changed
    assert "f" not in tree.dirs and tree.children("") == ["a", "h", "top.py"]
    # The same content under another name is another tree.
    assert tree.root_hash != DirectoryTree.build(FILES).root_hash
    tree.apply({"h/g.py": None, "f/g.py": FILES["f/g.py"]})
    assert tree.root_hash == DirectoryTree.build(FILES).root_hash


def test_diff_names_changed_directories_and_files() -> None:
    old = DirectoryTree.build(FILES)
    new = old.copy()
    new.apply({"a/b/d.py": _sha("d2"), "f/g.py": None, "f/new.py": _sha("n"), "top.py": None})
    diff = old.diff(new)
    assert diff.changed_dirs == ["", "a", "a/b", "f"]
    assert diff.changed_files == ["a/b/d.py"]
    assert diff.added_files == ["f/new.py"]
    assert diff.removed_files == ["f/g.py", "top.py"]
    assert old.diff(old.copy()).empty


def test_a_file_and_a_directory_swapping_names_differ() -> None:
    as_file = DirectoryTree.build({"x": _sha("1")})
    as_dir = DirectoryTree.build({"x/y": _sha("1")})
    assert as_file.root_hash != as_dir.root_hash


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write(
        root,
        {
            "pkg/core/alpha.py": "def alpha():\n    return 1\n",
            "pkg/core/beta.py": "def beta():\n    return 2\n",
            "pkg/util/gamma.py": "def gamma():\n    return 3\n",
            "docs/readme.md": "# Demo\n",
        },
    )
    return root


def _touch_later(path: Path) -> None:
    stamp = path.stat().st_mtime_ns + 2 * 10**9
    os.utime(path, ns=(stamp, stamp))


def test_refresh_reports_changed_directories_and_reindexes_only_changed_files(
    tmp_path: Path,
) -> None:
    root = _repo(tmp_path)
    first = WorkspaceIndex([root]).refresh()
    assert first.changed_dirs == ["", "docs", "pkg", "pkg/core", "pkg/util"]
    assert first.root_hash

    same = WorkspaceIndex([root]).refresh()
    assert (same.indexed, same.changed_dirs, same.root_hash) == (0, [], first.root_hash)

    write(root, {"pkg/core/beta.py": "def beta():\n    return 22\n"})
    _touch_later(root / "pkg/core/beta.py")
    _touch_later(root / "docs/readme.md")  # touched, same content: not a change
    edited = WorkspaceIndex([root]).refresh()
    assert (edited.indexed, edited.unchanged) == (1, 3)
    assert edited.changed_dirs == ["", "pkg", "pkg/core"]
    assert edited.root_hash != first.root_hash

    (root / "pkg/util/gamma.py").rename(root / "pkg/core/gamma.py")
    moved = WorkspaceIndex([root]).refresh()
    assert (moved.indexed, moved.removed) == (1, 1)
    assert moved.changed_dirs == ["", "pkg", "pkg/core", "pkg/util"]
    reopened = WorkspaceIndex([root])
    assert reopened.tree().children("pkg") == ["pkg/core"]
    assert reopened.tree().verify()
    assert [ref.path for ref, _ in reopened.definitions("gamma")] == ["pkg/core/gamma.py"]


def test_the_tree_is_persisted_and_follows_single_file_updates(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    before = dict(workspace.tree().dirs)
    assert workspace.update_file(root / "pkg/util/gamma.py", "def gamma():\n    return 4\n")
    after = workspace.tree().dirs
    assert {d for d in after if after[d] != before[d]} == {"", "pkg", "pkg/util"}
    assert workspace.remove_file(root / "docs/readme.md")
    assert "docs" not in workspace.tree().dirs
    stored = WorkspaceIndex([root])
    assert stored.tree().dirs == workspace.tree().dirs
    assert stored.root_hash() == workspace.root_hash()
    assert stored.tree().verify()


def test_fresh_builds_of_the_same_files_have_the_same_root(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    one = WorkspaceIndex([root], cache_dir=tmp_path / "one").refresh()
    two = WorkspaceIndex([root], cache_dir=tmp_path / "two", workers=1).refresh()
    assert one.root_hash == two.root_hash
    write(root, {"docs/more.md": "more\n"})
    three = WorkspaceIndex([root], cache_dir=tmp_path / "one").refresh()
    assert three.root_hash != one.root_hash
    assert three.changed_dirs == ["", "docs"]
