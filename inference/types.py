"""Plain data shared by the client and the prompt builders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict


class ChatMessage(BaseModel):
    """One message of an OpenAI-style chat request."""

    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ModelInfo(BaseModel):
    """One entry of `/v1/models`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    owned_by: str | None = None
    max_model_len: int | None = None


@dataclass(frozen=True)
class Snippet:
    """A piece of another file (or of this one) to show the model as context."""

    path: str
    start_line: int
    end_line: int
    text: str
