"""Vectors that follow the chunk store: embedded once, kept in step with edits, fused in ranking.

Real encoder (the bundled MiniLM through ONNX Runtime), real FAISS, real files.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from index import WorkspaceIndex, context, search
from index.semantic import VECTORS_DIR, SemanticIndex

from .conftest import write

# No word of the question below occurs in the code that answers it: only meaning can find it.
FILES = {
    "units/temperature.py": (
        "def to_fahrenheit(c):\n    return c * 9 / 5 + 32\n\n\n"
        "def to_kelvin(c):\n    return c + 273.15\n"
    ),
    "net/mail.py": (
        "import smtplib\n\n\ndef send_mail(host, sender, to, body):\n"
        "    with smtplib.SMTP(host) as server:\n        server.sendmail(sender, [to], body)\n"
    ),
    "util/order.py": (
        "def ranked(items):\n    return sorted(items, key=lambda item: item.priority)\n"
    ),
}
QUESTION = "how hot is it in degrees celsius converted for an american thermometer"


def _workspace(tmp_path: Path) -> tuple[WorkspaceIndex, SemanticIndex]:
    root = tmp_path / "repo"
    write(root, FILES)
    workspace = WorkspaceIndex([root], workers=1)
    workspace.refresh()
    return workspace, SemanticIndex(workspace.cache_dir)


def _paths(ids: list[int], workspace: WorkspaceIndex) -> list[str]:
    chunks = workspace.chunks(ids)
    return [chunks[chunk_id].path for chunk_id in ids]


def test_sync_embeds_every_chunk_once_and_search_finds_by_meaning(tmp_path: Path) -> None:
    workspace, semantic = _workspace(tmp_path)
    assert semantic.search(QUESTION, 3) == []  # nothing before the first sync

    report = semantic.sync(workspace)

    assert report.embedded == len(workspace.chunk_ids()) > 0
    assert _paths(semantic.search(QUESTION, 1), workspace) == ["units/temperature.py"]
    assert semantic.sync(workspace).embedded == 0
    semantic.close()


def test_vectors_follow_edits_and_deletes(tmp_path: Path) -> None:
    workspace, semantic = _workspace(tmp_path)
    semantic.sync(workspace)
    root = workspace.roots[0]
    before = workspace.chunk_ids()

    (root / "units/temperature.py").unlink()
    workspace.remove_file(root / "units/temperature.py")
    write(root, {"util/order.py": "def newest(items):\n    return max(items, key=len)\n"})
    workspace.update_file(root / "util/order.py")
    report = semantic.sync(workspace)

    gone = before - workspace.chunk_ids()
    assert report.removed == len(gone) > 0
    assert report.embedded == len(workspace.chunk_ids() - before) > 0
    hits = semantic.search(QUESTION, 10)
    assert not set(hits) & gone
    assert set(hits) <= workspace.chunk_ids()
    semantic.close()


def test_a_restart_loads_the_vectors_instead_of_embedding_again(tmp_path: Path) -> None:
    workspace, semantic = _workspace(tmp_path)
    semantic.sync(workspace)
    semantic.close()

    again = SemanticIndex(workspace.cache_dir)
    assert again.sync(workspace).embedded == 0
    assert _paths(again.search(QUESTION, 1), workspace) == ["units/temperature.py"]
    again.close()


def test_unusable_vectors_are_rebuilt_with_a_warning(tmp_path: Path) -> None:
    workspace, semantic = _workspace(tmp_path)
    semantic.sync(workspace)
    semantic.close()
    stored = next((workspace.cache_dir / VECTORS_DIR).glob("*.faiss"))
    stored.write_bytes(stored.read_bytes()[:100])

    again = SemanticIndex(workspace.cache_dir)
    report = again.sync(workspace)

    assert report.embedded == len(workspace.chunk_ids())
    assert any("rebuilt" in warning for warning in report.warnings)
    again.close()


@pytest.mark.parametrize("with_vectors", [False, True])
def test_ranking_fuses_vector_hits_only_when_given(tmp_path: Path, with_vectors: bool) -> None:
    workspace, semantic = _workspace(tmp_path)
    semantic.sync(workspace)
    vectors = semantic if with_vectors else None

    found = search(workspace, QUESTION, 3, vectors=vectors)
    editing = "# show the weather for our american users in degrees celsius\nreading = "
    near = context(workspace, "app.py", editing, 1, 10, 3, vectors=vectors)

    paths = [snippet.path for snippet in found]
    assert ("units/temperature.py" in paths) is with_vectors
    if with_vectors:
        assert "vector" in found[paths.index("units/temperature.py")].sources
        assert [s.path for s in near if "vector" in s.sources][:1] == ["units/temperature.py"]
    semantic.close()


def _record_calls(owner: object, name: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that call `owner.name` from now on (the real method runs)."""
    threads: list[str] = []
    real = getattr(owner, name)

    def recorded(*args: object) -> object:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(owner, name, recorded)
    return threads


def test_a_prefetched_query_is_embedded_once_off_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, semantic = _workspace(tmp_path)
    semantic.sync(workspace)
    threads = _record_calls(semantic.encoder, "encode_query", monkeypatch)
    semantic.prefetch(QUESTION)
    semantic.prefetch(QUESTION)  # already under way: not embedded twice

    assert _paths(semantic.search(QUESTION, 1), workspace) == ["units/temperature.py"]
    assert _paths(semantic.search(QUESTION, 1), workspace) == ["units/temperature.py"]
    assert len(threads) == 1 and threads[0].startswith("bastion-query")
    semantic.close()


def test_a_follower_syncs_edits_without_reading_every_chunk_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, semantic = _workspace(tmp_path)
    semantic.follow(workspace)
    real_chunk_ids = workspace.chunk_ids
    full_diffs = _record_calls(workspace, "chunk_ids", monkeypatch)
    assert semantic.sync(workspace).embedded == len(real_chunk_ids())
    assert len(full_diffs) == 1

    root = tmp_path / "repo"
    (root / "util/order.py").write_text("def newest_first(items):\n    return items[::-1]\n")
    (root / "net/mail.py").unlink()
    workspace.refresh()
    report = semantic.sync(workspace)

    assert len(full_diffs) == 1  # the changes were heard, not diffed
    assert report.embedded == 1 and report.removed >= 1
    assert semantic.vectors.ids() == real_chunk_ids()
    assert "net/mail.py" not in _paths(semantic.search("send an email over smtp", 3), workspace)
    semantic.close()
