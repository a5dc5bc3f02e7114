"""The language server's settings: one pydantic model, parsed leniently.

Settings arrive in `initializationOptions` and `workspace/didChangeConfiguration`, either flat or
under a `bastion` key. A bad value never stops the server: the offending key is reported by name
and falls back to its default while every valid key is kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

API_KEY_ENV = "BASTION_API_KEY"


class Settings(BaseModel):
    """Everything a user or the editor extension can set."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    proxy_url: str = "http://127.0.0.1:8787"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    model: str | None = None
    fim_template: str | None = Field(
        default=None, description="Force a FIM template by name, or 'chat'; unset = detect."
    )
    ca_bundle: Path | None = None
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_tokens: int = Field(default=96, ge=1, le=4096)
    temperature: float = Field(default=0.2, ge=0, le=2)
    context_budget_tokens: int = Field(default=1536, ge=64, le=128_000)
    inline_completion_enabled: bool = True
    indexing_enabled: bool = True
    embeddings_enabled: bool = Field(
        default=True, description="Embed the indexed chunks in the background (semantic search)."
    )
    embedding_model_path: Path | None = Field(
        default=None, description="A sentence-transformers folder on disk; unset = bundled MiniLM."
    )
    embedding_backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    max_document_bytes: int = Field(default=1_000_000, ge=1_000)

    @field_validator("proxy_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("embedding_model_path")
    @classmethod
    def _existing_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_dir():
            raise ValueError(f"no such directory: {value}")
        return value.expanduser() if value is not None else None

    @field_validator("ca_bundle", "api_key_file")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError(f"no such file: {value}")
        return value.expanduser() if value is not None else None

    def resolved_api_key(self) -> str | None:
        """The user key: the setting, else the key file, else $BASTION_API_KEY."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            return self.api_key_file.read_text(encoding="utf-8").strip() or None
        return os.environ.get(API_KEY_ENV) or None


class SettingsProblem(BaseModel):
    """One rejected key, phrased for a person."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"Bastion setting '{self.key}': {self.message}. Using the default instead."


def _unwrap(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    nested = raw.get("bastion")
    return dict(nested) if isinstance(nested, dict) else dict(raw)


def parse_settings(raw: Any) -> tuple[Settings, list[SettingsProblem]]:
    """Validate `raw`; drop each invalid key (reporting it) and keep the rest."""
    values = _unwrap(raw)
    problems: list[SettingsProblem] = []
    for _ in range(len(values) + 1):
        try:
            return Settings.model_validate(values), problems
        except ValidationError as exc:
            for error in exc.errors():
                key = str(error["loc"][0]) if error["loc"] else "?"
                message = error["msg"]
                if error["type"] == "extra_forbidden":
                    message = "unknown setting"
                problems.append(SettingsProblem(key=key, message=message))
                values.pop(key, None)
    return Settings(), problems
