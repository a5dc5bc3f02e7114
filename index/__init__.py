"""The workspace index: discovery, tree-sitter chunks, definitions, BM25, fused ranking; a quick
first stage answers while a cold build runs."""

from .prepare import BuildStopped
from .queries import StoreQueries
from .quick import QuickIndex
from .ranking import Snippet, context, search, vector_query
from .workspace import IndexReport, WorkspaceIndex

__all__ = [
    "BuildStopped",
    "IndexReport",
    "QuickIndex",
    "Snippet",
    "StoreQueries",
    "WorkspaceIndex",
    "context",
    "search",
    "vector_query",
]
