"""Shared fixtures: real workspaces in temp dirs and real server processes.

``server`` starts ``python -m ploke_io_server`` as a subprocess and returns an initialized
pytest-lsp client, over stdio or TCP (the ``transport`` parameter). Results of ``ploke/*``
methods come back as plain dicts, exactly as they were on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types as lsp
from pygls.protocol import JsonRPCResponseMessage, default_converter
from pytest_lsp import ClientServerConfig, LanguageClient
from pytest_lsp.client import register_lsp_features

SERVER = [sys.executable, "-m", "ploke_io_server"]
LISTENING = re.compile(rb"listening on ([\d.]+):(\d+)")


def _raw_result_converter() -> Any:
    """pygls's client converter, but results stay the JSON the server sent (no namedtuples)."""
    converter = default_converter()
    converter.register_structure_hook(JsonRPCResponseMessage, lambda obj, cls: cls(**obj))
    return converter


def make_client() -> LanguageClient:
    client = LanguageClient(converter_factory=_raw_result_converter)
    register_lsp_features(client)
    return client


def init_params(
    *, options: dict[str, Any] | None = None, folders: Sequence[str] = ()
) -> lsp.InitializeParams:
    return lsp.InitializeParams(
        capabilities=lsp.ClientCapabilities(
            window=lsp.WindowClientCapabilities(work_done_progress=True)
        ),
        initialization_options=options,
        workspace_folders=[lsp.WorkspaceFolder(uri=Path(f).as_uri(), name="w") for f in folders]
        or None,
    )


class TcpServer:
    """A ``--tcp --port 0`` server process; ``connect()`` gives pytest-lsp clients."""

    def __init__(self, proc: asyncio.subprocess.Process, host: str, port: int, token: str | None):
        self.proc = proc
        self.host = host
        self.port = port
        self.token = token
        self.clients: list[LanguageClient] = []
        self.stderr = bytearray()

    @classmethod
    async def start(cls, args: Sequence[str], token_file: Path | None) -> TcpServer:
        cmd = [*SERVER, "--tcp", "--port", "0", *args]
        cmd += ["--token-file", str(token_file)] if token_file else ["--no-auth"]
        proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        seen = bytearray()
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError(f"server exited before listening: {seen.decode()}")
            seen += line
            m = LISTENING.search(line)
            if m:
                break
        token = token_file.read_text().strip() if token_file else None
        server = cls(proc, m.group(1).decode(), int(m.group(2)), token)
        server.stderr += seen
        asyncio.get_running_loop().create_task(server._drain_stderr())
        return server

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr += line
            sys.stderr.buffer.write(line)

    async def connect(
        self,
        *,
        token: str | bool | None = True,
        initialize: bool = True,
        options: dict[str, Any] | None = None,
        folders: Sequence[str] = (),
    ) -> LanguageClient:
        client = make_client()
        await client.start_tcp(self.host, self.port)
        self.clients.append(client)
        if initialize:
            opts = dict(options or {})
            if token is True:
                token = self.token
            if isinstance(token, str):
                opts["authToken"] = token
            await client.initialize_session(init_params(options=opts, folders=folders))
        return client

    async def stop(self) -> int:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown_async(None), 5)
                client.exit(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop(), 5)
            # pygls's client does not close its TCP stream itself.
            writer = client.protocol.writer
            if isinstance(writer, asyncio.StreamWriter):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        if self.proc.returncode is None:
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 30)


Starter = Callable[..., Awaitable[LanguageClient]]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest_asyncio.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Start servers for a test: ``await start_server("stdio"|"tcp", *args, ...)``."""
    stdio_clients: list[LanguageClient] = []
    tcp_servers: list[TcpServer] = []

    async def start(
        transport: str,
        *args: str,
        initialize: bool = True,
        options: dict[str, Any] | None = None,
        folders: Sequence[str] = (),
        prefix: Sequence[str] = (),
        auth: bool = True,
    ) -> LanguageClient:
        if transport == "stdio":
            config = ClientServerConfig(
                server_command=[*prefix, *SERVER, *args], client_factory=make_client
            )
            client = await config.start()
            stdio_clients.append(client)
            if initialize:
                await client.initialize_session(init_params(options=options, folders=folders))
            return client
        token_file = tmp_path / f"token{len(tcp_servers)}" if auth else None
        server = await TcpServer.start(args, token_file)
        tcp_servers.append(server)
        return await server.connect(initialize=initialize, options=options, folders=folders)

    start.tcp_servers = tcp_servers  # type: ignore[attr-defined]
    yield start
    for client in stdio_clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.stop(), 10)
    for server in tcp_servers:
        await server.stop()


@pytest.fixture(params=["stdio", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def call(client: LanguageClient, method: str, params: Any = None) -> Any:
    """Send a request and return its raw result (raises JsonRpcException on error)."""
    return await asyncio.wait_for(client.protocol.send_request_async(method, params), 60)


async def progress_to_end(client: LanguageClient, token: str) -> list[Any]:
    """The ``$/progress`` reports of ``token``, once its ``end`` came (or after ~2 s)."""
    reports: list[Any] = []
    for _ in range(100):
        reports = client.progress_reports.get(token, [])
        if reports and reports[-1].kind == "end":
            break
        await asyncio.sleep(0.02)
    return reports


def b3(data: bytes) -> str:
    from blake3 import blake3

    return blake3(data).hexdigest()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def temps(root: Path) -> list[str]:
    """Our temp files anywhere under ``root``."""
    from ploke_io_server.engine.write import is_temp_name

    return [n for _d, _s, names in os.walk(root) for n in names if is_temp_name(n)]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))
