# The targets a newcomer needs. `make up` starts the stack; `make test` installs and runs every check.
.PHONY: setup up test lint typecheck pytest vllm-tier bench clean vscode-e2e

setup:
	bash scripts/setup.sh

up: setup
	.venv/bin/bastion up

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: setup
	.venv/bin/mypy

vllm-tier:
	bash scripts/vllm_tier.sh --qwen-fim

pytest: setup vllm-tier
	.venv/bin/pytest -ra

test: lint typecheck pytest vscode-e2e

# The extension: unit tests and the .vsix, then the end-to-end test in a real VS Code.
vscode-e2e: setup
	bash vscode-extension/scripts/package.sh
	bash vscode-extension/scripts/e2e.sh

bench: setup
	.venv/bin/python benchmarks/lsp_overhead.py
	.venv/bin/python benchmarks/code_action_latency.py
	.venv/bin/python benchmarks/proxy_overhead.py

clean:
	rm -rf .venv .venv-vllm .cache .mypy_cache .ruff_cache .pytest_cache
