"""The workspace index: discovery, tree-sitter chunks, definitions, BM25, fused ranking."""

from .ranking import Snippet, context, search, vector_query
from .workspace import IndexReport, WorkspaceIndex

__all__ = ["IndexReport", "Snippet", "WorkspaceIndex", "context", "search", "vector_query"]
