"""The audit proxy: authenticates users, records every model-bound request, relays to the model.

Modules: `app` (the layers wired into one ASGI app), `server` (uvicorn), `config`, `keys`,
`roles`, `store` / `pg_store` (the audit log), `merkle`, `checkpoints`, `verify`, `export`.
Nothing is imported here, so `bastion lsp` — which shares the CLI — never loads the proxy.
"""
