"""The `bastion` command: wires the packages' entry points, holds no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .audit_commands import add_audit_commands
from .index_commands import add_index_commands
from .proxy_commands import add_proxy_commands


def _lsp(args: argparse.Namespace) -> int:
    from lsp_server.server import run_stdio

    run_stdio()
    return 0


def _model(args: argparse.Namespace) -> int:
    from inference.launcher import EmbeddedModelMissing, EmbeddedServer, vllm_command

    if args.print_vllm:
        print(vllm_command())
        return 0
    server = EmbeddedServer(
        port=args.port,
        host=args.host,
        api_key=os.environ.get("BASTION_UPSTREAM_API_KEY"),
        model_path=args.model_file,
    )
    try:
        argv = server.command()
    except EmbeddedModelMissing as error:
        print(f"bastion model: {error}", file=sys.stderr)
        return 1
    print(f"bastion model: serving {server.model_name} at {server.base_url}", flush=True)
    os.execve(argv[0], argv, server.environment())  # noqa: S606 (become the model server)


def _up(args: argparse.Namespace) -> int:
    from .stack import StackOptions, up

    return up(
        StackOptions(
            data_dir=args.data_dir,
            proxy_port=args.proxy_port,
            model_port=args.model_port,
            model_file=args.model_file,
            upstream=args.upstream,
            upstream_key_file=args.upstream_key_file,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    from .stack import default_data_dir

    parser = argparse.ArgumentParser(
        prog="bastion", description="Self-hosted AI pair programmer with an audit proxy."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lsp = sub.add_parser("lsp", help="the language server, on stdio (the editor starts it)")
    lsp.set_defaults(func=_lsp)

    model = sub.add_parser("model", help="serve the embedded model (llama.cpp, CPU)")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=int, default=8788)
    model.add_argument("--model-file", type=Path, help="another GGUF file to serve")
    model.add_argument(
        "--print-vllm", action="store_true", help="print the production vLLM command and exit"
    )
    model.set_defaults(func=_model)

    stack = sub.add_parser("up", help="model + proxy + a user key, ready for the editor")
    stack.add_argument("--data-dir", type=Path, default=default_data_dir())
    stack.add_argument("--proxy-port", type=int, default=8787)
    stack.add_argument("--model-port", type=int, default=8788)
    stack.add_argument("--model-file", type=Path, help="serve this GGUF instead of SmolLM2")
    stack.add_argument("--upstream", help="front this model server instead of the embedded one")
    stack.add_argument("--upstream-key-file", type=Path, help="the upstream's service key")
    stack.set_defaults(func=_up)

    add_index_commands(sub)
    add_proxy_commands(sub)
    add_audit_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
