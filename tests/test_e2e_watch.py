"""End to end: ploke/didChangeFiles from a real server process to real clients (the bundled
PlokeClient), over stdio and over TCP, for real file changes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ploke_io_server import methods
from ploke_io_server.client import PlokeClient

from .conftest import TcpServer, b3, write

DEBOUNCE = ["--debounce-ms", "80"]


async def events_until_quiet(
    client: PlokeClient, quiet: float = 0.6, first: float = 5.0
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    timeout = first
    while True:
        try:
            method, params = await asyncio.wait_for(client.notifications.get(), timeout)
        except TimeoutError:
            return out
        if method == methods.DID_CHANGE_FILES:
            out.extend(params["events"])
            timeout = quiet


Connect = Callable[..., Awaitable[PlokeClient]]


@pytest.fixture
async def connect(transport: str) -> AsyncIterator[Connect]:
    """``await connect(root, *server_args, watch=True)``: a client of a fresh server."""
    clients: list[PlokeClient] = []
    servers: list[TcpServer] = []

    async def start(root: Path, *args: str, watch: bool = True, server: Any = None) -> PlokeClient:
        opts = {"watch": True} if watch else {}
        if transport == "stdio":
            client = await PlokeClient.spawn(*args, root=str(root), init_options=opts)
        else:
            if server is None:
                server = await TcpServer.start(["--root", str(root), *args], None)
                servers.append(server)
            client = await PlokeClient.connect(server.host, server.port, init_options=opts)
            client.server = server  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield start
    for c in clients:
        await c.close()
    for s in servers:
        await s.stop()


async def test_changes_are_pushed_to_a_watching_client(connect: Connect, workspace: Path) -> None:
    client = await connect(workspace, *DEBOUNCE)
    f = write(workspace / "src" / "a.rs", "one\n")
    assert await events_until_quiet(client) == [
        {"filePath": str(f), "kind": "created", "fileHash": b3(b"one\n")}
    ]
    os.rename(f, workspace / "src" / "b.rs")
    assert await events_until_quiet(client) == [
        {"filePath": str(workspace / "src" / "b.rs"), "kind": "renamed", "oldPath": str(f),
         "fileHash": b3(b"one\n")}
    ]  # fmt: skip
    status = await client.status()
    assert status["watcher"] == {"enabled": True, "debounceMs": 80}
    assert status["counters"]["watcher"]["files"] == 1
    assert status["counters"]["notifications"] >= 2


async def test_a_write_through_the_server_carries_its_origin_to_every_watcher(
    connect: Connect, workspace: Path, transport: str
) -> None:
    f = write(workspace / "main.rs", "fn main() {}\n")
    writer = await connect(workspace, *DEBOUNCE)
    if transport == "tcp":  # a second client of the same server also hears about it
        other = await connect(workspace, server=writer.server)  # type: ignore[attr-defined]
    else:
        other = writer
    [r] = await writer.write_snippets(
        [{"filePath": str(f), "expectedHash": b3(f.read_bytes()), "startByte": 3, "endByte": 7,
          "replacement": "start"}], origin="agent-42")  # fmt: skip
    expected = [{"filePath": str(f), "kind": "modified", "fileHash": r["newHash"],
                 "origin": "agent-42"}]  # fmt: skip
    assert await events_until_quiet(writer) == expected
    if other is not writer:
        assert await events_until_quiet(other) == expected


async def test_a_client_that_did_not_ask_gets_nothing(connect: Connect, workspace: Path) -> None:
    client = await connect(workspace, watch=False)
    write(workspace / "x.rs", "x")
    assert await events_until_quiet(client, first=1.5) == []
    assert (await client.status())["watcher"]["enabled"] is False


async def test_events_outside_a_narrowed_session_are_not_sent(
    workspace: Path, tmp_path: Path
) -> None:
    # Two clients of one TCP server, one narrowed to a sub-folder: each hears only its roots.
    (workspace / "a").mkdir()
    (workspace / "b").mkdir()
    server = await TcpServer.start(["--root", str(workspace), *DEBOUNCE], None)
    try:
        wide = await PlokeClient.connect(server.host, server.port, init_options={"watch": True})
        narrow = await PlokeClient.connect(server.host, server.port, initialize=False)
        await narrow.initialize(
            init_options={"watch": True}, workspace_folders=[str(workspace / "a")]
        )
        fa = write(workspace / "a" / "f.rs", "a")
        fb = write(workspace / "b" / "f.rs", "b")
        got_wide = await events_until_quiet(wide)
        got_narrow = await events_until_quiet(narrow)
        assert sorted(e["filePath"] for e in got_wide) == [str(fa), str(fb)]
        assert [e["filePath"] for e in got_narrow] == [str(fa)]
        await wide.close()
        await narrow.close()
    finally:
        await server.stop()
