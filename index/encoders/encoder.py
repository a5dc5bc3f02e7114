"""`Encoder`: texts -> unit vectors, with a batch path in the background and a fast query path."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .batching import embed_texts
from .onnx_cache import CosineStats
from .runners import Runner
from .threads import BackgroundWorker
from .tokenizer import FastTokenizer


class Encoder:
    """One loaded embedding model.

    `encode` runs on a single background worker thread (niced on Linux when `low_priority`),
    so calls from several threads queue instead of oversubscribing the CPU. `encode_query`
    runs on the caller's thread with its own single-threaded session: one short text gains
    nothing from a thread pool, and it must not wait behind a background batch.
    """

    def __init__(
        self,
        *,
        name: str,
        backend: str,
        device: str,
        tokenizer: FastTokenizer,
        worker: BackgroundWorker,
        batch_runner: Runner,
        query_runner: Runner,
        batch_size: int,
        quality: CosineStats | None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.device = device
        self.max_tokens = tokenizer.max_tokens
        self.query_max_tokens = tokenizer.query_max_tokens
        self.quality = quality
        self._tokenizer = tokenizer
        self._worker = worker
        self._batch_runner = batch_runner
        self._query_runner = query_runner
        self.batch_size = batch_size
        self.dim = int(
            self._query_runner.run(tokenizer.encode_query("def warm_up(): pass")).shape[1]
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` for this model, special tokens included, before truncation."""
        return self._tokenizer.count_tokens(text)

    def encode(self, texts: list[str]) -> NDArray[np.float32]:
        """(len(texts), dim) float32, each row of unit length; texts past `max_tokens` are cut."""

        def task() -> NDArray[np.float32]:
            return embed_texts(
                self._tokenizer, self._batch_runner, texts, self.batch_size, self.dim
            )

        return self._worker.call(task)

    def encode_query(self, text: str) -> NDArray[np.float32]:
        """(dim,) unit vector of the last `query_max_tokens` tokens of `text`."""
        row: NDArray[np.float32] = self._query_runner.run(self._tokenizer.encode_query(text))[0]
        return row

    def close(self) -> None:
        """Stop the background worker (pending batches are cancelled)."""
        self._worker.close()

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Encoder(name={self.name!r}, backend={self.backend!r}, device={self.device!r})"
