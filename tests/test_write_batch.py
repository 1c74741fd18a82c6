"""How a write batch commits: one directory fsync per directory, directories taken in turn,
replaced files closed after the answer. Real files and threads; spies only record calls."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ploke_io_server import Config, ErrorKind, IoManager, PlokeIoError
from ploke_io_server.engine import manager as manager_mod
from ploke_io_server.engine import write as write_mod
from ploke_io_server.types import Edit, EditResult

from .conftest import b3, write


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[IoManager]:
    root = tmp_path / "root"
    root.mkdir()
    eng = IoManager(Config.from_sources(roots=[str(root)]))
    yield eng
    await eng.aclose()


def make_tree(root: Path, dirs: int, per_dir: int) -> list[Path]:
    return [
        write(root / f"d{d}" / f"f{i}.txt", f"file {d}/{i}\n")
        for i in range(per_dir)
        for d in range(dirs)
    ]


def edits_for(files: list[Path]) -> list[Edit]:
    return [Edit(str(f), b3(f.read_bytes()), 0, 4, "FILE") for f in files]


class Spy:
    """Records every rename into place and every real directory fsync, with times."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_dir: str | None = None) -> None:
        self.lock = threading.Lock()
        self.renames: list[tuple[str, float]] = []  # (directory, when the rename finished)
        self.fsyncs: list[tuple[str, float, bool]] = []  # (directory, when it started, failed)
        real_rename = write_mod.rename_into_place
        real_fsync = write_mod.fsync_dir

        def rename_into_place(prepared: write_mod.PreparedFile, retired: object) -> None:
            real_rename(prepared, retired)  # type: ignore[arg-type]
            with self.lock:
                self.renames.append((self._dir(prepared.located.dir_fd), time.monotonic()))

        def fsync_dir(located: object) -> None:
            d = self._dir(located.dir_fd)  # type: ignore[attr-defined]
            start = time.monotonic()
            fail = d == fail_dir
            with self.lock:
                self.fsyncs.append((d, start, fail))
            if fail:
                raise PlokeIoError(ErrorKind.Io, f"{d}: fsync failed: [Errno 5] Input/output error")
            real_fsync(located)  # type: ignore[arg-type]

        monkeypatch.setattr(write_mod, "rename_into_place", rename_into_place)
        monkeypatch.setattr(write_mod, "fsync_dir", fsync_dir)

    @staticmethod
    def _dir(dir_fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{dir_fd}"))


async def test_a_batch_fsyncs_each_directory_once_after_its_last_rename(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tree(Path(engine.config.roots[0]), dirs=5, per_dir=12)
    spy = Spy(monkeypatch)
    results = await engine.write_snippets(edits_for(files))
    assert all(isinstance(r, EditResult) for r in results), results
    assert all(f.read_text().startswith("FILE") for f in files)
    # Exactly one fsync per directory, none failed...
    assert sorted(d for d, _t, _f in spy.fsyncs) == [f"d{d}" for d in range(5)]
    # ... each started after every rename in its directory had finished.
    for d, started, _f in spy.fsyncs:
        renamed = [t for rd, t in spy.renames if rd == d]
        assert len(renamed) == 12
        assert max(renamed) <= started


async def test_a_failed_directory_fsync_fails_exactly_that_directorys_files(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tree(Path(engine.config.roots[0]), dirs=3, per_dir=4)
    Spy(monkeypatch, fail_dir="d1")
    results = await engine.write_snippets(edits_for(files))
    for f, r in zip(files, results, strict=True):
        if f.parent.name == "d1":
            assert isinstance(r, PlokeIoError) and r.kind is ErrorKind.Io, r
            assert "fsync failed" in r.message
        else:
            assert isinstance(r, EditResult), r


async def test_files_that_fail_still_let_their_directory_be_synced(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last file of a directory may be the one that fails: the others still get their
    fsync (by that file's worker) and their results."""
    root = Path(engine.config.roots[0])
    files = make_tree(root, dirs=2, per_dir=3)
    spy = Spy(monkeypatch)
    edits = edits_for(files)
    # Every file of d0 taken in turn fails but one; a missing file in d1.
    edits[0] = Edit(edits[0].file_path, "0" * 64, 0, 4, "FILE")
    edits[4] = Edit(edits[4].file_path, "0" * 64, 0, 4, "FILE")
    edits.append(Edit(str(root / "d1" / "missing.txt"), "0" * 64, 0, 1, "x"))
    results = await engine.write_snippets(edits)
    kinds = [r.kind if isinstance(r, PlokeIoError) else "ok" for r in results]
    assert kinds == [
        ErrorKind.ContentMismatch, "ok", "ok", "ok", ErrorKind.ContentMismatch, "ok",
        ErrorKind.NotFound,
    ]  # fmt: skip
    assert sorted(d for d, _t, _f in spy.fsyncs) == ["d0", "d1"]


async def test_a_lone_write_is_durable_before_it_returns(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    [f] = make_tree(Path(engine.config.roots[0]), dirs=1, per_dir=1)
    spy = Spy(monkeypatch)
    [r] = await engine.write_snippets(edits_for([f]))
    assert isinstance(r, EditResult)
    assert [d for d, _t, _f in spy.fsyncs] == ["d0"]


def test_directories_are_taken_in_turn() -> None:
    jobs = [(f"/r/d{d}/f{i}", i) for d in range(3) for i in range(3 - d)]
    assert [p for p, _i in manager_mod._interleave_dirs(jobs)] == [
        "/r/d0/f0", "/r/d1/f0", "/r/d2/f0", "/r/d0/f1", "/r/d1/f1", "/r/d0/f2",
    ]  # fmt: skip
    one_dir = [("/r/a", 1), ("/r/b", 2)]
    assert manager_mod._interleave_dirs(one_dir) == one_dir
    assert manager_mod._interleave_dirs([]) == []


async def test_an_empty_batch_is_an_empty_answer(engine: IoManager) -> None:
    assert await engine.write_snippets([]) == []
    assert await engine.write_snippets([], atomic=True) == []


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def fds_on(inode: int) -> list[int]:
    """This process's descriptors open on ``inode``."""
    out = []
    for n in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{n}").st_ino == inode:
                out.append(int(n))
        except OSError:
            pass
    return out


async def test_a_replaced_file_is_closed_once_the_caller_has_the_result(
    engine: IoManager,
) -> None:
    [f] = make_tree(Path(engine.config.roots[0]), dirs=1, per_dir=1)
    old_inode = f.stat().st_ino
    [r] = await engine.write_snippets(edits_for([f]), inline=True)
    assert isinstance(r, EditResult)
    assert f.stat().st_ino != old_inode
    # Held across the rename (so the kernel frees the old inode later, not in the write)...
    assert len(fds_on(old_inode)) == 1
    await asyncio.sleep(0)
    # ... and closed on the loop's next turn.
    assert fds_on(old_inode) == []


async def test_a_big_batch_closes_every_replaced_file(engine: IoManager) -> None:
    files = make_tree(Path(engine.config.roots[0]), dirs=4, per_dir=10)
    await engine.write_snippets(edits_for(files[:1]))  # opens (and caches) the root
    await asyncio.sleep(0)
    inodes = {f.stat().st_ino for f in files}
    before = open_fds()
    results = await engine.write_snippets(edits_for(files))
    assert all(isinstance(r, EditResult) for r in results)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(fds_on(i) for i in inodes):
        await asyncio.sleep(0.01)
    assert not any(fds_on(i) for i in inodes)
    assert open_fds() == before  # nothing else leaked either (directory duplicates)


async def test_failed_and_dry_run_writes_close_the_original_at_once(engine: IoManager) -> None:
    [f] = make_tree(Path(engine.config.roots[0]), dirs=1, per_dir=1)
    inode = f.stat().st_ino
    [r] = await engine.write_snippets([Edit(str(f), "0" * 64, 0, 1, "x")], inline=True)
    assert isinstance(r, PlokeIoError)
    assert fds_on(inode) == []
    [r] = await engine.write_snippets(edits_for([f]), dry_run=True, inline=True)
    assert isinstance(r, EditResult) and r.diff
    assert fds_on(inode) == []
    assert f.stat().st_ino == inode
