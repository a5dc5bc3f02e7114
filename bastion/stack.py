"""`bastion up`: the whole local stack in one command.

It starts the embedded model (or fronts a model server you name), starts the audit proxy in front
of it with a service key only the proxy knows, makes a user key on first run, prints what an editor
needs, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from inference.launcher import EmbeddedServer

from .secrets import private_dir, read_or_create_secret, read_secret, write_secret

READY_LINE = "Bastion is ready"
MODEL_START_TIMEOUT_S = 180.0
PROXY_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    proxy_port: int = 8787
    model_port: int = 8788
    model_file: Path | None = None
    upstream: str | None = None
    upstream_key_file: Path | None = None


class StackError(RuntimeError):
    """The stack could not start; the message says which part and what to do."""


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    pump: asyncio.Task[None]


def default_data_dir() -> Path:
    return Path(os.environ.get("BASTION_HOME", Path.home() / ".bastion")).expanduser()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
        sys.stdout.flush()


async def _spawn(name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    return Child(name, process, asyncio.create_task(_pump(name, process.stdout)))


async def _wait_until_answers(
    child: Child, url: str, headers: dict[str, str], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise StackError(
                    f"the {child.name} exited with code {child.process.returncode}; "
                    "its log is above"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, headers=headers)).status_code == 200:
                    return
            await asyncio.sleep(0.25)
    raise StackError(f"the {child.name} did not answer {url} within {timeout_s:.0f} s")


async def _stop(children: list[Child]) -> None:
    for child in reversed(children):
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
    for child in reversed(children):
        try:
            await asyncio.wait_for(child.process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            await child.process.wait()
        child.pump.cancel()


async def _user_key(data_dir: Path) -> Path:
    """The local user's key file, made on first run through `bastion keys create`."""
    key_file = data_dir / "user.key"
    if key_file.exists():
        return key_file
    name = f"{getpass.getuser()}-{int(time.time())}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bastion.cli", "keys", "create", name,
        "--data-dir", str(data_dir),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise StackError("could not create a user key (`bastion keys create` failed)")
    write_secret(key_file, out.decode().strip())
    return key_file


def _banner(proxy_url: str, key_file: Path, model: str) -> str:
    return f"""
{READY_LINE}.
  proxy:     {proxy_url}   (OpenAI-compatible; every request is on the audit record)
  model:     {model}
  user key:  {key_file}   (mode 0600; give it to your editor, never commit it)

  VS Code:   install vscode-extension/bastion.vsix, run "Bastion: Set Key", set bastion.proxyUrl.
  Others:    `bastion lsp` with initializationOptions {{"proxyUrl": "{proxy_url}"}} and
             BASTION_API_KEY from the key file; README.md, "Connect an editor".
  Stop:      Ctrl-C
"""


async def run_stack(options: StackOptions) -> int:
    data_dir = private_dir(options.data_dir)
    children: list[Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        upstream, service_key, model_name = await _start_model(options, data_dir, children)
        proxy_url = f"http://127.0.0.1:{options.proxy_port}"
        proxy = await _spawn(
            "proxy",
            [
                sys.executable, "-m", "bastion.cli", "proxy",
                "--upstream", upstream,
                "--data-dir", str(data_dir),
                "--host", "127.0.0.1",
                "--port", str(options.proxy_port),
            ],
            {**os.environ, "BASTION_UPSTREAM_API_KEY": service_key},
        )  # fmt: skip
        children.append(proxy)
        await _wait_until_answers(proxy, f"{proxy_url}/healthz", {}, PROXY_START_TIMEOUT_S)
        key_file = await _user_key(data_dir)
        print(_banner(proxy_url, key_file, model_name), flush=True)
        waiters = [asyncio.create_task(c.process.wait()) for c in children]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            print("[bastion] a component exited; stopping the stack", flush=True)
            return 1
        return 0
    except StackError as error:
        print(f"[bastion] cannot start: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("[bastion] stopping", flush=True)
        await _stop(children)


async def _start_model(
    options: StackOptions, data_dir: Path, children: list[Child]
) -> tuple[str, str, str]:
    """Start the embedded model, or use the named upstream; return (url, service key, name)."""
    if options.upstream is not None:
        if options.upstream_key_file is None:
            key = os.environ.get("BASTION_UPSTREAM_API_KEY", "")
        else:
            key = read_secret(options.upstream_key_file)
        return options.upstream, key, options.upstream
    service_key = read_or_create_secret(data_dir / "service.key", prefix="svc_")
    embedded = EmbeddedServer(
        port=options.model_port, api_key=service_key, model_path=options.model_file
    )
    model = await _spawn("model", embedded.command(), embedded.environment())
    children.append(model)
    await _wait_until_answers(
        model,
        f"{embedded.base_url}/v1/models",
        {"Authorization": f"Bearer {service_key}"},
        MODEL_START_TIMEOUT_S,
    )
    return embedded.base_url, service_key, embedded.model_name


def up(options: StackOptions) -> int:
    return asyncio.run(run_stack(options))
