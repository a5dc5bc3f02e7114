#!/usr/bin/env bash
# Install the extension's dependencies and build bastion.vsix (for air-gapped installs:
# `code --install-extension bastion.vsix`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f package-lock.json ]; then npm ci --no-fund --no-audit; else npm install --no-fund --no-audit; fi
npm test
npm run package
echo "built $(pwd)/bastion.vsix"
