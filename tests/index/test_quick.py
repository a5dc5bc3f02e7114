"""The quick first stage: every file searchable within seconds, by regex definitions and BM25.

Real files, real git repositories, real SQLite; the same discovery and secret checks as the full
index, so what the full index would never hold the quick one never holds either.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from index import BuildStopped, QuickIndex, StoreQueries, WorkspaceIndex, context, search
from index.quick import QUICK_DIR, quick_definitions

from .conftest import git_init, write
from .test_discovery import CANARY, SECRET_FILES

SOURCES = {
    "py/shapes.py": (
        "import math\n\n\nclass Circle:\n    def area(self):\n        return math.pi\n\n\n"
        "async def load_shapes(path):\n    return []\n"
    ),
    "ts/widget.ts": (
        "export class Widget {\n  render(): void {\n    if (this.ready) {\n    }\n  }\n}\n"
        "export const makeWidget = (name: string) => new Widget();\n"
        "function helperFn(a, b) {\n  return a;\n}\n"
    ),
    "go/server.go": (
        "package server\n\nfunc (s *Server) Serve(port int) error {\n\treturn nil\n}\n\n"
        "type Config struct {\n\tPort int\n}\n"
    ),
    "rs/point.rs": "pub struct Point { x: i32 }\nimpl Point {\n    pub fn norm(&self) -> f64 {\n"
    "        0.0\n    }\n}\n",
    "java/App.java": (
        "public class App {\n    public static void main(String[] args) {\n"
        "        return helper(x,\n    }\n    private int countItems() {\n        return 0;\n"
        "    }\n}\n"
    ),
    "c/parse.c": (
        "struct header {\n  int size;\n};\n\nstatic int parse_header(const char *raw)\n{\n"
        "  if (raw) {\n  }\n  return 0;\n}\n"
    ),
    "notes/readme.txt": "The deployment checklist mentions parse_header twice: parse_header.\n",
}
EXPECTED = {
    "Circle": ("py/shapes.py", "class", 3),
    "area": ("py/shapes.py", "function", 4),
    "load_shapes": ("py/shapes.py", "function", 8),
    "Widget": ("ts/widget.ts", "class", 0),
    "render": ("ts/widget.ts", "function", 1),
    "makeWidget": ("ts/widget.ts", "variable", 6),
    "helperFn": ("ts/widget.ts", "function", 7),
    "Serve": ("go/server.go", "function", 2),
    "Config": ("go/server.go", "class", 6),
    "Point": ("rs/point.rs", "class", 0),
    "norm": ("rs/point.rs", "function", 2),
    "App": ("java/App.java", "class", 0),
    "main": ("java/App.java", "function", 1),
    "countItems": ("java/App.java", "function", 4),
    "header": ("c/parse.c", "class", 0),
    "parse_header": ("c/parse.c", "function", 4),
}


def _quick(roots: list[Path], cache: Path) -> QuickIndex:
    quick = QuickIndex.build(roots, cache, workers=1)
    assert quick is not None
    return quick


@pytest.fixture
def sources(tmp_path: Path, index_cache: Path) -> QuickIndex:
    """The quick index of a repository holding SOURCES."""
    root = tmp_path / "repo"
    write(root, SOURCES)
    return _quick([root], index_cache)


def test_definitions_of_seven_languages_are_found_with_their_text(sources: QuickIndex) -> None:
    quick = sources
    for name, (path, kind, line) in EXPECTED.items():
        found = quick.definitions(name)
        assert [(ref.path, symbol.kind, symbol.line) for ref, symbol in found] == [
            (path, kind, line)
        ], name
        ref = found[0][0]
        assert ref.chunk.start_line == line
        assert name in ref.chunk.text.splitlines()[0], (name, ref.chunk.text)
    # Control flow and calls are not definitions.
    for word in ("if", "helper", "return"):
        assert quick.definitions(word) == []


def test_lexical_search_and_completion_context_answer_from_the_quick_index(
    sources: QuickIndex,
) -> None:
    quick = sources
    searchable: StoreQueries = quick
    hits = search(searchable, "parse_header", 5)
    assert {hit.path for hit in hits} >= {"c/parse.c", "notes/readme.txt"}
    assert any("static int parse_header" in hit.text for hit in hits)
    snippets = context(quick, "main.c", "int main(void) {\n  return parse_header(", 1, 22, 3)
    assert snippets and snippets[0].path == "c/parse.c"
    assert snippets[0].text.startswith("static int parse_header")


def test_secret_canaries_never_reach_the_quick_index(tmp_path: Path, index_cache: Path) -> None:
    root = tmp_path / "repo"
    write(root, {**SECRET_FILES, "src/app.py": "def handler():\n    return 1\n"})
    git_init(root)
    quick = _quick([root], index_cache)
    assert set(quick.store.paths()) == {"src/app.py"}
    stored = b"".join(p.read_bytes() for p in (index_cache / QUICK_DIR).rglob("*") if p.is_file())
    assert CANARY.encode() not in stored
    assert search(quick, CANARY, 10) == []


def test_gitignore_and_multi_root_paths_are_those_of_the_full_index(tmp_path: Path) -> None:
    front, back = tmp_path / "front", tmp_path / "back"
    write(front, {".gitignore": "dist/\n", "app.ts": "export function boot() {}\n"})
    write(front, {"dist/bundle.ts": "export function bundled() {}\n"})
    git_init(front)
    write(back, {"api.py": "def boot():\n    pass\n"})
    cache = tmp_path / "workspace-cache"
    quick = _quick([front, back], cache)
    full = WorkspaceIndex([front, back], cache_dir=tmp_path / "full-cache")
    full.refresh()
    assert (
        set(quick.store.paths())
        == full.paths()
        == {
            "front/.gitignore",
            "front/app.ts",
            "back/api.py",
        }
    )
    assert {ref.path for ref, _ in quick.definitions("boot")} == {"front/app.ts", "back/api.py"}
    assert quick.key_for(back / "api.py") == "back/api.py"
    assert quick.file_path("back/api.py") == (back / "api.py").resolve()


def test_the_quick_index_is_private_and_discarded_without_a_trace(
    sources: QuickIndex, index_cache: Path
) -> None:
    quick = sources
    directory = index_cache / QUICK_DIR
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for file in directory.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    quick.discard()
    assert not directory.exists()
    with pytest.raises(RuntimeError, match="discarded"):
        quick.definitions("Circle")


def test_a_small_workspace_skips_the_quick_stage(tmp_path: Path, index_cache: Path) -> None:
    root = tmp_path / "repo"
    write(root, SOURCES)
    assert QuickIndex.build([root], index_cache, workers=1, min_files=len(SOURCES) + 1) is None
    assert not (index_cache / QUICK_DIR).exists()


def test_long_definitions_continue_in_windows_and_keep_their_lines(tmp_path: Path) -> None:
    body = "".join(f"    total += {n}\n" for n in range(150))
    root = tmp_path / "repo"
    write(root, {"big.py": f"def accumulate():\n    total = 0\n{body}    return total\n"})
    quick = _quick([root], tmp_path / "cache")
    [(ref, _)] = quick.definitions("accumulate")
    assert (ref.chunk.start_line, ref.chunk.end_line) == (0, 59)
    rows = quick.store.chunks(sorted(quick.store.chunk_ids()))
    assert [(c.chunk.start_line, c.chunk.end_line) for c in rows.values()] == [
        (0, 59),
        (60, 119),
        (120, 152),
    ]


def test_definitions_in_strings_and_comments_mid_line_are_ignored() -> None:
    text = "x = 'def not_this(): pass'\n# class NorThis\nvalue = 1  # def nope\n"
    assert quick_definitions("python", text) == []


def test_crlf_and_form_feed_files_keep_their_definition_lines(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    text = (
        "import os\r\n\x0c\r\ndef first():\r\n    return 1\r\n\r\n\x0c\r\n"
        "def second():\r\n    pass\r\n"
    )
    write(root, {"paged.py": text.encode()})
    quick = _quick([root], tmp_path / "cache")
    for name, line in (("first", 2), ("second", 6)):
        [(ref, symbol)] = quick.definitions(name)
        assert symbol.line == ref.chunk.start_line == line
        assert ref.chunk.text.splitlines()[0] == f"def {name}():"


def test_a_stopped_quick_build_leaves_nothing(tmp_path: Path, index_cache: Path) -> None:
    root = tmp_path / "repo"
    write(root, SOURCES)
    stop = threading.Event()
    stop.set()
    with pytest.raises(BuildStopped):
        QuickIndex.build([root], index_cache, workers=1, stop=stop)
    assert not (index_cache / QUICK_DIR).exists()
