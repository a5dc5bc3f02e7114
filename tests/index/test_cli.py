"""The CLI contract the shared retrieval eval relies on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bastion.index_commands import add_index_commands

from .conftest import git_init, write


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bastion")
    add_index_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write(
        root,
        {
            "src/pkg/util.py": "def slugify(text):\n    return text.lower()\n",
            "src/pkg/views.py": (
                "from .util import slugify\n\n\ndef page(title):\n    slug = slugify(title)\n"
                "    return Page(slug)\n"
            ),
            "src/pkg/page.py": (
                "class Page:\n    def __init__(self, slug):\n        self.slug = slug\n"
            ),
            ".env": "SECRET=x\n",
        },
    )
    git_init(root)
    return root


def test_cli_is_registered_on_bastion() -> None:
    from bastion.cli import build_parser

    args = build_parser().parse_args(["context", "--workspace", ".", "--batch", "c.jsonl"])
    assert args.command == "context"


def test_index_prints_a_summary_with_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _repo(tmp_path)
    assert _run(["index", str(root)]) == 0
    out = capsys.readouterr().out
    assert "indexed 3 files" in out
    assert "secret file name (.env)" in out
    assert _run(["index", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["files"], summary["indexed"], summary["unchanged"]) == (3, 0, 3)
    assert summary["skipped"] == {".env": "secret file name (.env)"}


def test_batch_context_answers_one_json_line_per_case_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _repo(tmp_path)
    cases = [
        {"file": "src/pkg/views.py", "line": 4, "col": 18},
        {"file": "src/pkg/views.py", "line": 5, "col": 16},
    ]
    batch = tmp_path / "cases.jsonl"
    batch.write_text("".join(json.dumps(c) + "\n" for c in cases) + "\n")
    assert _run(["index", str(root)]) == 0
    capsys.readouterr()
    code = _run(["context", "--workspace", str(root), "--batch", str(batch), "--json", "--k", "2"])
    assert code == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["file"], a["line"], a["col"]) for a in answers] == [
        (c["file"], c["line"], c["col"]) for c in cases
    ]
    first, second = answers
    assert len(first["snippets"]) <= 2
    assert first["snippets"][0]["path"] == "src/pkg/util.py"
    assert (first["snippets"][0]["start_line"], first["snippets"][0]["end_line"]) == (0, 1)
    assert second["snippets"][0]["path"] == "src/pkg/page.py"
    for answer in answers:
        for snippet in answer["snippets"]:
            assert {"path", "start_line", "end_line", "text"} <= snippet.keys()
            assert not Path(snippet["path"]).is_absolute()


def test_single_context_and_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _repo(tmp_path)
    assert _run(["context", "src/pkg/views.py:4:18", "--workspace", str(root), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["snippets"][0]["path"] == "src/pkg/util.py"
    assert _run(["context", "src/pkg/views.py:4:18", "--workspace", str(root)]) == 0
    assert "def slugify(text):" in capsys.readouterr().out
    assert _run(["search", "slugify", "--workspace", str(root), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["path"] == "src/pkg/util.py"
    assert _run(["search", "slug page", "--workspace", str(root)]) == 0
    assert "src/pkg/page.py" in capsys.readouterr().out


def test_context_needs_a_position_or_a_batch(tmp_path: Path) -> None:
    assert _run(["context", "--workspace", str(tmp_path)]) == 2


def test_index_embed_then_search_finds_code_by_meaning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _repo(tmp_path)
    write(root, {"src/pkg/units.py": "def to_fahrenheit(c):\n    return c * 9 / 5 + 32\n"})
    question = "how hot is it for an american thermometer given celsius"

    assert _run(["search", question, "--workspace", str(root), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)["results"]
    assert all("vector" not in hit["sources"] for hit in before)

    assert _run(["index", str(root), "--embed", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == summary["chunks"] > 0

    assert _run(["search", question, "--workspace", str(root), "--json", "--k", "1"]) == 0
    (best,) = json.loads(capsys.readouterr().out)["results"]
    assert best["path"] == "src/pkg/units.py" and "vector" in best["sources"]
