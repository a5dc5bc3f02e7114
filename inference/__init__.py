"""Everything about talking to a model: client, dialects, FIM templates, prompts, budgets."""

from .budget import CharRatioCounter, TokenCounter, calibrate_counter, fit_windows
from .client import FEATURE_HEADER, ClientConfig, ModelClient
from .dialects import DIALECTS, LLAMA_CPP, LLAMA_SERVER, VLLM, Dialect
from .errors import (
    MalformedStream,
    ModelAuthError,
    ModelError,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
)
from .fim import FIM_TEMPLATES, FimTemplate
from .identity import CompletionMode, choose_mode, detect_completion_mode
from .postprocess import (
    DEFAULT_FILTERS,
    Filter,
    PostContext,
    balance_brackets,
    cut_repeated_lines,
    drop_blank,
    postprocess,
    reached_block_boundary,
    single_line_when_mid_line,
    stop_at_block_end,
    strip_code_fences,
    strip_echoed_prefix,
    trim_suffix_overlap,
    trim_trailing_whitespace,
)
from .prompts import CURSOR, build_chat_completion_messages, build_fim_prompt
from .sse import SSEDecoder, iter_sse_data
from .types import ChatMessage, ModelInfo, Snippet

__all__ = [
    "CURSOR",
    "DEFAULT_FILTERS",
    "DIALECTS",
    "FEATURE_HEADER",
    "FIM_TEMPLATES",
    "LLAMA_CPP",
    "LLAMA_SERVER",
    "VLLM",
    "CharRatioCounter",
    "ChatMessage",
    "ClientConfig",
    "CompletionMode",
    "Dialect",
    "Filter",
    "FimTemplate",
    "MalformedStream",
    "ModelAuthError",
    "ModelClient",
    "ModelError",
    "ModelInfo",
    "ModelServerError",
    "ModelTimeout",
    "ModelUnreachable",
    "PostContext",
    "SSEDecoder",
    "Snippet",
    "TokenCounter",
    "balance_brackets",
    "build_chat_completion_messages",
    "build_fim_prompt",
    "calibrate_counter",
    "choose_mode",
    "cut_repeated_lines",
    "detect_completion_mode",
    "drop_blank",
    "fit_windows",
    "iter_sse_data",
    "postprocess",
    "reached_block_boundary",
    "single_line_when_mid_line",
    "stop_at_block_end",
    "strip_code_fences",
    "strip_echoed_prefix",
    "trim_suffix_overlap",
    "trim_trailing_whitespace",
]
