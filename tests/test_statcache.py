"""StatCache rules on real stat results (of real files) and on exact stat tuples."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

from ploke_io_server.engine.statcache import ENTRY_BYTES, RACY_MARGIN_NS, StatCache

from .conftest import b3

DIGEST = b3(b"content")


def fake_stat(
    ino: int, size: int = 10, mtime_ns: int = 0, ctime_ns: int = 0, dev: int = 1
) -> os.stat_result:
    # st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, then the float times, then
    # (via the dict) the _ns fields the cache reads.
    return os.stat_result(
        (0o100644, ino, dev, 1, 0, 0, size, 0, 0, 0),
        {"st_mtime_ns": mtime_ns, "st_ctime_ns": ctime_ns, "st_atime_ns": 0},
    )


def test_an_old_file_is_trusted_until_any_field_changes() -> None:
    cache = StatCache(100, 1 << 20)
    now = time.time_ns()
    old = now - 10 * RACY_MARGIN_NS
    st = fake_stat(5, 10, old, old)
    assert cache.store(st, DIGEST, now)
    assert cache.lookup(st) == DIGEST
    for changed in (
        fake_stat(5, 11, old, old),  # size
        fake_stat(5, 10, old + 1, old),  # mtime, by one nanosecond
        fake_stat(5, 10, old, old + 1),  # ctime (utime back, chmod, rename...)
        fake_stat(5, 10, old, old, dev=2),  # another device
        fake_stat(6, 10, old, old),  # another inode
    ):
        assert cache.lookup(changed) is None
    assert cache.hits == 1 and cache.misses == 5


def test_racy_entries_are_refused() -> None:
    # Changed within the margin before the stat began: a rewrite in the same timestamp tick
    # would keep every field, so it must not be cached at all.
    cache = StatCache(100, 1 << 20)
    now = time.time_ns()
    for mtime, ctime in ((now, now - 10**12), (now - 10**12, now), (now - RACY_MARGIN_NS + 1, 0)):
        st = fake_stat(7, 10, mtime, ctime)
        assert not cache.store(st, DIGEST, now)
        assert cache.lookup(st) is None
    # A file whose timestamp is in the future (clock skew) is not trusted either.
    assert not cache.store(fake_stat(8, 1, now + 10**9, now + 10**9), DIGEST, now)
    assert cache.racy == 4 and len(cache) == 0
    # Exactly at the margin: trusted.
    assert cache.store(fake_stat(9, 1, now - RACY_MARGIN_NS, 0), DIGEST, now)


def test_a_racy_store_drops_the_older_entry_of_that_inode() -> None:
    cache = StatCache(100, 1 << 20)
    now = time.time_ns()
    old = fake_stat(3, 10, now - 10**12, now - 10**12)
    assert cache.store(old, DIGEST, now)
    assert not cache.store(fake_stat(3, 10, now, now), b3(b"new"), now)
    assert len(cache) == 0


def test_lru_bound_in_entries_and_in_bytes() -> None:
    now = time.time_ns()
    old = now - 10 * RACY_MARGIN_NS
    cache = StatCache(3, 1 << 20)
    for ino in range(1, 5):
        cache.store(fake_stat(ino, 1, old, old), DIGEST, now)
    assert len(cache) == 3 and cache.evictions == 1
    assert cache.lookup(fake_stat(1, 1, old, old)) is None  # the oldest went first
    assert cache.lookup(fake_stat(2, 1, old, old)) == DIGEST  # now the most recent
    cache.store(fake_stat(5, 1, old, old), DIGEST, now)
    assert cache.lookup(fake_stat(2, 1, old, old)) == DIGEST
    assert cache.lookup(fake_stat(3, 1, old, old)) is None
    by_bytes = StatCache(10**9, 10 * ENTRY_BYTES)
    assert by_bytes.capacity == 10
    assert StatCache(0, 1 << 30).capacity == 0
    off = StatCache(10, 0)
    assert not off.store(fake_stat(1, 1, old, old), DIGEST, now) and len(off) == 0


def test_entry_size_estimate_holds(tmp_path: Path) -> None:
    # The memory bound is only as good as ENTRY_BYTES: measure 20,000 real entries.
    now = time.time_ns()
    old = now - 10 * RACY_MARGIN_NS
    cache = StatCache(50_000, 1 << 30)
    stats = [
        fake_stat(10_000_000 + i, 1000 + i, old + i, old + i, dev=64769) for i in range(20_000)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for st in stats:
        cache.store(st, DIGEST, now)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_entry = used / 20_000
    assert per_entry <= ENTRY_BYTES, per_entry
    assert per_entry >= ENTRY_BYTES / 2, per_entry  # not a wild overestimate either


def test_real_files(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"content")
    st = os.stat(f)
    cache = StatCache(10, 1 << 20, racy_margin_ns=0)
    assert cache.store(st, DIGEST, time.time_ns())
    assert cache.probe(os.stat(f)) == DIGEST
    with open(f, "r+b") as fh:
        fh.write(b"C")
    assert cache.probe(os.stat(f)) is None
    cache.invalidate(st)
    assert len(cache) == 0 and cache.invalidations == 1
