"""Split a file into chunks: definitions from the syntax tree, line windows for everything else.

One parse yields both the chunks and the definitions table's rows (name -> chunk). A definition
that is too long for the encoder is split: a container (class, impl, namespace) into its members,
anything else into line windows that each repeat the signature line.
"""

from __future__ import annotations

from dataclasses import dataclass

from tree_sitter import Node

from .languages import LanguageSpec, language_for, parser_for


@dataclass(frozen=True)
class ChunkLimits:
    """How big one chunk may get; ~1,600 characters stays near a small encoder's 256-token limit."""

    max_lines: int = 50
    max_chars: int = 1600
    text_window: int = 40
    text_stride: int = 30


@dataclass(frozen=True)
class Chunk:
    """A span of one file, 0-based inclusive lines; `text` may start with a repeated signature."""

    start_line: int
    end_line: int
    kind: str
    name: str
    text: str


@dataclass(frozen=True)
class Symbol:
    """A definition: its name, qualified name, kind, the line of its name, and its chunk's index."""

    name: str
    qualified: str
    kind: str
    line: int
    chunk: int


@dataclass(frozen=True)
class ChunkedFile:
    """The chunks and definitions of one file, and the language it was parsed as."""

    language: str
    chunks: list[Chunk]
    symbols: list[Symbol]


def _end_row(node: Node) -> int:
    row, column = node.end_point
    start = node.start_point[0]
    return row - 1 if column == 0 and row > start else row


def _unwrap(node: Node, spec: LanguageSpec) -> Node | None:
    """The definition inside `node` (itself, or inside a decorator/export/template), or None."""
    seen = 0
    while node.type in spec.wrappers and seen < 4:
        inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
        if inner is None:
            inner = next((c for c in node.named_children if c.type in spec.definitions), None)
        if inner is None:
            return None
        node = inner
        seen += 1
    return node if node.type in spec.definitions else None


def _text(node: Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return node.text.decode("utf-8", "replace")


def _declarator_name(node: Node) -> Node | None:
    """C/C++: the identifier at the bottom of a declarator chain."""
    current: Node | None = node
    for _ in range(12):
        if current is None:
            return None
        if current.type in (
            "identifier",
            "field_identifier",
            "type_identifier",
            "qualified_identifier",
            "destructor_name",
            "operator_name",
        ):
            return current
        nxt = current.child_by_field_name("declarator")
        if nxt is None:
            nxt = next(
                (
                    c
                    for c in current.named_children
                    if c.type.endswith(("declarator", "identifier"))
                ),
                None,
            )
        current = nxt
    return None


def _name_node(node: Node) -> Node | None:
    name = node.child_by_field_name("name")
    if name is not None:
        return name
    if node.type == "impl_item":
        return node.child_by_field_name("type")
    if node.type == "type_declaration":
        spec = next((c for c in node.named_children if c.type in ("type_spec", "type_alias")), None)
        return spec.child_by_field_name("name") if spec is not None else None
    declarator = node.child_by_field_name("declarator")
    if declarator is not None:
        return _declarator_name(declarator)
    return None


def _definition_name(node: Node) -> tuple[str, int]:
    name = _name_node(node)
    if name is None:
        return "", node.start_point[0]
    text = _text(name)
    if "::" in text:  # C++ `Foo::bar` defined outside its class
        text = text.rsplit("::", 1)[1]
    return text, name.start_point[0]


def _kind(node: Node, inside_container: bool) -> str:
    kind = node.type
    if "function" in kind or "method" in kind or "constructor" in kind:
        return "method" if inside_container else "function"
    if any(word in kind for word in ("class", "struct", "interface", "trait", "record", "enum")):
        return "class"
    return "type"


def _body(node: Node) -> Node | None:
    body = node.child_by_field_name("body")
    if body is None:
        body = next(
            (c for c in node.named_children if c.type.endswith(("body", "declaration_list"))), None
        )
    return body


def _binding_names(node: Node) -> list[tuple[str, int]]:
    """Names bound by a top-level statement: `X = ...`, `const f = () => ...`, `var x`."""
    out: list[tuple[str, int]] = []
    for child in node.named_children:
        if child.type == "assignment":
            left = child.child_by_field_name("left")
            if left is not None and left.type == "identifier":
                out.append((_text(left), left.start_point[0]))
        elif child.type in ("variable_declarator", "const_spec", "var_spec"):
            name = child.child_by_field_name("name")
            if name is not None and name.type == "identifier":
                out.append((_text(name), name.start_point[0]))
    return out


class _FileChunker:
    def __init__(self, lines: list[str], spec: LanguageSpec, limits: ChunkLimits) -> None:
        self.lines = lines
        self.spec = spec
        self.limits = limits
        self.chunks: list[Chunk] = []
        # (name, qualified, kind, line) before chunk indices are known.
        self.defs: list[tuple[str, str, str, int]] = []

    def _size(self, start: int, end: int) -> int:
        return sum(len(line) + 1 for line in self.lines[start : end + 1])

    def _fits(self, start: int, end: int) -> bool:
        lines_ok = end - start + 1 <= self.limits.max_lines
        return lines_ok and self._size(start, end) <= self.limits.max_chars

    def _windows(self, start: int, end: int, budget_chars: int) -> list[tuple[int, int]]:
        """Consecutive line ranges within the limits, covering start..end."""
        out: list[tuple[int, int]] = []
        row = start
        while row <= end:
            size = 0
            stop = row
            while stop <= end and stop - row < self.limits.max_lines:
                size += len(self.lines[stop]) + 1
                if size > budget_chars and stop > row:
                    break
                stop += 1
            out.append((row, stop - 1))
            row = stop
        return out

    def _emit(self, start: int, end: int, kind: str, name: str, signature: str = "") -> None:
        body = "\n".join(self.lines[start : end + 1])
        if not body.strip():
            return
        text = f"{signature}\n{body}" if signature else body
        self.chunks.append(Chunk(start, end, kind, name, text))

    def _gap(self, start: int, end: int, signature: str) -> None:
        first = True
        for s, e in self._windows(start, end, self.limits.max_chars - len(signature)):
            self._emit(s, e, "code", "", "" if first and s == start else signature)
            first = False

    def region(self, nodes: list[Node], start: int, end: int, scope: str, signature: str) -> None:
        cursor = start
        for node in nodes:
            definition = _unwrap(node, self.spec)
            if definition is None:
                if node.type in self.spec.bindings and not scope:
                    for name, line in _binding_names(node):
                        self.defs.append((name, name, "variable", line))
                continue
            node_start, node_end = node.start_point[0], _end_row(node)
            if node_start < cursor:  # a definition sharing a line with the previous one
                node_start = cursor
            if node_end < node_start:
                continue
            if node_start > cursor:
                self._gap(cursor, node_start - 1, signature)
            self.definition(definition, node_start, node_end, scope)
            cursor = node_end + 1
        if cursor <= end:
            self._gap(cursor, end, signature)

    def definition(self, node: Node, start: int, end: int, scope: str) -> None:
        name, name_line = _definition_name(node)
        qualified = f"{scope}.{name}" if scope and name else name or scope
        kind = _kind(node, bool(scope))
        if name:
            self.defs.append((name, qualified, kind, name_line))
        body = _body(node) if node.type in self.spec.containers else None
        if self._fits(start, end):
            self._emit(start, end, kind, qualified)
            if body is not None:
                self._collect(body, qualified)
            return
        signature = self.lines[node.start_point[0]].rstrip()
        if body is not None:
            self.region(list(body.named_children), start, end, qualified, signature)
            return
        windows = self._windows(start, end, self.limits.max_chars - len(signature) - 1)
        for index, (s, e) in enumerate(windows):
            self._emit(s, e, kind, qualified, signature if index else "")

    def _collect(self, body: Node, scope: str) -> None:
        """Definitions inside a container that became one chunk: named, not chunked again."""
        for child in body.named_children:
            definition = _unwrap(child, self.spec)
            if definition is None:
                continue
            name, line = _definition_name(definition)
            if not name:
                continue
            qualified = f"{scope}.{name}"
            self.defs.append((name, qualified, _kind(definition, True), line))
            if definition.type in self.spec.containers and (inner := _body(definition)):
                self._collect(inner, qualified)


def _symbols(defs: list[tuple[str, str, str, int]], chunks: list[Chunk]) -> list[Symbol]:
    """Each definition's chunk: the smallest one holding the definition's name line."""
    by_line: dict[int, int] = {}
    for index, chunk in enumerate(chunks):
        span = chunk.end_line - chunk.start_line
        for line in range(chunk.start_line, chunk.end_line + 1):
            best = by_line.get(line)
            if best is None or span < chunks[best].end_line - chunks[best].start_line:
                by_line[line] = index
    out: list[Symbol] = []
    for name, qualified, kind, line in defs:
        found = by_line.get(line)
        if found is not None:
            out.append(Symbol(name, qualified, kind, line, found))
    return out


def chunk_text_windows(lines: list[str], limits: ChunkLimits) -> list[Chunk]:
    """Overlapping line windows for files without a grammar."""
    chunks: list[Chunk] = []
    start = 0
    while start < len(lines):
        end = min(start + limits.text_window, len(lines)) - 1
        text = "\n".join(lines[start : end + 1])
        while len(text) > limits.max_chars * 2 and end > start:
            end = start + (end - start) // 2
            text = "\n".join(lines[start : end + 1])
        if text.strip():
            chunks.append(Chunk(start, end, "text", "", text[: limits.max_chars * 2]))
        if end >= len(lines) - 1:
            break
        start = min(start + limits.text_stride, end + 1)
    return chunks


def chunk_file(path: str, text: str, limits: ChunkLimits | None = None) -> ChunkedFile:
    """Chunks and definitions of one file; plain line windows when no grammar applies."""
    limits = limits or ChunkLimits()
    lines = text.splitlines()
    spec = language_for(path)
    if spec is None:
        return ChunkedFile("text", chunk_text_windows(lines, limits), [])
    tree = parser_for(spec.name).parse(text.encode("utf-8"))
    chunker = _FileChunker(lines, spec, limits)
    root = tree.root_node
    if lines:
        chunker.region(list(root.named_children), 0, len(lines) - 1, "", "")
    return ChunkedFile(spec.name, chunker.chunks, _symbols(chunker.defs, chunker.chunks))
