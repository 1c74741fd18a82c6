"""A small asyncio client for ploke-io-server (stdio subprocess or TCP with a token).

Example::

    async with await PlokeClient.spawn(root="/path/to/repo") as client:
        results = await client.get_snippets([{"filePath": "/path/to/repo/src/main.rs"}])

Results are the plain JSON values of the wire contract (``docs/protocol.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Required, SupportsIndex, TypedDict, cast

from . import fastjson, methods

__all__ = [
    "ChangeEvent",
    "CreatedItem",
    "EditItem",
    "HashItem",
    "ItemError",
    "PlokeClient",
    "RpcError",
    "ScanItem",
    "SnippetItem",
]


class ItemError(TypedDict, total=False):
    code: Required[int]
    kind: Required[str]
    message: Required[str]
    data: dict[str, Any]


class SnippetItem(TypedDict, total=False):
    """``{"ok": true, "text", "fileHash"}`` or ``{"ok": false, "error"}``."""

    ok: Required[bool]
    text: str
    fileHash: str
    error: ItemError


class HashItem(TypedDict, total=False):
    ok: Required[bool]
    fileHash: str
    size: int
    error: ItemError


class ScanItem(TypedDict, total=False):
    """``status`` is unchanged, modified (with ``newHash``), removed or error."""

    status: Required[str]
    newHash: str
    error: ItemError


class EditItem(TypedDict, total=False):
    ok: Required[bool]
    filePath: str
    oldHash: str
    newHash: str
    newStartByte: int
    newEndByte: int
    diff: str
    error: ItemError


class CreatedItem(TypedDict, total=False):
    ok: Required[bool]
    filePath: str
    fileHash: str
    error: ItemError


class ChangeEvent(TypedDict, total=False):
    """One event of ``ploke/didChangeFiles``."""

    filePath: Required[str]
    kind: Required[str]
    oldPath: str
    fileHash: str
    origin: str


class RpcError(Exception):
    """An error response: ``code``, ``message`` and optional ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


_HEADER_MAX = 64 * 1024
"""Longest header block accepted from the server before its blank line."""
_STREAM_LIMIT = 1 << 24
"""asyncio's line limit of the streams (the server's stderr)."""
_READ_CHUNK = 1 << 20
"""Most bytes read at once from a stream that is not a _FrameReader."""


class _FrameParser:
    """Cuts the server's output into messages as its bytes come: each goes to
    ``on_message`` at once, with no task waking up per message (a round trip on tmpfs:
    271 µs against 301 µs with a read loop, docs/performance.md). ``on_end`` is called
    once, at EOF or when the stream fails or is malformed."""

    def __init__(
        self,
        on_message: Callable[[Any, int], None],
        on_end: Callable[[BaseException | None], None],
    ) -> None:
        self._on_message = on_message
        self._on_end = on_end
        self._frames = bytearray()
        self._ended = False

    def feed(self, data: bytes | bytearray) -> None:
        if self._ended:
            return
        buf = self._frames
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _HEADER_MAX:
                    self.end(ConnectionError("malformed frame from the server"))
                return
            length = _content_length(bytes(buf[:end]))
            start = end + 4
            if length < 0:
                self.end(ConnectionError("frame without a Content-Length from the server"))
                return
            if len(buf) - start < length:
                return
            body = bytes(memoryview(buf)[start : start + length])
            del buf[: start + length]
            try:
                message = fastjson.loads(body)
            except ValueError as exc:
                self.end(ConnectionError(f"malformed message from the server: {exc}"))
                return
            self._on_message(message, length)

    def end(self, exc: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._frames.clear()
            self._on_end(exc)


class _FrameReader(asyncio.StreamReader):
    """The stream of spawn() and connect(): what arrives goes straight to ``parser``."""

    parser: _FrameParser | None = None

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if self.parser is None:
            super().feed_data(data)
        else:
            self.parser.feed(data if isinstance(data, bytes | bytearray) else bytes(data))

    def feed_eof(self) -> None:
        super().feed_eof()
        if self.parser is not None:
            self.parser.end(None)

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        if self.parser is not None:
            self.parser.end(exc)


def _content_length(header: bytes) -> int:
    """The Content-Length of a header block, -1 if it has none."""
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


class _ServerPipes(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess protocol, with a _FrameReader on the child's stdout."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.stdout is not None:
            reader = _FrameReader(limit=_STREAM_LIMIT)
            reader.set_transport(transport.get_pipe_transport(1))  # type: ignore[attr-defined]
            self.stdout = reader


class PlokeClient:
    """JSON-RPC client speaking the LSP base protocol to one server."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | Any,
        process: asyncio.subprocess.Process | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.process = process
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[Any]] = {}
        self.notifications: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        """Every notification from the server, as (method, params)."""
        self._events: asyncio.Queue[ChangeEvent | None] = asyncio.Queue()
        self.last_body_bytes = 0
        """Size of the last message body received (benchmarks report response sizes)."""
        self.closed = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        parser = _FrameParser(self._on_message, self._on_end)
        if isinstance(reader, _FrameReader):  # spawn() and connect(): messages as they arrive
            reader.parser = parser
        else:  # any other stream: a task reads it into the same parser
            self._task = asyncio.get_running_loop().create_task(self._read_loop(parser))

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    async def spawn(
        cls,
        *server_args: str,
        root: str | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        stderr: int | None = None,
        initialize: bool = True,
        init_options: Mapping[str, Any] | None = None,
        command: Sequence[str] | None = None,
    ) -> PlokeClient:
        """Start ``python -m ploke_io_server`` over stdio (``--root root`` if given).

        ``command`` replaces ``python -m ploke_io_server`` (another server speaking the protocol).
        """
        prefix = list(command) if command else [python or sys.executable, "-m", "ploke_io_server"]
        args = [*prefix, *server_args]
        if root is not None:
            args += ["--root", root]
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ServerPipes(limit=_STREAM_LIMIT, loop=loop),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=dict(env) if env is not None else None,
        )
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        assert proc.stdin is not None and proc.stdout is not None
        client = cls(proc.stdout, proc.stdin, proc)
        if initialize:
            await client.initialize(init_options=init_options)
        return client

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        token: str | None = None,
        initialize: bool = True,
        init_options: Mapping[str, Any] | None = None,
    ) -> PlokeClient:
        """Connect over TCP; ``token`` goes into ``initializationOptions.authToken``."""
        loop = asyncio.get_running_loop()
        reader = _FrameReader(limit=_STREAM_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.create_connection(lambda: protocol, host, port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        client = cls(reader, writer)
        if initialize:
            opts = dict(init_options or {})
            if token is not None:
                opts["authToken"] = token
            await client.initialize(init_options=opts)
        return client

    async def __aenter__(self) -> PlokeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle --------------------------------------------------------------------------------

    async def initialize(
        self,
        *,
        root_uri: str | None = None,
        init_options: Mapping[str, Any] | None = None,
        workspace_folders: Sequence[str] | None = None,
    ) -> Any:
        params: dict[str, Any] = {
            "processId": os.getpid(),
            "rootUri": root_uri,
            "capabilities": {},
        }
        if init_options:
            params["initializationOptions"] = dict(init_options)
        if workspace_folders is not None:
            params["workspaceFolders"] = [
                {"uri": "file://" + p, "name": os.path.basename(p)} for p in workspace_folders
            ]
        result = await self.request("initialize", params)
        await self.notify("initialized", {})
        return result

    async def shutdown(self) -> None:
        await self.request("shutdown")

    async def close(self) -> int | None:
        """Shut down politely (shutdown + exit) if still connected; returns the exit code."""
        if not self.closed.done():
            with contextlib.suppress(RpcError, ConnectionError, asyncio.TimeoutError):
                await asyncio.wait_for(self.request("shutdown"), 30)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.notify("exit")
        if self.process is not None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            return await self.process.wait()
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 10)
        return None

    # -- ploke methods ----------------------------------------------------------------------------

    async def get_snippets(
        self, snippets: Sequence[Mapping[str, Any]], **extra: Any
    ) -> list[SnippetItem]:
        result = await self.request(methods.GET_SNIPPETS, {"snippets": list(snippets), **extra})
        return cast(list[SnippetItem], list(result["results"]))

    async def hash_files(self, paths: Sequence[str], **extra: Any) -> list[HashItem]:
        result = await self.request(methods.HASH_FILES, {"paths": list(paths), **extra})
        return cast(list[HashItem], list(result["results"]))

    async def scan_changes(
        self, files: Sequence[Mapping[str, Any]], **extra: Any
    ) -> list[ScanItem]:
        """``files``: ``{"filePath", "fileHash"}`` each; results in input order."""
        result = await self.request(methods.SCAN_CHANGES, {"files": list(files), **extra})
        return cast(list[ScanItem], list(result["results"]))

    async def write_snippets(
        self,
        edits: Sequence[Mapping[str, Any]],
        *,
        origin: str | None = None,
        atomic: bool = False,
        dry_run: bool = False,
    ) -> list[EditItem]:
        params: dict[str, Any] = {"edits": list(edits), "atomic": atomic, "dryRun": dry_run}
        if origin is not None:
            params["origin"] = origin
        result = await self.request(methods.WRITE_SNIPPETS, params)
        return cast(list[EditItem], list(result["results"]))

    async def create_files(
        self, files: Sequence[Mapping[str, Any]], *, origin: str | None = None
    ) -> list[CreatedItem]:
        params: dict[str, Any] = {"files": list(files)}
        if origin is not None:
            params["origin"] = origin
        result = await self.request(methods.CREATE_FILES, params)
        return cast(list[CreatedItem], list(result["results"]))

    async def changes(self) -> AsyncIterator[ChangeEvent]:
        """The file changes the server reports (``ploke/didChangeFiles``), one event at a time,
        until the connection closes. Initialize with ``init_options={"watch": True}`` (or run
        the server with ``--watch``) to get any.

            async for event in client.changes():
                print(event["kind"], event["filePath"])
        """
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # for any other iterator
                return
            yield event

    async def status(self) -> dict[str, Any]:
        result = await self.request(methods.STATUS)
        return dict(result)

    # -- JSON-RPC ---------------------------------------------------------------------------------

    def send_request(
        self, method: str, params: Any = None, msg_id: int | str | None = None
    ) -> tuple[int | str, asyncio.Future[Any]]:
        """Send a request without waiting: returns its id and the future of its result."""
        if msg_id is None:
            msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed.done():
            fut.set_exception(ConnectionError("connection closed"))
            return msg_id, fut
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self._write(msg)
        return msg_id, fut

    async def request(self, method: str, params: Any = None) -> Any:
        _id, fut = self.send_request(method, params)
        return await fut

    async def notify(self, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self._write(msg)
        drain = getattr(self._writer, "drain", None)
        if drain is not None:
            with contextlib.suppress(ConnectionError):
                await drain()

    async def cancel(self, msg_id: int | str) -> None:
        await self.notify("$/cancelRequest", {"id": msg_id})

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (tests of malformed frames)."""
        self._writer.write(data)

    def _write(self, msg: Mapping[str, Any]) -> None:
        body = fastjson.dumps(msg)
        self._writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def _read_loop(self, parser: _FrameParser) -> None:
        error: ConnectionError | None = None
        try:
            while chunk := await self._reader.read(_READ_CHUNK):
                parser.feed(chunk)
        except ConnectionError as exc:
            error = exc
        parser.end(error)

    def _on_message(self, msg: Any, length: int) -> None:
        self.last_body_bytes = length
        self._dispatch(msg)

    def _on_end(self, exc: BaseException | None) -> None:
        """The connection is over: fail what is pending, set ``closed``, end ``changes()``."""
        error = (
            ConnectionError("server closed the connection")
            if exc is None
            else ConnectionError(f"connection lost: {exc}")
        )
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self._events.put_nowait(None)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "method" in msg:
            if "id" in msg:  # a request from the server: answer it (progress create etc.)
                self._write({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            params = msg.get("params")
            self.notifications.put_nowait((msg["method"], params))
            if msg["method"] == methods.DID_CHANGE_FILES and isinstance(params, dict):
                for event in params.get("events") or []:
                    self._events.put_nowait(event)
            return
        fut = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
        if fut is None or fut.done():
            return
        if "error" in msg:
            err = msg["error"] or {}
            fut.set_exception(RpcError(err.get("code", 0), err.get("message", ""), err.get("data")))
        else:
            fut.set_result(msg.get("result"))
