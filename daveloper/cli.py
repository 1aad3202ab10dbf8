"""The ``daveloper`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from daveloper.app import serve
from daveloper.config import Address, Settings
from daveloper.errors import DaveloperError
from daveloper.jsonlog import configure_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daveloper", description="Self-hostable backend for AI developer assistants.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve gRPC and the web edge on embedded defaults")
    run.add_argument("--grpc-addr", metavar="HOST:PORT", help="gRPC listen address (env DAVELOPER_GRPC_ADDR, "
                     "default 127.0.0.1:50051)")
    run.add_argument("--edge-addr", metavar="HOST:PORT", help="web page, WebSocket and HTTP/JSON listen address "
                     "(env DAVELOPER_EDGE_ADDR, default 127.0.0.1:8080)")
    run.add_argument("--data-dir", metavar="DIR", help="data directory (env DAVELOPER_DATA_DIR)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="log level (env DAVELOPER_LOG_LEVEL, default INFO)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(
            grpc_addr=Address.parse(args.grpc_addr, name="--grpc-addr") if args.grpc_addr else None,
            edge_addr=Address.parse(args.edge_addr, name="--edge-addr") if args.edge_addr else None,
            data_dir=Path(args.data_dir).expanduser() if args.data_dir else None,
            log_level=args.log_level,
        )
    except DaveloperError as exc:
        print(f"daveloper: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.instance_id)
    try:
        uvloop.run(serve(settings))
    except DaveloperError as exc:
        print(f"daveloper: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
