#!/usr/bin/env bash
# benchmarks/gpu_index.py on the GPU machine lent through the device tool (a CUDA 13 image that
# has torch and sentence-transformers but not faiss). Carry, in a folder named by CARRIED:
#   whl/  faiss-gpu-cu12 and the packages the image lacks (pydantic, tree-sitter grammars, ...)
#   nvidia_cuda_runtime_cu12-*.whl  (libcudart.so.12)
# faiss-gpu (CUDA 12) links libcublas.so.12; cublas12_shim.c forwards its eight calls to cuBLAS 13.
# Installs persist in /tmp while the machine stays warm, so a later call may carry only a model.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
site=/tmp/bastion-site
carried=${CARRIED:-}
if [ -n "$carried" ] && [ -d "$carried/whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$carried"/whl/*.whl
fi
if [ -n "$carried" ] && compgen -G "$carried/nvidia_cuda_runtime_cu12-*.whl" >/dev/null; then
  python3 -m zipfile -e "$carried"/nvidia_cuda_runtime_cu12-*.whl /tmp/cudart12
fi
# The wheel would dlopen CUDA 12 libraries from nvidia-*-cu12 packages the image does not have;
# without its marker, they resolve through LD_LIBRARY_PATH below instead.
rm -f "$site/faiss/_gpu_build.py"
parts=${BENCH_PARTS:-vectors,encoder,pipeline}
if [ ! -d "$site/faiss" ]; then
  echo "faiss-gpu is not installed on this machine (carry .gpu-a first): encoder part only"
  parts=encoder
fi
export BENCH_PARTS=$parts
mkdir -p /tmp/cublas12
gcc -O2 -shared -fPIC -Wl,-soname,libcublas.so.12 -Wl,--version-script="$here/cublas12.map" \
  -o /tmp/cublas12/libcublas.so.12 "$here/cublas12_shim.c" -ldl
echo "" | gcc -x c -shared -fPIC -Wl,-soname,libcublasLt.so.12 -o /tmp/cublas12/libcublasLt.so.12 -
cublas13=$(find /opt /usr/local /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)
[ -n "$cublas13" ] || { echo "no libcublas.so.13 on this machine"; exit 2; }
export LD_LIBRARY_PATH="/tmp/cublas12:/tmp/cudart12/nvidia/cuda_runtime/lib:$(dirname "$cublas13")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$site:$(pwd)" PYTHONUNBUFFERED=1 CUDA_CACHE_PATH=/tmp/cuda-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 "${BENCH_SCRIPT:-$here/../gpu_index.py}"
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
