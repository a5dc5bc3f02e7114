"""The language server's one connection: the audit proxy, and what it told us about the model.

The served model, its completion mode (FIM template or chat) and its token counter are asked once
and kept until the settings change. The language server talks to the proxy and nothing else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import SecretStr

from inference import (
    ClientConfig,
    CompletionMode,
    ModelClient,
    ModelError,
    TokenCounter,
    calibrate_counter,
    detect_completion_mode,
)

from .settings import Settings

CALIBRATION_SAMPLE = '''def parse_config(path: str) -> dict[str, object]:
    """Read a configuration file and return its values."""
    with open(path, encoding="utf-8") as handle:
        pairs = (line.split("=", 1) for line in handle if "=" in line)
        return {key.strip(): value.strip() for key, value in pairs}

class Cache {
  constructor(limit) { this.limit = limit; this.items = new Map(); }
  get(key) { return this.items.get(key) ?? null; }
}
'''


@dataclass(frozen=True)
class ModelProfile:
    """What the served model is, as far as completion is concerned."""

    model: str
    mode: CompletionMode
    counter: TokenCounter

    @property
    def mode_name(self) -> str:
        return self.mode.name


class NoModelServed(ModelError):
    """The proxy lists no model."""


class ProxyConnection:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = ModelClient(
            ClientConfig(
                base_url=settings.proxy_url,
                api_key=SecretStr(key) if (key := settings.resolved_api_key()) else None,
                connect_timeout=settings.connect_timeout_s,
                read_timeout=settings.request_timeout_s,
                ca_bundle=settings.ca_bundle,
            )
        )
        self._profile: ModelProfile | None = None
        self._lock = asyncio.Lock()

    async def profile(self) -> ModelProfile:
        """The served model's profile, asked of the proxy once."""
        if self._profile is not None:
            return self._profile
        async with self._lock:
            if self._profile is None:
                self._profile = await self._ask_profile()
        return self._profile

    async def _ask_profile(self) -> ModelProfile:
        model = self.settings.model or await self._first_served_model()
        mode = await detect_completion_mode(self.client, model, self.settings.fim_template)
        counter = await calibrate_counter(self.client, model, CALIBRATION_SAMPLE)
        return ModelProfile(model=model, mode=mode, counter=counter)

    async def _first_served_model(self) -> str:
        models = await self.client.list_models()
        if not models:
            raise NoModelServed(
                f"The proxy at {self.settings.proxy_url} serves no model; check its upstream."
            )
        return models[0].id

    def forget_profile(self) -> None:
        self._profile = None

    async def aclose(self) -> None:
        await self.client.aclose()
