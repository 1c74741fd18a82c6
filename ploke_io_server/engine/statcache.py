"""The stat cache: (device, inode, size, mtime_ns, ctime_ns) -> BLAKE3 digest, without lying.

An unchanged file is confirmed by one ``stat`` instead of a read and a hash. The danger is a
file rewritten so quickly that its stat does not change: same size, and a modification time
equal to the cached one because the file system's clock did not tick in between (1 s or 2 s
granularity on some file systems; a few ms of coarse kernel clock even on ext4). Git calls
this the "racy" case and re-checks every index entry whose mtime is not older than the index
itself. The rule here is the same, per entry:

    an entry is stored only if the file's mtime and ctime are older than the moment the
    engine started stat-ing it, by more than the racy margin (``--racy-margin-ms``, 2 s);

A later change to the file gets a timestamp at least that moment's (minus the clock's
coarseness), so it differs from the stored one, and the lookup misses. Files changed within
the margin before they were hashed are simply not cached (counted as ``racy``); the next scan
that finds them old enough caches them.

What a lookup compares: device, inode, size, mtime_ns and ctime_ns. ``ctime`` cannot be set by
a user: ``os.utime`` setting mtime back to the cached value updates ctime, so such a file still
misses. A file replaced by rename has a new inode and misses.

Bounded in entries and in (estimated) bytes; least recently used entries go first.
"""

from __future__ import annotations

import collections
import os
import struct
import threading
from typing import Any

__all__ = ["ENTRY_BYTES", "RACY_MARGIN_NS", "STAT_KEY", "StatCache"]

RACY_MARGIN_NS = 2_000_000_000
"""Files modified less than this before they were stat-ed are never cached (2 s: FAT's
timestamp granularity; also covers 1 s file systems and coarse kernel clocks)."""

STAT_KEY = struct.Struct("<QQqq")
"""Packs device, size, mtime_ns, ctime_ns: the first 32 bytes of every entry."""

ENTRY_BYTES = 240
"""Estimated memory of one entry: OrderedDict slot and link, int key, 64-byte bytes value
(measured with tracemalloc in tests/test_statcache.py)."""


class StatCache:
    """Thread-safe, shared by every operation of one engine."""

    def __init__(
        self, max_entries: int, max_bytes: int, racy_margin_ns: int = RACY_MARGIN_NS
    ) -> None:
        self.capacity = max(0, min(max_entries, max_bytes // ENTRY_BYTES))
        self.racy_margin_ns = racy_margin_ns
        self.entries: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        """inode -> STAT_KEY-packed (device, size, mtime_ns, ctime_ns) + 32-byte digest."""
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.racy = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, st: os.stat_result) -> str | None:
        """The hex digest of the file ``st`` describes, if a trusted entry matches exactly."""
        digest = self.probe(st)
        self.count(1 if digest is not None else 0, 1 if digest is None else 0)
        return digest

    def probe(self, st: os.stat_result) -> str | None:
        """:meth:`lookup` without counting (the caller counts, see :meth:`count`).

        Lock-free for batch loops: each dictionary operation is atomic under the GIL, and an
        entry evicted by another thread between the get and the move is simply not moved.
        """
        return self.probe_fields(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def probe_fields(
        self, ino: int, dev: int, size: int, mtime_ns: int, ctime_ns: int
    ) -> str | None:
        """:meth:`probe` for a stat known by its fields (the watcher's index entries)."""
        value = self.entries.get(ino)
        if value is not None and value.startswith(STAT_KEY.pack(dev, size, mtime_ns, ctime_ns)):
            try:  # noqa: SIM105 (a try is cheaper than contextlib.suppress in this loop)
                self.entries.move_to_end(ino)
            except KeyError:
                pass
            return value[32:].hex()
        return None

    def count(self, hits: int, misses: int) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses

    def store(self, st: os.stat_result, digest: str, started_ns: int) -> bool:
        """Remember ``digest`` for the file ``st`` describes; False if it was too recent.

        ``st`` must be the fstat of the descriptor the content was read from, taken before the
        read; ``started_ns`` a ``time.time_ns()`` taken before that fstat.
        """
        if self.capacity == 0:
            return False
        ino = st.st_ino
        if max(st.st_mtime_ns, st.st_ctime_ns) + self.racy_margin_ns > started_ns:
            with self._lock:
                self.racy += 1
                self.entries.pop(ino, None)
            return False
        value = STAT_KEY.pack(
            st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns
        ) + bytes.fromhex(digest)
        with self._lock:
            entries = self.entries
            entries[ino] = value
            entries.move_to_end(ino)
            while len(entries) > self.capacity:
                entries.popitem(last=False)
                self.evictions += 1
        return True

    def invalidate(self, st: os.stat_result) -> None:
        """Forget the entry of this file (its inode), e.g. after the engine replaced it."""
        with self._lock:
            if self.entries.pop(st.st_ino, None) is not None:
                self.invalidations += 1

    def clear(self) -> None:
        with self._lock:
            self.invalidations += len(self.entries)
            self.entries.clear()

    def snapshot(self) -> dict[str, Any]:
        n = len(self.entries)
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "racy": self.racy,
            "invalidations": self.invalidations,
            "entries": n,
            "capacity": self.capacity,
            "bytes": n * ENTRY_BYTES,
        }
