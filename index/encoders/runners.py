"""The two ways to run the network: an ONNX Runtime session, or sentence-transformers on torch.

Both take the same padded features from `FastTokenizer` and return L2-normalised float32 rows,
so the backends differ only in the network, never in tokenization.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .model_folder import ModelFolder
from .pooling import normalise, pool
from .tokenizer import Features

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


class Runner(Protocol):
    def run(self, features: Features) -> NDArray[np.float32]:
        """(batch, dim) normalised embeddings for one padded batch."""
        ...


class OnnxRunner:
    """An ONNX Runtime CPU session over the exported encoder, pooled in numpy."""

    def __init__(self, model_file: Path, pooling: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads must not spin on a laptop: the encoder waits for files most of the time.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # The arena keeps the largest batch's buffers for good (hundreds of MB inside a language
        # server); plain allocation costs little next to the model's matrix products.
        options.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._pooling = pooling

    def run(self, features: Features) -> NDArray[np.float32]:
        outputs: list[Any] = self._session.run(None, {n: features[n] for n in self._inputs})
        hidden = np.asarray(outputs[0], dtype=np.float32)
        return pool(hidden, features["attention_mask"], self._pooling)


def load_sentence_transformer(folder: ModelFolder, device: str) -> SentenceTransformer:
    """The model through sentence-transformers, from disk only: a hub lookup is never tried."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = SentenceTransformer(str(folder.path), device=device, local_files_only=True)
    # fp16 on a GPU: twice the speed of fp32 at a cosine to it above 0.999 (benchmarks/
    # gpu_index.py); fp32 on the CPU, whatever the checkpoint's own dtype.
    return model.half() if device == "cuda" else model.float()


def model_input_names(model: SentenceTransformer) -> list[str]:
    """The inputs the network takes, in the order the tokenizer declares them."""
    declared = list(getattr(model.tokenizer, "model_input_names", []))
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in declared]
    return names or ["input_ids", "attention_mask"]


class TorchRunner:
    """sentence-transformers' own module pipeline (transformer, pooling, dense...) on torch."""

    def __init__(self, model: SentenceTransformer, threads: int) -> None:
        import torch

        if model.device.type == "cpu":
            # torch's intra-op pool is process-wide; the encoder is its only user in the server.
            torch.set_num_threads(threads)
        self.model = model
        self._inputs = model_input_names(model)

    def run(self, features: Features) -> NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            batch = {n: torch.from_numpy(features[n]).to(self.model.device) for n in self._inputs}
            embeddings = self.model(batch)["sentence_embedding"]
            rows: NDArray[np.float32] = embeddings.float().cpu().numpy()
        return normalise(rows)
