"""Where OpenAI-compatible servers differ: one small adaptor per server dialect.

Completions and chat are the same everywhere; tokenizing is not, and each server accepts a few
extra completion fields of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Dialect(Protocol):
    """A server family's tokenize route and completion extras."""

    @property
    def name(self) -> str: ...

    @property
    def tokenize_path(self) -> str: ...

    def tokenize_body(self, model: str, text: str) -> dict[str, Any]:
        """The JSON body asking the server to tokenize `text` (no BOS/EOS added where possible)."""
        ...

    def parse_tokens(self, payload: Any) -> list[int]:
        """The token ids in the tokenize answer; ValueError when it is not one."""
        ...

    def completion_extras(self) -> dict[str, Any]:
        """Extra fields for `/v1/completions` and `/v1/chat/completions` bodies."""
        ...


def _tokens_field(payload: Any) -> list[int]:
    tokens = payload.get("tokens") if isinstance(payload, dict) else None
    if not isinstance(tokens, list):
        raise ValueError("the answer has no 'tokens' list")
    ids: list[int] = []
    for token in tokens:
        # llama.cpp's server answers `{"id", "piece"}` objects when asked `with_pieces`.
        value = token.get("id") if isinstance(token, dict) else token
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("the 'tokens' list holds something other than token ids")
        ids.append(value)
    return ids


@dataclass(frozen=True)
class VLLMDialect:
    """vLLM's OpenAI-compatible server: `POST /tokenize`."""

    name: str = "vllm"
    tokenize_path: str = "/tokenize"

    def tokenize_body(self, model: str, text: str) -> dict[str, Any]:
        return {"model": model, "prompt": text, "add_special_tokens": False}

    def parse_tokens(self, payload: Any) -> list[int]:
        return _tokens_field(payload)

    def completion_extras(self) -> dict[str, Any]:
        # The usage chunk at the end of the stream lets the proxy record token counts.
        return {"stream_options": {"include_usage": True}}


@dataclass(frozen=True)
class LlamaCppPythonDialect:
    """llama-cpp-python's server (`python -m llama_cpp.server`): `POST /extras/tokenize`.

    It tokenizes with special-token parsing on and the model's BOS added, which callers allow
    for by tokenizing an empty string first (see `identity`).
    """

    name: str = "llama-cpp-python"
    tokenize_path: str = "/extras/tokenize"

    def tokenize_body(self, model: str, text: str) -> dict[str, Any]:
        return {"input": text, "model": model}

    def parse_tokens(self, payload: Any) -> list[int]:
        return _tokens_field(payload)

    def completion_extras(self) -> dict[str, Any]:
        # llama-cpp-python keeps its own prompt cache and knows no `cache_prompt` field.
        return {}


@dataclass(frozen=True)
class LlamaServerDialect:
    """llama.cpp's native `llama-server`: `POST /tokenize` with `content`."""

    name: str = "llama-server"
    tokenize_path: str = "/tokenize"

    def tokenize_body(self, model: str, text: str) -> dict[str, Any]:
        return {"content": text, "add_special": False, "parse_special": True}

    def parse_tokens(self, payload: Any) -> list[int]:
        return _tokens_field(payload)

    def completion_extras(self) -> dict[str, Any]:
        # Reuse the KV cache of the previous request's common prefix (default on recent builds).
        return {"cache_prompt": True}


VLLM: Dialect = VLLMDialect()
LLAMA_CPP: Dialect = LlamaCppPythonDialect()
LLAMA_SERVER: Dialect = LlamaServerDialect()
DIALECTS: tuple[Dialect, ...] = (VLLM, LLAMA_CPP, LLAMA_SERVER)


def dialect_for_owner(owned_by: str | None) -> Dialect | None:
    """The dialect that `/v1/models` names in `owned_by`, when it names one."""
    owner = (owned_by or "").lower()
    if owner == "vllm":
        return VLLM
    if owner == "llamacpp":
        return LLAMA_SERVER
    return None


def probe_order(hint: Dialect | None) -> Sequence[Dialect]:
    """Dialects to try for tokenizing, the hinted one first."""
    if hint is None:
        return DIALECTS
    return (hint, *(dialect for dialect in DIALECTS if dialect is not hint))
