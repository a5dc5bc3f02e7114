# The DeepSeek-Coder markers really use FULLWIDTH VERTICAL LINE and LOWER ONE EIGHTH BLOCK.
# ruff: noqa: RUF001
import pytest

from inference import FIM_TEMPLATES

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"

EXPECTED = {
    "qwen2.5-coder": (
        "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"
    ),
    "starcoder": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>",
    "deepseek-coder": (
        "<｜fim▁begin｜>def add(a, b):\n    <｜fim▁hole｜>\n\nprint(add(1, 2))\n<｜fim▁end｜>"
    ),
    "codellama": "<PRE> def add(a, b):\n     <SUF>\n\nprint(add(1, 2))\n <MID>",
    "codestral": "[SUFFIX]\n\nprint(add(1, 2))\n[PREFIX]def add(a, b):\n    ",
}


def test_every_template_is_pinned() -> None:
    assert set(FIM_TEMPLATES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_prompt(name: str) -> None:
    assert FIM_TEMPLATES[name].render(PREFIX, SUFFIX) == EXPECTED[name]


def test_markers_are_stripped_of_spacing() -> None:
    assert FIM_TEMPLATES["codellama"].markers() == ("<PRE>", "<SUF>", "<MID>")
    assert FIM_TEMPLATES["codestral"].markers() == ("[PREFIX]", "[SUFFIX]")
    assert FIM_TEMPLATES["qwen2.5-coder"].markers() == (
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    )


def test_stops() -> None:
    qwen = FIM_TEMPLATES["qwen2.5-coder"].stop
    assert {"<|endoftext|>", "<|fim_pad|>", "<|file_sep|>"} <= set(qwen)
    assert {"<|endoftext|>", "<file_sep>"} <= set(FIM_TEMPLATES["starcoder"].stop)
    assert "<｜end▁of▁sentence｜>" in FIM_TEMPLATES["deepseek-coder"].stop
    assert "<EOT>" in FIM_TEMPLATES["codellama"].stop


def test_bos_is_prepended_when_set() -> None:
    from dataclasses import replace

    template = replace(FIM_TEMPLATES["starcoder"], bos="<s>")
    assert template.render("a", "b") == "<s><fim_prefix>a<fim_suffix>b<fim_middle>"
