"""Token embeddings -> one L2-normalised vector per text, as sentence-transformers pools them."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def pool(hidden: NDArray[np.float32], mask: NDArray[np.int64], mode: str) -> NDArray[np.float32]:
    """Pool (batch, tokens, dim) hidden states over the unpadded tokens, then L2-normalise."""
    weights = mask[..., None].astype(np.float32)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = np.where(weights > 0, hidden, np.float32(-1e9)).max(axis=1)
    else:
        summed = (hidden * weights).sum(axis=1)
        counts = np.clip(weights.sum(axis=1), 1e-9, None)
        if mode == "mean":
            pooled = summed / counts
        elif mode == "mean_sqrt_len_tokens":
            pooled = summed / np.sqrt(counts)
        else:
            raise ValueError(f"pooling mode {mode!r} is not supported by the ONNX encoder")
    return normalise(pooled.astype(np.float32, copy=False))


def normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    scaled: NDArray[np.float32] = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return scaled
