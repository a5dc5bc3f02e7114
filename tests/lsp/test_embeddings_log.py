"""What the server's log says about the workspace embeddings, on a real `bastion lsp`."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_inline_completion import wait_until
from tests.lsp.real_server import start_on_workspace


async def embeddings_lines(workspace: Path, index_cache: Path) -> list[str]:
    """The 'workspace embeddings:' lines of one server run, once it has said one."""
    options = {"proxyUrl": "http://127.0.0.1:9", "apiKey": "k"}
    client = await start_on_workspace(workspace, {"BASTION_INDEX_CACHE": str(index_cache)}, options)

    def lines() -> list[str]:
        return [
            m.message for m in client.log_messages if m.message.startswith("workspace embeddings:")
        ]

    try:
        # The model export is cached by `make setup`; a cold one takes about 20 s.
        await wait_until(lambda: bool(lines()), 120)
    finally:
        await client.shutdown_session()
        await client.stop()
    return lines()


async def test_a_start_on_an_embedded_workspace_says_the_embeddings_are_up_to_date(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "geometry.py").write_text("def area(r):\n    return 3.14 * r * r\n")
    first = await embeddings_lines(workspace, tmp_path / "index")
    assert len(first) == 1 and "1 chunks embedded" in first[0]
    # The same workspace again: nothing to embed, and the log says search by meaning is ready.
    again = await embeddings_lines(workspace, tmp_path / "index")
    assert len(again) == 1 and again[0].startswith("workspace embeddings: up to date, 1 chunks")
