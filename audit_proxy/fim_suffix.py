"""OpenAI's `suffix` on `/v1/completions`, for model servers that have none (vLLM).

The layer renders `prompt` + `suffix` into the served model's own fill-in-the-middle prompt,
drops `suffix` and adds the template's stop strings. It runs before the policy and audit layers,
so the policy scans, and the audit record holds, exactly the prompt that goes upstream.

The template is the one the language server would choose: the served model's tokenizer is asked
(once per model, through `inference.identity`) which family's FIM markers are single tokens. A
config entry `fim_templates = {"model" = "qwen"}` overrides that for a model.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from audit_proxy.asgi import ASGIApp, Receive, Scope, Send, read_body_or_refuse, replay, send_error
from inference.client import ClientConfig, ModelClient
from inference.errors import MalformedStream, ModelError, ModelServerError
from inference.fim import FIM_TEMPLATES, FimTemplate
from inference.identity import detect_completion_mode
from inference.prompts import neutralize_markers

log = logging.getLogger("bastion.proxy")

COMPLETIONS_PATH = "/v1/completions"
# Override value saying "this model has no FIM template": `suffix` is refused for it.
NO_FIM = "none"
# Short names people write in a config file, beside the registry's own names.
TEMPLATE_ALIASES = {
    "qwen": "qwen2.5-coder",
    "qwen-coder": "qwen2.5-coder",
    "starcoder2": "starcoder",
    "deepseek": "deepseek-coder",
    "code-llama": "codellama",
    "mistral": "codestral",
}


def template_names() -> list[str]:
    """Every value a `fim_templates` entry may take."""
    return [*FIM_TEMPLATES, *TEMPLATE_ALIASES, NO_FIM]


def template_named(name: str) -> FimTemplate | None:
    """The template a `fim_templates` value names (None for "none"); ValueError for no such one."""
    wanted = name.strip().lower()
    if wanted == NO_FIM:
        return None
    template = FIM_TEMPLATES.get(TEMPLATE_ALIASES.get(wanted, wanted))
    if template is None:
        raise ValueError(
            f"unknown FIM template {name!r}; use one of: {', '.join(template_names())}"
        )
    return template


class TemplateLookupFailed(Exception):
    """The model server could not be asked which template a model uses."""


class UnknownModel(Exception):
    """The model server does not serve the model the request names."""


class FimTemplates:
    """Which FIM template each served model takes: configured, or detected once and cached."""

    def __init__(self, client_config: ClientConfig, overrides: Mapping[str, str]) -> None:
        self._client_config = client_config
        self._overrides = {model: template_named(name) for model, name in overrides.items()}
        self._detected: dict[str, FimTemplate | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._client: ModelClient | None = None

    async def template_for(self, model: str) -> FimTemplate | None:
        """The model's template, or None when it has no FIM tokens.

        Raises `TemplateLookupFailed` when the model server cannot be reached or refuses, and
        `UnknownModel` when it lists its models and this one is not among them; neither answer
        is cached, so the next request asks again.
        """
        if model in self._overrides:
            return self._overrides[model]
        if model in self._detected:
            return self._detected[model]
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            if model not in self._detected:
                self._detected[model] = await self._detect(model)
        return self._detected[model]

    async def _detect(self, model: str) -> FimTemplate | None:
        if self._client is None:
            self._client = ModelClient(self._client_config)
        try:
            # The client settles the server's tokenize dialect on its first probe; a probe with a
            # model the server does not have would settle it wrongly for every later model.
            served = await self._served_models()
            if served is not None and model not in served:
                raise UnknownModel(model)
            mode = await detect_completion_mode(self._client, model)
        except ModelError as exc:
            raise TemplateLookupFailed(str(exc)) from None
        log.info(
            "model %r: %s (from its %s)",
            model,
            f"FIM template {mode.template.name}" if mode.template else "no FIM tokens",
            mode.source,
        )
        return mode.template

    async def _served_models(self) -> set[str] | None:
        """The ids in `/v1/models`, or None for a server that does not list them."""
        assert self._client is not None
        try:
            return {info.id for info in await self._client.list_models()}
        except (ModelServerError, MalformedStream):
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def upstream_client_config(
    url: str, api_key: SecretStr | None, ca_file: Path | None, connect_timeout_s: float
) -> ClientConfig:
    """How the template lookup reaches the model server: as the relay does, with its key and CA."""
    return ClientConfig(
        base_url=url,
        api_key=api_key,
        ca_bundle=ca_file,
        connect_timeout=connect_timeout_s,
        read_timeout=max(connect_timeout_s, 15.0),
        max_connections=4,
    )


class _BadRequest(Exception):
    """The request cannot be turned into a FIM prompt; the message says why, for the client."""

    def __init__(self, message: str, code: str = "invalid_suffix") -> None:
        super().__init__(message)
        self.code = code


class FimSuffix:
    """Turns `/v1/completions` with `suffix` into a raw FIM prompt; everything else passes as is."""

    def __init__(self, app: ASGIApp, templates: FimTemplates) -> None:
        self.app = app
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != COMPLETIONS_PATH:
            await self.app(scope, receive, send)
            return
        body = await read_body_or_refuse(receive, send)
        if body is None:
            return
        try:
            rewritten = await self._rewrite(body) if b'"suffix"' in body else None
        except _BadRequest as exc:
            await send_error(send, 400, str(exc), "invalid_request_error", exc.code)
            return
        except UnknownModel as exc:
            await send_error(
                send,
                404,
                f"the model server does not serve model {exc.args[0]!r}; see GET /v1/models for "
                "the "
                "models it has",
                "invalid_request_error",
                "model_not_found",
            )
            return
        except TemplateLookupFailed as exc:
            await send_error(
                send,
                502,
                f"cannot ask the model server which FIM template the model uses: {exc}",
                "upstream_error",
                "fim_template_lookup_failed",
            )
            return
        if rewritten is None:
            await self.app(scope, replay(body, receive), send)
            return
        scope["headers"] = [
            (k, str(len(rewritten)).encode() if k == b"content-length" else v)
            for k, v in scope["headers"]
        ]
        await self.app(scope, replay(rewritten, receive), send)

    async def _rewrite(self, body: bytes) -> bytes | None:
        """The body with `suffix` rendered into the prompt; None when there is no suffix."""
        try:
            doc = json.loads(body)
        except ValueError:
            return None  # not ours to judge; the model server answers malformed JSON
        if not isinstance(doc, dict) or doc.get("suffix") is None:
            return None
        suffix = doc.pop("suffix")
        if not isinstance(suffix, str):
            raise _BadRequest("'suffix' must be a string (the text after the insertion point)")
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("a request with 'suffix' needs 'model' (a string naming the model)")
        prompt = doc.get("prompt", "")
        template = await self.templates.template_for(model)
        if template is None:
            raise _BadRequest(
                f"'suffix' is not supported for model {model!r}: its tokenizer has no "
                "fill-in-the-middle tokens; leave 'suffix' out, or use a code model with FIM "
                "(Qwen2.5-Coder, StarCoder2, DeepSeek-Coder, CodeLlama, Codestral)",
                "suffix_unsupported",
            )
        doc["prompt"] = _render(template, prompt, suffix)
        doc["stop"] = _merged_stop(doc.get("stop"), template.stop)
        return json.dumps(doc, ensure_ascii=False).encode()


def _render(template: FimTemplate, prompt: object, suffix: str) -> str | list[str]:
    # The policy reads `prompt` as the client's own template, so markers that come from the
    # user's text must not survive as markers.
    tail = neutralize_markers(suffix)
    if isinstance(prompt, str):
        return template.render(neutralize_markers(prompt), tail)
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return [template.render(neutralize_markers(p), tail) for p in prompt]
    raise _BadRequest(
        "with 'suffix', 'prompt' must be text or a list of texts (token ids cannot be "
        "combined with a suffix)"
    )


def _merged_stop(stop: object, template_stop: tuple[str, ...]) -> list[str]:
    if stop is None:
        given: list[str] = []
    elif isinstance(stop, str):
        given = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        given = list(stop)
    else:
        raise _BadRequest("'stop' must be a string or a list of strings")
    return list(dict.fromkeys([*given, *template_stop]))
