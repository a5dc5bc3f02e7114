"""The audit proxy: authenticates users, records every model-bound request, relays to the model.

Modules: `app` (the layers wired into one ASGI app), `server` (runs it on `http_server`, the
proxy's own HTTP/1.1 server), `forward` (the relay, over `upstream_client`), `config`, `keys`,
`roles`, `store` (SQLite, committing through `staging`) / `pg_store` (the audit log), `merkle`,
`checkpoints`, `verify`, `export`.
Nothing is imported here, so `bastion lsp` — which shares the CLI — never loads the proxy.
"""
