"""The engine's watcher on real files with the real watchdog (inotify) observer.

Each test changes files, then collects the events delivered until the watcher has been quiet
for a while, and compares them with exactly what is expected (each event once).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ploke_io_server import Config, IoManager
from ploke_io_server.engine.watcher import FileEvent
from ploke_io_server.types import Edit, NewFile

from .conftest import b3, write

DEBOUNCE_MS = 80


class Collector:
    def __init__(self) -> None:
        self.batches: asyncio.Queue[list[FileEvent]] = asyncio.Queue()

    def __call__(self, events: list[FileEvent]) -> None:
        self.batches.put_nowait(events)

    async def collect(self, quiet: float = 0.6, first: float = 5.0) -> list[dict[str, Any]]:
        """Every event until nothing came for ``quiet`` seconds (waits ``first`` for one)."""
        out: list[dict[str, Any]] = []
        timeout = first
        while True:
            try:
                batch = await asyncio.wait_for(self.batches.get(), timeout)
            except TimeoutError:
                return out
            out.extend(e.to_json() for e in batch)
            timeout = quiet


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[IoManager, Path, Collector]]:
    root = tmp_path / "root"
    root.mkdir()
    write(root / "existing.rs", "fn old() {}\n")
    engine = IoManager(Config.from_sources(roots=[str(root)], debounce_ms=DEBOUNCE_MS))
    watcher = await engine.start_watcher()
    collector = Collector()
    watcher.subscribers.append(collector)
    yield engine, root, collector
    await engine.aclose()


def ev(path: Path, kind: str, **extra: Any) -> dict[str, Any]:
    return {"filePath": str(path), "kind": kind, **extra}


async def test_create_modify_delete(watched: Any) -> None:
    _engine, root, c = watched
    f = write(root / "src" / "a.rs", "one\n")
    assert await c.collect() == [ev(f, "created", fileHash=b3(b"one\n"))]
    f.write_text("two\n")
    assert await c.collect() == [ev(f, "modified", fileHash=b3(b"two\n"))]
    f.unlink()
    assert await c.collect() == [ev(f, "removed")]


async def test_coalescing_in_one_window(watched: Any) -> None:
    _engine, root, c = watched
    a = write(root / "a.rs", "1")
    a.write_text("12")  # create + modify -> created
    b = write(root / "b.rs", "x")
    b.unlink()  # create + delete -> nothing
    existing = root / "existing.rs"
    existing.write_text("changed")
    existing.unlink()  # modify + delete -> removed
    assert await c.collect() == [
        ev(a, "created", fileHash=b3(b"12")),
        ev(existing, "removed"),
    ]


async def test_rename_and_atomic_save(watched: Any) -> None:
    _engine, root, c = watched
    old = root / "existing.rs"
    new = root / "moved.rs"
    os.rename(old, new)
    assert await c.collect() == [
        ev(new, "renamed", oldPath=str(old), fileHash=b3(b"fn old() {}\n"))
    ]
    # An editor's save: temp file written, then renamed over the target.
    tmp = write(root / ".moved.rs.swp", "fn saved() {}\n")
    os.replace(tmp, new)
    assert await c.collect() == [ev(new, "modified", fileHash=b3(b"fn saved() {}\n"))]


async def test_metadata_only_changes_are_not_reported(watched: Any) -> None:
    _engine, root, c = watched
    f = write(root / "m.rs", "same")
    assert [e["kind"] for e in await c.collect()] == ["created"]
    f.chmod(0o600)
    os.utime(f)
    assert await c.collect(first=1.0) == []


async def test_writes_through_the_engine_carry_their_origin(watched: Any) -> None:
    engine, root, c = watched
    f = root / "existing.rs"
    old = b3(f.read_bytes())
    [r] = await engine.write_snippets([Edit(str(f), old, 3, 6, "new")], origin="agent-7")
    [_created] = await engine.create_files(
        [NewFile(str(root / "pkg" / "n.rs"), "hi", create_parents=True)], origin="agent-7"
    )
    events = await c.collect()
    assert events == [
        ev(root / "pkg" / "n.rs", "created", fileHash=b3(b"hi"), origin="agent-7"),
        ev(f, "modified", fileHash=r.new_hash, origin="agent-7"),
    ]
    # A later change by someone else carries no origin, and nothing about temp files appears.
    f.write_text("by hand\n")
    assert await c.collect() == [ev(f, "modified", fileHash=b3(b"by hand\n"))]


async def test_directories_and_symlinks(watched: Any) -> None:
    _engine, root, c = watched
    d = root / "tree"
    files = [write(d / "sub" / f"f{i}.txt", str(i)) for i in range(5)]
    assert sorted(await c.collect(), key=lambda e: e["filePath"]) == [
        ev(p, "created", fileHash=b3(str(i).encode())) for i, p in enumerate(files)
    ]
    # Symlinks are not files: making and removing them reports nothing.
    for i in range(3):
        (root / f"link{i}").symlink_to(files[0])
        (root / f"dlink{i}").symlink_to(d, target_is_directory=True)
    for i in range(3):
        (root / f"link{i}").unlink()
    assert await c.collect(first=1.0) == []
    shutil.rmtree(d)
    assert sorted(await c.collect(), key=lambda e: e["filePath"]) == [
        ev(p, "removed") for p in files
    ]


async def test_a_directory_moved_in_and_out(watched: Any, tmp_path: Path) -> None:
    _engine, root, c = watched
    outside = tmp_path / "outside"
    a = write(outside / "a.txt", "a")
    os.rename(outside, root / "inside")
    inside_a = root / "inside" / "a.txt"
    assert await c.collect() == [ev(inside_a, "created", fileHash=b3(b"a"))]
    os.rename(root / "inside", tmp_path / "gone")
    assert await c.collect() == [ev(inside_a, "removed")]
    assert not a.exists()


def test_merge_for_a_lagging_client() -> None:
    from ploke_io_server.engine.watcher import merge_event

    def run(*events: FileEvent) -> list[dict[str, Any]]:
        pending: dict[str, FileEvent] = {}
        for e in events:
            merge_event(pending, e)
        return [e.to_json() for e in pending.values()]

    c, m, r = "created", "modified", "removed"
    assert run(FileEvent("/a", c, file_hash="1"), FileEvent("/a", m, file_hash="2")) == [
        {"filePath": "/a", "kind": c, "fileHash": "2"}
    ]
    assert run(FileEvent("/a", c, file_hash="1"), FileEvent("/a", r)) == []
    assert run(FileEvent("/a", m, file_hash="1"), FileEvent("/a", r)) == [
        {"filePath": "/a", "kind": r}
    ]
    assert run(FileEvent("/a", r), FileEvent("/a", c, file_hash="3")) == [
        {"filePath": "/a", "kind": m, "fileHash": "3"}
    ]
    # A file the client never heard of, renamed: a creation at the new path.
    assert run(FileEvent("/a", c, file_hash="1"), FileEvent("/b", "renamed", "/a", "1")) == [
        {"filePath": "/b", "kind": c, "fileHash": "1"}
    ]
    # Renamed, then removed: the path the client knows is gone.
    assert run(FileEvent("/b", "renamed", "/a", "1"), FileEvent("/b", r)) == [
        {"filePath": "/a", "kind": r}
    ]
    # Renamed twice: one rename from the first path.
    assert run(FileEvent("/b", "renamed", "/a", "1"), FileEvent("/c", "renamed", "/b", "1")) == [
        {"filePath": "/c", "kind": "renamed", "oldPath": "/a", "fileHash": "1"}
    ]
    # Modified twice with origins: the last one wins.
    assert run(
        FileEvent("/a", m, file_hash="1", origin="x"), FileEvent("/a", m, file_hash="2")
    ) == [{"filePath": "/a", "kind": m, "fileHash": "2"}]


def checked_often(engine: IoManager) -> tuple[Any, list[tuple[int, str]]]:
    """The engine's watcher with its health check every 0.2 s, and the problems it tells."""
    watcher = engine.watcher
    assert watcher is not None
    told: list[tuple[int, str]] = []
    watcher.problem_listeners.append(lambda level, text: told.append((level, text)))
    watcher.health_check_s = 0.2
    watcher._kick()  # start waiting with the short period
    return watcher, told


async def test_a_dead_observer_thread_is_restarted_and_nothing_is_lost(watched: Any) -> None:
    engine, root, c = watched
    watcher, told = checked_often(engine)
    emitters = list(watcher._observer.emitters)
    assert emitters
    for e in emitters:  # the inotify reader threads end, as if they had crashed
        e.stop()
        e.join(5)
    f = write(root / "while-deaf.rs", "heard later")
    events = await c.collect(first=10)
    assert events == [ev(f, "created", fileHash=b3(b"heard later"))]
    assert any("stopped" in e for e in watcher.errors)
    assert (1, "a watcher thread stopped; it was restarted and the roots rescanned") in told
    assert watcher.status()["rescans"] >= 1
    # And it listens again.
    f.write_text("heard now")
    assert await c.collect() == [ev(f, "modified", fileHash=b3(b"heard now"))]


async def test_stopping_while_events_pour_in_always_returns(tmp_path: Path) -> None:
    """aclose() while events keep arriving: Python 3.11's wait_for could swallow the cancel
    of the flush loop (it landed as an event woke it), and aclose then waited forever."""
    root = tmp_path / "busy"
    root.mkdir()
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            (root / f"f{i % 50}.txt").write_text(str(i))
            i += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(25):
            engine = IoManager(Config.from_sources(roots=[str(root)], debounce_ms=0))
            await engine.start_watcher()
            await asyncio.sleep(0.02)
            await asyncio.wait_for(engine.aclose(), 15)
    finally:
        stop.set()
        writer.join()


def applied(view: dict[str, str | None], events: list[dict[str, Any]]) -> dict[str, str | None]:
    """``view`` (path: hash) after ``events``, as a client would keep it."""
    out = dict(view)
    for e in events:
        if e["kind"] == "renamed":
            out.pop(e["oldPath"], None)
        if e["kind"] == "removed":
            out.pop(e["filePath"], None)
        else:
            out[e["filePath"]] = e.get("fileHash")
    return out


async def test_a_root_replaced_by_a_new_directory_is_watched_again(
    watched: Any, tmp_path: Path
) -> None:
    """rm -rf and git clone, or mv away and a new one: the old inotify watch went with the old
    directory (events stopped, silently); the new one is watched and rescanned."""
    engine, root, c = watched
    watcher, told = checked_often(engine)
    shutil.rmtree(root)
    root.mkdir()
    new = write(root / "cloned.rs", "fresh")
    # The client's view, events applied (a reused inode may make it one "renamed").
    view = applied({str(root / "existing.rs"): b3(b"fn old() {}\n")}, await c.collect(first=10))
    assert view == {str(new): b3(b"fresh")}
    assert (2, f"the root {str(root)!r} is a new directory now; watching it and rescanning") in told
    new.write_text("heard live")
    assert await c.collect() == [ev(new, "modified", fileHash=b3(b"heard live"))]
    # Moved away, and a new one in its place: the old directory is not listened to any more.
    old = tmp_path / "old-root"
    root.rename(old)
    root.mkdir()
    assert await c.collect(first=10) == [ev(new, "removed")]
    (old / "cloned.rs").write_text("elsewhere now")
    again = write(root / "again.rs", "a")
    assert await c.collect() == [ev(again, "created", fileHash=b3(b"a"))]
    assert watcher.errors == []


async def test_a_missing_root_is_reported_and_watched_once_it_is_back(watched: Any) -> None:
    engine, root, c = watched
    watcher, told = checked_often(engine)
    shutil.rmtree(root)
    assert await c.collect(first=10) == [ev(root / "existing.rs", "removed")]
    gone = f"the root {str(root)!r} is gone; it is watched again once it is back"
    for _ in range(50):
        if gone in watcher.errors:
            break
        await asyncio.sleep(0.1)
    assert watcher.errors == [gone] and (2, gone) in told
    root.mkdir()
    back = write(root / "back.rs", "b")
    assert await c.collect(first=10) == [ev(back, "created", fileHash=b3(b"b"))]
    assert watcher.errors == []
    back.write_text("bb")
    assert await c.collect() == [ev(back, "modified", fileHash=b3(b"bb"))]
