"""Persistence and incremental refresh: counted re-indexing, deletes, corrupt files, permissions."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from index.ranking import search
from index.store import INDEX_FILE, SPAN_CACHE_MIN
from index.workspace import WorkspaceIndex

from .conftest import git_init, write


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write(
        root,
        {
            "pkg/alpha.py": "def alpha_handler():\n    return 'alpha'\n",
            "pkg/beta.py": "def beta_handler():\n    return 'beta'\n",
            "pkg/gamma.py": "def gamma_handler():\n    return 'gamma'\n",
            "README.md": "# Demo\n",
        },
    )
    git_init(root)
    return root


def test_restart_reindexes_only_changed_files(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    first = WorkspaceIndex([root]).refresh()
    assert (first.files, first.indexed, first.unchanged) == (4, 4, 0)

    again = WorkspaceIndex([root]).refresh()
    assert (again.files, again.indexed, again.unchanged, again.removed) == (4, 0, 4, 0)

    write(root, {"pkg/beta.py": "def beta_handler_v2():\n    return 'beta2'\n"})
    os.utime(root / "pkg/alpha.py", ns=(time.time_ns(), time.time_ns() + 10**9))  # touch only
    write(root, {"pkg/new.py": "def delta_handler():\n    pass\n"})
    workspace = WorkspaceIndex([root])
    changed = workspace.refresh()
    assert (changed.files, changed.indexed, changed.unchanged) == (5, 2, 3)
    assert [s.name for s in search(workspace, "beta_handler_v2", 1)] == ["beta_handler_v2"]


def test_a_deleted_file_leaves_the_results(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    assert any(s.path == "pkg/gamma.py" for s in search(workspace, "gamma handler", 5))
    (root / "pkg/gamma.py").unlink()
    report = WorkspaceIndex([root]).refresh()
    assert report.removed == 1
    reopened = WorkspaceIndex([root])
    reopened.refresh()
    assert all(s.path != "pkg/gamma.py" for s in search(reopened, "gamma handler", 5))
    assert reopened.definitions("gamma_handler") == []


def test_update_and_remove_one_file_in_process(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    assert [ref.path for ref, _ in workspace.definitions("alpha_handler")] == ["pkg/alpha.py"]
    assert workspace.update_file(root / "pkg/alpha.py", "def omega_handler():\n    pass\n")
    assert [ref.path for ref, _ in workspace.definitions("omega_handler")] == ["pkg/alpha.py"]
    assert workspace.definitions("alpha_handler") == []
    assert workspace.remove_file(root / "pkg/alpha.py")
    assert workspace.definitions("omega_handler") == []
    assert all(s.path != "pkg/alpha.py" for s in search(workspace, "omega alpha handler", 5))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupt_index_is_rebuilt_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = _repo(tmp_path)
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    stored = workspace.cache_dir / INDEX_FILE
    data = stored.read_bytes()
    stored.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\xff\xfe{{", "empty": b""}[damage]
    )
    with caplog.at_level(logging.WARNING, logger="index.workspace"):
        report = WorkspaceIndex([root]).refresh()
    assert report.indexed == 4
    assert report.warnings and "rebuilt" in report.warnings[0]
    assert any("rebuilt" in record.message for record in caplog.records)
    assert WorkspaceIndex([root]).refresh().indexed == 0


def test_cache_is_private(tmp_path: Path, index_cache: Path) -> None:
    root = _repo(tmp_path)
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    assert workspace.cache_dir.parent == index_cache
    assert stat.S_IMODE(workspace.cache_dir.stat().st_mode) == 0o700
    for path in workspace.cache_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cache_dir_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_INDEX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    workspace = WorkspaceIndex([_repo(tmp_path)])
    assert workspace.cache_dir.parent == tmp_path / "xdg" / "bastion" / "index"
    other = WorkspaceIndex([tmp_path])
    assert other.cache_dir != workspace.cache_dir


def test_an_edit_that_adds_a_secret_drops_the_file(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    leaked = "KEY = 'AKIAIOSFODNN7EXAMPL3'\n\ndef alpha_handler():\n    pass\n"
    assert not workspace.update_file(root / "pkg/alpha.py", leaked)
    assert "pkg/alpha.py" not in workspace.paths()
    assert workspace.skipped()["pkg/alpha.py"] == "secret content (aws-access-key-id)"
    assert workspace.definitions("alpha_handler") == []
    write(root, {"pkg/alpha.py": leaked})
    report = WorkspaceIndex([root]).refresh()
    assert report.skipped["pkg/alpha.py"] == "secret content (aws-access-key-id)"
    assert "pkg/alpha.py" not in WorkspaceIndex([root]).paths()


def test_common_definitions_follow_every_commit(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    count = SPAN_CACHE_MIN + 6
    write(root, {f"m{n}.py": "def handler():\n    pass\n" for n in range(count)})
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    assert len(workspace.definition_spans("handler")) == count
    assert len(workspace.definition_spans("handler")) == count  # the second answer is cached
    assert workspace.update_file(root / "m0.py", "def other():\n    pass\n")
    assert len(workspace.definition_spans("handler")) == count - 1
    assert workspace.remove_file(root / "m1.py")
    assert {s.path for s in workspace.definition_spans("handler")}.isdisjoint({"m0.py", "m1.py"})
