"""Telling cheaply whether a file changed: its inode, size and modification time."""

from __future__ import annotations

from pathlib import Path

FileStamp = tuple[int, int, int]  # inode, size, mtime in ns


def file_stamp(path: Path) -> FileStamp | None:
    """The file's stamp, or None when it cannot be seen (absent, say)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
