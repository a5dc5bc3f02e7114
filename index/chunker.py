"""Split a file into chunks: definitions from the syntax tree, line windows for everything else.

One parse yields both the chunks and the definitions table's rows (name -> chunk). A definition
that is too long for the encoder is split: a container (class, impl, namespace) into its members,
anything else into line windows that each repeat the signature line.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from tree_sitter import Node

from .languages import LanguageSpec, language_for, parser_for
from .token_budget import EstimatedCounter, LineTokenCounter


@dataclass(frozen=True)
class ChunkLimits:
    """How big one chunk may get.

    Lines and characters bound every chunk. With a `token_counter`, every chunk also fits
    `max_tokens` of that encoder (special tokens included): longer ones are split at lines, each
    piece repeating the signature line, and a single line over the limit is cut into pieces.
    Without one, ~30 % of chunks exceed MiniLM's 256 word-pieces (see
    benchmarks/index_chunk_tokens.py).
    """

    max_lines: int = 50
    max_chars: int = 1600
    text_window: int = 40
    text_stride: int = 30
    max_tokens: int = 256
    token_counter: LineTokenCounter | None = field(default_factory=EstimatedCounter)


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


class _TokenFitter:
    """Splits chunks over the token limit; each line is counted once per file, and only when
    some chunk is longer in characters than the limit is in tokens (a token spans >= 1 char)."""

    def __init__(self, lines: list[str], limits: ChunkLimits) -> None:
        self.lines = lines
        self.counter = limits.token_counter
        special = self.counter.special_tokens if self.counter is not None else 0
        self.budget = max(8, limits.max_tokens - special)
        self._line_tokens: list[int] | None = None
        self._prefix_tokens: dict[str, int] = {}

    def fits(self, text: str, start: int, end: int, prefix: str) -> bool:
        if self.counter is None or len(text) <= self.budget:
            return True
        return self._prefix(prefix) + sum(self._tokens()[start : end + 1]) <= self.budget

    def _tokens(self) -> list[int]:
        if self._line_tokens is None:
            assert self.counter is not None
            self._line_tokens = self.counter(self.lines)
        return self._line_tokens

    def _prefix(self, prefix: str) -> int:
        if not prefix or self.counter is None:
            return 0
        if prefix not in self._prefix_tokens:
            self._prefix_tokens[prefix] = self.counter([prefix])[0]
        return self._prefix_tokens[prefix]

    def split(
        self, start: int, end: int, kind: str, name: str, prefix: str, continuation: str
    ) -> list[Chunk]:
        """Pieces of start..end that fit, greedily by lines; later pieces repeat `continuation`."""
        tokens = self._tokens()
        out: list[Chunk] = []
        row = start
        while row <= end:
            head = prefix if row == start else continuation
            used = self._prefix(head)
            if used > self.budget // 2:  # a huge signature line is not worth repeating
                head, used = "", 0
            stop = row
            while stop <= end and used + tokens[stop] <= self.budget:
                used += tokens[stop]
                stop += 1
            if stop == row:  # one line alone is over the limit: cut it into pieces
                out.extend(self._cut_line(row, kind, name, head))
                row += 1
                continue
            body = "\n".join(self.lines[row:stop])
            if body.strip():
                out.append(Chunk(row, stop - 1, kind, name, f"{head}\n{body}" if head else body))
            row = stop
        return out

    def _cut_line(self, row: int, kind: str, name: str, head: str) -> list[Chunk]:
        # A piece no longer in characters than the room left cannot be longer in tokens.
        room = self.budget - self._prefix(head) - 1
        line = self.lines[row]
        pieces = [line[i : i + room] for i in range(0, len(line), room)]
        return [
            Chunk(row, row, kind, name, f"{head}\n{piece}" if head else piece)
            for piece in pieces
            if piece.strip()
        ]


class _FileChunker:
    def __init__(self, lines: list[str], spec: LanguageSpec, limits: ChunkLimits) -> None:
        self.lines = lines
        self.spec = spec
        self.limits = limits
        self.fitter = _TokenFitter(lines, limits)
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

    def _emit(
        self,
        start: int,
        end: int,
        kind: str,
        name: str,
        signature: str = "",
        continuation: str = "",
    ) -> None:
        """One chunk, or several when a token counter says it is over the encoder's limit;
        `continuation` is the signature line that split pieces repeat."""
        body = "\n".join(self.lines[start : end + 1])
        if not body.strip():
            return
        text = f"{signature}\n{body}" if signature else body
        if self.fitter.fits(text, start, end, signature):
            self.chunks.append(Chunk(start, end, kind, name, text))
        else:
            self.chunks.extend(self.fitter.split(start, end, kind, name, signature, continuation))

    def _gap(self, start: int, end: int, signature: str) -> None:
        first = True
        for s, e in self._windows(start, end, self.limits.max_chars - len(signature)):
            self._emit(s, e, "code", "", "" if first and s == start else signature, signature)
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
        signature = self.lines[node.start_point[0]].rstrip()
        if self._fits(start, end):
            self._emit(start, end, kind, qualified, "", signature)
            if body is not None:
                self._collect(body, qualified)
            return
        if body is not None:
            self.region(list(body.named_children), start, end, qualified, signature)
            return
        windows = self._windows(start, end, self.limits.max_chars - len(signature) - 1)
        for index, (s, e) in enumerate(windows):
            self._emit(s, e, kind, qualified, signature if index else "", signature)

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
    """Each definition's chunk: the smallest one holding the definition's name line (the first
    of equals)."""
    # Only the definitions' lines are looked up, so only those are mapped.
    wanted = sorted({line for _, _, _, line in defs})
    spans = [chunk.end_line - chunk.start_line for chunk in chunks]
    by_line: dict[int, int] = {}
    for index, chunk in enumerate(chunks):
        span = spans[index]
        low = bisect_left(wanted, chunk.start_line)
        high = bisect_right(wanted, chunk.end_line, low)
        for line in wanted[low:high]:
            best = by_line.get(line)
            if best is None or span < spans[best]:
                by_line[line] = index
    out: list[Symbol] = []
    for name, qualified, kind, line in defs:
        found = by_line.get(line)
        if found is not None:
            out.append(Symbol(name, qualified, kind, line, found))
    return out


def chunk_text_windows(lines: list[str], limits: ChunkLimits) -> list[Chunk]:
    """Overlapping line windows for files without a grammar."""
    fitter = _TokenFitter(lines, limits)
    chunks: list[Chunk] = []
    start = 0
    while start < len(lines):
        end = min(start + limits.text_window, len(lines)) - 1
        text = "\n".join(lines[start : end + 1])
        while len(text) > limits.max_chars * 2 and end > start:
            end = start + (end - start) // 2
            text = "\n".join(lines[start : end + 1])
        if not text.strip():
            pass
        elif fitter.fits(text, start, end, ""):
            chunks.append(Chunk(start, end, "text", "", text[: limits.max_chars * 2]))
        else:
            chunks.extend(fitter.split(start, end, "text", "", "", ""))
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
