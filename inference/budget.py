"""Prefix and suffix windows by token budget, counted with the server's own tokenizer ratio."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .errors import ModelError

if TYPE_CHECKING:
    from .client import ModelClient

log = logging.getLogger(__name__)

DEFAULT_CHARS_PER_TOKEN = 3.5


class TokenCounter(Protocol):
    def count(self, text: str) -> int:
        """How many tokens `text` is (an estimate is fine; it must be cheap)."""
        ...


@dataclass(frozen=True)
class CharRatioCounter:
    """Counts tokens as characters divided by a ratio measured once on the real tokenizer."""

    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token) if text else 0


async def calibrate_counter(client: ModelClient, model: str, sample: str) -> TokenCounter:
    """Measure characters per token on `sample` with the server's tokenizer, once.

    Falls back to 3.5 characters per token when the server cannot tokenize or fails to.
    """
    try:
        tokens = await client.tokenize(model, sample)
    except ModelError as error:
        log.info("calibration failed, assuming %s chars/token: %s", DEFAULT_CHARS_PER_TOKEN, error)
        return CharRatioCounter()
    if not tokens or not sample:
        return CharRatioCounter()
    return CharRatioCounter(len(sample) / len(tokens))


def _keep_tail(text: str, budget: int, counter: TokenCounter) -> str:
    """The end of `text` within `budget` tokens, starting at a line boundary where possible."""
    if budget <= 0 or not text:
        return ""
    if counter.count(text) <= budget:
        return text
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = counter.count(line)
        if used + cost > budget:
            if not kept:
                # The cursor's own line alone is over budget: keep its end, by characters.
                return _cut_chars(line, budget, counter, keep="end")
            break
        kept.append(line)
        used += cost
    return "".join(reversed(kept))


def _keep_head(text: str, budget: int, counter: TokenCounter) -> str:
    """The start of `text` within `budget` tokens, ending at a line boundary where possible."""
    if budget <= 0 or not text:
        return ""
    if counter.count(text) <= budget:
        return text
    kept: list[str] = []
    used = 0
    for line in text.splitlines(keepends=True):
        cost = counter.count(line)
        if used + cost > budget:
            if not kept:
                return _cut_chars(line, budget, counter, keep="start")
            break
        kept.append(line)
        used += cost
    return "".join(kept)


def _cut_chars(line: str, budget: int, counter: TokenCounter, *, keep: str) -> str:
    low, high = 0, len(line)
    while low < high:  # the longest piece that fits
        middle = (low + high + 1) // 2
        piece = line[len(line) - middle :] if keep == "end" else line[:middle]
        if counter.count(piece) <= budget:
            low = middle
        else:
            high = middle - 1
    return line[len(line) - low :] if keep == "end" else line[:low]


def fit_windows(
    prefix: str,
    suffix: str,
    *,
    budget_tokens: int,
    suffix_share: float = 0.25,
    counter: TokenCounter,
) -> tuple[str, str]:
    """Cut prefix and suffix to `budget_tokens` in all, keeping the text nearest the cursor.

    The suffix gets `suffix_share` of the budget; whatever one side does not use goes to the
    other. Cuts fall on line boundaries, except when the cursor's own line is over budget.
    """
    budget = max(budget_tokens, 0)
    suffix_budget = math.floor(budget * min(max(suffix_share, 0.0), 1.0))
    prefix_budget = budget - suffix_budget
    prefix_cost = counter.count(prefix)
    suffix_cost = counter.count(suffix)
    if prefix_cost + suffix_cost <= budget:
        return prefix, suffix
    if prefix_cost < prefix_budget:
        suffix_budget = budget - prefix_cost
    elif suffix_cost < suffix_budget:
        prefix_budget = budget - suffix_cost
    new_prefix = _keep_tail(prefix, prefix_budget, counter)
    spare = prefix_budget - counter.count(new_prefix)
    new_suffix = _keep_head(suffix, suffix_budget + max(spare, 0), counter)
    return new_prefix, new_suffix
