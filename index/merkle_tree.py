"""A Merkle tree of directories over the indexed files' content hashes.

A file's hash is its content's SHA-256 (the one the index stores); a directory's hash is the
SHA-256 of its sorted (kind, name, child hash) entries. Two trees with the same root hash hold the
same paths with the same contents, and a diff only descends into directories whose hashes differ.
Paths are the index's stored paths ("pkg/mod.py"); the root directory is "". Directories exist only
while they hold an indexed file, so an empty directory has no hash of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

ROOT = ""


def parent_of(path: str) -> str:
    """The directory holding `path` ("" for a top-level entry)."""
    slash = path.rfind("/")
    return path[:slash] if slash >= 0 else ROOT


def _name_of(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _depth(directory: str) -> int:
    return directory.count("/") + 1 if directory else 0


@dataclass
class TreeDiff:
    """What differs between two trees: directories (added, removed or changed) and files."""

    changed_dirs: list[str] = field(default_factory=list)
    added_files: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        files = self.added_files or self.removed_files or self.changed_files
        return not (self.changed_dirs or files)


class DirectoryTree:
    """Directory hashes over file hashes, updated along the changed paths only."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.dirs: dict[str, str] = {}
        self._members: dict[str, set[str]] = {ROOT: set()}

    @classmethod
    def build(cls, files: Mapping[str, str]) -> DirectoryTree:
        """A tree over `files` (path -> content hash), every directory hashed."""
        tree = cls()
        tree.apply(files)
        return tree

    @classmethod
    def restore(cls, files: Mapping[str, str], dirs: Mapping[str, str]) -> DirectoryTree:
        """A tree from stored hashes; rebuilt from the files if the stored directories disagree."""
        tree = cls()
        for path, digest in files.items():
            tree.files[path] = digest
            tree._link(path)
        if set(dirs) != set(tree._members):
            return cls.build(files)
        tree.dirs = dict(dirs)
        return tree

    @property
    def root_hash(self) -> str:
        return self.dirs[ROOT] if ROOT in self.dirs else self._hash_dir(ROOT)

    def copy(self) -> DirectoryTree:
        other = DirectoryTree()
        other.files = dict(self.files)
        other.dirs = dict(self.dirs)
        other._members = {name: set(members) for name, members in self._members.items()}
        return other

    def children(self, directory: str) -> list[str]:
        """The paths directly inside `directory`, sorted."""
        return sorted(_join(directory, name) for name in self._members.get(directory, ()))

    def apply(self, changes: Mapping[str, str | None]) -> dict[str, str | None]:
        """Set (hash) or remove (None) files; the directories whose hash changed, new hash or None
        for one that no longer exists. Each affected directory is hashed once."""
        dirty: set[str] = set()
        for path, digest in changes.items():
            if digest is None:
                if self.files.pop(path, None) is not None:
                    dirty.update(self._unlink(path))
            else:
                if self.files.get(path) == digest:
                    continue
                self.files[path] = digest
                dirty.update(self._link(path))
        out: dict[str, str | None] = {}
        for directory in sorted(dirty, key=_depth, reverse=True):
            if directory not in self._members:
                if self.dirs.pop(directory, None) is not None:
                    out[directory] = None
                continue
            digest = self._hash_dir(directory)
            if self.dirs.get(directory) != digest:
                self.dirs[directory] = digest
                out[directory] = digest
        return out

    def diff(self, other: DirectoryTree) -> TreeDiff:
        """What changed from this tree to `other`, found by descending into unequal directories."""
        result = TreeDiff()
        stack = [ROOT]
        while stack:
            directory = stack.pop()
            if directory != ROOT and self.dirs.get(directory) == other.dirs.get(directory):
                continue
            if directory == ROOT and self.root_hash == other.root_hash:
                continue
            result.changed_dirs.append(directory)
            names = self._members.get(directory, set()) | other._members.get(directory, set())
            for name in names:
                path = _join(directory, name)
                before, after = self.files.get(path), other.files.get(path)
                if before is not None and after is not None:
                    if before != after:
                        result.changed_files.append(path)
                elif before is not None:
                    result.removed_files.append(path)
                elif after is not None:
                    result.added_files.append(path)
                if path in self._members or path in other._members:
                    stack.append(path)
        for found in (result.changed_dirs, result.added_files, result.removed_files):
            found.sort()
        result.changed_files.sort()
        return result

    def verify(self) -> bool:
        """Whether every stored directory hash matches its entries (a full recomputation)."""
        return DirectoryTree.build(self.files).dirs == self.dirs

    def _link(self, path: str) -> list[str]:
        """Add `path` to its directory, creating directories up to the root; returns them all."""
        touched = []
        child = path
        while True:
            directory = parent_of(child)
            touched.append(directory)
            members = self._members.get(directory)
            if members is None:
                self._members[directory] = {_name_of(child)}
            else:
                members.add(_name_of(child))
            if directory == ROOT:
                return touched
            child = directory

    def _unlink(self, path: str) -> list[str]:
        """Remove `path` from its directory, dropping directories left empty; returns them all."""
        touched = []
        child, emptied = path, True
        while True:
            directory = parent_of(child)
            touched.append(directory)
            members = self._members.get(directory)
            if emptied and members is not None:
                members.discard(_name_of(child))
                emptied = not members and directory != ROOT
                if emptied:
                    del self._members[directory]
            if directory == ROOT:
                return touched
            child = directory

    def _hash_dir(self, directory: str) -> str:
        digest = hashlib.sha256()
        for name in sorted(self._members.get(directory, ())):
            path = _join(directory, name)
            file_hash = self.files.get(path)
            if file_hash is not None:
                digest.update(f"f {name}\0{file_hash}\n".encode())
            else:
                digest.update(f"d {name}\0{self.dirs[path]}\n".encode())
        return digest.hexdigest()
