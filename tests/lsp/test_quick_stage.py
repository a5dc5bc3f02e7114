"""A cold start: the quick index answers while the full index builds, then gives way to it.

The language server's index service over a real tree and real SQLite. The full build is held at
its start (the real `refresh`, paused by an event) so the test can ask while it runs.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from index.quick import QUICK_DIR
from index.workspace import WorkspaceIndex
from lsp_server import workspace_index
from lsp_server.workspace_index import IndexService

FILES = {
    "lib/parsing.py": "def parse_header(raw):\n    return raw.split(':', 1)\n",
    "lib/util.py": "def unrelated():\n    return 42\n",
}
EDITED = "from lib.parsing import parse_header\n\nfields = parse_header("


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_INDEX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(workspace_index, "QUICK_MIN_FILES", 1)
    root = tmp_path / "repo"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


async def test_the_quick_index_answers_during_a_cold_build_then_is_deleted(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_refresh = WorkspaceIndex.refresh

    def held_refresh(self: WorkspaceIndex, *args: object) -> object:
        release.wait(timeout=30)
        return real_refresh(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(WorkspaceIndex, "refresh", held_refresh)
    lines: list[str] = []
    service = IndexService(lines.append)
    started = asyncio.get_running_loop().create_task(service.start([tree]))
    for _ in range(200):
        if any("quick first stage" in line for line in lines):
            break
        await asyncio.sleep(0.05)
    assert not service.ready
    during = service.for_completion(str(tree / "main.py"), EDITED, 2, 22)
    assert [s.path for s in during][:1] == ["lib/parsing.py"]
    assert during[0].text.startswith("def parse_header")
    quick_dir = next(tree.parent.joinpath("cache").rglob(QUICK_DIR))
    assert quick_dir.is_dir()

    release.set()
    await started
    assert service.ready
    after = service.for_completion(str(tree / "main.py"), EDITED, 2, 22)
    assert [s.path for s in after][:1] == ["lib/parsing.py"]
    assert not quick_dir.exists()
    assert any("2 files searchable" in line for line in lines)
    await service.close()


async def test_a_warm_start_builds_no_quick_index_and_clears_a_leftover(tree: Path) -> None:
    first = IndexService(lambda line: None)
    await first.start([tree])
    await first.close()
    leftover = WorkspaceIndex([tree]).cache_dir / QUICK_DIR
    leftover.mkdir()
    (leftover / "index.sqlite3").write_bytes(b"left by a session killed mid-build")
    lines: list[str] = []
    second = IndexService(lines.append)
    await second.start([tree])
    assert not any("quick first stage" in line for line in lines)
    assert not leftover.exists()
    await second.close()


async def test_a_failing_quick_stage_still_leaves_the_full_index(tree: Path) -> None:
    # A file where the quick index's directory should be: its build fails for real.
    blocker = WorkspaceIndex([tree]).cache_dir / QUICK_DIR
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    lines: list[str] = []
    service = IndexService(lines.append)
    await service.start([tree])
    assert any("quick first stage failed" in line for line in lines)
    assert service.ready
    found = service.for_completion(str(tree / "main.py"), EDITED, 2, 22)
    assert [s.path for s in found][:1] == ["lib/parsing.py"]
    await service.close()
