"""The embedding encoder of the workspace index: config, backend choice, `load_encoder`.

Importing this module is cheap: torch, onnxruntime and sentence-transformers are imported only
inside `load_encoder`, so the language server answers `initialize` at once and loads the
encoder in the background.

Backends:
- `torch`: sentence-transformers on the CPU or a CUDA GPU.
- `onnx`: the model exported once to ONNX (cached per user), run by ONNX Runtime on the CPU.
- `onnx-int8`: the same export with dynamically quantised int8 weights; used only while its
  measured mean cosine against torch fp32 on real code stays at or above `int8_min_cosine`.
- `auto`: torch on CUDA when a GPU is usable, else the faster of int8 (when it keeps quality)
  and ONNX fp32, as measured at export time; torch on the CPU only when ONNX cannot reproduce
  the model (extra modules, unusual pooling) or its export fails.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .encoders.child_process import ChildJobStopped
from .encoders.encoder import Encoder
from .encoders.model_folder import ModelFolder, ModelFolderError, read_model_folder
from .encoders.onnx_cache import ExportMetadata, OnnxExport, ensure_onnx_export, invalidate
from .encoders.runners import OnnxRunner, Runner, TorchRunner, load_sentence_transformer
from .encoders.threads import BackgroundWorker, default_batch_threads
from .encoders.tokenizer import FastTokenizer

__all__ = [
    "ChildJobStopped",
    "Encoder",
    "EncoderConfig",
    "EncoderError",
    "ModelFolderError",
    "load_encoder",
]

log = logging.getLogger(__name__)

# Timings at export share the machine with the editor: only a clear win makes fp32 the default.
INT8_SPEED_MARGIN = 1.25

# On two cores 16 beat 32 (2.2 s vs 3.0 s for 192 long chunks) with half the attention buffers;
# a GPU wants far larger batches to fill its multiprocessors (benchmarks/gpu_index.py).
CPU_BATCH = 16
CUDA_BATCH = 256

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
Device = Literal["auto", "cpu", "cuda"]


class EncoderError(RuntimeError):
    """The configured encoder cannot be built (the message says which setting to change)."""


class EncoderConfig(BaseModel):
    """Settings of the workspace encoder (`index.embeddings` in the server's settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path | None = Field(
        default=None, description="a sentence-transformers folder; unset: bundled MiniLM"
    )
    backend: Backend = "auto"
    device: Device = "auto"
    batch_size: int | None = Field(
        default=None, ge=1, le=1024, description="texts per batch; unset: by device"
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="intra-op threads for batches; unset: measured default",
    )
    # The lines nearest the cursor say most: on the shared eval's call sites, vector-only
    # recall@5 was 0.368 at 24 tokens, 0.345 at 32, 0.264 at 64, and a query embeds in 3.5 ms
    # instead of 5.9 (benchmarks/vector_query_length.py).
    query_max_tokens: int = Field(
        default=24, ge=8, description="a query keeps only its last N tokens (nearest the cursor)"
    )
    low_priority: bool = Field(default=True, description="batch encoding at nice +10 (Linux)")
    int8_min_cosine: float = Field(default=0.98, gt=0.0, le=1.0)
    quality_samples: int = Field(
        default=48, ge=8, le=1000, description="code chunks compared at export (int8 vs fp32)"
    )
    cache_dir: Path | None = Field(
        default=None, description="export cache root; unset: $BASTION_CACHE or ~/.cache/bastion"
    )

    @model_validator(mode="after")
    def _onnx_runs_on_cpu(self) -> EncoderConfig:
        if self.device == "cuda" and self.backend.startswith("onnx"):
            raise ValueError(
                f"backend {self.backend!r} runs on the CPU; use backend 'torch' (or 'auto') "
                "with device 'cuda'"
            )
        return self

    def batch_size_on(self, device: str) -> int:
        """The batch size to use on `device` ("cpu" or "cuda")."""
        if self.batch_size is not None:
            return self.batch_size
        return CUDA_BATCH if device == "cuda" else CPU_BATCH


def _cuda_driver_present() -> bool:
    """A cheap check before importing torch (seconds) just to learn there is no GPU."""
    if sys.platform.startswith("linux"):
        return (
            Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None
        )
    return sys.platform == "win32" and shutil.which("nvidia-smi") is not None


def _cuda_available() -> bool:
    if not _cuda_driver_present():
        return False
    import torch

    return bool(torch.cuda.is_available())


def _torch_encoder(
    config: EncoderConfig, folder: ModelFolder, tokenizer: FastTokenizer, device: str
) -> Encoder:
    if device == "cuda" and not _cuda_available():
        raise EncoderError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto'")
    threads = config.threads or default_batch_threads()
    worker = BackgroundWorker(config.low_priority)
    model = worker.call(lambda: load_sentence_transformer(folder, device))
    runner = TorchRunner(model, threads)
    return Encoder(
        name=folder.name,
        backend="torch",
        device=device,
        tokenizer=tokenizer,
        worker=worker,
        batch_runner=runner,
        query_runner=runner,
        batch_size=config.batch_size_on(device),
        quality=None,
    )


def fp32_clearly_faster(metadata: ExportMetadata) -> bool:
    """Whether fp32 beat int8 at export by more than timing noise; int8 is also 4x smaller."""
    return metadata.fp32_chunks_per_s > INT8_SPEED_MARGIN * metadata.int8_chunks_per_s


def _onnx_variant(config: EncoderConfig, export: OnnxExport) -> str:
    meta = export.metadata
    int8_ok = meta.int8_cosine.mean >= config.int8_min_cosine
    if config.backend == "onnx":
        return "onnx"
    if not int8_ok:
        level = logging.WARNING if config.backend == "onnx-int8" else logging.INFO
        log.log(
            level,
            "int8 encoder for %s keeps mean cosine %.4f (min %.4f) < %.2f; using ONNX fp32",
            meta.model_name,
            meta.int8_cosine.mean,
            meta.int8_cosine.min,
            config.int8_min_cosine,
        )
        return "onnx"
    if config.backend == "onnx-int8" or not fp32_clearly_faster(export.metadata):
        return "onnx-int8"
    return "onnx"


def _onnx_encoder(
    config: EncoderConfig,
    folder: ModelFolder,
    tokenizer: FastTokenizer,
    stop: threading.Event | None,
) -> Encoder:
    export = ensure_onnx_export(
        folder,
        config.cache_dir,
        config.quality_samples,
        stop=stop,
        low_priority=config.low_priority,
    )
    variant = _onnx_variant(config, export)
    model_file = export.int8_path if variant == "onnx-int8" else export.fp32_path
    quality = export.metadata.int8_cosine if variant == "onnx-int8" else export.metadata.fp32_cosine
    threads = config.threads or default_batch_threads()
    worker = BackgroundWorker(config.low_priority)
    try:
        # Made on the worker so that the session's thread pool inherits its low priority.
        batch_runner: Runner = worker.call(lambda: OnnxRunner(model_file, folder.pooling, threads))
        query_runner = OnnxRunner(model_file, folder.pooling, 1)
    except Exception:
        worker.close()
        invalidate(export.directory)
        raise
    return Encoder(
        name=folder.name,
        backend=variant,
        device="cpu",
        tokenizer=tokenizer,
        worker=worker,
        batch_runner=batch_runner,
        query_runner=query_runner,
        batch_size=config.batch_size_on("cpu"),
        quality=quality,
    )


def load_encoder(
    config: EncoderConfig | None = None, stop: threading.Event | None = None
) -> Encoder:
    """Build the encoder `config` describes (slow: call it off the server's main loop).

    Setting `stop` ends a first-use ONNX export with `ChildJobStopped`."""
    config = config or EncoderConfig()
    folder = read_model_folder(config.model_path)
    tokenizer = FastTokenizer(folder.tokenizer_file, folder.max_tokens, config.query_max_tokens)
    wants_cuda = config.device == "cuda" or (
        config.device == "auto" and config.backend in ("auto", "torch") and _cuda_available()
    )
    if config.backend == "torch" or wants_cuda:
        return _torch_encoder(config, folder, tokenizer, "cuda" if wants_cuda else "cpu")
    unsupported = folder.onnx_unsupported_reason
    if unsupported is not None:
        if config.backend != "auto":
            raise EncoderError(
                f"backend {config.backend!r} cannot run {folder.path}: {unsupported}; "
                "use backend 'torch' or 'auto'"
            )
        log.info("ONNX cannot run %s (%s); using torch on the CPU", folder.name, unsupported)
        return _torch_encoder(config, folder, tokenizer, "cpu")
    try:
        encoder = _onnx_encoder(config, folder, tokenizer, stop)
    except ChildJobStopped:
        raise
    except Exception as exc:
        if config.backend != "auto":
            raise EncoderError(f"ONNX encoder for {folder.path} failed: {exc}") from exc
        log.warning("ONNX encoder for %s failed (%s); using torch on the CPU", folder.name, exc)
        return _torch_encoder(config, folder, tokenizer, "cpu")
    fp32 = encoder.quality
    if encoder.backend == "onnx" and fp32 is not None and fp32.mean < 0.999:
        encoder.close()
        message = f"ONNX export of {folder.name} disagrees with torch (mean cosine {fp32.mean:.4f})"
        if config.backend != "auto":
            raise EncoderError(message)
        log.warning("%s; using torch on the CPU", message)
        return _torch_encoder(config, folder, tokenizer, "cpu")
    return encoder
