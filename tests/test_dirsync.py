"""DirSync: directory fsyncs group-committed across threads, on real directories and threads.

The property: a writer's ``sync`` returns only after an fsync of its directory that *started
after* its rename finished. A spy around ``write.fsync_dir`` records when each real fsync
started and ended; faults are injected there to check that a failed fsync fails every writer
it covered and is not retried for them. Also FileLocks, the per-entry locks every write
takes.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ploke_io_server.config import SymlinkPolicy
from ploke_io_server.engine import write
from ploke_io_server.errors import ErrorKind, PlokeIoError
from ploke_io_server.paths import PathPolicy, Resolver, RootCache


@pytest.fixture
def resolver(tmp_path: Path) -> Resolver:
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    return Resolver(PathPolicy.of([str(tmp_path)], SymlinkPolicy.DENY), RootCache())


def spy(monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> list[tuple[float, float, bool]]:
    """(start, end, failed) of every real directory fsync; the first ``fail_first`` fail."""
    calls: list[tuple[float, float, bool]] = []
    real = write.fsync_dir
    lock = threading.Lock()

    def fsync_dir(located: object) -> None:
        start = time.monotonic()
        time.sleep(0.002)  # widen the window so that writers pile up behind a running fsync
        with lock:
            fail = len(calls) < fail_first
        if not fail:
            real(located)  # type: ignore[arg-type]
        with lock:
            calls.append((start, time.monotonic(), fail))
        if fail:
            raise PlokeIoError(ErrorKind.Io, "x: fsync failed: [Errno 5] Input/output error")

    monkeypatch.setattr(write, "fsync_dir", fsync_dir)
    return calls


def run_writers(
    resolver: Resolver, tmp_path: Path, n: int, dirs: tuple[str, ...] = ("d",)
) -> list[tuple[str, float, float, PlokeIoError | None]]:
    """n threads: each renames a new file into its directory, then syncs it."""
    sync = write.DirSync()
    out: list[tuple[str, float, float, PlokeIoError | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        d = dirs[i % len(dirs)]
        (tmp_path / d / f".t{i}").write_text(str(i))
        located = resolver.locate(str(tmp_path / d / f"f{i}"))
        barrier.wait()
        try:
            os.rename(f".t{i}", f"f{i}", src_dir_fd=located.dir_fd, dst_dir_fd=located.dir_fd)
            renamed = time.monotonic()
            err = None
            try:
                sync.sync(located)
            except PlokeIoError as exc:
                err = exc
            with lock:
                out.append((d, renamed, time.monotonic(), err))
        finally:
            os.close(located.dir_fd)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not sync._dirs, "per-directory state must be dropped when its last user leaves"
    return out


def test_each_writer_is_covered_by_an_fsync_that_started_after_its_rename(
    resolver: Resolver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch)
    done = run_writers(resolver, tmp_path, 24)
    assert all(err is None for *_x, err in done)
    for _d, renamed, returned, _e in done:
        assert any(renamed <= start and end <= returned for start, end, _f in calls)
    # Writers that arrived while an fsync ran shared the next one.
    assert len(calls) < len(done)


def test_directories_are_synced_independently(
    resolver: Resolver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch)
    done = run_writers(resolver, tmp_path, 16, dirs=("d", "e"))
    assert all(err is None for *_x, err in done)
    assert {d for d, *_x in done} == {"d", "e"}
    assert len(calls) >= 2  # at least one fsync per directory


def test_a_failed_fsync_fails_every_writer_it_covered_and_is_not_retried_for_them(
    resolver: Resolver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, fail_first=1)
    done = run_writers(resolver, tmp_path, 24)
    (_fail_start, fail_end, failed), *later = sorted(calls)
    assert failed
    for _d, renamed, returned, err in done:
        if err is not None:
            # Failed: it was waiting on (or ran) the failed fsync; nobody retried it.
            assert err.kind is ErrorKind.Io and "fsync" in err.message
            assert renamed <= fail_end
        else:
            # Succeeded: covered by a later, successful fsync that started after its rename.
            assert any(renamed <= s and e <= returned and not f for s, e, f in later)
    assert any(err is not None for *_x, err in done)


def test_a_lone_writer_pays_exactly_one_fsync(
    resolver: Resolver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch)
    for _ in range(3):
        run_writers(resolver, tmp_path, 1)
        for f in (tmp_path / "d").iterdir():
            f.unlink()
    assert len(calls) == 3


def test_file_locks_exclude_per_entry_take_sets_in_order_and_forget_released_entries() -> None:
    """FileLocks with real threads: a holder of entry a blocks a batch wanting (b, a) until
    it lets go, while entry b stays free for others meanwhile (the batch takes a first);
    released entries are dropped."""
    locks = write.FileLocks()
    a, b = (1, 2, "a"), (1, 2, "b")
    events: list[str] = []
    release_a = threading.Event()
    batch_done = threading.Event()

    def hold_a() -> None:
        with locks.hold([a]):
            events.append("a held")
            release_a.wait(10)
            events.append("a released")

    def batch() -> None:
        with locks.hold([b, a, a]):
            events.append("batch in")
        batch_done.set()

    t1 = threading.Thread(target=hold_a)
    t1.start()
    while "a held" not in events:
        time.sleep(0.001)
    t2 = threading.Thread(target=batch)
    t2.start()
    assert not batch_done.wait(0.2)  # blocked on a
    with locks.hold([b]):  # b is not taken by the waiting batch
        events.append("b alone")
    release_a.set()
    assert batch_done.wait(10)
    t1.join()
    t2.join()
    assert events == ["a held", "b alone", "a released", "batch in"]
    assert locks._locks == {}
    with pytest.raises(KeyError), locks.hold([a]):
        raise KeyError("a failure inside")
    assert locks._locks == {}
