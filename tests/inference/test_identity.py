from collections.abc import Callable

import pytest

from inference import FIM_TEMPLATES, choose_mode, detect_completion_mode
from inference.identity import all_markers


def fake_tokenizer(special: set[str], bos: list[int] | None = None) -> Callable[[str], list[int]]:
    """Markers in `special` are one token; anything else is one token per character."""

    def tokenize(text: str) -> list[int]:
        ids = [1000] if text in special else [ord(c) for c in text]
        return [*(bos or []), *ids]

    return tokenize


def results(tokenize: Callable[[str], list[int]]) -> dict[str, list[int]]:
    return {marker: tokenize(marker) for marker in all_markers()}


@pytest.mark.parametrize("name", sorted(FIM_TEMPLATES))
def test_tokenizer_picks_the_family_whose_markers_are_single_tokens(name: str) -> None:
    special = set(FIM_TEMPLATES[name].markers())
    mode = choose_mode(results(fake_tokenizer(special)), "served-model")
    assert (mode.kind, mode.template, mode.source) == ("fim", FIM_TEMPLATES[name], "tokenizer")


def test_partial_marker_set_is_not_enough() -> None:
    special = {"<fim_prefix>", "<fim_suffix>"}  # no <fim_middle>
    mode = choose_mode(results(fake_tokenizer(special)), "starcoder2-3b")
    assert mode.kind == "chat" and mode.source == "default"


def test_tokenizer_beats_the_name() -> None:
    mode = choose_mode(results(fake_tokenizer(set())), "qwen2.5-coder-7b")
    assert mode.kind == "chat"


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("Qwen/Qwen2.5-Coder-1.5B", "qwen2.5-coder"),
        ("bigcode/starcoder2-3b", "starcoder"),
        ("Qwen/CodeQwen1.5-7B", "starcoder"),
        ("deepseek-ai/deepseek-coder-1.3b-base", "deepseek-coder"),
        ("codellama/CodeLlama-7b-hf", "codellama"),
        ("mistralai/Codestral-22B-v0.1", "codestral"),
    ],
)
def test_name_fallback_without_tokenizer(model_id: str, expected: str) -> None:
    mode = choose_mode(None, model_id)
    assert mode.template is FIM_TEMPLATES[expected] and mode.source == "name"


def test_unknown_name_without_tokenizer_is_chat() -> None:
    mode = choose_mode(None, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (mode.kind, mode.template, mode.source) == ("chat", None, "default")


def test_override_wins() -> None:
    everything = results(fake_tokenizer(set(FIM_TEMPLATES["starcoder"].markers())))
    mode = choose_mode(everything, "starcoder2", "deepseek-coder")
    assert mode.template is FIM_TEMPLATES["deepseek-coder"] and mode.source == "setting"
    chat = choose_mode(everything, "starcoder2", "Chat")
    assert (chat.kind, chat.source) == ("chat", "setting")
    auto = choose_mode(everything, "starcoder2", "auto")
    assert auto.source == "tokenizer"


def test_unknown_override_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"qwen2\.5-coder"):
        choose_mode(None, "x", "santacoder")


class FakeClient:
    def __init__(self, tokenize: Callable[[str], list[int]] | None) -> None:
        self._tokenize = tokenize
        self.calls: list[str] = []

    async def tokenize(self, model: str, text: str) -> list[int] | None:
        self.calls.append(text)
        return None if self._tokenize is None else self._tokenize(text)


async def test_detect_strips_the_bos_a_server_always_adds() -> None:
    client = FakeClient(fake_tokenizer(set(FIM_TEMPLATES["qwen2.5-coder"].markers()), bos=[1]))
    mode = await detect_completion_mode(client, "m")  # type: ignore[arg-type]
    assert mode.template is FIM_TEMPLATES["qwen2.5-coder"] and mode.source == "tokenizer"


async def test_detect_falls_back_to_name_without_tokenizer() -> None:
    client = FakeClient(None)
    mode = await detect_completion_mode(client, "deepseek-coder-6.7b-base")  # type: ignore[arg-type]
    assert mode.template is FIM_TEMPLATES["deepseek-coder"] and mode.source == "name"


async def test_detect_with_override_asks_nothing() -> None:
    client = FakeClient(fake_tokenizer(set()))
    mode = await detect_completion_mode(client, "m", "codellama")  # type: ignore[arg-type]
    assert mode.template is FIM_TEMPLATES["codellama"] and client.calls == []
