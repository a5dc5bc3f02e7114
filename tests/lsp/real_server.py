"""A real `bastion lsp` over stdio on a workspace folder, with its own environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient
from pytest_lsp import ClientServerConfig


async def start_on_workspace(
    workspace: Path, env: dict[str, str], options: dict[str, Any]
) -> LanguageClient:
    """Start the server with `env` over this process's environment; initialize it on `workspace`."""
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "bastion.cli", "lsp"],
        server_env={**os.environ, **env},
    )
    client = await config.start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            root_uri=workspace.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=workspace.as_uri(), name=workspace.name)],
            initialization_options=options,
        )
    )
    return client
