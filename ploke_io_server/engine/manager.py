"""The IoManager: the engine's public face, usable as a plain Python library.

It owns the executor (the limiter: at most ``fd_limit`` worker threads, each holding at most
one file open at a time), the counters, and the default path policy. Every operation takes an
optional :class:`~ploke_io_server.paths.PathPolicy` so that sessions with narrowed roots share
one engine.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs

from ..config import Config
from ..errors import ErrorKind, PlokeIoError, from_os_error
from ..paths import Located, PathPolicy, Resolver, RootCache
from ..types import (
    Created,
    Edit,
    EditResult,
    HashResult,
    NewFile,
    ProgressFn,
    Scanned,
    ScanResult,
    SnippetRequest,
    SnippetResult,
)
from . import read, write
from .statcache import StatCache
from .watcher import TrustedView, Watcher

__all__ = ["BATCH_PARALLELISM", "Counters", "IoManager"]

log = logging.getLogger(__name__)

WRITE_PARALLELISM = 8
"""Worker threads a dry-run batch uses."""

WRITE_CHUNK_FILES = 64
"""Files of a write batch committed together (see IoManager._commit_chunk): each holds two
descriptors while its chunk runs (its directory, and its temp file until the fsync), so a chunk
is also at most half the fd limit. The originals' descriptors count against the engine's
``retired_budget``."""

CHUNK_PARALLELISM = 2
"""Chunks of one batch committed at once: one reads, hashes and writes temp files while the
other waits on its fsyncs (200 files in 4 chunks: 0.84x the time of one chunk at a time)."""

FSYNC_THREADS = 32
"""Threads that fsync a chunk's temp files and directories in parallel: they only wait on the
device, so the device gets the whole chunk at once."""

CLOSE_ON_LOOP_MAX = 8
"""Replaced files a write closes on the event loop after answering (write.Retired); more go to
the executor (each close can free a file's blocks: ~0.1-0.2 ms here)."""

_SPECIAL_NAMES = frozenset({"", ".", ".."})


def _plain_directory(directory: str) -> bool:
    """An absolute directory without "//", "." or ".." components or NUL ("" is "/")."""
    if directory and not directory.startswith("/"):
        return False
    spelled = directory + "/"
    return (
        "//" not in spelled
        and "/./" not in spelled
        and "/../" not in spelled
        and "\x00" not in directory
    )


TRUST_MIN_FILES = 512
"""Scans of fewer files stat each one: a cookie round trip (~1 ms) costs more than that."""

CONFIRM_CHUNK = 4096
"""Files confirmed from the watcher's index per job (cancellation is checked between jobs)."""

BATCH_PARALLELISM = 1
"""Worker threads one batch uses. Files in the page cache are CPU work under the GIL, where
more threads only add lock convoys (measured on 2 cores: 700 cached files, 46-75 ms on one
thread, 75-110 ms on several; cold reads gained nothing measurable on this VM's disk). Separate
requests and clients still run in parallel, up to the fd limit."""

_J = TypeVar("_J")

SCAN_CHUNK = 256
"""Files of one directory a scan job handles: the unit of progress and cancellation."""


LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""Upper bounds of the per-method latency histogram buckets (plus one for anything slower)."""


@attrs.define
class Latency:
    """A latency histogram of one method: counts per bucket, total count and sum."""

    buckets: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    count: int = 0
    sum_ms: float = 0.0
    max_ms: float = 0.0

    def add(self, ms: float) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS_MS, ms)
        self.buckets[i] += 1
        self.count += 1
        self.sum_ms += ms
        self.max_ms = max(self.max_ms, ms)

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None: no data or the last one)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip(LATENCY_BUCKETS_MS, self.buckets, strict=False):
            seen += n
            if seen >= rank:
                return float(bound)
        return None

    def snapshot(self) -> dict[str, Any]:
        le = {f"le{b}": n for b, n in zip(LATENCY_BUCKETS_MS, self.buckets, strict=False)}
        le["inf"] = self.buckets[-1]
        return {
            "count": self.count,
            "sumMs": round(self.sum_ms, 3),
            "maxMs": round(self.max_ms, 3),
            "p50Ms": self.quantile(0.5),
            "p99Ms": self.quantile(0.99),
            "buckets": le,
        }


@attrs.define
class Counters:
    """Process-wide counters, reported by ``ploke/status``."""

    requests: collections.Counter[str] = attrs.field(factory=collections.Counter)
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    files_read: int = 0
    bytes_read: int = 0
    files_written: int = 0
    bytes_written: int = 0
    files_created: int = 0
    temps_removed: int = 0
    cancelled: int = 0
    notifications: int = 0
    latency: dict[str, Latency] = attrs.field(factory=dict)
    """Per method, filled by the server (milliseconds from the request read to its answer)."""

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "filesRead": self.files_read,
            "bytesRead": self.bytes_read,
            "filesWritten": self.files_written,
            "bytesWritten": self.bytes_written,
            "filesCreated": self.files_created,
            "tempsRemoved": self.temps_removed,
            "cancelled": self.cancelled,
            "notifications": self.notifications,
            "latencyMs": {m: h.snapshot() for m, h in sorted(self.latency.items())},
        }


class IoManager:
    """File I/O engine: batch reads and hashes under a path policy and a concurrency limit."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = PathPolicy.of(config.roots, config.symlink_policy)
        self.counters = Counters()
        self.utf8 = read.Utf8Index()
        self.locks = write.FileLocks()
        self.dirs = write.DirSync()
        self.stat_cache = StatCache(
            config.stat_cache_entries,
            config.stat_cache_bytes,
            racy_margin_ns=config.racy_margin_ms * 1_000_000,
        )
        self.root_fds = RootCache()
        self.origins: collections.OrderedDict[tuple[int, int, str], tuple[str, str]] = (
            collections.OrderedDict()
        )
        """(origin, new hash) of the last write to each directory entry, for the watcher."""
        self._origins_lock = threading.Lock()
        self._trusted_scans = 0
        self._trusted_scans_done = asyncio.Event()
        self._trusted_scans_done.set()
        self._cleanups: list[asyncio.Future[int]] = []
        self._cleaned: set[str] = set()
        self.retired_budget = write.FdBudget(2 * config.fd_limit)
        """Replaced files' descriptors held until their requests are answered (write.Retired)."""
        self._closer = write.Closer(self.retired_budget)
        self._pool_lock = threading.Lock()
        self._fsyncs: ThreadPoolExecutor | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=config.fd_limit, thread_name_prefix="ploke-io"
        )
        self._closed = False
        self.watcher: Watcher | None = None
        """Started by :meth:`start_watcher` (``--watch`` or a client's ``watch: true``)."""
        self.in_flight = 0
        """Requests the server has running, all clients together (it keeps the count)."""

    # -- operations ----------------------------------------------------------------------------

    async def get_snippets(
        self,
        requests: Sequence[SnippetRequest | PlokeIoError],
        *,
        policy: PathPolicy | None = None,
        progress: ProgressFn | None = None,
        inline: bool = False,
    ) -> list[SnippetResult]:
        """Read snippets; results in input order. An input PlokeIoError passes through."""
        results: list[SnippetResult | None] = [None] * len(requests)
        groups = _group_by_path(requests, results, lambda r: r.file_path)
        max_bytes = self.config.max_file_bytes

        def work(resolver: Resolver, job: tuple[str, list[tuple[int, SnippetRequest]]]) -> None:
            started = time.perf_counter() if TRACE.isEnabledFor(logging.INFO) else 0.0
            n = read.snippets_of_file(
                resolver, job[0], job[1], results, max_bytes, self.utf8, self.stat_cache
            )
            self._count_read(n)
            if started:
                _span("read", resolver, job[0], started, n, results[job[1][0][0]])

        await self._run(policy, list(groups.items()), work, progress, inline=inline)
        return self._finish(results)

    async def hash_files(
        self,
        paths: Sequence[str | PlokeIoError],
        *,
        policy: PathPolicy | None = None,
        progress: ProgressFn | None = None,
        inline: bool = False,
    ) -> list[HashResult]:
        """Hash files; results in input order, each distinct path read once."""
        results: list[HashResult | None] = [None] * len(paths)
        groups = _group_by_path(paths, results, lambda p: p)
        max_bytes = self.config.max_file_bytes

        def work(resolver: Resolver, job: tuple[str, list[tuple[int, str]]]) -> None:
            started = time.perf_counter() if TRACE.isEnabledFor(logging.INFO) else 0.0
            result, n = read.hash_one(resolver, job[0], max_bytes, self.stat_cache)
            self._count_read(n)
            for i, _p in job[1]:
                results[i] = result
            if started:
                _span("hash", resolver, job[0], started, n, result)

        await self._run(policy, list(groups.items()), work, progress, inline=inline)
        return self._finish(results)

    async def scan_changes(
        self,
        files: Sequence[tuple[str, str] | PlokeIoError],
        *,
        policy: PathPolicy | None = None,
        progress: ProgressFn | None = None,
        inline: bool = False,
    ) -> list[ScanResult]:
        """Which files changed since the client hashed them: results in input order.

        ``files`` are ``(path, hash)`` pairs (:class:`ScanRequest` or plain tuples), or the
        error an item already is. A file whose stat matches a trusted stat-cache entry is
        not read. A file that no longer exists (or can no longer be reached) is ``removed``;
        every other problem is that item's error. Each distinct path is looked at once.
        """
        n_files = len(files)
        results: list[ScanResult | None] = [None] * n_files
        watcher = self.watcher
        # The stat cache turned off (--stat-cache-entries 0) promises exact scans: every file
        # read, so the watcher's index (its digests) is not used either.
        if watcher is None or not self.stat_cache.capacity or n_files < TRUST_MIN_FILES:
            return await self._scan_rest(
                files, results, range(n_files), 0, policy, progress, inline
            )
        # A large scan while the watcher runs: first, the files it heard nothing about are
        # confirmed from its index, without a system call (it syncs first: see
        # Watcher.trusted_view); only the others take the stat route (_scan_rest). Meanwhile
        # the watcher's reconcile waits (scans_settled): it would hash the very files this
        # scan is looking at, both under the GIL.
        self._trusted_scans += 1
        self._trusted_scans_done.clear()
        try:
            view = await watcher.trusted_view()
            if view is None:
                candidates: Sequence[int] = range(n_files)
                confirmed = 0
            else:
                candidates, confirmed = await self._confirm(view, files, results, policy)
                watcher.count_confirmed(confirmed)
            return await self._scan_rest(
                files, results, candidates, confirmed, policy, progress, inline
            )
        finally:
            self._trusted_scans -= 1
            if not self._trusted_scans:
                self._trusted_scans_done.set()

    async def _confirm(
        self,
        view: TrustedView,
        files: Sequence[tuple[str, str] | PlokeIoError],
        results: list[ScanResult | None],
        policy: PathPolicy | None,
    ) -> tuple[list[int], int]:
        """Answer what the watcher's index vouches for: (indices left, how many answered)."""
        session = policy or self.policy
        cache = self.stat_cache
        left: list[int] = []
        counted = [0, 0]  # confirmed, looked at
        directories: dict[str, bool] = {}

        def confirm(_resolver: Resolver, span: tuple[int, int]) -> None:
            # While it pays: after a chunk where the index vouched for less than half the
            # files (a cold cache, a tree that changed), the rest go straight to the stat
            # route instead of being looked up twice.
            if counted[1] and counted[0] * 2 < counted[1]:
                left.extend(range(*span))
                return
            rest, n = read.confirm_from_index(
                view, session, files, span, results, cache, directories
            )
            left.extend(rest)
            counted[0] += n
            counted[1] += span[1] - span[0]

        n_files = len(files)
        spans = [(k, min(k + CONFIRM_CHUNK, n_files)) for k in range(0, n_files, CONFIRM_CHUNK)]
        await self._run(policy, spans, confirm, None)
        cache.count(counted[0], 0)
        return sorted(left), counted[0]

    async def scans_settled(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, until no scan confirmed by the watcher runs."""
        if self._trusted_scans:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # (wait_for can swallow a cancel in 3.11)
                    await self._trusted_scans_done.wait()

    async def _scan_rest(
        self,
        files: Sequence[tuple[str, str] | PlokeIoError],
        results: list[ScanResult | None],
        candidates: Sequence[int],
        confirmed: int,
        policy: PathPolicy | None,
        progress: ProgressFn | None,
        inline: bool,
    ) -> list[ScanResult]:
        """The stat route for ``files[i]``, i in ``candidates`` (``confirmed`` are answered)."""
        max_bytes = self.config.max_file_bytes
        cache = self.stat_cache
        # One pass: each distinct path once (repeats are answered from it at the end); paths
        # of plain names in a plain absolute directory go to that directory's job (resolved
        # once, then one fstatat per file); anything else (relative, "." or "..", "//", a
        # trailing "/", NUL) takes the general per-path route.
        seen: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []
        by_dir: dict[str, list[int]] = {}
        odd_dirs: set[str] = set()
        singles: list[int] = []
        for i in candidates:
            item = files[i]
            if isinstance(item, PlokeIoError):
                results[i] = item
                continue
            path = item[0]
            first = seen.setdefault(path, i)
            if first != i:
                repeats.append((i, first))
                continue
            directory, sep, name = path.rpartition("/")
            entries = by_dir.get(directory)
            if entries is None:
                if not sep or directory in odd_dirs or not _plain_directory(directory):
                    odd_dirs.add(directory)
                    singles.append(i)
                    continue
                entries = by_dir[directory] = []
            if name in _SPECIAL_NAMES or "\x00" in name:
                singles.append(i)
                continue
            entries.append(i)
        del seen, odd_dirs
        # Directories in chunks of SCAN_CHUNK files: progress and cancellation between chunks.
        jobs: list[tuple[Any, list[int] | None]] = [
            (d or "/", e[k : k + SCAN_CHUNK])
            for d, e in by_dir.items()
            for k in range(0, len(e), SCAN_CHUNK)
        ]
        del by_dir
        jobs += [(i, None) for i in singles]
        report = progress
        if progress is not None and confirmed:
            total = confirmed + sum(1 if j[1] is None else len(j[1]) for j in jobs)
            progress(confirmed, total)

            def report(done: int, _total: int) -> None:
                progress(confirmed + done, total)

        def work(resolver: Resolver, job: tuple[Any, list[int] | None]) -> None:
            key, indices = job
            started = time.perf_counter() if TRACE.isEnabledFor(logging.INFO) else 0.0
            if indices is not None:
                n, nbytes = read.scan_directory(
                    resolver, key, indices, files, results, max_bytes, cache
                )
                self._count_reads(n, nbytes)
                if started:
                    shown = resolver.shown(key) or "."
                    TRACE.info(
                        "scan %s", shown, extra={"fields": {
                            "span": "scan", "directory": shown, "files": len(indices),
                            "read": n, "bytes": nbytes, "outcome": "ok",
                            "ms": round((time.perf_counter() - started) * 1000, 3)}},
                    )  # fmt: skip
                return
            path, want = files[key]
            found, nread = read.scan_one(resolver, path, want, max_bytes, cache)
            self._count_read(nread)
            results[key] = found
            if started:
                _span("scan", resolver, path, started, nread, found)

        await self._run(
            policy,
            jobs,
            work,
            report,
            inline=inline,
            weight=lambda j: 1 if j[1] is None else len(j[1]),
        )
        for i, first in repeats:  # the same path again, maybe with another hash
            found = results[first]
            want, first_want = files[i][1], files[first][1]  # type: ignore[index]
            if want != first_want and isinstance(found, Scanned):
                found = read.compare(found, first_want, want)
            results[i] = found
        return self._finish(results)

    async def write_snippets(
        self,
        edits: Sequence[Edit | PlokeIoError],
        *,
        origin: str | None = None,
        atomic: bool = False,
        dry_run: bool = False,
        policy: PathPolicy | None = None,
        progress: ProgressFn | None = None,
        inline: bool = False,
    ) -> list[EditResult | PlokeIoError]:
        """Apply edits, grouped by file, each file committed once (see engine/write.py).

        Results are per edit, in input order. With ``atomic``, every precondition of every
        file is checked and every temp file written before any file is replaced; if one
        fails, no file changes. Cancelling works only until the first file is committed.
        """
        lone = self._lone_edit(edits, dry_run) if inline else None
        if lone is not None:
            alone = self._write_alone(lone, origin, policy)
            if alone is not None:
                if progress is not None:
                    progress(1, 1)
                return self._finish([alone])
            inline = False  # too big for the loop: straight to the executor
        results: list[EditResult | PlokeIoError | None] = [None] * len(edits)
        groups = _group_by_path(edits, results, lambda e: e.file_path)
        jobs: list[tuple[str, list[tuple[int, Edit]]]] = []
        for path, group in groups.items():
            err = write.validate_group(group)
            if err is None:
                jobs.append((path, group))
            else:
                for i, _e in group:
                    results[i] = err
        # Directories taken in turn: files of one directory written at the same time contend
        # for its lock in the kernel (create and rename), which costs more CPU than anything
        # here (a 200-file batch in 10 directories: 180 ms against 340 ms sorted by directory).
        jobs = _interleave_dirs(jobs)
        max_bytes = self.config.max_file_bytes
        gate = _CommitGate()
        retired = write.Retired(self.retired_budget)
        inline = (
            inline
            and len(jobs) == 1
            and sum(len(e.replacement) for _i, e in jobs[0][1]) <= read.INLINE_MAX_BYTES
        )

        def one_file(resolver: Resolver, job: tuple[str, list[tuple[int, Edit]]]) -> None:
            started = time.perf_counter() if TRACE.isEnabledFor(logging.INFO) else 0.0
            try:
                write_one(resolver, job)
            finally:
                if started:
                    first = results[job[1][0][0]]
                    _span("write" if not dry_run else "dryRun", resolver, job[0], started,
                          None, first)  # fmt: skip

        def write_one(resolver: Resolver, job: tuple[str, list[tuple[int, Edit]]]) -> None:
            path, group = job
            try:
                prepared = self._edit_file(
                    resolver, path, group, origin, retired, dry_run=dry_run, gate=gate
                )
            except (PlokeIoError, OSError) as exc:
                err = _item_error(exc, resolver, path)
                for i, _e in group:
                    results[i] = err
                return
            if prepared is not None:
                for i, r in prepared.results:
                    results[i] = r

        try:
            if atomic and not dry_run and any(r is not None for r in results):
                _abort(results)
            elif not dry_run and jobs and (atomic or len(jobs) > 1):
                # Whole chunks of files go through the commit phases together (see
                # _commit_chunk); an atomic batch is one chunk.
                size = len(jobs) if atomic else self._chunk_size(len(jobs))
                chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
                batch = _WriteBatch(results, max_bytes, origin, gate, retired)
                commit = self._chunk_writer(batch, atomic)
                await self._run(
                    policy, chunks, commit, progress, cancel_ok=gate.cancel,
                    inline=inline, weight=len, parallelism=CHUNK_PARALLELISM,
                )  # fmt: skip
            else:
                await self._run(
                    policy, jobs, one_file, progress, parallelism=WRITE_PARALLELISM,
                    cancel_ok=gate.cancel if not dry_run else None, inline=inline,
                )  # fmt: skip
        finally:
            self._close_later(retired.take())
        return self._finish(results)

    def write_now(
        self,
        edits: Sequence[Edit | PlokeIoError],
        reply: Callable[[list[EditResult | PlokeIoError]], None],
        *,
        origin: str | None = None,
        dry_run: bool = False,
        policy: PathPolicy | None = None,
    ) -> bool:
        """``write_snippets`` of one small edit, synchronously on the calling (event loop)
        thread, for a caller that knows no other request is running.

        ``reply`` gets the results once: as soon as the change is durable (or has failed),
        *before* the bookkeeping that follows it on this thread (closing descriptors,
        counters, the origin record), so that the caller can answer first. Every request the
        caller reads after this returns sees that bookkeeping done. The replaced file's
        descriptor goes to a thread of its own (write.Closer).

        False when that does not apply (a batch, a dry run, a big replacement or file,
        tracing on): nothing was changed, ``reply`` was not called, and the caller takes
        ``write_snippets``.
        """
        lone = self._lone_edit(edits, dry_run)
        if lone is None:
            return False
        answered = False

        def durable(result: EditResult | PlokeIoError) -> None:
            nonlocal answered
            answered = True
            reply([result])

        alone = self._write_alone(lone, origin, policy, durable)
        if alone is None:
            return False
        if not answered:
            reply([alone])
        if isinstance(alone, PlokeIoError):
            self.counters.errors[alone.kind.name] += 1
        return True

    @staticmethod
    def _lone_edit(edits: Sequence[Edit | PlokeIoError], dry_run: bool) -> Edit | None:
        """The edit of a write that may take :meth:`_write_alone`: one small edit, not a dry
        run, tracing off (a write's spans come from the general path)."""
        if dry_run or len(edits) != 1 or TRACE.isEnabledFor(logging.INFO):
            return None
        edit = edits[0]
        if not isinstance(edit, Edit) or len(edit.replacement) > read.INLINE_MAX_BYTES:
            return None
        return edit

    def _write_alone(
        self,
        edit: Edit,
        origin: str | None,
        policy: PathPolicy | None,
        durable: Callable[[EditResult], None] | None = None,
    ) -> EditResult | PlokeIoError | None:
        """One edit, the only request running, on the loop's thread: the steps of
        ``write_one`` without a batch's machinery (grouping, the commit gate, ``_run``), which
        cost ~45 µs of a write that is ~135 µs without its fsyncs (measured on tmpfs).

        None when the file is too big to read on the loop (read.Offload): nothing was changed,
        and the caller takes the general path. ``durable`` (see :meth:`write_now`) gets the
        result of a committed write before the bookkeeping; the replaced file's descriptor
        then goes to the closer thread (write.Closer) instead of the loop's next turn.
        """
        if edit.start_byte > edit.end_byte:
            return write.validate_group([(0, edit)])
        if self._closed:
            raise RuntimeError("IoManager is closed")
        path = edit.file_path
        resolver = Resolver(policy or self.policy, self.root_fds)
        retired = write.Retired(self.retired_budget)
        read.set_inline(True)
        try:
            prepared = self._edit_file(
                resolver, path, ((0, edit),), origin, retired, durable=durable
            )
        except (PlokeIoError, OSError) as exc:
            return _item_error(exc, resolver, path)
        except read.Offload:
            return None
        finally:
            read.set_inline(False)
            resolver.close()
            fds = retired.take()
            if durable is None:
                self._close_later(fds)
            elif fds:
                self._closer.put(fds)
        assert prepared is not None
        return prepared.results[0][1]

    def _edit_file(
        self,
        resolver: Resolver,
        path: str,
        group: Sequence[tuple[int, Edit]],
        origin: str | None,
        retired: write.Retired,
        *,
        dry_run: bool = False,
        gate: _CommitGate | None = None,
        durable: Callable[[EditResult], None] | None = None,
    ) -> write.PreparedFile | None:
        """One file of a non-atomic write: locate it, and under its lock verify and splice
        ``group``, then (unless ``dry_run``) commit it. None if ``gate`` refused the commit
        (the batch was cancelled): nothing changed. ``durable`` gets the first edit's result
        as soon as the commit is done."""
        located = resolver.locate(path)
        try:
            if located.st is None:
                raise PlokeIoError(ErrorKind.NotFound, f"{located.shown}: no such file")
            key = write.lock_key(located)
            with self.locks.hold((key,)):
                prepared = write.prepare_edits(
                    located, group, self.config.max_file_bytes, dry_run=dry_run
                )
                if not dry_run:
                    if gate is not None and not gate.may_commit():
                        write.discard(prepared)
                        return None
                    write.commit(prepared, self.dirs, retired, key[:2])
                    if durable is not None:
                        durable(prepared.results[0][1])
                    self._note_write(located, origin, prepared.new_size, prepared.new_hash, key=key)
        finally:
            os.close(located.dir_fd)
        return prepared

    def _chunk_size(self, files: int) -> int:
        """Files per chunk of a batch: at most WRITE_CHUNK_FILES (and the fd limit), evenly."""
        most = max(1, min(WRITE_CHUNK_FILES, self.config.fd_limit // 2))
        chunks = -(-files // most)
        return -(-files // chunks)

    def _close_later(self, fds: list[int]) -> None:
        """Close replaced files' descriptors after the caller has its results (write.Retired):
        a few on the event loop's next turn, many on the executor."""
        if not fds:
            return
        loop = asyncio.get_running_loop()
        budget = self.retired_budget
        if len(fds) <= CLOSE_ON_LOOP_MAX:
            loop.call_soon(write.close_retired, fds, budget)
            return
        try:
            loop.run_in_executor(self._executor, write.close_retired, fds, budget)
        except RuntimeError:  # the executor is shut down
            write.close_retired(fds, budget)

    def _fsync_pool(self) -> ThreadPoolExecutor:
        """Threads that only wait in fsync (never on other work: no deadlock when a worker
        of the main executor waits for them)."""
        with self._pool_lock:
            if self._fsyncs is None:
                self._fsyncs = ThreadPoolExecutor(
                    max_workers=max(2, min(FSYNC_THREADS, self.config.fd_limit)),
                    thread_name_prefix="ploke-fsync",
                )
            return self._fsyncs

    def _parallel(self, fn: Callable[[_T], _U], items: Sequence[_T]) -> list[_U]:
        """``[fn(x) for x in items]``, the calls spread over the fsync threads."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        return list(self._fsync_pool().map(fn, items))

    def _chunk_writer(
        self, batch: _WriteBatch, atomic: bool
    ) -> Callable[[Resolver, list[tuple[str, list[tuple[int, Edit]]]]], None]:
        results = batch.results

        def run(resolver: Resolver, jobs: list[tuple[str, list[tuple[int, Edit]]]]) -> None:
            located: list[tuple[Located, list[tuple[int, Edit]]]] = []
            failed = False
            try:
                for path, group in jobs:
                    try:
                        loc = resolver.locate(path)
                    except (PlokeIoError, OSError) as exc:
                        failed = _fail(results, group, _item_error(exc, resolver, path))
                        continue
                    located.append((loc, group))
                    if loc.st is None:
                        missing = PlokeIoError(ErrorKind.NotFound, f"{loc.shown}: no such file")
                        failed = _fail(results, group, missing)
                if atomic and failed:
                    _abort(results)
                    return
                keyed: list[_Keyed] = []
                for loc, group in located:
                    if loc.st is None:
                        continue  # failed above (NotFound)
                    try:
                        keyed.append((write.lock_key(loc), loc, group))
                    except PlokeIoError as err:
                        failed = _fail(results, group, err)
                if atomic and failed:
                    _abort(results)
                    return
                again = self._split_repeats(keyed, results, atomic)
                if again is None:  # atomic: the same file named twice
                    return
                self._commit_chunk(keyed, batch, atomic)
                while again:
                    # A file named by several spellings: each further group sees the result of
                    # the one before, as requests one after the other would.
                    turn = again
                    again = self._split_repeats(turn, results, False)
                    assert again is not None
                    self._commit_chunk(turn, batch, False)
            finally:
                for loc, _g in located:
                    os.close(loc.dir_fd)

        return run

    @staticmethod
    def _split_repeats(
        keyed: list[_Keyed],
        results: list[EditResult | PlokeIoError | None],
        atomic: bool,
    ) -> list[_Keyed] | None:
        """Take out (into the returned list) the groups whose file an earlier group of the chunk
        already names by another path; in an atomic batch that fails it (None returned)."""
        seen: dict[tuple[int, int, str], list[tuple[int, Edit]]] = {}
        keep: list[_Keyed] = []
        repeats: list[_Keyed] = []
        for item in keyed:
            key, _loc, group = item
            if key in seen:
                repeats.append(item)
            else:
                seen[key] = group
                keep.append(item)
        if not repeats:
            return []
        if atomic:
            twice = PlokeIoError(
                ErrorKind.InvalidRange,
                "the same file is named by two different paths in one batch",
            )
            for key, _loc, group in repeats:
                _fail(results, seen[key], twice)
                _fail(results, group, twice)
            _abort(results)
            return None
        keyed[:] = keep
        return repeats

    def _commit_chunk(self, keyed: list[_Keyed], batch: _WriteBatch, atomic: bool) -> None:
        """Commit a chunk of files in phases, their locks held throughout:

        1. read, verify and splice each file, write its temp file (no fsync yet);
        2. fsync the temp files, in parallel (the device sees them together);
        3. rename each temp file over its target, back to back;
        4. fsync each directory once, in parallel; then the files are reported written.

        Atomic: a failure in phase 1 or 2 removes every temp file and changes nothing.
        """
        results = batch.results
        prepared: list[write.PreparedFile] = []  # temp file durable, ready to be renamed
        unsynced: list[write.PreparedFile] = []  # temp file written, still open
        failed = False

        def sync_temps() -> bool:
            """Phase 2 for the temp files written so far; False if one failed."""
            ok = True
            for p, err in zip(unsynced, self._parallel(write.sync_temp, unsynced), strict=True):
                if err is None:
                    prepared.append(p)
                else:
                    ok = not _fail_file(results, p, err)
            unsynced.clear()
            return ok

        # An atomic batch (one chunk, however large) fsyncs its temp files a chunk's worth at
        # a time, so that it holds at most that many of them open.
        at_most = self._chunk_size(len(keyed)) if atomic else len(keyed)
        with self.locks.hold([key for key, _loc, _g in keyed]):
            try:
                for key, loc, group in keyed:
                    try:
                        prepared_file = write.prepare_edits(
                            loc, group, batch.max_bytes, dry_run=False, sync=False
                        )
                        prepared_file.key = key
                        unsynced.append(prepared_file)
                    except PlokeIoError as err:
                        failed = _fail(results, group, err)
                        if atomic:
                            break
                    if len(unsynced) >= at_most and not sync_temps():
                        failed = True
                        if atomic:
                            break
                if not (atomic and failed) and not sync_temps():
                    failed = True
                prepared.extend(unsynced)  # (an atomic failure left some unsynced)
                unsynced.clear()
                if (atomic and failed) or not batch.gate.may_commit():
                    for p in prepared:
                        write.discard(p)
                    if atomic:
                        _abort(results)
                    return
                # The atomic window: every file is checked and its temp file durable; only
                # the renames remain, back to back, then one fsync per directory.
                renamed: list[write.PreparedFile] = []
                for n, p in enumerate(prepared):
                    try:
                        write.rename_into_place(p, batch.retired)
                    except PlokeIoError as err:
                        _fail_file(results, p, err)
                        if atomic:
                            for rest in prepared[n + 1 :]:
                                write.discard(rest)
                            prepared = []
                            self._sync_renamed(renamed, batch)
                            _abort(
                                results,
                                "a rename of this atomic batch failed after "
                                f"{n} file(s) were committed; this file was not changed",
                            )
                            return
                        continue
                    renamed.append(p)
                prepared = []
                self._sync_renamed(renamed, batch)
            finally:
                for p in prepared + unsynced:  # an unexpected error: nothing half done stays
                    write.discard(p)

    def _sync_renamed(self, renamed: list[write.PreparedFile], batch: _WriteBatch) -> None:
        """Make renamed files durable, one fsync per directory (in parallel); fill in their
        results."""
        results = batch.results
        by_dir: dict[tuple[int, int], list[write.PreparedFile]] = {}
        for p in renamed:
            assert p.key is not None, "a batch's files are prepared with their lock key"
            by_dir.setdefault(p.key[:2], []).append(p)

        def sync(
            item: tuple[tuple[int, int], list[write.PreparedFile]],
        ) -> PlokeIoError | None:
            key, files = item
            try:
                self.dirs.sync(files[0].located, key)
            except PlokeIoError as err:
                return err
            return None

        groups = list(by_dir.items())
        for (_key, files), failure in zip(groups, self._parallel(sync, groups), strict=True):
            for p in files:
                self._note_write(p.located, batch.origin, p.new_size, p.new_hash, key=p.key)
                for i, r in p.results:
                    results[i] = r if failure is None else failure

    async def create_files(
        self,
        files: Sequence[NewFile | PlokeIoError],
        *,
        origin: str | None = None,
        policy: PathPolicy | None = None,
        progress: ProgressFn | None = None,
        inline: bool = False,
    ) -> list[Created | PlokeIoError]:
        """Create files race-free (AlreadyExists unless ``overwrite``), durably.

        Items naming the same path (as sent) are created in input order, as separate requests
        would be: the first wins, a later one is AlreadyExists unless it has ``overwrite``.
        """
        results: list[Created | PlokeIoError | None] = [None] * len(files)
        jobs = list(_group_by_path(files, results, lambda f: f.file_path).values())
        max_bytes = self.config.max_file_bytes
        gate = _CommitGate()

        def one(resolver: Resolver, group: list[tuple[int, NewFile]]) -> None:
            for job in group:
                started = time.perf_counter() if TRACE.isEnabledFor(logging.INFO) else 0.0
                try:
                    create_one(resolver, job)
                finally:
                    if started:
                        size = len(job[1].content.encode("utf-8", "surrogatepass"))
                        _span("create", resolver, job[1].file_path, started, size,
                              results[job[0]])  # fmt: skip

        def create_one(resolver: Resolver, job: tuple[int, NewFile]) -> None:
            i, new = job
            try:
                created = write.create_file(
                    resolver,
                    new,
                    self.locks,
                    self.dirs,
                    max_bytes,
                    gate.may_commit,
                    lambda located, size, digest: self._note_write(
                        located, origin, size, digest, created=True
                    ),
                )
            except (PlokeIoError, OSError) as exc:
                results[i] = _item_error(exc, resolver, new.file_path)
                return
            if created is not None:
                results[i] = created

        inline = (
            inline
            and len(jobs) == 1
            and sum(len(f.content) for _i, f in jobs[0]) <= read.INLINE_MAX_BYTES
        )
        await self._run(
            policy, jobs, one, progress, parallelism=WRITE_PARALLELISM, cancel_ok=gate.cancel,
            inline=inline, weight=len,
        )  # fmt: skip
        return self._finish(results)

    def _note_write(
        self,
        located: Located,
        origin: str | None,
        size: int,
        digest: str,
        *,
        created: bool = False,
        key: tuple[int, int, str] | None = None,
    ) -> None:
        """Count a committed write and keep its origin for the watcher (``key``: the file's
        lock key, if the caller has it)."""
        if located.st is not None:
            self.stat_cache.invalidate(located.st)
        with _COUNTER_LOCK:
            if created:
                self.counters.files_created += 1
            else:
                self.counters.files_written += 1
            self.counters.bytes_written += size
        if origin is None:
            return
        if key is None:
            key = write.lock_key(located)
        with self._origins_lock:
            self.origins[key] = (origin, digest)
            self.origins.move_to_end(key)
            while len(self.origins) > 10_000:
                self.origins.popitem(last=False)

    def status(self, policy: PathPolicy | None = None) -> dict[str, Any]:
        policy = policy or self.policy
        return {
            "roots": policy.root_paths(),
            "symlinkPolicy": policy.symlink_policy.value,
            "fdLimit": self.config.fd_limit,
            "maxFileBytes": self.config.max_file_bytes,
            "counters": {**self.counters.snapshot(), "statCache": self.stat_cache.snapshot()},
        }

    async def start(self) -> None:
        """Start background work: removing temp files a crashed process left in the roots.

        Roots given by the operator are cleaned at start; the current-directory default is
        not (it may be a home directory), but roots a client brings are (:meth:`clean_roots`).
        """
        if self.config.roots_from_cli:
            self.clean_roots(self.config.roots)

    def clean_roots(self, roots: Sequence[str]) -> None:
        """Remove stale temp files under ``roots`` in the background, once per root."""
        todo = [r for r in roots if r not in self._cleaned]
        if not todo or self._closed:
            return
        self._cleaned.update(todo)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, write.remove_stale_temps, todo)
        fut.add_done_callback(self._cleanup_done)
        self._cleanups.append(fut)

    def _cleanup_done(self, fut: asyncio.Future[int]) -> None:
        if fut.cancelled():
            return
        if fut.exception() is not None:
            log.warning("temp file clean-up failed: %s", fut.exception())
            return
        self.counters.temps_removed += fut.result()
        if fut.result():
            log.info("removed %d temp files left by a crashed process", fut.result())

    async def wait_started(self) -> None:
        """Wait for the temp-file clean-ups started so far (tests, tools)."""
        if self._cleanups:
            await asyncio.shield(asyncio.gather(*self._cleanups, return_exceptions=True))

    async def start_watcher(self, roots: Sequence[str] | None = None) -> Watcher:
        """Watch ``roots`` (default: the engine's roots); idempotent, roots accumulate."""
        if self.watcher is None:
            self.watcher = Watcher(self, self.config.debounce_ms)
        await self.watcher.start(self.policy.root_paths() if roots is None else roots)
        return self.watcher

    async def aclose(self) -> None:
        """Stop the executor after the work in flight has finished."""
        if self._closed:
            return
        self._closed = True
        if self.watcher is not None:
            await self.watcher.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        if self._fsyncs is not None:
            self._fsyncs.shutdown(wait=True)
        self._closer.stop()
        self.root_fds.close()

    # -- batch runner --------------------------------------------------------------------------

    def _finish(self, results: list[_J | None]) -> list[_J]:
        """Check every slot is filled and count the errors."""
        errors = self.counters.errors
        for r in results:
            if r is None:
                raise AssertionError("a result slot was left empty")
            if isinstance(r, PlokeIoError):
                errors[r.kind.name] += 1
        return results  # type: ignore[return-value]

    def _count_reads(self, files: int, nbytes: int) -> None:
        # Counters are updated from worker threads; int += under the GIL can interleave, so
        # take a lock (cheap next to a file read).
        if files:
            with _COUNTER_LOCK:
                self.counters.files_read += files
                self.counters.bytes_read += nbytes

    def _count_read(self, nbytes: int | None) -> None:
        """One file read (None: it was not read)."""
        if nbytes is not None:
            self._count_reads(1, nbytes)

    async def _run(
        self,
        policy: PathPolicy | None,
        jobs: list[_J],
        work: Callable[[Resolver, _J], None],
        progress: ProgressFn | None,
        *,
        parallelism: int = BATCH_PARALLELISM,
        cancel_ok: Callable[[], bool] | None = None,
        inline: bool = False,
        weight: Callable[[_J], int] | None = None,
    ) -> None:
        """Run ``work`` over ``jobs`` on ``parallelism`` executor threads sharing a Resolver.

        ``inline``: a single job may run on the calling (event loop) thread instead, saving two
        thread hand-offs (~0.1-0.3 ms here, a large part of a small write's latency). The
        server asks for it only when the request is the only one it has running, so nothing
        waits behind it but what arrives meanwhile; a file over ``read.INLINE_MAX_BYTES``
        stops the attempt before any work is done (Offload) and goes to the executor.

        Cancelling the awaiting task stops the workers between files, unless ``cancel_ok``
        says no (a write batch that has committed a file): then the batch runs to its end and
        the cancellation is dropped. The Resolver (and its directory descriptors) is closed
        only after every worker has returned.
        """
        if not jobs:
            return
        if self._closed:
            raise RuntimeError("IoManager is closed")
        loop = asyncio.get_running_loop()
        resolver = Resolver(policy or self.policy, self.root_fds)
        if inline and len(jobs) == 1 and (weight is None or weight(jobs[0]) == 1):
            # One file on the loop's thread, without the executor's machinery.
            try:
                with read.inline_mode():
                    work(resolver, jobs[0])
            except read.Offload:
                pass  # start again on the executor, below
            except BaseException:
                resolver.close()
                raise
            else:
                resolver.close()
                if progress is not None:
                    progress(1, 1)
                return
        stop = threading.Event()
        feed: Iterator[_J] = iter(jobs)
        feed_lock = threading.Lock()
        # Progress counts files: a job is one file unless ``weight`` says how many it holds.
        total = len(jobs) if weight is None else sum(weight(j) for j in jobs)
        done = [0]
        step = max(1, total // 100)
        last_step = [0]

        def report(n: int) -> None:
            if progress is not None:
                progress(n, total)

        def worker() -> None:
            while not stop.is_set():
                with feed_lock:
                    job = next(feed, None)
                if job is None:
                    return
                work(resolver, job)
                if progress is not None:
                    with feed_lock:
                        done[0] += 1 if weight is None else weight(job)
                        n = done[0]
                        due = n // step != last_step[0] or n == total
                        last_step[0] = n // step
                    if due:
                        loop.call_soon_threadsafe(report, n)

        nworkers = min(self.config.fd_limit, parallelism, total)
        futures = [loop.run_in_executor(self._executor, worker) for _ in range(nworkers)]
        all_done = futures[0] if nworkers == 1 else asyncio.gather(*futures)
        try:
            while True:
                try:
                    await asyncio.shield(all_done)
                    break
                except asyncio.CancelledError:
                    if cancel_ok is not None and not cancel_ok():
                        task = asyncio.current_task()
                        if task is not None:
                            task.uncancel()
                        continue  # too late: a file is committed; finish the batch
                    stop.set()
                    with _COUNTER_LOCK:
                        self.counters.cancelled += 1
                    raise
        finally:
            stop.set()
            if all(f.done() for f in futures):
                resolver.close()
            else:
                # Never close descriptors a worker may still use: close when the last one
                # returns, even if this task is cancelled again while waiting.
                waiter = asyncio.gather(*futures, return_exceptions=True)
                waiter.add_done_callback(lambda _f: resolver.close())
                await asyncio.shield(waiter)


_COUNTER_LOCK = threading.Lock()

TRACE = logging.getLogger("ploke_io_server.trace")
"""Spans per request (server) and per file (here); enabled at INFO by ``--trace``."""


def _span(
    op: str, resolver: Resolver, path: str, started: float, nbytes: int | None, result: Any
) -> None:
    """One file operation's span: root-relative path, bytes, duration, outcome."""
    if result is None:
        outcome = "cancelled"
    else:
        outcome = result.kind.name if isinstance(result, PlokeIoError) else "ok"
    fields: dict[str, Any] = {
        "span": op,
        "path": resolver.shown(path) if isinstance(path, str) else repr(path),
        "ms": round((time.perf_counter() - started) * 1000, 3),
        "outcome": outcome,
    }
    if nbytes is not None and nbytes >= 0:
        fields["bytes"] = nbytes
    TRACE.info("%s %s %s", op, fields["path"], outcome, extra={"fields": fields})


_I = TypeVar("_I")
_T = TypeVar("_T")
_U = TypeVar("_U")
_JT = TypeVar("_JT", bound=tuple[str, Any])


def _interleave_dirs(jobs: list[_JT]) -> list[_JT]:
    """Jobs reordered to take their directories in turn (one file of each, then the next)."""
    by_dir: dict[str, list[_JT]] = {}
    for job in jobs:
        by_dir.setdefault(os.path.dirname(job[0]), []).append(job)
    if len(by_dir) <= 1:
        return jobs
    out: list[_JT] = []
    queues = list(by_dir.values())
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def _group_by_path(
    items: Sequence[_I | PlokeIoError], results: list[Any], path_of: Callable[[_I], str]
) -> dict[str, list[tuple[int, _I]]]:
    """Group batch items by path as sent (each distinct file handled once), in first-seen
    order; an item that is already an error goes straight to its result slot."""
    groups: dict[str, list[tuple[int, _I]]] = {}
    for i, item in enumerate(items):
        if isinstance(item, PlokeIoError):
            results[i] = item
        else:
            groups.setdefault(path_of(item), []).append((i, item))
    return groups


_Keyed = tuple[tuple[int, int, str], Located, list[tuple[int, Edit]]]
"""A file of a write chunk: its lock key, where it is, its edits."""


@attrs.define
class _WriteBatch:
    """What every chunk of one write batch shares."""

    results: list[EditResult | PlokeIoError | None]
    max_bytes: int
    origin: str | None
    gate: _CommitGate
    retired: write.Retired


class _CommitGate:
    """Decides, race-free, between a write's first commit and a cancellation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commits = 0
        self._cancelled = False

    def may_commit(self) -> bool:
        with self._lock:
            if self._cancelled:
                return False
            self._commits += 1
            return True

    def cancel(self) -> bool:
        """True if the batch may still be cancelled (nothing committed); it then is."""
        with self._lock:
            if self._commits:
                return False
            self._cancelled = True
            return True


def _item_error(exc: PlokeIoError | OSError, resolver: Resolver, path: str) -> PlokeIoError:
    """An item's error: a PlokeIoError as it is, a stray OS error (EMFILE...) as its kind."""
    if isinstance(exc, PlokeIoError):
        return exc
    return from_os_error(exc, resolver.shown(path))


def _fail(results: list[Any], group: Sequence[tuple[int, Edit]], err: PlokeIoError) -> bool:
    for i, _e in group:
        results[i] = err
    return True


def _fail_file(results: list[Any], prepared: write.PreparedFile, err: PlokeIoError) -> bool:
    for i, _r in prepared.results:
        results[i] = err
    return True


def _abort(
    results: list[Any],
    message: str = "another edit of this atomic batch failed; nothing was changed",
) -> None:
    """Atomic batch stopped: every edit without a result of its own gets batchAborted."""
    for i, r in enumerate(results):
        if r is None:
            results[i] = PlokeIoError(ErrorKind.Io, message, {"reason": "batchAborted"})
