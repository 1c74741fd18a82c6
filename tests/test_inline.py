"""The inline fast path: a lone single-file request runs on the event loop's thread.

The observation point is ``read.read_all`` (every file read of the engine goes through it):
a spy records the thread it ran on and calls through to the real function on real files.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ploke_io_server import Config, IoManager
from ploke_io_server.engine import read
from ploke_io_server.types import (
    Created,
    Edit,
    EditResult,
    FileHash,
    NewFile,
    Snippet,
    SnippetRequest,
)

from .conftest import b3, write

BIG = read.INLINE_MAX_BYTES + 4096


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[IoManager]:
    root = tmp_path / "root"
    root.mkdir()
    manager = IoManager(Config.from_sources(roots=[str(root)]))
    yield manager
    await manager.aclose()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bool, int]]]:
    """(size, on the loop thread, offloaded) for every read_all call."""
    seen: list[tuple[int, bool, int]] = []
    real = read.read_all
    main = threading.get_ident()

    def spy(fd: int, size: int, max_bytes: int, shown: str) -> bytes:
        try:
            data = real(fd, size, max_bytes, shown)
        except read.Offload:
            seen.append((size, threading.get_ident() == main, 1))
            raise
        seen.append((size, threading.get_ident() == main, 0))
        return data

    monkeypatch.setattr(read, "read_all", spy)
    # write.py imported the name; observe it there too.
    from ploke_io_server.engine import write as write_mod

    monkeypatch.setattr(write_mod, "read_all", spy)
    yield seen


def root(engine: IoManager) -> Path:
    return Path(engine.config.roots[0])


async def test_lone_small_read_runs_on_the_loop(engine: IoManager, reads: Any) -> None:
    f = write(root(engine) / "a.txt", "héllo\n")
    [s] = await engine.get_snippets([SnippetRequest(str(f))], inline=True)
    assert isinstance(s, Snippet) and s.text == "héllo\n"
    assert reads == [(7, True, 0)]


async def test_without_inline_the_executor_reads(engine: IoManager, reads: Any) -> None:
    f = write(root(engine) / "a.txt", "x\n")
    [h] = await engine.hash_files([str(f)])
    assert isinstance(h, FileHash) and h.file_hash == b3(b"x\n")
    assert reads == [(2, False, 0)]


async def test_two_files_never_run_inline(engine: IoManager, reads: Any) -> None:
    a = write(root(engine) / "a.txt", "a")
    b = write(root(engine) / "b.txt", "b")
    await engine.hash_files([str(a), str(b)], inline=True)
    assert [on_loop for _s, on_loop, _o in reads] == [False, False]


async def test_big_file_is_offloaded_before_any_work(engine: IoManager, reads: Any) -> None:
    data = ("ä" * (BIG // 2)).encode()
    f = write(root(engine) / "big.txt", data)
    [s] = await engine.get_snippets([SnippetRequest(str(f), start_byte=2, end_byte=6)], inline=True)
    assert isinstance(s, Snippet) and s.text == "ää"
    # Tried on the loop, refused there (size known from fstat), then read on a worker.
    assert reads == [(len(data), True, 1), (len(data), False, 0)]
    assert engine.counters.files_read == 1


async def test_lone_write_commits_inline_and_big_one_offloads(
    engine: IoManager, reads: Any
) -> None:
    small = write(root(engine) / "s.rs", "fn a() {}\n")
    [r] = await engine.write_snippets(
        [Edit(str(small), b3(small.read_bytes()), 3, 4, "b")], inline=True
    )
    assert isinstance(r, EditResult)
    assert small.read_text() == "fn b() {}\n"
    big_data = b"x" * BIG
    big = write(root(engine) / "b.rs", big_data)
    [r] = await engine.write_snippets([Edit(str(big), b3(big_data), 0, 1, "y")], inline=True)
    assert isinstance(r, EditResult)
    assert big.read_bytes() == b"y" + big_data[1:]
    assert reads == [(10, True, 0), (BIG, True, 1), (BIG, False, 0)]
    assert engine.counters.files_written == 2


async def test_big_replacement_is_never_inline(engine: IoManager, reads: Any) -> None:
    f = write(root(engine) / "s.rs", "ab")
    repl = "z" * BIG
    [r] = await engine.write_snippets([Edit(str(f), b3(b"ab"), 1, 1, repl)], inline=True)
    assert isinstance(r, EditResult)
    assert f.read_text() == "a" + repl + "b"
    assert reads == [(2, False, 0)]


async def test_lone_create_runs_inline(engine: IoManager) -> None:
    target = root(engine) / "new" / "f.txt"
    [c] = await engine.create_files([NewFile(str(target), "hi", create_parents=True)], inline=True)
    assert isinstance(c, Created)
    assert target.read_text() == "hi"


async def test_one_file_with_two_edits_or_a_dry_run_runs_inline(
    engine: IoManager, reads: Any
) -> None:
    """Not the lone-edit shortcut (two edits; a dry run), but still one small file: on the
    loop's thread all the same."""
    f = write(root(engine) / "s.rs", "fn a() { b }\n")
    h = b3(f.read_bytes())
    r1, r2 = await engine.write_snippets(
        [Edit(str(f), h, 3, 4, "x"), Edit(str(f), h, 9, 10, "y")], inline=True
    )
    assert isinstance(r1, EditResult) and isinstance(r2, EditResult)
    assert f.read_text() == "fn x() { y }\n"
    [d] = await engine.write_snippets(
        [Edit(str(f), b3(f.read_bytes()), 3, 4, "z")], dry_run=True, inline=True
    )
    assert isinstance(d, EditResult) and d.diff is not None
    assert f.read_text() == "fn x() { y }\n"
    assert reads == [(13, True, 0), (13, True, 0)]
