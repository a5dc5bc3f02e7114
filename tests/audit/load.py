"""Concurrent completion requests through real proxies, as the audit tests drive them."""

from __future__ import annotations

import asyncio

import httpx


async def concurrent_load(
    urls: list[str], key: str, total: int, concurrency: int, on_done: object = None
) -> list[tuple[int, int, str | None]]:
    """`total` requests spread round-robin over `urls`: (replica, status, request id)."""
    headers = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "completion"}
    results: list[tuple[int, int, str | None]] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=20) as client:

        async def one(i: int) -> None:
            replica = i % len(urls)
            body = {"model": "tiny", "prompt": f"p{i}", "stream": i % 3 == 0}
            async with gate:
                try:
                    response = await client.post(urls[replica] + "/v1/completions", json=body)
                    status = response.status_code
                    request_id = response.headers.get("x-bastion-request-id")
                except httpx.TransportError:
                    status, request_id = 0, None
            results.append((replica, status, request_id))
            if callable(on_done):
                on_done(len(results))

        await asyncio.gather(*(one(i) for i in range(total)))
    return results
