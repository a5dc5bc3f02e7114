"""The FIM template is chosen by the served model's tokenizer, asked through the proxy."""

from __future__ import annotations

from pathlib import Path

from inference import ClientConfig, CompletionMode, ModelClient, detect_completion_mode

from .conftest import LspSession, file_uri
from .stacks import Stack
from .test_inline_completion import CURSOR, SOURCE


async def served_mode(stack: Stack) -> CompletionMode:
    client = ModelClient(ClientConfig(base_url=stack.proxy_url, api_key=stack.user_key))
    try:
        model = (await client.list_models())[0].id
        return await detect_completion_mode(client, model)
    finally:
        await client.aclose()


async def test_smollm2_has_no_fim_tokens_so_completion_goes_through_chat(stack: Stack) -> None:
    mode = await served_mode(stack)
    assert mode.kind == "chat"
    assert mode.template is None
    assert (mode.chat_format, mode.source) == ("chatml", "tokenizer")


async def test_a_tokenizer_with_qwen_fim_tokens_selects_the_qwen_template(
    qwen_fim_stack: Stack,
) -> None:
    mode = await served_mode(qwen_fim_stack)
    assert mode.kind == "fim"
    assert mode.template is not None and mode.template.name == "qwen2.5-coder"
    assert mode.source == "tokenizer"


async def test_the_language_server_sends_the_raw_qwen_fim_prompt(
    lsp: LspSession, qwen_fim_stack: Stack, tmp_path: Path
) -> None:
    await lsp.start(lsp.settings(qwen_fim_stack))
    assert lsp.statuses[-1]["completionMode"] == "fim:qwen2.5-coder"
    uri = file_uri(tmp_path, "fim.py")
    lsp.open(uri, SOURCE)

    await lsp.inline(uri, *CURSOR)

    row = qwen_fim_stack.audit_rows(
        "SELECT route FROM requests WHERE feature = 'completion' ORDER BY rowid DESC LIMIT 1"
    )[0]
    assert row["route"] == "/v1/completions"
    body = qwen_fim_stack.last_body("completion")
    assert "suffix" not in body, "vLLM rejects `suffix`: the client builds the raw FIM prompt"
    prompt = body["prompt"]
    assert prompt.index("<|fim_prefix|>") < prompt.index("<|fim_suffix|>")
    assert prompt.rstrip().endswith("<|fim_middle|>")
    assert "return fibonacci(n - 1)" in prompt
