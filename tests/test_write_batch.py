"""How a write batch commits: in chunks, each in phases (temp files written, fsynced in parallel,
renamed, one fsync per directory), directories taken in turn, replaced files closed after the
answer. Real files and threads; the spies record calls (and inject the odd failure)."""

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

from .conftest import b3, temps, write


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[IoManager]:
    root = tmp_path / "root"
    root.mkdir()
    eng = IoManager(Config.from_sources(roots=[str(root)], fd_limit=128))
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
    """Records temp-file fsyncs, renames into place and directory fsyncs, with times."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        fail_dir: str | None = None,
        fail_temp: str | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.temp_syncs: list[tuple[str, float]] = []  # (file, when its fsync ended)
        self.renames: list[tuple[str, str, float]] = []  # (directory, file, when it ended)
        self.fsyncs: list[tuple[str, float, bool]] = []  # (directory, when it started, failed)
        real_sync_temp = write_mod.sync_temp
        real_rename = write_mod.rename_into_place
        real_fsync = write_mod.fsync_dir

        def sync_temp(prepared: write_mod.PreparedFile) -> PlokeIoError | None:
            name = prepared.located.name
            if name == fail_temp:
                write_mod.discard(prepared)
                return PlokeIoError(ErrorKind.Io, f"{name}: fsync failed: [Errno 5] I/O error")
            err = real_sync_temp(prepared)
            with self.lock:
                self.temp_syncs.append((name, time.monotonic()))
            return err

        def rename_into_place(prepared: write_mod.PreparedFile, retired: object) -> None:
            real_rename(prepared, retired)  # type: ignore[arg-type]
            d = self._dir(prepared.located.dir_fd)
            with self.lock:
                self.renames.append((d, prepared.located.name, time.monotonic()))

        def fsync_dir(located: object) -> None:
            d = self._dir(located.dir_fd)  # type: ignore[attr-defined]
            start = time.monotonic()
            fail = d == fail_dir
            with self.lock:
                self.fsyncs.append((d, start, fail))
            if fail:
                raise PlokeIoError(ErrorKind.Io, f"{d}: fsync failed: [Errno 5] Input/output error")
            real_fsync(located)  # type: ignore[arg-type]

        monkeypatch.setattr(write_mod, "sync_temp", sync_temp)
        monkeypatch.setattr(write_mod, "rename_into_place", rename_into_place)
        monkeypatch.setattr(write_mod, "fsync_dir", fsync_dir)

    @staticmethod
    def _dir(dir_fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{dir_fd}"))


async def test_a_batch_commits_in_phases_with_one_fsync_per_directory(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_mod, "WRITE_CHUNK_FILES", 64)
    files = make_tree(Path(engine.config.roots[0]), dirs=5, per_dir=12)  # one chunk
    spy = Spy(monkeypatch)
    results = await engine.write_snippets(edits_for(files))
    assert all(isinstance(r, EditResult) for r in results), results
    assert all(f.read_text().startswith("FILE") for f in files)
    # Every temp file was fsynced before the first rename...
    assert len(spy.temp_syncs) == 60
    assert max(t for _f, t in spy.temp_syncs) <= min(t for _d, _f, t in spy.renames)
    # ... then exactly one fsync per directory, each after every rename in its directory.
    assert sorted(d for d, _t, _f in spy.fsyncs) == [f"d{d}" for d in range(5)]
    for d, started, _f in spy.fsyncs:
        renamed = [t for rd, _f, t in spy.renames if rd == d]
        assert len(renamed) == 12
        assert max(renamed) <= started


async def test_a_batch_bigger_than_a_chunk_covers_every_rename(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_mod, "WRITE_CHUNK_FILES", 10)
    files = make_tree(Path(engine.config.roots[0]), dirs=4, per_dir=10)  # 4 chunks
    spy = Spy(monkeypatch)
    results = await engine.write_snippets(edits_for(files))
    assert all(isinstance(r, EditResult) for r in results), results
    assert all(f.read_text().startswith("FILE") for f in files)
    # Each file's directory was fsynced after its rename; a few fsyncs per directory.
    for d, _name, renamed in spy.renames:
        assert any(fd == d and started >= renamed for fd, started, _f in spy.fsyncs)
    assert len(spy.fsyncs) <= 4 * 4


async def test_a_failed_temp_fsync_fails_that_file_only(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tree(Path(engine.config.roots[0]), dirs=2, per_dir=3)
    Spy(monkeypatch, fail_temp="f1.txt")
    before = {f: f.read_bytes() for f in files}
    results = await engine.write_snippets(edits_for(files))
    for f, r in zip(files, results, strict=True):
        if f.name == "f1.txt":
            assert isinstance(r, PlokeIoError) and r.kind is ErrorKind.Io, r
            assert f.read_bytes() == before[f]
        else:
            assert isinstance(r, EditResult), r
    assert temps(Path(engine.config.roots[0])) == []


async def test_a_failed_temp_fsync_aborts_an_atomic_batch(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tree(Path(engine.config.roots[0]), dirs=2, per_dir=3)
    spy = Spy(monkeypatch, fail_temp="f2.txt")
    before = {f: f.read_bytes() for f in files}
    results = await engine.write_snippets(edits_for(files), atomic=True)
    assert all(isinstance(r, PlokeIoError) for r in results), results
    assert {f.read_bytes() for f in files} == set(before.values())
    assert spy.renames == []
    assert temps(Path(engine.config.roots[0])) == []


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


async def test_failures_in_a_batch_leave_the_other_files_committed(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(engine.config.roots[0])
    files = make_tree(root, dirs=2, per_dir=3)
    spy = Spy(monkeypatch)
    edits = edits_for(files)
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


async def test_one_file_named_twice_in_a_batch_is_edited_in_turn(engine: IoManager) -> None:
    root = Path(engine.config.roots[0])
    [f, g] = make_tree(root, dirs=1, per_dir=2)
    h = b3(f.read_bytes())
    (root / "link").symlink_to(root / "d0")  # a second spelling of d0 (within the root)
    other = str(root / "link" / f.name)
    results = await engine.write_snippets(
        [Edit(str(f), h, 0, 4, "FILE"), Edit(other, h, 0, 4, "ELIF"), *edits_for([g])]
    )
    # The second spelling is taken after the first is committed: it no longer matches.
    assert isinstance(results[0], EditResult), results
    assert isinstance(results[1], PlokeIoError), results
    assert results[1].kind is ErrorKind.ContentMismatch, results
    assert isinstance(results[2], EditResult), results
    assert f.read_text().startswith("FILE")


async def test_one_file_named_three_times_is_edited_in_turn(engine: IoManager) -> None:
    """Each further spelling goes after the one before it, however many there are: two groups
    prepared against the same original would both commit, the second undoing the first."""
    root = Path(engine.config.roots[0])
    [f] = make_tree(root, dirs=1, per_dir=1)
    h = b3(f.read_bytes())
    (root / "l1").symlink_to(root / "d0")
    (root / "l2").symlink_to(root / "d0")
    results = await engine.write_snippets(
        [
            Edit(str(f), "0" * 64, 0, 4, "FILE"),  # stale: fails, the file is unchanged
            Edit(str(root / "l1" / f.name), h, 0, 4, "ONE!"),
            Edit(str(root / "l2" / f.name), h, 0, 4, "TWO!"),
        ]
    )
    kinds = [r.kind if isinstance(r, PlokeIoError) else "ok" for r in results]
    assert kinds == [ErrorKind.ContentMismatch, "ok", ErrorKind.ContentMismatch], results
    assert f.read_text().startswith("ONE!")


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


async def test_a_lone_write_answers_once_durable_and_tidies_up_after(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_now (the server's lone-write path) hands over the result once the directory
    fsync is done, and only then counts the write and closes the replaced file."""
    [f, g] = make_tree(Path(engine.config.roots[0]), dirs=1, per_dir=2)
    old_inode = f.stat().st_ino
    dir_syncs: list[str] = []
    real_fsync = write_mod.fsync_dir

    def fsync_dir(located: object) -> None:
        real_fsync(located)  # type: ignore[arg-type]
        dir_syncs.append("synced")

    monkeypatch.setattr(write_mod, "fsync_dir", fsync_dir)
    seen: list[tuple[list[EditResult | PlokeIoError], bytes, int, int, int]] = []

    def reply(results: list[EditResult | PlokeIoError]) -> None:
        held = len(fds_on(old_inode))
        seen.append((results, f.read_bytes(), len(dir_syncs), held, engine.counters.files_written))

    written = engine.counters.files_written
    assert engine.write_now(edits_for([f]), reply, origin="me")
    [(results, content, syncs, held, counted)] = seen
    [r] = results
    assert isinstance(r, EditResult) and r.new_hash == b3(content)
    assert content.startswith(b"FILE") and syncs == 1  # renamed and durable when answered
    assert held == 1 and counted == written  # the bookkeeping comes after the answer...
    assert engine.counters.files_written == written + 1  # ... before write_now returns
    deadline = time.monotonic() + 10  # the replaced file is closed by the closer thread
    while time.monotonic() < deadline and (fds_on(old_inode) or engine.retired_budget.held):
        time.sleep(0.001)
    assert fds_on(old_inode) == [] and engine.retired_budget.held == 0

    # A failed write is answered once too, and counted.
    seen.clear()
    mismatches = engine.counters.errors["ContentMismatch"]
    assert engine.write_now([Edit(str(g), "0" * 64, 0, 1, "x")], reply)
    [([err], _content, _syncs, _held, _counted)] = seen
    assert isinstance(err, PlokeIoError) and err.kind is ErrorKind.ContentMismatch
    assert engine.counters.errors["ContentMismatch"] == mismatches + 1

    # Not a lone write (two edits, a dry run): nothing done, no answer.
    seen.clear()
    two = [Edit(str(g), b3(g.read_bytes()), 0, 1, "x"), Edit(str(g), b3(g.read_bytes()), 2, 3, "y")]
    assert not engine.write_now(two, reply)
    assert not engine.write_now(edits_for([g]), reply, dry_run=True)
    assert seen == [] and not g.read_bytes().startswith(b"FILE")


async def test_the_directory_fsync_reaches_the_file_s_directory(
    engine: IoManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file below the root (its directory opened by openat2, for reading) and one in the
    root itself (an O_PATH descriptor, which cannot be fsynced): each write ends with a
    successful fsync of the file's own directory."""
    root = Path(engine.config.roots[0])
    below = write(root / "a" / "b" / "f.txt", "below\n")
    top = write(root / "g.txt", "top\n")
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))

    monkeypatch.setattr(os, "fsync", fsync)
    for f in (below, top, below):
        synced.clear()
        assert engine.write_now(edits_for([f]), lambda results: None)
        directory = f.parent.stat()
        assert synced[-1] == (directory.st_dev, directory.st_ino)
        assert f.read_text().startswith("FILE")
        f.write_text("next\n")


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


async def test_one_file_named_twice_in_an_atomic_batch_changes_nothing(engine: IoManager) -> None:
    root = Path(engine.config.roots[0])
    [f, g] = make_tree(root, dirs=1, per_dir=2)
    before = {f.read_bytes(), g.read_bytes()}
    (root / "link").symlink_to(root / "d0")
    h = b3(f.read_bytes())
    results = await engine.write_snippets(
        [Edit(str(f), h, 0, 4, "FILE"), Edit(str(root / "link" / f.name), h, 5, 6, "x"),
         *edits_for([g])],
        atomic=True,
    )  # fmt: skip
    assert [r.kind for r in results if isinstance(r, PlokeIoError)] == [
        ErrorKind.InvalidRange, ErrorKind.InvalidRange, ErrorKind.Io,
    ]  # fmt: skip
    assert "two different paths" in results[0].message  # type: ignore[union-attr]
    assert {f.read_bytes(), g.read_bytes()} == before


async def test_replaced_files_held_open_stay_within_the_budget(tmp_path: Path) -> None:
    root = tmp_path / "small"
    root.mkdir()
    eng = IoManager(Config.from_sources(roots=[str(root)], fd_limit=4))  # budget: 8
    try:
        files = make_tree(root, dirs=2, per_dir=10)
        inodes = {f.stat().st_ino for f in files}
        results = await eng.write_snippets(edits_for(files))
        assert all(isinstance(r, EditResult) for r in results), results
        held = [i for i in inodes if fds_on(i)]
        assert 0 < len(held) <= 8
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (eng.retired_budget.held or held):
            await asyncio.sleep(0.01)
            held = [i for i in inodes if fds_on(i)]
        assert held == [] and eng.retired_budget.held == 0
    finally:
        await eng.aclose()


async def test_a_batch_with_missing_files_leaks_no_descriptor(engine: IoManager) -> None:
    root = Path(engine.config.roots[0])
    files = make_tree(root, dirs=2, per_dir=3)
    await engine.write_snippets(edits_for(files[:1]))  # opens (and caches) the root
    await asyncio.sleep(0)
    before = open_fds()
    missing = [Edit(str(root / f"d{d}" / "gone.txt"), "0" * 64, 0, 1, "x") for d in range(2)]
    for atomic in (False, True):
        results = await engine.write_snippets([*missing, *edits_for(files)], atomic=atomic)
        assert [r.kind for r in results[:2]] == [ErrorKind.NotFound] * 2  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open_fds() != before:
        await asyncio.sleep(0.01)
    assert open_fds() == before


async def test_an_atomic_batch_holds_a_chunks_worth_of_temp_files_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "atomic"
    root.mkdir()
    eng = IoManager(Config.from_sources(roots=[str(root)], fd_limit=8))  # chunks of 4
    open_temps: list[int] = []
    real_sync = write_mod.sync_temp

    def sync_temp(prepared: write_mod.PreparedFile) -> PlokeIoError | None:
        open_temps.append(len([n for n in os.listdir("/proc/self/fd") if _is_temp_fd(n)]))
        return real_sync(prepared)

    monkeypatch.setattr(write_mod, "sync_temp", sync_temp)
    try:
        files = make_tree(root, dirs=3, per_dir=7)  # 21 files: one atomic chunk
        results = await eng.write_snippets(edits_for(files), atomic=True)
        assert all(isinstance(r, EditResult) for r in results), results
        assert all(f.read_text().startswith("FILE") for f in files)
        assert len(open_temps) == 21 and max(open_temps) <= 4
    finally:
        await eng.aclose()


def _is_temp_fd(n: str) -> bool:
    try:
        return write_mod.is_temp_name(os.path.basename(os.readlink(f"/proc/self/fd/{n}")))
    except OSError:
        return False
