"""A bare TCP relay on uvloop: the floor under any Python proxy, for `proxy_overhead.py`.

Each client connection gets its own connection to the upstream, and bytes go both ways as they
come: no HTTP parsing, no authentication, no policy, no record. What it adds over going direct
is what two more hops through a Python event loop cost on this machine (its wake-ups and
syscalls); what Bastion adds beyond it is Bastion's own work. Not a product: a reference.

    python benchmarks/tcp_relay.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop


class _ToClient(asyncio.Protocol):
    """The upstream side of one relayed connection."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _FromClient(asyncio.Protocol):
    """The client side: connects upstream, holding what comes until the connection is up."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.held: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _ToClient(self.client), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.client.close()
            return
        self.upstream = upstream
        for data in self.held:
            upstream.write(data)
        self.held.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.held.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _FromClient(upstream_port), "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("port", type=int)
    parser.add_argument("upstream_port", type=int)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()
