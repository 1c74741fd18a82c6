"""Command line: flags -> Config -> serve over stdio (default) or TCP."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .config import (
    DEFAULT_AUTH_TIMEOUT_S,
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_JSON_CACHE_BYTES,
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RACY_MARGIN_MS,
    DEFAULT_STAT_CACHE_BYTES,
    DEFAULT_STAT_CACHE_ENTRIES,
    FD_LIMIT_ENV,
    Config,
    ConfigError,
    SymlinkPolicy,
)

__all__ = ["build_parser", "main"]

LOG_ENV = "PLOKE_IO_LOG"
log = logging.getLogger("ploke_io_server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ploke-io-server",
        description="File I/O daemon for coding agents and editors (LSP-style JSON-RPC).",
        epilog=(
            f"Environment: {FD_LIMIT_ENV} (concurrency limit, clamped 4..1024), "
            f"{LOG_ENV} (log level). Flags win over the environment."
        ),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="allowed root (repeatable); default: the client's workspace folders, else the cwd",
    )
    p.add_argument(
        "--symlink-policy",
        choices=[m.value for m in SymlinkPolicy],
        default=None,
        help="how symlinks are followed (default denyCrossRoot); when given, a client may "
        "only tighten it",
    )
    p.add_argument(
        "--fd-limit",
        type=int,
        default=None,
        metavar="N",
        help=f"concurrent file operations, clamped 4..1024 (default: ${FD_LIMIT_ENV}, "
        "else min(100, RLIMIT_NOFILE/3), else 50)",
    )
    p.add_argument(
        "--max-file-bytes",
        type=int,
        default=None,
        metavar="N",
        help=f"largest file read into memory (default {DEFAULT_MAX_FILE_BYTES}); TooLarge beyond",
    )
    p.add_argument(
        "--max-batch-items",
        type=int,
        default=None,
        metavar="N",
        help=f"most items in one batch request (default {DEFAULT_MAX_BATCH_ITEMS})",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="N",
        help=f"largest JSON-RPC message accepted (default {DEFAULT_MAX_MESSAGE_BYTES})",
    )
    p.add_argument(
        "--json-cache-bytes",
        type=int,
        default=None,
        metavar="N",
        help=f"memory for whole-file texts kept in JSON form, keyed by content hash "
        f"(default {DEFAULT_JSON_CACHE_BYTES}; 0 = off)",
    )
    p.add_argument(
        "--stat-cache-entries",
        type=int,
        default=None,
        metavar="N",
        help="files whose hash is remembered by (device, inode, size, mtime, ctime), so that "
        f"an unchanged file is confirmed without a read (default {DEFAULT_STAT_CACHE_ENTRIES}; "
        "0 = off)",
    )
    p.add_argument(
        "--stat-cache-bytes",
        type=int,
        default=None,
        metavar="N",
        help=f"memory budget of that cache (default {DEFAULT_STAT_CACHE_BYTES}); the smaller "
        "bound wins",
    )
    p.add_argument(
        "--racy-margin-ms",
        type=int,
        default=None,
        metavar="MS",
        help="a file modified less than this before it was hashed is not trusted to the stat "
        f"cache (default {DEFAULT_RACY_MARGIN_MS}; raise it for coarse timestamps or a "
        "network file system whose clock drifts)",
    )
    p.add_argument(
        "--no-trust-watcher",
        dest="trust_watcher",
        action="store_false",
        help="while the watcher runs, scans still stat every file (by default a file the "
        "watcher has heard nothing about since it was indexed is confirmed from its index)",
    )
    p.add_argument(
        "--debounce-ms",
        type=int,
        default=None,
        metavar="MS",
        help=f"watcher debounce (default {DEFAULT_DEBOUNCE_MS})",
    )
    p.add_argument("--watch", action="store_true", help="watch the roots for every client")
    p.add_argument("--tcp", action="store_true", help="serve over TCP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="TCP host (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=2087, help="TCP port (default 2087; 0 = any)")
    p.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="TCP auth token file, created (0600) if missing "
        "(default: <first root>/.ploke-io/token)",
    )
    p.add_argument("--no-auth", action="store_true", help="TCP without a token (explicitly)")
    p.add_argument(
        "--auth-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"TCP: time a client has to authenticate (default {DEFAULT_AUTH_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="stderr log lines as text (default) or one JSON object per line",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="log one span per request (method, id, items, item errors by kind, duration)",
    )
    p.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help=f"stderr log level (default: ${LOG_ENV}, else warning)",
    )
    return p


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections for a server that builds large batches.

    The objects made at start-up (lsprotocol's ~600 classes and their converters) are moved
    out of the collector's sight (``gc.freeze``), and a collection of the youngest generation
    waits for 50,000 new objects instead of 700: a 100,000-file scan allocates a few hundred
    thousand objects that all live until the answer is sent, and the default thresholds ran
    full collections over them again and again (measured: 0.3-0.5 s of a 1.3 s scan). Cycles
    are still collected, just in larger steps.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a span's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with a span's fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        return text


def _setup_logging(level_name: str | None, log_format: str, trace: bool) -> None:
    """Logs go to stderr only (stdout carries the protocol on stdio)."""
    name = (level_name or os.environ.get(LOG_ENV) or "warning").upper()
    level = getattr(logging, name, logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pygls logs every message it sends at INFO: keep it quiet unless debugging.
    logging.getLogger("pygls").setLevel(max(level, logging.WARNING))
    logging.getLogger("ploke_io_server.trace").setLevel(logging.INFO if trace else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format, args.trace)
    try:
        config = Config.from_sources(
            roots=args.root,
            symlink_policy=args.symlink_policy,
            fd_limit=args.fd_limit,
            max_file_bytes=args.max_file_bytes,
            max_batch_items=args.max_batch_items,
            max_message_bytes=args.max_message_bytes,
            auth_timeout_s=args.auth_timeout,
            json_cache_bytes=args.json_cache_bytes,
            stat_cache_entries=args.stat_cache_entries,
            stat_cache_bytes=args.stat_cache_bytes,
            racy_margin_ms=args.racy_margin_ms,
            trust_watcher=args.trust_watcher,
            debounce_ms=args.debounce_ms,
            watch=args.watch,
        )
    except ConfigError as exc:
        print(f"ploke-io-server: {exc}", file=sys.stderr)
        return 2

    from .engine import IoManager
    from .server.transport import load_or_create_token, serve_stdio, serve_tcp

    _tune_gc()

    async def run() -> int:
        engine = IoManager(config)
        await engine.start()  # background: remove temp files a crashed server left
        if config.watch and config.roots_from_cli:
            # Every client is sent changes; without --root, each client's roots are watched
            # when it initializes instead (the cwd default is not).
            watcher = await engine.start_watcher()
            for text in watcher.errors:
                print(f"ploke-io-server: {text}", file=sys.stderr)
        if not args.tcp:
            return await serve_stdio(engine)
        token: str | None = None
        if not args.no_auth:
            path = args.token_file or os.path.join(config.roots[0], ".ploke-io", "token")
            try:
                token = load_or_create_token(path)
            except (OSError, ValueError) as exc:
                print(f"ploke-io-server: {exc}", file=sys.stderr)
                return 2
            print(f"token file: {path}", file=sys.stderr, flush=True)
        if not _is_loopback(args.host):
            log.warning("serving on %s: reachable beyond this machine", args.host)
        try:
            return await serve_tcp(engine, args.host, args.port, token)
        except OSError as exc:
            print(
                f"ploke-io-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
            )
            return 2

    return asyncio.run(run())


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {value!r} is not an integer") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535")
    return port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
