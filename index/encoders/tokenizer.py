"""The model's own fast tokenizer (`tokenizers`, Rust): token counts and padded id batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

Features = dict[str, NDArray[np.int64]]


class FastTokenizer:
    """Three configured copies of one tokenizer, so no call ever changes shared settings.

    `tokenizers.Tokenizer` keeps truncation and padding as state on the object; a copy per use
    makes every method safe to call from the background encoder and the query path at once.
    """

    def __init__(self, tokenizer_file: Path, max_tokens: int, query_max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.query_max_tokens = min(query_max_tokens, max_tokens)
        self._counter = Tokenizer.from_file(str(tokenizer_file))
        self._counter.no_truncation()
        self._counter.no_padding()
        self._batch = Tokenizer.from_file(str(tokenizer_file))
        self._batch.enable_truncation(max_length=max_tokens)
        self._batch.no_padding()
        # A query is the text just before the cursor: keep its end, drop its beginning.
        self._query = Tokenizer.from_file(str(tokenizer_file))
        self._query.enable_truncation(max_length=self.query_max_tokens, direction="left")
        self._query.no_padding()
        self._pad_id = self._pad_token_id()

    def _pad_token_id(self) -> int:
        padding = self._counter.padding
        if padding is not None:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>", "<|endoftext|>"):
            token_id = self._counter.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        return 0

    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for `text` before truncation, special tokens included."""
        return len(self._counter.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        """One truncated encoding per text, unpadded (the caller batches by length)."""
        return list(self._batch.encode_batch(texts))

    def encode_query(self, text: str) -> Features:
        """One query, keeping its last `query_max_tokens` tokens, as a batch of one."""
        return self.pad([self._query.encode(text)])

    def pad(self, encodings: list[Encoding]) -> Features:
        """Stack encodings into right-padded int64 arrays with an attention mask."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
