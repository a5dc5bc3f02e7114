"""Chunking per language: definitions become chunks and rows of the definitions table."""

from __future__ import annotations

import pytest

from index.chunker import ChunkLimits, chunk_file

SOURCES: dict[str, tuple[str, str, set[str]]] = {
    "python": (
        "m.py",
        "import os\n\n\n@decorator\ndef top(a, b):\n    return a + b\n\n\n"
        "class Widget(Base):\n    def render(self):\n        return 1\n\n"
        "LIMIT = 10\n",
        {"top", "Widget", "Widget.render", "LIMIT"},
    ),
    "javascript": (
        "m.js",
        "import x from 'x';\nexport function top(a) {\n  return a;\n}\n"
        "class Widget {\n  render() {\n    return 1;\n  }\n}\n"
        "const helper = (a) => a * 2;\n",
        {"top", "Widget", "Widget.render", "helper"},
    ),
    "typescript": (
        "m.ts",
        "export interface Shape {\n  area(): number;\n}\n"
        "export class Circle implements Shape {\n  area(): number {\n    return 3;\n  }\n}\n"
        "export function makeCircle(r: number): Circle {\n  return new Circle();\n}\n"
        "type Alias = string;\n",
        {"Shape", "Circle", "Circle.area", "makeCircle", "Alias"},
    ),
    "tsx": (
        "m.tsx",
        "export function Button(props: { label: string }) {\n"
        "  return <button>{props.label}</button>;\n}\n",
        {"Button"},
    ),
    "java": (
        "M.java",
        "package p;\n\npublic class Widget {\n    public Widget() {}\n"
        "    public int render(int x) {\n        return x;\n    }\n}\n"
        "interface Shape {\n    int area();\n}\n",
        {"Widget", "Widget.Widget", "Widget.render", "Shape"},
    ),
    "go": (
        "m.go",
        "package m\n\ntype Widget struct {\n\tN int\n}\n\n"
        "func (w *Widget) Render() int {\n\treturn w.N\n}\n\n"
        "func NewWidget() *Widget {\n\treturn &Widget{}\n}\n",
        {"Widget", "Render", "NewWidget"},
    ),
    "rust": (
        "m.rs",
        "pub struct Widget {\n    n: i32,\n}\n\n"
        "impl Widget {\n    pub fn render(&self) -> i32 {\n        self.n\n    }\n}\n\n"
        "fn helper() -> i32 {\n    1\n}\n",
        {"Widget", "Widget.render", "helper"},
    ),
    "c": (
        "m.c",
        "#include <stdio.h>\n\nstruct point {\n    int x;\n};\n\n"
        "static int add(int a, int b) {\n    return a + b;\n}\n\n"
        "int *make_ptr(void) {\n    return 0;\n}\n",
        {"point", "add", "make_ptr"},
    ),
    "cpp": (
        "m.cpp",
        "namespace geo {\nclass Shape {\n public:\n  int area() { return 1; }\n};\n}\n\n"
        "int Shape::perimeter() {\n  return 4;\n}\n\n"
        "template <typename T>\nT twice(T v) {\n  return v * 2;\n}\n",
        {"geo", "geo.Shape", "geo.Shape.area", "perimeter", "twice"},
    ),
}


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_definitions_per_language(language: str) -> None:
    path, source, expected = SOURCES[language]
    chunked = chunk_file(path, source)
    assert chunked.language == language
    qualified = {symbol.qualified for symbol in chunked.symbols}
    assert expected <= qualified, qualified
    lines = source.splitlines()
    for symbol in chunked.symbols:
        chunk = chunked.chunks[symbol.chunk]
        assert chunk.start_line <= symbol.line <= chunk.end_line
        assert symbol.name in lines[symbol.line]
    covered = {n for c in chunked.chunks for n in range(c.start_line, c.end_line + 1)}
    assert {n for n, line in enumerate(lines) if line.strip()} <= covered


def test_python_function_chunk_spans_decorator_and_body() -> None:
    _, source, _ = SOURCES["python"]
    chunked = chunk_file("m.py", source)
    top = next(c for c in chunked.chunks if c.name == "top")
    assert (top.start_line, top.end_line, top.kind) == (3, 5, "function")
    widget = next(c for c in chunked.chunks if c.name == "Widget")
    assert (widget.start_line, widget.end_line, widget.kind) == (8, 10, "class")


def test_long_function_is_split_and_every_piece_keeps_the_signature() -> None:
    body = "".join(f"    total += compute_{n}(value)\n" for n in range(120))
    source = f"def accumulate(value):\n    total = 0\n{body}    return total\n"
    chunked = chunk_file("long.py", source, ChunkLimits(max_lines=30, max_chars=1200))
    pieces = [c for c in chunked.chunks if c.name == "accumulate"]
    assert len(pieces) >= 4
    for piece in pieces:
        assert piece.text.startswith("def accumulate(value):")
        assert piece.end_line - piece.start_line + 1 <= 30
        assert len(piece.text) <= 1200 + len("def accumulate(value):") + 1
    assert pieces[0].start_line == 0
    assert pieces[-1].end_line == len(source.splitlines()) - 1
    assert [s.chunk for s in chunked.symbols if s.name == "accumulate"] == [
        chunked.chunks.index(pieces[0])
    ]


def test_long_class_is_split_into_its_methods() -> None:
    methods = "".join(
        f"    def method_{n}(self):\n" + "".join(f"        x = {i}\n" for i in range(8)) + "\n"
        for n in range(10)
    )
    source = f"class Big:\n    '''Doc.'''\n\n{methods}"
    chunked = chunk_file("big.py", source, ChunkLimits(max_lines=30, max_chars=1500))
    names = [c.name for c in chunked.chunks]
    assert [f"Big.method_{n}" for n in range(10)] == [n for n in names if n.startswith("Big.")]
    header = chunked.chunks[0]
    assert header.start_line == 0 and "class Big:" in header.text
    big = next(s for s in chunked.symbols if s.name == "Big")
    assert chunked.chunks[big.chunk] is header


def test_text_files_get_overlapping_line_windows() -> None:
    source = "".join(f"line {n}\n" for n in range(100))
    chunked = chunk_file("notes.md", source)
    assert chunked.language == "text"
    spans = [(c.start_line, c.end_line) for c in chunked.chunks]
    assert spans[0] == (0, 39)
    assert spans[1][0] == 30
    assert spans[-1][1] == 99
    assert chunked.symbols == []
