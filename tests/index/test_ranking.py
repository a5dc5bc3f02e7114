"""Ranking: the callee's definition first, nearby symbols and lexical hits fused, no repeats."""

from __future__ import annotations

from pathlib import Path

import pytest

from index.ranking import context, cursor_call
from index.workspace import WorkspaceIndex

from .conftest import git_init, write

CALLER = """\
from .helpers import build_headers
from .models import Response


def send(session, url):
    headers = build_headers(
"""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("    x = build_headers(", (None, "build_headers")),
        ("    r = self.session.get(", ("session", "get")),
        ("    Foo::make(", ("Foo", "make")),
        ("    value = compute (", (None, "compute")),
        ("    return", (None, "return")),
        ("", (None, None)),
    ],
)
def test_cursor_call(line: str, expected: tuple[str | None, str | None]) -> None:
    assert cursor_call(line) == expected


def _workspace(tmp_path: Path) -> tuple[WorkspaceIndex, Path]:
    root = tmp_path / "repo"
    filler = "".join(f"# unrelated line {n} about headers\n" for n in range(30))
    write(
        root,
        {
            "pkg/caller.py": CALLER + "        url)\n",
            "pkg/helpers.py": filler
            + "def build_headers(token, extra=None):\n    return {'auth': token}\n",
            "pkg/legacy.py": "def build_headers():\n    return {}\n",
            "pkg/models.py": "class Response:\n    status = 200\n",
            "pkg/notes.md": "headers headers headers session url send\n" * 5,
        },
    )
    git_init(root)
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    return workspace, root


def test_callee_definition_from_the_imported_module_comes_first(tmp_path: Path) -> None:
    workspace, root = _workspace(tmp_path)
    line = CALLER.splitlines()[-1]
    text = (root / "pkg/caller.py").read_text()
    snippets = context(workspace, "pkg/caller.py", text, 5, len(line), 5)
    assert snippets[0].path == "pkg/helpers.py"
    assert snippets[0].name == "build_headers"
    assert "symbol" in snippets[0].sources
    assert snippets[0].start_line == 30
    paths = [s.path for s in snippets]
    assert "pkg/legacy.py" in paths
    assert "pkg/caller.py" not in paths
    spans = [(s.path, s.start_line, s.end_line) for s in snippets]
    for i, (path, start, end) in enumerate(spans):
        for other in spans[i + 1 :]:
            assert not (other[0] == path and other[1] <= end and other[2] >= start)


def test_same_file_definitions_outside_the_cursor_region_are_allowed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    far = "".join(f"x{n} = {n}\n" for n in range(120))
    source = "def local_helper(a):\n    return a\n\n" + far + "value = local_helper(\n"
    write(root, {"solo.py": source})
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    last = len(source.splitlines()) - 1
    snippets = context(workspace, "solo.py", source, last, len("value = local_helper("), 5)
    assert (snippets[0].path, snippets[0].start_line) == ("solo.py", 0)
    near = context(workspace, "solo.py", source, 3, 0, 5)
    assert all(s.path != "solo.py" or s.end_line < 0 for s in near)


def test_multi_line_imports_and_overloads_pick_the_implementation(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    stub = (
        "@overload\ndef render(x: int) -> int: ...\n\n\n@overload\ndef render(x: str) -> str: ...\n"
    )
    body = "".join(f"    step_{n} = x\n" for n in range(8))
    write(
        root,
        {
            "app/views.py": "from .widgets import (\n    Button,\n    render,\n)\n\n\n"
            "def page(x):\n    render_count = 0\n    return render(",
            "app/widgets.py": f"{stub}\n\ndef render(x):\n{body}    return x\n",
            "app/other.py": "def render(template, context, engine, render_count):\n    pass\n",
        },
    )
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    text = (root / "app/views.py").read_text()
    snippets = context(workspace, "app/views.py", text, 8, len("    return render("), 5)
    first = snippets[0]
    assert (first.path, first.start_line) == ("app/widgets.py", 8)
    assert "resolved" in first.sources


def test_names_near_the_cursor_bring_their_one_definition_and_common_names_none(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    common = {f"lib/common_{n}.py": "def process(x):\n    return x\n" for n in range(5)}
    write(
        root,
        {
            **common,
            "lib/retry.py": "def backoff_delay(attempt):\n    return 2 ** attempt\n",
            "app/main.py": "def run(job):\n    wait = backoff_delay(job.attempt)\n"
            "    done = process(job)\n    return len(",
        },
    )
    workspace = WorkspaceIndex([root])
    workspace.refresh()
    text = (root / "app/main.py").read_text()
    snippets = context(workspace, "app/main.py", text, 3, len("    return len("), 5)
    nearby = {s.path for s in snippets if "nearby" in s.sources}
    assert nearby == {"lib/retry.py"}  # `process` has 5 definitions: too common to pick one
