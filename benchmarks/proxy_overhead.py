"""What a proxy adds to a model call: Bastion (both durability modes) next to LiteLLM's proxy.

In one run, against the same instant OpenAI-compatible upstream (`instant_upstream.py`), it
measures four paths: direct, `bastion proxy --durability process`,
`bastion proxy --durability fsync`, and LiteLLM's proxy (LITELLM_VERSION, installed by this
script into `.bench-venv-litellm/`, configured with the upstream as an openai-compatible model,
no database); and, as a floor, a bare TCP relay on uvloop (`tcp_relay.py`: what two more hops
through a Python event loop cost here, with none of a proxy's work).
All paths get `POST /v1/chat/completions`:

- added latency, p50 and p99 over sequential sized requests;
- requests/s with 32 clients in flight;
- time to first token (first body chunk) of streamed requests, added over direct.

Each path's sequential requests are interleaved with direct's, request by request in a shuffled
order, so that drift hits both alike: one group per path, the path and direct, and the groups
take turns in `CHUNKS` chunks. Each path's added latency is over the direct of its own group.
Why not one group of all paths: what one proxy does after its answer (LiteLLM's ~8 ms of Python,
Bastion's filing and the `fsync` mode's syncing) runs while the next request goes through
another path, takes a core from it and leaves its caches cold, and a proxied request, with three
processes to run on two cores, suffers more from that than a direct one. Interleaved with
LiteLLM, direct itself measured 0.33 to 0.38 ms against 0.24 to 0.28 ms without it, and Bastion's
added p50 0.82 to 0.87 ms against 0.41 to 0.49 ms; interleaved with the `fsync` proxy, Bastion's
added p50 measured 0.42 ms against 0.31 ms beside direct alone. Those figures were the other
proxy's footprint as much as Bastion's own cost. A proxy's footprint on the direct of its own
group still counts against direct, as the same work after its own next request counts against it.
`--mixed` measures the single group of all paths too, and reports it beside.

`bastion` and `bastion_fsync` run as they start by default, with adaptive busy polling (see
audit_proxy.busy_poll); `bastion_poll_off` is `process` mode with it off (`--busy-poll-us 0`),
in a group of its own like the others (`benchmarks/busy_poll_cost.py` weighs the two, CPU too).

With `--pace-ms`, last, direct, Bastion (`process`), the relay and LiteLLM again, interleaved,
with that pause after every request: each request then finds an idle process, whose caches the
machine has given to others, as an editor's requests do between keystrokes.

Every request carries one line of code, as the issue's figures do, unless `--prompt-kb N` gives
it N KiB of real code: the size of the completion prompts Bastion's own language server sends,
where the policy's scan of the prompt is a good part of what Bastion adds.

    .venv/bin/python benchmarks/proxy_overhead.py [--requests 2000] [--seconds 3]
        [--skip-litellm] [--skip-poll-off] [--mixed] [--pace-ms 30 [--paced-rounds 200]]
        [--prompt-kb 4]

Prints JSON lines, a one-line summary, and last
`{"bastion": {"added_p50_ms", "added_p99_ms", "rps_32", "ttft_added_ms"}, "bastion_fsync": {..},
"tcp_relay": {..}, "litellm": {..}, "bastion_poll_off": {..}, "litellm_over_bastion_p50": ..,
"paced": {"bastion": {"added_p50_ms", "added_p99_ms"}, .., "litellm_over_bastion_p50", "pace_ms"},
"mixed_added_p50_ms": {"bastion": .., ..}, "prompt_kb": ..}` ("paced" with `--pace-ms` only,
"mixed" with `--mixed`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audit_proxy.keys import KeyStore  # noqa: E402
from bastion.stack import free_port  # noqa: E402

CONCURRENCY = 32
CHUNKS = 4
POLL_OFF = "bastion_poll_off"
RELAY = "tcp_relay"
LITELLM_VENV = REPO / ".bench-venv-litellm"
# Pinned: unpinned, each fresh venv took the newest release of the day, and LiteLLM's added p50
# could move between runs with it. What `litellm[proxy]` resolved to on 2026-11-29 (later
# releases need a `litellm-proxy` package that the index does not have).
LITELLM_VERSION = "1.108.7"
LITELLM_SPEC = f"litellm[proxy]=={LITELLM_VERSION}"
MESSAGES = [{"role": "user", "content": "def add(a, b):"}]
BODY: dict[str, object] = {"model": "instant", "messages": MESSAGES, "max_tokens": 8}
# LiteLLM as it runs out of the box, minus a database: what this benchmark turns on or off.
LITELLM_CONFIG = """\
model_list:
  - model_name: instant
    litellm_params:
      model: openai/instant
      api_base: {upstream}/v1
      api_key: bench-svc
general_settings:
  master_key: {master_key}
litellm_settings:
  telemetry: false
"""
LITELLM_MASTER_KEY = "sk-bench-" + "0" * 32
LITELLM_LOGGING = (
    "LiteLLM: master key set (it refuses to start without one; checked in memory, no database), "
    "no DATABASE_URL (no spend logs), no success/failure callbacks, telemetry off, "
    "LITELLM_LOG unset (its default: LITELLM_LOG=ERROR would also turn its access log off), "
    "its uvicorn access log on (to stdout, discarded), as Bastion's access log is"
)


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout_s:g} s")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Call = Callable[[], Awaitable[float]]


def request_body(prompt_kb: int) -> dict[str, object]:
    """The chat request every path gets: BODY's one line of code, or with `prompt_kb` > 0 a
    message of that many KiB of real code (the installed httpx's sources), as big as the
    completion prompts Bastion's own language server sends (`context_budget_tokens` 1536)."""
    if prompt_kb <= 0:
        return BODY
    root = Path(sysconfig.get_paths()["purelib"]) / "httpx"
    code = "".join(path.read_text(encoding="utf-8") for path in sorted(root.glob("*.py")))
    content = (code * (prompt_kb * 1024 // len(code) + 1))[: prompt_kb * 1024]
    return {**BODY, "messages": [{"role": "user", "content": content}]}


def sized_call(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: dict[str, object] = BODY,
) -> Call:
    """A whole request and answer; returns the milliseconds it took."""

    async def call() -> float:
        started = time.perf_counter()
        async with session.post(url, json=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}")
        return (time.perf_counter() - started) * 1000

    return call


def stream_call(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: dict[str, object] = BODY,
) -> Call:
    """A streamed request; returns the milliseconds to its first body chunk (TTFT)."""
    streamed = {**body, "stream": True}

    async def call() -> float:
        started = time.perf_counter()
        first: float | None = None
        async with session.post(url, json=streamed, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}")
            async for chunk in resp.content.iter_any():
                if chunk and first is None:
                    first = (time.perf_counter() - started) * 1000
        if first is None:
            raise RuntimeError(f"{url}: empty stream")
        return first

    return call


async def sequential(
    calls: dict[str, Call], n: int, seed: int = 0, pause_s: float = 0.0
) -> dict[str, list[float]]:
    """Each call's result, interleaved so all paths see the same conditions; `pause_s` after
    each call, if set.

    The order changes every round: a proxy still busy after its answer (writing a record, say)
    would otherwise slow down whichever path always comes next.
    """
    for call in calls.values():
        for _ in range(50):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    shuffler = random.Random(seed)
    for _ in range(n):
        shuffler.shuffle(order)
        for name in order:
            samples[name].append(await calls[name]())
            if pause_s:
                await asyncio.sleep(pause_s)
    return samples


async def block_rounds(
    calls: dict[str, Call], rounds: int, size: int, pause_s: float = 0.0
) -> dict[str, list[list[float]]]:
    """Each call's results, block by block: `rounds` rounds of one block of `size` sequential
    calls per path, the order of paths flipped every round so that drift hits all alike;
    `pause_s` after each call, if set."""
    results: dict[str, list[list[float]]] = {name: [] for name in calls}
    order = list(calls)
    for _ in range(rounds):
        for name in order:
            block = []
            for _ in range(size):
                block.append(await calls[name]())
                if pause_s:
                    await asyncio.sleep(pause_s)
            results[name].append(block)
        order.reverse()
    return results


async def throughput(call: Call, seconds: float) -> float:
    """Requests per second with CONCURRENCY callers in flight."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - started)


def emit(doc: dict[str, object]) -> None:
    print(json.dumps(doc), flush=True)


@dataclass(frozen=True)
class PathResult:
    """One path's measurements: sequential latencies, times to first token, requests/s."""

    latency: list[float]
    ttft: list[float]
    rps: float

    def emit(self, name: str, group: str) -> None:
        emit({"group": group, "path": name, "n": len(self.latency),
              "p50_ms": round(statistics.median(self.latency), 3),
              "p99_ms": round(percentile(self.latency, 0.99), 3),
              "ttft_p50_ms": round(statistics.median(self.ttft), 3),
              f"rps_{CONCURRENCY}": round(self.rps)})  # fmt: skip

    def added_over(self, direct: PathResult) -> dict[str, float]:
        return {
            **added_latency(self.latency, direct.latency),
            f"rps_{CONCURRENCY}": round(self.rps),
            "ttft_added_ms": round(
                statistics.median(self.ttft) - statistics.median(direct.ttft), 3
            ),
        }


def added_latency(samples: list[float], direct: list[float]) -> dict[str, float]:
    """What a path adds over direct (ms): p50 and p99."""
    return {
        "added_p50_ms": round(statistics.median(samples) - statistics.median(direct), 3),
        "added_p99_ms": round(percentile(samples, 0.99) - percentile(direct, 0.99), 3),
    }


def added_over_direct(latency: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """`added_latency` of each path in `latency` over its "direct"."""
    return {
        name: added_latency(samples, latency["direct"])
        for name, samples in latency.items()
        if name != "direct"
    }


Targets = dict[str, tuple[str, dict[str, str]]]


async def measure(
    groups: dict[str, Targets], n: int, seconds: float, body: dict[str, object] = BODY
) -> dict[str, dict[str, PathResult]]:
    """Each group's measurements: sequential ones interleaved within the group, the groups
    taking turns in `CHUNKS` chunks; requests/s one path at a time."""
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        sized = {g: _calls(sized_call, session, targets, body) for g, targets in groups.items()}
        streamed = {g: _calls(stream_call, session, targets, body) for g, targets in groups.items()}
        latency = await _in_chunks(sized, n)
        ttft = await _in_chunks(streamed, max(n // 4, 100))
        rps = {
            g: {name: await throughput(call, seconds) for name, call in calls.items()}
            for g, calls in sized.items()
        }
    results = {
        g: {name: PathResult(latency[g][name], ttft[g][name], rps[g][name]) for name in targets}
        for g, targets in groups.items()
    }
    for g, paths in results.items():
        for name, result in paths.items():
            result.emit(name, g)
    return results


async def mixed_added_p50(targets: Targets, n: int, body: dict[str, object]) -> dict[str, float]:
    """Added p50 (ms) of each path over direct, all of `targets` interleaved in one group (the
    old way, reported beside): sequential requests only, as that is all it compares."""
    async with aiohttp.ClientSession() as session:
        calls = _calls(sized_call, session, targets, body)
        latency = (await _in_chunks({"mixed": calls}, n))["mixed"]
    return {name: added["added_p50_ms"] for name, added in added_over_direct(latency).items()}


def _calls(
    make: Callable[[aiohttp.ClientSession, str, dict[str, str], dict[str, object]], Call],
    session: aiohttp.ClientSession,
    targets: Targets,
    body: dict[str, object],
) -> dict[str, Call]:
    return {name: make(session, url, headers, body) for name, (url, headers) in targets.items()}


async def _in_chunks(
    groups: dict[str, dict[str, Call]], n: int
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {
        g: {name: [] for name in calls} for g, calls in groups.items()
    }
    for chunk in range(CHUNKS):
        for g, calls in groups.items():
            size = n // CHUNKS + (1 if chunk < n % CHUNKS else 0)
            for name, values in (await sequential(calls, size, seed=chunk)).items():
                samples[g][name].extend(values)
    return samples


def litellm_binary() -> Path:
    """LiteLLM's CLI in its own venv, LITELLM_VERSION installed from PyPI when it is not there."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if installed_litellm() != LITELLM_VERSION:
        print(f"installing {LITELLM_SPEC} into {LITELLM_VENV} ...", file=sys.stderr, flush=True)
        if not (LITELLM_VENV / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_SPEC]
        subprocess.run(pip, check=True)
    return binary


def installed_litellm() -> str | None:
    """The version of LiteLLM in its venv, or None when there is none."""
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else None


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], health: str, wait_s: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_up(health, process, wait_s)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_instant_upstream(stack: contextlib.ExitStack, env: dict[str, str]) -> tuple[str, int]:
    """`instant_upstream.py` on a free port, with this tree on its PYTHONPATH: (URL, port)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(REPO / "benchmarks" / "instant_upstream.py"), str(port)]
    stack.enter_context(running(command, {**env, "PYTHONPATH": str(REPO)}, url + "/v1/models"))
    return url, port


def start_bastion(
    stack: contextlib.ExitStack,
    env: dict[str, str],
    upstream: str,
    data_dir: Path,
    *options: str,
) -> tuple[str, dict[str, str]]:
    """A Bastion proxy on `data_dir` with its own user key: (chat URL, headers)."""
    return launch_bastion(stack, env, upstream, data_dir, *options)[1:]


def launch_bastion(
    stack: contextlib.ExitStack,
    env: dict[str, str],
    upstream: str,
    data_dir: Path,
    *options: str,
) -> tuple[int, str, dict[str, str]]:
    """`start_bastion`, with the proxy's process id first."""
    key = KeyStore(data_dir / "keys.sqlite3").create("bench")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bastion.cli", "proxy", "--port", str(port),
               "--upstream", upstream, "--data-dir", str(data_dir), *options]  # fmt: skip
    process = stack.enter_context(running(command, env, url + "/healthz"))
    user = {"Authorization": f"Bearer {key}", "X-Bastion-Feature": "chat"}
    return process.pid, url + "/v1/chat/completions", user


def start_relay(
    stack: contextlib.ExitStack, env: dict[str, str], upstream_port: int
) -> tuple[str, dict[str, str]]:
    """The bare TCP relay (`tcp_relay.py`) in front of the upstream: (chat URL, headers)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(REPO / "benchmarks" / "tcp_relay.py"), str(port),
               str(upstream_port)]  # fmt: skip
    stack.enter_context(running(command, env, url + "/v1/models"))
    return url + "/v1/chat/completions", {}


def start_litellm(
    stack: contextlib.ExitStack, env: dict[str, str], upstream: str, tmp: Path
) -> tuple[str, dict[str, str]]:
    """LiteLLM's proxy on `upstream` with a master key and no database: (chat URL, headers)."""
    config = tmp / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(upstream=upstream, master_key=LITELLM_MASTER_KEY))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    litellm_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "LITELLM_LOG")}
    litellm_env["LITELLM_TELEMETRY"] = "False"
    command = [str(litellm_binary()), "--config", str(config), "--host", "127.0.0.1",
               "--port", str(port), "--num_workers", "1"]  # fmt: skip
    stack.enter_context(running(command, litellm_env, url + "/health/liveliness", 120))
    emit({"litellm_version": LITELLM_VERSION, "litellm_logging": LITELLM_LOGGING})
    return url + "/v1/chat/completions", {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each rps run")
    parser.add_argument("--skip-litellm", action="store_true", help="measure Bastion only")
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="also interleave all paths in one group, as before, and report it beside",
    )
    parser.add_argument(
        "--pace-ms",
        type=float,
        default=0.0,
        help="also send requests one every this many ms, as an editor does (0: skip)",
    )
    parser.add_argument("--paced-rounds", type=int, default=200, help="paced requests per path")
    parser.add_argument(
        "--skip-poll-off",
        action="store_true",
        help="do not measure `process` mode with busy polling off",
    )
    parser.add_argument(
        "--prompt-kb",
        type=int,
        default=0,
        help="send this many KiB of real code as the message (0: one line, as the issue does)",
    )
    args = parser.parse_args()
    body = request_body(args.prompt_kb)
    emit({"prompt_kb": args.prompt_kb, "request_bytes": len(json.dumps(body))})

    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp, contextlib.ExitStack() as up:
        env = {**os.environ, "PYTHONPATH": str(REPO), "BASTION_UPSTREAM_API_KEY": "bench-svc"}
        upstream, port = start_instant_upstream(up, env)
        direct: Targets = {"direct": (upstream + "/v1/chat/completions", {})}
        paths: Targets = {RELAY: start_relay(up, env, port)}
        for name, durability in (("bastion", "process"), ("bastion_fsync", "fsync")):
            paths[name] = start_bastion(
                up, env, upstream, Path(tmp) / durability, "--durability", durability
            )
        if not args.skip_poll_off:
            paths[POLL_OFF] = start_bastion(
                up, env, upstream, Path(tmp) / "poll-off", "--busy-poll-us", "0"
            )
        if not args.skip_litellm:
            paths["litellm"] = start_litellm(up, env, upstream, Path(tmp))
        groups = {name: {**direct, name: target} for name, target in paths.items()}
        measured = asyncio.run(measure(groups, args.requests, args.seconds, body))
        result = {
            name: path.added_over(paths["direct"])
            for paths in measured.values()
            for name, path in paths.items()
            if name != "direct"
        }
        mixed: dict[str, float] = {}
        if args.mixed:
            mixed = asyncio.run(mixed_added_p50({**direct, **paths}, args.requests, body))
            emit({"mixed": mixed})
        paced: dict[str, dict[str, float]] = {}
        if args.pace_ms:
            targets = {**direct, **paths}
            del targets["bastion_fsync"]
            pause_s = args.pace_ms / 1000
            paced = asyncio.run(paced_added(targets, args.paced_rounds, pause_s, body))
            emit({"paced": paced, "pace_ms": args.pace_ms})

    parts = [
        f"{name}: +{r['added_p50_ms']:.2f} ms p50, +{r['added_p99_ms']:.2f} ms p99, "
        f"{r[f'rps_{CONCURRENCY}']:.0f} rps@{CONCURRENCY}, +{r['ttft_added_ms']:.2f} ms TTFT"
        for name, r in result.items()
    ]
    summary: dict[str, object] = {**result, **_ratio(result), "prompt_kb": args.prompt_kb}
    if "litellm_over_bastion_p50" in summary:
        parts.append(f"LiteLLM's added p50 is {summary['litellm_over_bastion_p50']}x Bastion's")
    if paced:
        parts.append(f"one request every {args.pace_ms:g} ms: " + ", ".join(
            f"{name} +{r['added_p50_ms']:.2f} ms p50" for name, r in paced.items()
        ))  # fmt: skip
        summary["paced"] = {**paced, **_ratio(paced), "pace_ms": args.pace_ms}
    if mixed:
        parts.append("all in one group: " + ", ".join(
            f"{name} +{added:.2f} ms p50" for name, added in mixed.items()
        ))  # fmt: skip
        summary["mixed_added_p50_ms"] = mixed
    prompt = f"{args.prompt_kb} KiB of code" if args.prompt_kb else "one line of code"
    print(f"added over direct ({prompt} a request): " + "; ".join(parts) +
          " (goals: bastion p50 <= 0.5 ms, "
          ">= 20x lower than LiteLLM's, >= 3000 rps, TTFT <= 1 ms; fsync p50 <= 1 ms, "
          ">= 1500 rps; bastion polls adaptively by default, bastion_poll_off does not; "
          "tcp_relay is the floor, no product)",
          flush=True)  # fmt: skip
    print(json.dumps(summary), flush=True)
    return 0


async def paced_added(
    targets: Targets, rounds: int, pause_s: float, body: dict[str, object]
) -> dict[str, dict[str, float]]:
    """Added p50 and p99 (ms) of each path over direct, with a pause after every request: each
    request comes to a process that has been idle, as an editor's do between keystrokes."""
    async with aiohttp.ClientSession() as session:
        calls = _calls(sized_call, session, targets, body)
        latency = await sequential(calls, rounds, pause_s=pause_s)
    return added_over_direct(latency)


def _ratio(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """How many times LiteLLM's added p50 is Bastion's (goal: 20 or more)."""
    if "litellm" not in result or result["bastion"]["added_p50_ms"] <= 0:
        return {}
    return {
        "litellm_over_bastion_p50": round(
            result["litellm"]["added_p50_ms"] / result["bastion"]["added_p50_ms"], 1
        )
    }


if __name__ == "__main__":
    sys.exit(main())
