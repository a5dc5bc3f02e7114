"""Per-language tree-sitter grammars (from their own wheels) and what counts as a definition."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import tree_sitter_c
import tree_sitter_cpp
import tree_sitter_go
import tree_sitter_java
import tree_sitter_javascript
import tree_sitter_python
import tree_sitter_rust
import tree_sitter_typescript
from tree_sitter import Language, Parser


@dataclass(frozen=True)
class LanguageSpec:
    """A grammar and the node types the chunker and the definitions table care about."""

    name: str
    grammar: Callable[[], object]
    # Nodes that are one definition each (function, class, method, type).
    definitions: frozenset[str]
    # Definitions whose body holds further definitions (classes, impls, namespaces).
    containers: frozenset[str]
    # Nodes that only wrap a definition (decorators, export, templates).
    wrappers: frozenset[str] = frozenset()
    # Top-level statements that bind names worth finding (module constants, `const f = () =>`).
    bindings: frozenset[str] = frozenset()


_JS_DEFS = frozenset(
    {
        "function_declaration",
        "generator_function_declaration",
        "class_declaration",
        "abstract_class_declaration",
        "method_definition",
        "interface_declaration",
        "type_alias_declaration",
        "enum_declaration",
        "module",
        "internal_module",
    }
)
_JS_CONTAINERS = frozenset(
    {"class_declaration", "abstract_class_declaration", "interface_declaration", "module"}
)

LANGUAGES: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        "python",
        tree_sitter_python.language,
        frozenset({"function_definition", "class_definition"}),
        frozenset({"class_definition"}),
        frozenset({"decorated_definition"}),
        frozenset({"expression_statement"}),
    ),
    "javascript": LanguageSpec(
        "javascript",
        tree_sitter_javascript.language,
        _JS_DEFS,
        _JS_CONTAINERS,
        frozenset({"export_statement"}),
        frozenset({"lexical_declaration", "variable_declaration"}),
    ),
    "typescript": LanguageSpec(
        "typescript",
        tree_sitter_typescript.language_typescript,
        _JS_DEFS,
        _JS_CONTAINERS,
        frozenset({"export_statement"}),
        frozenset({"lexical_declaration", "variable_declaration"}),
    ),
    "tsx": LanguageSpec(
        "tsx",
        tree_sitter_typescript.language_tsx,
        _JS_DEFS,
        _JS_CONTAINERS,
        frozenset({"export_statement"}),
        frozenset({"lexical_declaration", "variable_declaration"}),
    ),
    "java": LanguageSpec(
        "java",
        tree_sitter_java.language,
        frozenset(
            {
                "class_declaration",
                "interface_declaration",
                "enum_declaration",
                "record_declaration",
                "annotation_type_declaration",
                "method_declaration",
                "constructor_declaration",
            }
        ),
        frozenset(
            {"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}
        ),
    ),
    "go": LanguageSpec(
        "go",
        tree_sitter_go.language,
        frozenset({"function_declaration", "method_declaration", "type_declaration"}),
        frozenset(),
        frozenset(),
        frozenset({"const_declaration", "var_declaration"}),
    ),
    "rust": LanguageSpec(
        "rust",
        tree_sitter_rust.language,
        frozenset(
            {
                "function_item",
                "struct_item",
                "enum_item",
                "union_item",
                "trait_item",
                "impl_item",
                "mod_item",
                "type_item",
                "macro_definition",
                "const_item",
                "static_item",
            }
        ),
        frozenset({"impl_item", "trait_item", "mod_item"}),
    ),
    "c": LanguageSpec(
        "c",
        tree_sitter_c.language,
        frozenset({"function_definition", "struct_specifier", "enum_specifier", "type_definition"}),
        frozenset(),
    ),
    "cpp": LanguageSpec(
        "cpp",
        tree_sitter_cpp.language,
        frozenset(
            {
                "function_definition",
                "class_specifier",
                "struct_specifier",
                "enum_specifier",
                "type_definition",
                "namespace_definition",
            }
        ),
        frozenset({"class_specifier", "struct_specifier", "namespace_definition"}),
        frozenset({"template_declaration"}),
    ),
}

EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
}


def language_for(path: str) -> LanguageSpec | None:
    """The language of a file by its extension, or None for plain text."""
    dot = path.rfind(".")
    if dot < 0:
        return None
    name = EXTENSIONS.get(path[dot:].lower())
    return LANGUAGES[name] if name else None


@cache
def parser_for(name: str) -> Parser:
    """A parser for one language, built once per process."""
    spec = LANGUAGES[name]
    return Parser(Language(spec.grammar()))
