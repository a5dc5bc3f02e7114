"""Which files of a workspace are indexed, and why the others are not.

In a git work tree the candidates are `git ls-files` (tracked, plus untracked files that
`.gitignore` does not exclude); elsewhere a directory walk that honours `.gitignore` files itself.
`.bastionignore` (gitignore syntax) applies on top of both. Secret material is never read past the
content check, and binary, vendored, minified and huge files are left out; every skip has a reason.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from .secret_rules import secret_content, secret_name

MAX_FILE_BYTES = 1_000_000
MAX_LINE_CHARS = 1_000
BASTIONIGNORE = ".bastionignore"

VENDORED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "bower_components",
        "vendor",
        "third_party",
        "third-party",
        "thirdparty",
        "site-packages",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".eggs",
        ".idea",
        ".vscode-test",
    }
)
MINIFIED_SUFFIXES = (".min.js", ".min.css", ".min.mjs", "-min.js", ".bundle.js")
BINARY_SUFFIXES = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".pdf", ".zip", ".gz", ".tgz",
        ".bz2", ".xz", ".7z", ".tar", ".whl", ".jar", ".class", ".so", ".dylib", ".dll", ".exe",
        ".o", ".a", ".pyc", ".pyo", ".bin", ".gguf", ".safetensors", ".pt", ".onnx", ".npy",
        ".sqlite", ".db", ".woff", ".woff2", ".ttf", ".otf", ".mp3", ".mp4", ".wav", ".mov",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    """A file that passed the path rules; its content is checked when it is read."""

    root: Path
    relpath: str
    # From the stat that discovery made anyway (-1: not known), so a refresh need not stat again.
    size: int = -1
    mtime_ns: int = 0

    @property
    def path(self) -> Path:
        return self.root / self.relpath


@dataclass
class Discovery:
    """The candidates of every root, and the files skipped by path with their reasons."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _git_files(root: Path) -> list[str] | None:
    """Tracked and unignored untracked files relative to `root`, or None outside a git tree."""
    try:
        inside = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = {name for name in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if name}
    return sorted(names)


def _spec(lines: list[str]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _read_ignore(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _walk_files(root: Path) -> Iterator[str]:
    """Files under `root` relative to it, honouring nested `.gitignore` files."""
    # Each directory's .gitignore applies to paths relative to that directory.
    stack: list[tuple[Path, list[tuple[str, pathspec.GitIgnoreSpec]]]] = [(root, [])]
    while stack:
        directory, specs = stack.pop()
        rel_dir = directory.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        gitignore = directory / ".gitignore"
        if gitignore.is_file():
            specs = [*specs, (rel_dir, _spec(_read_ignore(gitignore)))]
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            rel = rel_dir + entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.is_symlink():
                continue
            if is_dir and entry.name in VENDORED_DIRS:
                continue
            probe = rel + "/" if is_dir else rel
            if any(spec.match_file(probe[len(base) :]) for base, spec in specs):
                continue
            if is_dir:
                stack.append((Path(entry.path), specs))
            elif entry.is_file(follow_symlinks=False):
                yield rel


def path_skip_reason(relpath: str, size: int) -> str | None:
    """Why a file is skipped from its path and size alone, or None."""
    parts = relpath.split("/")
    name = parts[-1]
    if pattern := secret_name(name):
        return f"secret file name ({pattern})"
    if any(part in VENDORED_DIRS for part in parts[:-1]):
        return "vendored or generated directory"
    lowered = name.lower()
    if lowered.endswith(MINIFIED_SUFFIXES):
        return "minified"
    if Path(lowered).suffix in BINARY_SUFFIXES:
        return "binary"
    if size > MAX_FILE_BYTES:
        return f"huge ({size} bytes > {MAX_FILE_BYTES})"
    return None


def decode_or_skip(data: bytes) -> tuple[str, str | None]:
    """A file's text, and why it is skipped from its content (or None): decoded once for the
    check and the use. Secrets are named by rule, never quoted."""
    if b"\0" in data[:8192]:
        return "", "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "", "binary (not UTF-8)"
    if rule := secret_content(text):
        return "", f"secret content ({rule})"
    if len(text) > 5 * MAX_LINE_CHARS and _looks_minified(text):
        return "", "minified (very long lines)"
    return text, None


def _looks_minified(text: str) -> bool:
    """Lines over 1,000 characters on average, or any over 10,000, without splitting the text."""
    newline = "\n" if "\n" in text else "\r"
    if len(text) / (text.count(newline) + 1) > MAX_LINE_CHARS:
        return True
    # A line of 10,000 characters covers a whole 5,000-character block aligned to 5,000: only
    # blocks without a newline can be inside one.
    block = 5 * MAX_LINE_CHARS
    for start in range(0, len(text), block):
        if text.find(newline, start, start + block) < 0:
            line_start = text.rfind(newline, 0, start) + 1
            line_end = text.find(newline, start)
            if (line_end if line_end >= 0 else len(text)) - line_start > 10 * MAX_LINE_CHARS:
                return True
    return False


def discover(roots: list[Path]) -> Discovery:
    """The candidate files of every root after the path rules, and the path-rule skips."""
    found = Discovery()
    for root in roots:
        root = root.resolve()
        names = _git_files(root)
        if names is None:
            names = list(_walk_files(root))
        bastionignore = root / BASTIONIGNORE
        extra = _spec(_read_ignore(bastionignore)) if bastionignore.is_file() else None
        base = str(root)
        for rel in names:
            if extra is not None and extra.match_file(rel):
                continue
            try:
                info = os.lstat(os.path.join(base, rel))
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):  # symlinks, directories, devices
                continue
            key = display_path(roots, root, rel)
            if reason := path_skip_reason(rel, info.st_size):
                found.skipped[key] = reason
                continue
            found.candidates.append(Candidate(root, rel, info.st_size, info.st_mtime_ns))
    return found


def display_path(roots: list[Path], root: Path, relpath: str) -> str:
    """A file's path as shown and stored: relative to its root, prefixed by it in multi-root."""
    if len(roots) == 1:
        return relpath
    return f"{root.name}/{relpath}"
