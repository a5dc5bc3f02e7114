"""The parallel build writes what a serial one does; chunk ids are never reused and announced."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from index.prepare import PARALLEL_MIN_FILES, BuildStopped
from index.ranking import search
from index.store import INDEX_FILE, ChunkChanges
from index.workspace import WorkspaceIndex

from .conftest import write


def _many_files(root: Path, count: int) -> None:
    write(
        root,
        {
            f"pkg{n % 7}/mod_{n}.py": (
                f"import os\n\n\ndef handler_{n}(request):\n    return request.get('k{n}')\n\n\n"
                f"class Widget{n}:\n    def render_{n}(self):\n        return {n}\n"
            )
            for n in range(count)
        },
    )
    write(root, {"secrets/.env": "TOKEN=x\n", "notes/key.py": "K = 'AKIAIOSFODNN7EXAMPL3'\n"})


def _rows(cache: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(cache / INDEX_FILE)
    try:
        chunks = db.execute("SELECT * FROM chunks ORDER BY id").fetchall()
        symbols = db.execute("SELECT * FROM symbols ORDER BY chunk_id, ordinal, name").fetchall()
        return [*chunks, *symbols]
    finally:
        db.close()


def test_a_parallel_build_equals_a_serial_one(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _many_files(root, PARALLEL_MIN_FILES + 20)
    serial = WorkspaceIndex([root], cache_dir=tmp_path / "serial", workers=1)
    parallel = WorkspaceIndex([root], cache_dir=tmp_path / "parallel", workers=2)
    one, two = serial.refresh(), parallel.refresh()
    assert (two.files, two.chunks, two.symbols) == (one.files, one.chunks, one.symbols)
    assert two.indexed == PARALLEL_MIN_FILES + 20
    assert two.skipped == one.skipped and "notes/key.py" in two.skipped
    assert two.root_hash == one.root_hash
    serial.close()
    parallel.close()
    assert _rows(tmp_path / "parallel") == _rows(tmp_path / "serial")
    reopened = WorkspaceIndex([root], cache_dir=tmp_path / "parallel")
    assert [s.name for s in search(reopened, "handler_117", 1)] == ["handler_117"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stopped_build_keeps_nothing_and_the_next_one_is_whole(
    tmp_path: Path, workers: int
) -> None:
    root = tmp_path / "repo"
    _many_files(root, PARALLEL_MIN_FILES + 20)
    stop = threading.Event()
    seen: list[str] = []

    def progress(done: int, total: int, key: str) -> None:
        seen.append(key)
        if len(seen) == 50:
            stop.set()

    workspace = WorkspaceIndex([root], cache_dir=tmp_path / "cache", workers=workers)
    with pytest.raises(BuildStopped):
        workspace.refresh(progress, stop)
    assert len(seen) == 50
    assert workspace.is_empty()
    report = workspace.refresh()
    assert report.indexed == PARALLEL_MIN_FILES + 20
    assert [s.name for s in search(workspace, "handler_117", 1)] == ["handler_117"]
    workspace.close()


def test_chunk_ids_are_never_reused_and_changes_are_announced(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, {"a.py": "def one():\n    pass\n", "b.py": "def two():\n    pass\n"})
    workspace = WorkspaceIndex([root])
    heard: list[ChunkChanges] = []
    workspace.chunk_listeners.append(heard.append)
    first = workspace.refresh()
    assert set(first.added_chunks) == workspace.chunk_ids() and first.removed_chunks == []
    assert heard == [ChunkChanges(first.added_chunks, [])]

    old_b = [ref.id for ref, _ in workspace.definitions("two")]
    assert workspace.update_file(root / "b.py", "def three():\n    pass\n")
    new_b = [ref.id for ref, _ in workspace.definitions("three")]
    assert heard[-1] == ChunkChanges(new_b, old_b)
    assert min(new_b) > max(first.added_chunks)

    assert workspace.remove_file(root / "b.py")
    assert heard[-1] == ChunkChanges([], new_b)
    workspace.close()

    (root / "b.py").unlink()
    write(root, {"a.py": "def one_again():\n    pass\n"})
    again = WorkspaceIndex([root])
    report = again.refresh()
    assert report.removed_chunks and set(report.removed_chunks) <= set(first.added_chunks)
    assert min(report.added_chunks) > max(new_b)
    assert again.chunk_ids() == set(report.added_chunks)


def test_quiet_refresh_announces_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, {"a.py": "def one():\n    pass\n"})
    WorkspaceIndex([root]).refresh()
    workspace = WorkspaceIndex([root])
    heard: list[ChunkChanges] = []
    workspace.chunk_listeners.append(heard.append)
    report = workspace.refresh()
    assert (report.added_chunks, report.removed_chunks, heard) == ([], [], [])


def test_a_script_without_a_main_guard_still_gets_a_complete_index(tmp_path: Path) -> None:
    # Spawned workers re-run such a script and die; the build finishes in one process instead.
    root = tmp_path / "repo"
    _many_files(root, PARALLEL_MIN_FILES + 5)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from index.workspace import WorkspaceIndex\n"
        f"report = WorkspaceIndex([Path({str(root)!r})], cache_dir=Path({str(tmp_path)!r}) / 'c',"
        " workers=2).refresh()\n"
        "print('INDEXED', report.indexed, report.files)\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count = PARALLEL_MIN_FILES + 5
    assert f"INDEXED {count} {count}" in done.stdout
    assert "continuing in one process" in done.stderr
