"""The workspace index: discovery, tree-sitter chunks, definitions, BM25, fused ranking."""

from .ranking import Snippet, context, search
from .workspace import IndexReport, WorkspaceIndex

__all__ = ["IndexReport", "Snippet", "WorkspaceIndex", "context", "search"]
