# DeepSeek-Coder's markers really are FULLWIDTH VERTICAL LINE and LOWER ONE EIGHTH BLOCK.
# ruff: noqa: RUF001, RUF002
"""Fill-in-the-middle prompt templates, one per model family.

vLLM's `/v1/completions` has no `suffix` parameter, so the client renders the raw FIM prompt
itself. Formats follow each family's own reference:

- Qwen2.5-Coder (README "fill in the middle" and repo-level examples): `<|fim_prefix|>P
  <|fim_suffix|>S<|fim_middle|>`, files separated by `<|file_sep|>path\\n`.
- StarCoder / StarCoder2 (bigcode tokenizers): `<fim_prefix>P<fim_suffix>S<fim_middle>`,
  StarCoder2 repository form `<file_sep>path\\ncontent`.
- DeepSeek-Coder (README "code insertion"): `<｜fim▁begin｜>P<｜fim▁hole｜>S<｜fim▁end｜>`.
- Code Llama (Meta's `infilling_prompt_tokens`): `<PRE> P <SUF>S <MID>`, ends with `<EOT>`.
- Codestral (mistral-common `encode_fim`): suffix first, `[SUFFIX]S[PREFIX]P`, no middle token.

`bos` is empty everywhere: vLLM and llama.cpp add the model's BOS token to a completion prompt
themselves, and a second one hurts quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FimTemplate:
    """A family's FIM markers, the order it was trained on, and the strings that end a middle."""

    name: str
    prefix: str
    suffix: str
    middle: str
    order: Literal["psm", "spm"]
    stop: tuple[str, ...]
    bos: str = ""
    # Repository-level form: the marker that starts each file, followed by its path and a newline.
    file_sep: str = ""

    def render(self, prefix_text: str, suffix_text: str) -> str:
        """The raw prompt for text before and after the cursor."""
        if self.order == "spm":
            body = f"{self.suffix}{suffix_text}{self.prefix}{prefix_text}{self.middle}"
        else:
            body = f"{self.prefix}{prefix_text}{self.suffix}{suffix_text}{self.middle}"
        return self.bos + body

    def markers(self) -> tuple[str, ...]:
        """The special tokens that identify this family (without the spacing around them)."""
        found = (marker.strip() for marker in (self.prefix, self.suffix, self.middle))
        return tuple(marker for marker in found if marker)


QWEN_CODER = FimTemplate(
    name="qwen2.5-coder",
    prefix="<|fim_prefix|>",
    suffix="<|fim_suffix|>",
    middle="<|fim_middle|>",
    order="psm",
    stop=(
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "<|im_start|>",
        "<|im_end|>",
    ),
    file_sep="<|file_sep|>",
)

STARCODER = FimTemplate(
    name="starcoder",
    prefix="<fim_prefix>",
    suffix="<fim_suffix>",
    middle="<fim_middle>",
    order="psm",
    stop=("<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"),
    file_sep="<file_sep>",
)

DEEPSEEK_CODER = FimTemplate(
    name="deepseek-coder",
    prefix="<｜fim▁begin｜>",
    suffix="<｜fim▁hole｜>",
    middle="<｜fim▁end｜>",
    order="psm",
    stop=("<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|EOT|>"),
)

CODELLAMA = FimTemplate(
    name="codellama",
    prefix="<PRE> ",
    suffix=" <SUF>",
    middle=" <MID>",
    order="psm",
    stop=("<EOT>", "<PRE>", "<SUF>", "<MID>"),
)

CODESTRAL = FimTemplate(
    name="codestral",
    prefix="[PREFIX]",
    suffix="[SUFFIX]",
    middle="",
    order="spm",
    stop=("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"),
)

FIM_TEMPLATES: dict[str, FimTemplate] = {
    template.name: template
    for template in (QWEN_CODER, STARCODER, DEEPSEEK_CODER, CODELLAMA, CODESTRAL)
}
