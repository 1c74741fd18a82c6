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


BURST_WRITER = """
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "burst", f"d{i // 500}")
    if i % 500 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"v1 {i}")
for i in range(n):
    with open(os.path.join(root, "burst", f"d{i // 500}", f"f{i}.txt"), "w") as f:
        f.write(f"v2 {i}")
"""


async def run_burst(client: PlokeClient, workspace: Path, n: int) -> list[tuple[str, Any]]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BURST_WRITER, str(workspace), str(n)
    )
    assert await proc.wait() == 0
    final: dict[str, str] = {}
    seen: set[str] = set()
    others: list[tuple[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + 120
    expected = {
        str(workspace / "burst" / f"d{i // 500}" / f"f{i}.txt"): b3(f"v2 {i}".encode())
        for i in range(n)
    }
    while final != expected and asyncio.get_running_loop().time() < deadline:
        try:
            method, params = await asyncio.wait_for(client.notifications.get(), 10)
        except TimeoutError:
            break
        if method != methods.DID_CHANGE_FILES:
            others.append((method, params))
            continue
        paths = [e["filePath"] for e in params["events"]]
        assert len(paths) == len(set(paths)), "a path twice in one notification"
        for e in params["events"]:
            assert e["kind"] in ("created", "modified"), e
            if e["filePath"] not in seen:
                assert e["kind"] == "created", e  # the first word about a new file
                seen.add(e["filePath"])
            final[e["filePath"]] = e["fileHash"]
    missing = expected.keys() - final.keys()
    assert not missing, f"{len(missing)} files never reported, e.g. {sorted(missing)[:3]}"
    assert final == expected
    return others


async def test_a_burst_of_20000_files_is_reported_completely(workspace: Path) -> None:
    client = await PlokeClient.spawn(*DEBOUNCE, root=str(workspace), init_options={"watch": True})
    try:
        await run_burst(client, workspace, 20_000)
        counters = (await client.status())["counters"]["watcher"]
        assert counters["files"] == 20_000
    finally:
        await client.close()


QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.mark.skipif(not os.access(QUEUE_LIMIT, os.W_OK), reason="needs root to lower the limit")
async def test_nothing_is_lost_when_the_inotify_queue_overflows(workspace: Path) -> None:
    # The limit is read when an inotify instance is made: lower it, start the server, restore.
    saved = QUEUE_LIMIT.read_text()
    QUEUE_LIMIT.write_text("256\n")
    try:
        client = await PlokeClient.spawn(
            *DEBOUNCE, root=str(workspace), init_options={"watch": True}
        )
    finally:
        QUEUE_LIMIT.write_text(saved)
    try:
        others = await run_burst(client, workspace, 20_000)
        counters = (await client.status())["counters"]["watcher"]
        assert counters["overflows"] >= 1 and counters["rescans"] >= 1, counters
        # The client is told, not only the log (window/logMessage, type 2 = Warning).
        while not client.notifications.empty():
            others.append(client.notifications.get_nowait())
        told = [p for m, p in others if m == "window/logMessage" and "overflow" in p["message"]]
        assert told and told[0]["type"] == 2, others[:3]
    finally:
        await client.close()


async def test_every_kind_of_change_through_a_real_server(
    connect: Connect, workspace: Path, tmp_path: Path
) -> None:
    import shutil

    target = write(workspace / "doc.md", "v1\n")
    client = await connect(workspace, *DEBOUNCE)

    def ev(path: Path, kind: str, **extra: Any) -> dict[str, Any]:
        return {"filePath": str(path), "kind": kind, **extra}

    async def expect(*events: dict[str, Any], first: float = 5.0) -> None:
        got = await events_until_quiet(client, first=first)
        assert sorted(got, key=lambda e: e["filePath"]) == sorted(
            events, key=lambda e: e["filePath"]
        )

    # modify, then an editor's atomic save (nothing about the temp file), then delete
    target.write_text("v2\n")
    await expect(ev(target, "modified", fileHash=b3(b"v2\n")))
    tmp = write(workspace / ".doc.md.tmp", "v3\n")
    os.replace(tmp, target)
    await expect(ev(target, "modified", fileHash=b3(b"v3\n")))
    # create+modify in one window is created; create+delete is nothing
    a = write(workspace / "a.txt", "1")
    a.write_text("12")
    b = write(workspace / "b.txt", "x")
    b.unlink()
    await expect(ev(a, "created", fileHash=b3(b"12")))
    target.unlink()
    await expect(ev(target, "removed"))
    # symlink churn inside the root: symlinks are not files, nothing is reported
    for i in range(5):
        (workspace / f"l{i}").symlink_to(a)
    for i in range(5):
        (workspace / f"l{i}").unlink()
    await expect(first=1.5)
    # a directory with files, created and removed
    files = [write(workspace / "pkg" / "sub" / f"m{i}.rs", str(i)) for i in range(4)]
    await expect(*(ev(p, "created", fileHash=b3(str(i).encode())) for i, p in enumerate(files)))
    shutil.rmtree(workspace / "pkg")
    await expect(*(ev(p, "removed") for p in files))
    # changes outside the root are never reported
    write(tmp_path / "elsewhere.txt", "no")
    await expect(first=1.5)


WATCH_LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


@pytest.mark.skipif(not os.access(WATCH_LIMIT, os.W_OK), reason="needs root to lower the limit")
async def test_the_watch_limit_is_reported_and_nothing_is_lost(workspace: Path) -> None:
    dirs = [workspace / f"d{i:03}" for i in range(120)]
    for d in dirs:
        d.mkdir()
    saved = WATCH_LIMIT.read_text()
    WATCH_LIMIT.write_text("40\n")  # fewer watches than directories
    try:
        client = await PlokeClient.spawn(
            *DEBOUNCE, root=str(workspace), init_options={"watch": True}
        )
    finally:
        WATCH_LIMIT.write_text(saved)
    try:
        messages = []
        while not client.notifications.empty():
            messages.append(client.notifications.get_nowait())
        logs = [p["message"] for m, p in messages if m == "window/logMessage"]
        assert any("inotify watch limit is reached" in t for t in logs), logs
        status = (await client.status())["counters"]["watcher"]
        assert status["degraded"] is True
        assert any("max_user_watches" in e for e in status["errors"])
        # A directory that got no watch: its changes are still reported (by polling).
        f = write(dirs[-1] / "late.rs", "still seen")
        got = await events_until_quiet(client, quiet=1.0, first=10)
        assert {"filePath": str(f), "kind": "created", "fileHash": b3(b"still seen")} in got
    finally:
        await client.close()


async def test_the_watch_flag_serves_every_client_and_stops_cleanly(workspace: Path) -> None:
    client = await PlokeClient.spawn("--watch", *DEBOUNCE, root=str(workspace))  # no opt-in
    f = write(workspace / "w.rs", "w")
    assert await events_until_quiet(client) == [
        {"filePath": str(f), "kind": "created", "fileHash": b3(b"w")}
    ]
    assert (await client.status())["watcher"]["enabled"] is True
    # shutdown + exit: the observer threads stop and the process exits 0 promptly.
    assert await asyncio.wait_for(client.close(), 15) == 0


async def test_the_client_iterates_change_events(workspace: Path) -> None:
    client = await PlokeClient.spawn(*DEBOUNCE, root=str(workspace), init_options={"watch": True})
    try:
        f = write(workspace / "it.rs", "1")
        got = []
        async for event in client.changes():
            got.append(event)
            if len(got) == 1:
                f.write_text("22")
            if len(got) == 2:
                break
        assert [(e["kind"], e["filePath"]) for e in got] == [
            ("created", str(f)),
            ("modified", str(f)),
        ]
    finally:
        await client.close()
    # After the connection ends, the iterator ends too.
    assert [e async for e in client.changes()] == []


async def test_a_file_name_that_is_not_utf8_is_reported_with_its_neighbours(
    connect: Connect, workspace: Path
) -> None:
    """The name's bytes travel as lone-surrogate escapes (``\\udcff``) that give the same bytes
    back; before, encoding that flush failed and every event in it was lost."""
    client = await connect(workspace, *DEBOUNCE)
    raw = os.fsencode(workspace) + b"/caf\xe9.rs"  # Latin-1, not UTF-8
    with open(raw, "wb") as f:
        f.write(b"x")
    ok = write(workspace / "ok.rs", "y")
    notes: list[list[dict[str, Any]]] = []
    while True:
        try:
            method, params = await asyncio.wait_for(
                client.notifications.get(), 5 if not notes else 0.6
            )
        except TimeoutError:
            break
        if method == methods.DID_CHANGE_FILES:
            notes.append(params["events"])
    # Strict JSON decoders (Neovim's) refuse the escapes: that event travels on its own.
    for events in notes:
        odd = [os.fsencode(e["filePath"]) == raw for e in events]
        assert all(odd) or not any(odd), notes
    by_path = {os.fsencode(e["filePath"]): e for events in notes for e in events}
    assert by_path == {
        raw: {"filePath": os.fsdecode(raw), "kind": "created", "fileHash": b3(b"x")},
        os.fsencode(ok): {"filePath": str(ok), "kind": "created", "fileHash": b3(b"y")},
    }
