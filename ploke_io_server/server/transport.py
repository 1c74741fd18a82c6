"""Serving the engine over stdio (one client) or TCP (many clients, token auth)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import stat
import sys
import threading
from typing import Any

from ..engine import IoManager
from .connection import Connection, FrameStreamReader
from .framing import FileSink, PipeSink, Sink, SocketSink
from .models import EscapeMemo

__all__ = ["load_or_create_token", "serve_stdio", "serve_tcp"]

log = logging.getLogger(__name__)

# StreamReader limit: the reader pauses its transport while it holds more than twice this
# unread. (The longest header line accepted is connection.HEADER_LINE_MAX: a Connection cuts
# frames from its own buffer, not with readuntil.)
_HEADER_LIMIT = 1024 * 1024
_PIPE_BYTES = 1024 * 1024


def _on_signals(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, callback)


async def _stdin_reader(loop: asyncio.AbstractEventLoop) -> asyncio.StreamReader:
    reader = FrameStreamReader(limit=_HEADER_LIMIT)
    stdin = os.fdopen(0, "rb", buffering=0, closefd=False)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    except ValueError:
        # stdin is a regular file: feed the reader from a thread.
        def pump() -> None:
            while True:
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    loop.call_soon_threadsafe(reader.feed_eof)
                    return
                loop.call_soon_threadsafe(reader.feed_data, chunk)

        threading.Thread(target=pump, name="ploke-io-stdin", daemon=True).start()
    return reader


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer: fewer wake-ups per megabyte moved (Linux only)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, set_size, _PIPE_BYTES)


async def serve_stdio(engine: IoManager) -> int:
    """Serve one client on stdin/stdout until exit or EOF; returns the exit code."""
    loop = asyncio.get_running_loop()
    # The protocol gets a private copy of stdout; fd 1 then points at stderr, so a stray print
    # (ours or a library's) can never corrupt the message stream.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    _grow_pipe(0)
    _grow_pipe(out_fd)
    reader = await _stdin_reader(loop)
    sink: Sink
    try:
        sink = await PipeSink.open(out_fd)
    except ValueError:  # stdout is a regular file: plain blocking writes
        sink = FileSink(out_fd)
    conn = Connection(engine, reader, sink, name="stdio")
    _on_signals(loop, conn.stop)
    code = await conn.run()
    await engine.aclose()
    return code


def load_or_create_token(path: str) -> str:
    """Read the token file, or create it (mode 0600, parents 0700) with a random token."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s is readable by others; chmod 600 it", path)
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read token file {path}: {exc}") from None
        if not token:
            raise ValueError(f"token file {path} is empty") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


async def serve_tcp(engine: IoManager, host: str, port: int, token: str | None) -> int:
    """Serve many clients over TCP until SIGTERM/SIGINT; every client shares ``engine``."""
    loop = asyncio.get_running_loop()
    connections: dict[Connection, asyncio.Task[Any]] = {}
    memo = EscapeMemo(engine.config.json_cache_bytes)  # one for all clients

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        name = f"tcp:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "tcp"
        conn = Connection(
            engine, reader, SocketSink(writer), auth_token=token, name=name, escape_memo=memo
        )
        task = asyncio.current_task()
        assert task is not None
        connections[conn] = task
        log.info("%s: connected", name)
        try:
            await conn.run()
        finally:
            connections.pop(conn, None)
            log.info("%s: disconnected", name)

    def protocol() -> asyncio.StreamReaderProtocol:  # asyncio.start_server, our reader
        return asyncio.StreamReaderProtocol(FrameStreamReader(limit=_HEADER_LIMIT), on_client)

    server = await loop.create_server(protocol, host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    _on_signals(loop, stop.set)
    async with server:
        await stop.wait()
        server.close()
        for conn in list(connections):
            conn.stop()
        # Let in-flight requests of every client finish before the engine goes away.
        if connections:
            await asyncio.wait(list(connections.values()), timeout=60)
    await engine.aclose()
    return 0
