"""Encode many texts: tokenize once, batch by similar length, run, restore the input order."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .runners import Runner
from .tokenizer import FastTokenizer


def embed_texts(
    tokenizer: FastTokenizer, runner: Runner, texts: list[str], batch_size: int, dim: int
) -> NDArray[np.float32]:
    """(len(texts), dim) normalised rows; sorting by length keeps padding (wasted work) small."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    encodings = tokenizer.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids), reverse=True)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = runner.run(tokenizer.pad([encodings[i] for i in rows]))
    return out
