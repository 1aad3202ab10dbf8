"""The ``daveloper`` command: ``serve``, ``health``, and the client commands ``chat``, ``ingest``, ``scrape``
and ``doctor``.

This is the entry point: the only place that reads the environment. The client
commands get their server, token and terminal from here (see
:mod:`daveloper.client`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import uvloop

from daveloper.client import ClientOptions, CommandFailed, Connection, Interrupts, Terminal, open_connection
from daveloper.client.chat import chat
from daveloper.client.doctor import doctor
from daveloper.client.health import DEFAULT_TIMEOUT, check_health, health_options
from daveloper.client.ingest import ingest
from daveloper.client.scrape import ScrapeOptions, scrape
from daveloper.config import Address, Settings
from daveloper.errors import DaveloperError

__all__ = ["main"]

DEFAULT_SERVER = "127.0.0.1:50051"
_EXIT_INTERRUPTED = 130


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _client_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("connection")
    group.add_argument("--server", metavar="HOST:PORT",
                       help=f"gRPC server (env DAVELOPER_GRPC_ADDR, default {DEFAULT_SERVER})")
    group.add_argument("--token", help="bearer token (env DAVELOPER_TOKEN; default: a session token cached in "
                                       "$XDG_CONFIG_HOME/daveloper/tokens.json, created when missing or refused)")
    group.add_argument("--tls-ca", metavar="FILE", type=Path, help="CA certificate of a TLS server (implies --tls)")
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    group.add_argument("--timeout", metavar="SECONDS", type=_positive, default=600.0,
                       help="deadline of a chat turn, an upload or a crawl (default 600; other calls: 10)")
    return flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daveloper", description="Self-hostable backend for AI developer assistants.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve gRPC and the web edge on embedded defaults")
    run.add_argument("--grpc-addr", metavar="HOST:PORT", help="gRPC listen address (env DAVELOPER_GRPC_ADDR, "
                     "default 127.0.0.1:50051)")
    run.add_argument("--edge-addr", metavar="HOST:PORT", help="web page, WebSocket and HTTP/JSON listen address "
                     "(env DAVELOPER_EDGE_ADDR, default 127.0.0.1:8080)")
    run.add_argument("--data-dir", metavar="DIR", help="data directory (env DAVELOPER_DATA_DIR)")
    run.add_argument("--role", choices=["all", "grpc", "edge"],
                     help="all: gRPC and the edge (default); grpc: servicers only, registered in Redis; "
                          "edge: the web edge only, in front of gRPC instances (env DAVELOPER_ROLE)")
    run.add_argument("--upstream", metavar="HOST:PORT", action="append", dest="upstreams",
                     help="a gRPC instance the edge calls; repeat for several (env DAVELOPER_UPSTREAMS, "
                          "comma-separated; instances registered in Redis are found without it)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="log level (env DAVELOPER_LOG_LEVEL, default INFO)")

    options = commands.add_parser("config", help="read or change runtime options (switches and limits) in Redis",
                                  description="Every instance applies a change within a second. Needs the servers' "
                                              "Redis: DAVELOPER_REDIS_URL (or the embedded Valkey's data dir).")
    options.add_argument("action", choices=["list", "get", "set", "unset"])
    options.add_argument("name", nargs="?", help="option name (see `daveloper config list`)")
    options.add_argument("value", nargs="?", help="new value: on/off, a number, or a rate like 30/min")

    client = [_client_flags()]
    talk = commands.add_parser("chat", parents=client, help="chat with the agent, answers streamed",
                               description="With MESSAGE: one turn. Without: a turn per line of stdin. "
                                           "Ctrl-C cancels the running turn; a second Ctrl-C quits.")
    talk.add_argument("message", nargs="?", metavar="MESSAGE", help="ask this and exit")
    talk.add_argument("--conversation", metavar="ID", default="", help="continue this conversation")

    load = commands.add_parser("ingest", parents=client, help="upload files into the session's documents")
    load.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files, or directories to walk")
    load.add_argument("--glob", metavar="PATTERN", help="in directories, only files matching this (e.g. '*.md')")

    crawl = commands.add_parser("scrape", parents=client, help="crawl a site, optionally into the documents")
    crawl.add_argument("url", metavar="URL")
    crawl.add_argument("--depth", type=_count, default=1, help="link depth from the URL (0: the URL only; default 1)")
    crawl.add_argument("--max-pages", type=_count, default=0, help="page limit (default: the server's)")
    crawl.add_argument("--ingest", action=argparse.BooleanOptionalAction, default=True,
                       help="ingest the pages into the session's documents (default: yes)")
    crawl.add_argument("--same-site", action="store_true", help="follow links on the URL's host only")

    commands.add_parser("doctor", parents=client, help="check configuration and dependencies, say what is wrong")

    probe = commands.add_parser(
        "health", help="check that the local instance serves (a container health check)",
        description="Asks what the instance's role serves (DAVELOPER_ROLE and the listen addresses, as serve reads "
                    "them): gRPC health for grpc, /readyz for edge, both for all. Prints SERVING or "
                    "NOT_SERVING: reason; exits 0 when serving, 1 otherwise.")
    probe.add_argument("--live", action="store_true",
                       help="liveness only: the process answers (gRPC: any health status; edge: /healthz)")
    probe.add_argument("--grpc", metavar="HOST:PORT", help="check this gRPC address instead of the role's")
    probe.add_argument("--edge", metavar="URL", help="check this edge (http[s]://HOST:PORT) instead of the role's")
    probe.add_argument("--tls", action="store_true",
                       help="the server speaks TLS (default: when DAVELOPER_TLS_CERT_FILE is set); certificates "
                            "are not verified")
    probe.add_argument("--timeout", metavar="SECONDS", type=_positive, default=DEFAULT_TIMEOUT,
                       help=f"give up after this long (default {DEFAULT_TIMEOUT:g})")
    return parser


def _config(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from daveloper.client.config import config_command

    if (args.action != "list" and not args.name) or (args.action == "set" and args.value is None):
        print(f"daveloper: config {args.action} needs a NAME" + (" and a VALUE" if args.action == "set" else ""),
              file=sys.stderr)
        return 2
    try:
        return uvloop.run(config_command(args.action, args.name, args.value, env, sys.stdout))
    except DaveloperError as exc:
        print(f"daveloper: {exc.message}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the server's dependencies (Qdrant, the parsers, the LLM SDK) take seconds to
    # import, which the client commands should not pay on every run.
    from daveloper.app import serve
    from daveloper.jsonlog import configure_logging
    from daveloper.logredaction import secrets_of

    try:
        settings = Settings.from_env(
            grpc_addr=Address.parse(args.grpc_addr, name="--grpc-addr") if args.grpc_addr else None,
            edge_addr=Address.parse(args.edge_addr, name="--edge-addr") if args.edge_addr else None,
            data_dir=Path(args.data_dir).expanduser() if args.data_dir else None,
            log_level=args.log_level,
            role=args.role,
            upstreams=tuple(Address.parse(a, name="--upstream") for a in args.upstreams) if args.upstreams else None,
        )
    except DaveloperError as exc:
        print(f"daveloper: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.instance_id, secrets=secrets_of(settings))
    try:
        uvloop.run(serve(settings))
    except DaveloperError as exc:
        print(f"daveloper: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _health(args: argparse.Namespace) -> int:
    # Exit codes 0 and 1 only: Docker reserves 2 in health checks.
    try:
        options = health_options(os.environ, grpc=args.grpc, edge=args.edge, tls=args.tls, live=args.live,
                                 timeout=args.timeout)
    except DaveloperError as exc:
        print(f"NOT_SERVING: {exc.message}", flush=True)
        return 1
    verdict = uvloop.run(check_health(options))
    print(verdict, flush=True)
    return 0 if verdict.healthy else 1


def _client_options(args: argparse.Namespace, env: Mapping[str, str]) -> ClientOptions:
    server = args.server or env.get("DAVELOPER_GRPC_ADDR", "").strip() or DEFAULT_SERVER
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return ClientOptions(
        server=Address.parse(server, name="--server" if args.server else "DAVELOPER_GRPC_ADDR"),
        token=args.token or env.get("DAVELOPER_TOKEN", "").strip() or None,
        token_cache=config_home / "daveloper" / "tokens.json",
        tls_ca=args.tls_ca.expanduser() if args.tls_ca else None,
        tls=args.tls,
        timeout=args.timeout,
    )


def _terminal(env: Mapping[str, str]) -> Terminal:
    return Terminal(out=sys.stdout, err=sys.stderr, live=sys.stderr.isatty(),
                    color=sys.stderr.isatty() and not env.get("NO_COLOR"), interactive=sys.stdin.isatty())


async def _run_client(args: argparse.Namespace, options: ClientOptions, terminal: Terminal,
                      env: Mapping[str, str]) -> int:
    with Interrupts() as interrupts:
        if args.command == "doctor":
            return await doctor(terminal, env, options)
        command: Callable[[Connection], Awaitable[int]]
        if args.command == "chat":
            def command(c: Connection) -> Awaitable[int]:
                return chat(c, terminal, interrupts, conversation_id=args.conversation, message=args.message)
        elif args.command == "ingest":
            def command(c: Connection) -> Awaitable[int]:
                return ingest(c, terminal, args.paths, glob=args.glob)
        else:
            spec = ScrapeOptions(url=args.url, depth=args.depth, max_pages=args.max_pages, ingest=args.ingest,
                                 same_site=args.same_site)

            def command(c: Connection) -> Awaitable[int]:
                return scrape(c, terminal, interrupts, spec)
        async with open_connection(options) as connection:
            return await command(connection)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``daveloper`` command; its exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "config":
        return _config(args, os.environ)
    if args.command == "health":
        return _health(args)
    env = dict(os.environ)
    try:
        options = _client_options(args, env)
    except DaveloperError as exc:
        print(f"daveloper: {exc.message}", file=sys.stderr)
        return 2
    terminal = _terminal(env)
    try:
        return uvloop.run(_run_client(args, options, terminal, env))
    except CommandFailed as exc:
        terminal.clear_status()
        print(f"daveloper: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        # A Ctrl-C with no turn or job to cancel (or a second one): stop here, as shells expect.
        terminal.clear_status()
        print("\ndaveloper: interrupted", file=sys.stderr)
        return _EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
