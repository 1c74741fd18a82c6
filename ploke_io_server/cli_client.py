"""``ploke-io``: the command-line client.

Against a running TCP server (``--connect HOST:PORT``, token from ``--token-file`` or
``$PLOKE_IO_TOKEN``) or a stdio server it spawns itself (``--root DIR``, default the current
directory). Human output by default, ``--json`` for scripts. Exit codes: 0 success, 1 some
item failed (the others are still printed), 2 usage, connection or authentication error.

    ploke-io status
    ploke-io snippets src/main.rs:0-120 README.md
    ploke-io hash src/*.rs
    ploke-io scan --hashes index.b3          # lines "<hash>  <path>", as b3sum prints
    ploke-io write src/main.rs 3 7 start --expect <hash> [--origin me] [--dry-run]
    ploke-io create notes/new.md --content "hello" [--parents] [--overwrite]
    ploke-io watch [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from . import __version__
from .client import PlokeClient, RpcError

__all__ = ["main"]

TOKEN_ENV = "PLOKE_IO_TOKEN"
CONNECT_ENV = "PLOKE_IO_CONNECT"


class UsageError(Exception):
    """A bad command line: message on stderr, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ploke-io",
        description="Command-line client of ploke-io-server.",
        epilog=f"Environment: {CONNECT_ENV} (HOST:PORT), {TOKEN_ENV} (the TCP token).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--connect",
        metavar="HOST:PORT",
        default=os.environ.get(CONNECT_ENV),
        help="a running TCP server (default: spawn a stdio server)",
    )
    p.add_argument("--token-file", metavar="PATH", help="TCP token file")
    p.add_argument("--root", metavar="DIR", help="root of a spawned server (default: cwd)")
    p.add_argument("--json", action="store_true", help="print the raw JSON results")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("status", help="server version, roots, counters")
    s = sub.add_parser("snippets", help="print files or byte ranges (FILE[:START-END])")
    s.add_argument("specs", nargs="+", metavar="FILE[:START-END]")
    s = sub.add_parser("hash", help="BLAKE3 of files, as b3sum prints them")
    s.add_argument("paths", nargs="+", metavar="FILE")
    s = sub.add_parser("scan", help="which files changed since they were hashed")
    s.add_argument("pairs", nargs="*", metavar="FILE=HASH")
    s.add_argument("--hashes", metavar="LIST", help='a "<hash>  <path>" list (b3sum output)')
    s.add_argument("--progress", action="store_true", help="progress bar even if not a TTY")
    s = sub.add_parser("write", help="replace bytes START..END of FILE")
    s.add_argument("path", metavar="FILE")
    s.add_argument("start", type=int)
    s.add_argument("end", type=int)
    s.add_argument("replacement")
    s.add_argument("--expect", required=True, metavar="HASH", help="the file's current hash")
    s.add_argument("--origin")
    s.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    s = sub.add_parser("create", help="create a file")
    s.add_argument("path", metavar="FILE")
    s.add_argument("--content", help="the content (default: read stdin)")
    s.add_argument("--parents", action="store_true", help="create missing directories")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--origin")
    s = sub.add_parser("watch", help="print file changes as they happen")
    s.add_argument("--count", type=int, help="stop after this many events")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # A file name that is not UTF-8 (os.fsdecode's lone surrogates) is printed as its own
    # bytes, as ls and b3sum print it, instead of failing the command.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except UsageError as exc:
        print(f"ploke-io: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _connect(args: argparse.Namespace) -> PlokeClient:
    opts: dict[str, Any] = {"watch": True} if args.command == "watch" else {}
    try:
        if args.connect:
            host, sep, port = args.connect.rpartition(":")
            if not sep or not port.isdigit():
                raise UsageError(f"--connect wants HOST:PORT, got {args.connect!r}")
            token = os.environ.get(TOKEN_ENV)
            if args.token_file:
                try:
                    with open(args.token_file, encoding="utf-8") as f:
                        token = f.read().strip()
                except OSError as exc:
                    raise UsageError(f"cannot read the token file: {exc}") from None
            if token:
                opts["authToken"] = token
            client = await PlokeClient.connect(host or "127.0.0.1", int(port), initialize=False)
        else:
            root = os.path.abspath(args.root or os.getcwd())
            # The server's stderr is the user's: a startup error (a bad --root) shows there.
            client = await PlokeClient.spawn(root=root, initialize=False)
    except OSError as exc:
        raise UsageError(f"cannot connect: {exc}") from None
    try:
        await client.initialize(init_options=opts)
    except (RpcError, ConnectionError) as exc:
        await _quietly_close(client)
        text = exc.message if isinstance(exc, RpcError) else str(exc)
        raise UsageError(f"the server refused the session: {text}") from None
    return client


async def _quietly_close(client: PlokeClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 10)


async def _run(args: argparse.Namespace) -> int:
    if args.command == "scan":
        args.scan_pairs = _scan_pairs(args)
    client = await _connect(args)
    try:
        command = _COMMANDS[args.command]
        return await command(client, args, sys.stdout)
    except RpcError as exc:
        print(f"ploke-io: {exc.message} ({exc.code})", file=sys.stderr)
        return 2
    finally:
        await _quietly_close(client)


def _abs(path: str) -> str:
    return os.path.abspath(path)


def _item_error(path: str, error: Mapping[str, Any]) -> None:
    print(f"ploke-io: {path}: {error.get('kind')}: {error.get('message')}", file=sys.stderr)


def _json(value: Any, indent: int | None = None) -> str:
    """JSON text; a file name that is not UTF-8 stays a ``\\udcXX`` escape in it, so the
    output is valid UTF-8 JSON that gives back the name's bytes."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, indent=indent)
    return text


def _dump(out: TextIO, value: Any) -> None:
    out.write(_json(value, indent=2) + "\n")


# -- commands --------------------------------------------------------------------------------


async def _status(client: PlokeClient, args: argparse.Namespace, out: TextIO) -> int:
    s = await client.status()
    if args.json:
        _dump(out, s)
        return 0
    c = s["counters"]
    watcher = s["watcher"]
    out.write(f"ploke-io-server {s['version']}\n")
    out.write(f"roots:          {', '.join(s['roots'])}\n")
    out.write(f"symlink policy: {s['symlinkPolicy']}\n")
    out.write(f"fd limit:       {s['fdLimit']}\n")
    out.write(
        f"watcher:        {'on' if watcher['enabled'] else 'off'} "
        f"(debounce {watcher['debounceMs']} ms)\n"
    )
    requests = ", ".join(f"{k} {v}" for k, v in sorted(c["requests"].items())) or "none"
    out.write(f"requests:       {requests}\n")
    errors = ", ".join(f"{k} {v}" for k, v in sorted(c["errors"].items())) or "none"
    out.write(f"item errors:    {errors}\n")
    out.write(f"files read:     {c['filesRead']} ({c['bytesRead']} bytes)\n")
    out.write(f"files written:  {c['filesWritten']}, created {c['filesCreated']}\n")
    cache = c.get("statCache", {})
    if cache:
        out.write(
            f"stat cache:     {cache['entries']} entries, {cache['hits']} hits, "
            f"{cache['misses']} misses\n"
        )
    return 0


def _parse_spec(spec: str) -> dict[str, Any]:
    """FILE or FILE:START-END (either bound may be empty)."""
    path, sep, rng = spec.rpartition(":")
    if sep and "-" in rng and all(p == "" or p.isdigit() for p in rng.split("-", 1)):
        start, _dash, end = rng.partition("-")
        item: dict[str, Any] = {"filePath": _abs(path)}
        if start:
            item["startByte"] = int(start)
        if end:
            item["endByte"] = int(end)
        return item
    return {"filePath": _abs(spec)}


async def _snippets(client: PlokeClient, args: argparse.Namespace, out: TextIO) -> int:
    items = [_parse_spec(s) for s in args.specs]
    results = await client.get_snippets(items)
    if args.json:
        _dump(out, results)
        return 0 if all(r["ok"] for r in results) else 1
    failed = 0
    for spec, r in zip(args.specs, results, strict=True):
        if not r["ok"]:
            failed += 1
            _item_error(spec, r["error"])
            continue
        if len(items) > 1:
            out.write(f"==> {spec} <==\n")
        out.write(r["text"])
        if len(items) > 1 and not r["text"].endswith("\n"):
            out.write("\n")
    return 1 if failed else 0


async def _hash(client: PlokeClient, args: argparse.Namespace, out: TextIO) -> int:
    results = await client.hash_files([_abs(p) for p in args.paths])
    if args.json:
        _dump(out, results)
        return 0 if all(r["ok"] for r in results) else 1
    failed = 0
    for path, r in zip(args.paths, results, strict=True):
        if r["ok"]:
            out.write(f"{r['fileHash']}  {path}\n")
        else:
            failed += 1
            _item_error(path, r["error"])
    return 1 if failed else 0


def _read_hash_list(path: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                raise UsageError(f"{path}:{n}: expected '<hash>  <path>'")
            pairs.append((name, digest))
    return pairs


def _scan_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (path, hash) pairs of a scan, checked before any server is started."""
    pairs: list[tuple[str, str]] = []
    for item in args.pairs:
        name, sep, digest = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"expected FILE=HASH, got {item!r}")
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise UsageError(f"{item!r}: a hash is 64 hex digits (BLAKE3, as b3sum prints)")
        pairs.append((name, digest))
    if args.hashes:
        pairs += _read_hash_list(args.hashes)
    if not pairs:
        raise UsageError("nothing to scan: give FILE=HASH pairs or --hashes LIST")
    return pairs


async def _scan(client: PlokeClient, args: argparse.Namespace, out: TextIO) -> int:
    pairs = args.scan_pairs
    files = [{"filePath": _abs(name), "fileHash": digest} for name, digest in pairs]
    show = args.progress or sys.stderr.isatty()
    token = "ploke-io-scan"
    bar = asyncio.get_running_loop().create_task(_progress_bar(client, token)) if show else None
    try:
        extra = {"workDoneToken": token} if show else {}
        results = await client.scan_changes(files, **extra)
    finally:
        if bar is not None:
            bar.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bar
            sys.stderr.write("\n")
    if args.json:
        _dump(out, results)
        return 0 if all(r["status"] != "error" for r in results) else 1
    failed = 0
    counts: dict[str, int] = {}
    for (name, _digest), r in zip(pairs, results, strict=True):
        status = r["status"]
        counts[status] = counts.get(status, 0) + 1
        if status == "error":
            failed += 1
            _item_error(name, r["error"])
        elif status == "modified":
            out.write(f"modified  {name}  {r['newHash']}\n")
        elif status == "removed":
            out.write(f"removed   {name}\n")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    out.write(f"{len(results)} file{'s' if len(results) != 1 else ''}: {summary}\n")
    return 1 if failed else 0


async def _progress_bar(client: PlokeClient, token: str) -> None:
    """Draw ``$/progress`` reports for ``token`` on stderr until cancelled."""
    while True:
        method, params = await client.notifications.get()
        if method != "$/progress" or not isinstance(params, dict) or params.get("token") != token:
            continue
        value = params.get("value") or {}
        pct = value.get("percentage")
        if pct is None:
            continue
        filled = int(pct) * 30 // 100
        message = value.get("message") or ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {pct:3d}% {message}")
        sys.stderr.flush()


async def _write(client: PlokeClient, args: argparse.Namespace, out: TextIO) -> int:
    edit = {"filePath": _abs(args.path), "expectedHash": args.expect, "startByte": args.start,
            "endByte": args.end, "replacement": args.replacement}  # fmt: skip
    [r] = await client.write_snippets([edit], origin=args.origin, dry_run=args.dry_run)
    if args.json:
        _dump(out, r)
        return 0 if r["ok"] else 1
    if not r["ok"]:
        _item_error(args.path, r["error"])
        data = r["error"].get("data") or {}
        if "actual" in data:
            print(f"ploke-io: the file's hash is now {data['actual']}", file=sys.stderr)
        return 1
    if args.dry_run:
        out.write(r.get("diff") or "")
        return 0
    out.write(
        f"{args.path}: {r['oldHash'][:12]} -> {r['newHash']} "
        f"(replacement at {r['newStartByte']}..{r['newEndByte']})\n"
    )
    return 0


async def _create(client: PlokeClient, args: argparse.Namespace, out: TextIO) -> int:
    content = args.content if args.content is not None else sys.stdin.read()
    new = {"filePath": _abs(args.path), "content": content, "createParents": args.parents,
           "overwrite": args.overwrite}  # fmt: skip
    [r] = await client.create_files([new], origin=args.origin)
    if args.json:
        _dump(out, r)
        return 0 if r["ok"] else 1
    if not r["ok"]:
        _item_error(args.path, r["error"])
        return 1
    out.write(f"{r['fileHash']}  {args.path}\n")
    return 0


async def _watch(client: PlokeClient, args: argparse.Namespace, out: TextIO) -> int:
    roots = (await client.status())["roots"]
    print(f"ploke-io: watching {', '.join(roots)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    closed = asyncio.ensure_future(asyncio.shield(client.closed))
    while args.count is None or seen < args.count:
        getter = asyncio.ensure_future(client.notifications.get())
        done, _pending = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            print("ploke-io: the server closed the connection", file=sys.stderr)
            return 2
        method, params = getter.result()
        if method != "ploke/didChangeFiles":
            continue
        for event in params.get("events", []):
            seen += 1
            if args.json:
                out.write(_json(event) + "\n")
            else:
                line = f"{event['kind']:<9} {event['filePath']}"
                if event.get("oldPath"):
                    line += f"  (from {event['oldPath']})"
                if event.get("origin"):
                    line += f"  [origin {event['origin']}]"
                out.write(line + "\n")
            out.flush()
            if args.count is not None and seen >= args.count:
                break
    closed.cancel()
    return 0


_COMMANDS = {
    "status": _status,
    "snippets": _snippets,
    "hash": _hash,
    "scan": _scan,
    "write": _write,
    "create": _create,
    "watch": _watch,
}


if __name__ == "__main__":
    sys.exit(main())
