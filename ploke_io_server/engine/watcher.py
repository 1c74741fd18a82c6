"""The watcher: watchdog observers on the roots, debounced, reported as net differences.

Events from the OS are only *hints* of which paths to look at. The watcher keeps the last known
state of every regular file under its roots (an index: path -> device, inode, size, mtime,
ctime and, once known, BLAKE3 digest). When a path has been quiet for the debounce time, it is
looked at again and the *difference* between the index and the file system is reported:

- not known before, there now: ``created``;
- known before, gone now: ``removed``;
- known before, there now, content different: ``modified`` (a chmod or a touch that leaves
  the content as it was is not reported);
- a ``removed`` and a ``created`` of the same inode in one flush: ``renamed`` with ``oldPath``.

So create+modify is ``created``, create+delete is nothing, modify+delete is ``removed``, and an
editor's atomic save (temp file written, then renamed over the target) is ``modified`` of the
target with nothing about the temp file, whatever order the OS reported things in. The
server's own temp files (``.<name>.ploke-tmp.<pid>.<hex>``) are never indexed or reported.
Symlinks and directories are not files: they are not reported themselves (a directory created
or removed reports the files in it).

Nothing is lost: when the kernel's inotify queue overflows (watchdog 7 only rebuilds its
watches then, without telling anyone), the next flush compares the whole index with a fresh
walk of the roots, which reports every difference the dropped events would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from ..errors import PlokeIoError
from ..paths import PathPolicy, Resolver
from .read import current_hash
from .statcache import STAT_KEY, StatCache
from .write import is_temp_name

if TYPE_CHECKING:
    from .manager import IoManager

__all__ = ["FileEvent", "TrustedView", "Watcher", "merge_event"]

log = logging.getLogger(__name__)

MAX_WAIT_FACTOR = 4
"""A path that keeps changing is still reported after this many debounce periods."""

POLL_S = 2.0
"""How often the roots are rescanned when the OS watch limit kept some directory unwatched."""

HEALTH_CHECK_S = 5.0
"""How often an idle watcher checks that its observer threads are alive."""

EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,  # content (IN_MODIFY) and metadata (IN_ATTRIB)
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
"""What the inotify watches ask for. Without a filter watchdog 7 also asks for every open and
close of every file (IN_OPEN, IN_CLOSE_NOWRITE, IN_CLOSE_WRITE): reading 100,000 files of a
watched tree then cost 24 s instead of 2.5 s, in watchdog's thread, under the GIL."""

_ERROR, _WARNING = 1, 2  # LSP MessageType values of window/logMessage

SYNC_TIMEOUT_S = 2.0
"""How long a scan waits for its cookie to come back before it stats every file instead."""

COOKIE_PREFIX = ".ploke-cookie.ploke-tmp."
"""Cookie files are named like temp files, so they are never indexed and a crash's leftovers
are removed at the next start like any other stale temp file."""

LOCAL_FILESYSTEMS = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "zfs", "overlay",
        "jfs", "reiserfs", "bcachefs", "nilfs2",
    }
)  # fmt: skip
"""File systems whose every change this machine makes is seen by inotify. On network and
virtual file systems (nfs, cifs, fuse, 9p, virtiofs...) another machine or the host can change
a file without an event here: scans never trust the watcher there."""


@attrs.define(slots=True)
class FileEvent:
    """One net change of one file, as sent in ``ploke/didChangeFiles``."""

    file_path: str
    kind: str  # created | modified | removed | renamed
    old_path: str | None = None
    file_hash: str | None = None
    origin: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"filePath": self.file_path, "kind": self.kind}
        if self.old_path is not None:
            out["oldPath"] = self.old_path
        if self.file_hash is not None:
            out["fileHash"] = self.file_hash
        if self.origin is not None:
            out["origin"] = self.origin
        return out


def merge_event(pending: dict[str, FileEvent], event: FileEvent) -> None:
    """Fold ``event`` into ``pending`` (path -> event not yet sent to a client).

    The result is what the client must learn, relative to what it was last told: created then
    modified is created; created then removed is nothing; removed then created is modified;
    renamed then removed is the old path removed; a rename of a file the client never heard
    of is a creation.
    """
    path = event.file_path
    if event.kind == "renamed" and event.old_path is not None:
        source = pending.pop(event.old_path, None)
        if source is not None and source.kind == "created":
            event = FileEvent(path, "created", None, event.file_hash, event.origin)
        elif source is not None and source.kind == "renamed":
            event = FileEvent(path, "renamed", source.old_path, event.file_hash, event.origin)
    prev = pending.get(path)
    if prev is None:
        pending[path] = event
        return
    kind = event.kind
    if kind == "removed":
        if prev.kind == "created":
            del pending[path]
        elif prev.kind == "renamed" and prev.old_path is not None:
            del pending[path]
            merge_event(pending, FileEvent(prev.old_path, "removed"))
        else:
            pending[path] = event
    elif kind == "modified" or kind == "created":
        if prev.kind == "created":
            pending[path] = FileEvent(path, "created", None, event.file_hash, event.origin)
        elif prev.kind == "renamed":
            pending[path] = FileEvent(path, "renamed", prev.old_path, event.file_hash, event.origin)
        else:  # modified or removed before: the client knew the file
            pending[path] = FileEvent(path, "modified", None, event.file_hash, event.origin)
    else:  # renamed onto a path with a pending event: the rename says it all
        pending[path] = event


@attrs.define(slots=True)
class _Known:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    digest: str | None = None
    nlink: int = 1
    key: bytes = b""
    """The stat cache's key for this stat (STAT_KEY: device, size, mtime, ctime), kept for
    the scans' hot loop (``read.confirm_from_index`` inlines the cache probe with it: 0.1 s
    less per 100,000 files than calling :meth:`cached_digest`)."""
    directory: str = ""
    """The directory of the path (interned: one string per directory)."""

    @classmethod
    def of(cls, path: str, st: os.stat_result, digest: str | None = None) -> _Known:
        return cls(
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            digest,
            st.st_nlink,
            STAT_KEY.pack(st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
            sys.intern(path.rpartition("/")[0] or "/"),
        )

    def cached_digest(self, cache: StatCache) -> str | None:
        """The stat cache's digest for exactly this stat, if it has one."""
        return cache.probe_fields(self.ino, self.dev, self.size, self.mtime_ns, self.ctime_ns)

    def same_stat(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns) == (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )


# -- overflow detection ------------------------------------------------------------------------

_overflow_listeners: list[Callable[[str], None]] = []
_limit_listeners: list[Callable[[str, OSError], None]] = []
_patch_lock = threading.Lock()
_patched = False


def _install_overflow_hook() -> None:
    """Make watchdog's inotify backend tell us when the kernel queue overflowed.

    watchdog 7.1 handles IN_Q_OVERFLOW by rebuilding its watches and logging a warning, but
    never tells event handlers that events were dropped. We wrap that one method (watchdog is
    pinned to 7.x for it; without inotify, e.g. on macOS, there is nothing to wrap).
    """
    global _patched
    with _patch_lock:
        if _patched:
            return
        _patched = True
        # Its inotify reader thread warns when a new directory's watch is registered twice in
        # a race (the callback is just replaced); under ``-W error`` that would kill the thread.
        warnings.filterwarnings("ignore", "Callback with id", RuntimeWarning)
        try:
            from watchdog.observers.inotify import InotifyWatchGroup
        except ImportError:  # not Linux
            return
        original = InotifyWatchGroup.on_queue_overflow

        def on_queue_overflow(self: Any) -> None:
            original(self)
            path = os.fsdecode(getattr(self, "path", b""))
            for listener in list(_overflow_listeners):
                listener(path)

        InotifyWatchGroup.on_queue_overflow = on_queue_overflow  # type: ignore[method-assign]

        # watchdog also swallows every error of adding a watch below the root, the inotify
        # watch limit (ENOSPC) included: the tree is then silently watched in part. This is
        # watchdog 7.1's InotifyWatchGroup._add_callback with the limit errors reported.

        def _add_callback(self: Any, path: bytes) -> None:
            try:
                wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback, self._id)
                self._active_callbacks_by_path[path] = wd
                self._active_callbacks_by_watch[wd] = path
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    for listener in list(_limit_listeners):
                        listener(os.fsdecode(path), exc)
                if path == self.path:
                    raise

        InotifyWatchGroup._add_callback = _add_callback  # type: ignore[method-assign]


@attrs.frozen
class TrustedView:
    """What a scan may take from the watcher's index instead of a stat of each file.

    Made by :meth:`Watcher.trusted_view` once every event that happened before it was asked
    for has reached the watcher (the cookie came back). A path is trusted when it is in the
    index, has had no event since it was last looked at (not in ``dirty_paths``), no directory
    above it was created, removed or moved since (``dirty_dirs``), it lies under one of
    ``roots`` (watched, on a local file system, still the directory that was watched) on the
    same file system as its root, and it has one link (a file changed through a hard link
    elsewhere makes no event here). The per-file checks are made inline by
    ``read.confirm_from_index``, the scan's hot loop.
    """

    index: dict[str, _Known]
    dirty_paths: frozenset[str]
    dirty_dirs: frozenset[str]
    roots: tuple[str, ...]
    devices: frozenset[int] = frozenset()
    """The file systems of ``roots``: a file on another one (a mount inside a root, which may
    be a network file system) is never taken from the index."""

    def directory_trusted(self, directory: str) -> bool:
        """True if files of ``directory`` (absolute, normalized) may be taken from the index."""
        for root in self.roots:
            if directory == root or directory.startswith(root.rstrip("/") + "/"):
                break
        else:
            return False
        dirty = self.dirty_dirs
        if not dirty:
            return True
        d = directory
        while True:
            if d in dirty:
                return False
            if d in self.roots:
                return True
            parent = d.rpartition("/")[0] or "/"
            if parent == d:
                return True
            d = parent


def _is_cookie(path: str) -> bool:
    return os.path.basename(path).startswith(COOKIE_PREFIX)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, root: str) -> None:
        self.watcher = watcher
        self.root = root

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if (
            event.is_directory
            and event.event_type == "deleted"
            and os.fsdecode(event.src_path) == self.root
        ):
            self.watcher.root_deleted(self.root)  # this watch has ended (IN_DELETE_SELF)
        if not event.is_directory and _is_cookie(os.fsdecode(event.src_path)):
            if event.event_type == "created":
                self.watcher.cookie_seen(os.fsdecode(event.src_path))
            return
        if event.is_directory and event.event_type not in ("created", "deleted", "moved"):
            # A directory "modified" only says an entry in it changed; that entry has its own
            # event. Treating it as a hint would walk the directory on every save in it.
            return
        paths = [os.fsdecode(event.src_path)]
        if event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        self.watcher.hint(paths, event.is_directory)


class Watcher:
    """Watches the roots of one engine and reports net file changes to its subscribers."""

    def __init__(self, engine: IoManager, debounce_ms: int) -> None:
        self.engine = engine
        self.debounce = debounce_ms / 1000
        self.roots: list[str] = []
        self._policy = PathPolicy.of([], engine.policy.symlink_policy)
        """The watched roots, under the engine's symlink policy: how changed files are read."""
        self.index: dict[str, _Known] = {}
        self._observer: BaseObserver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._hinted: set[str] = set()
        self._dirs: set[str] = set()
        self._first: float | None = None
        self._last = 0.0
        self._full_rescan = False
        self._kicked = False
        """A wake-up of the flush loop is pending: bursts wake it once, not once per event."""
        self._flusher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._ready = asyncio.Event()
        self.subscribers: list[Callable[[list[FileEvent]], None]] = []
        self.problem_listeners: list[Callable[[int, str], None]] = []
        """Told (on the event loop) of trouble after the start: (LSP MessageType, text)."""
        self.errors: list[str] = []
        self.health_check_s = HEALTH_CHECK_S
        self.poll_s = POLL_S
        self.degraded = False
        self._last_rescan = 0.0
        """Some directory could not be watched (OS limit): the roots are rescanned by polling."""
        self.counters = {
            "events": 0,
            "flushes": 0,
            "overflows": 0,
            "rescans": 0,
            "syncs": 0,
            "syncFailures": 0,
            "confirmed": 0,
        }
        self.trust = engine.config.trust_watcher
        """Scans may confirm unchanged files from the index (``--no-trust-watcher``: never)."""
        self._closing = False
        self._reconciling: tuple[set[str], set[str], bool] | None = None
        """The hints being reconciled right now (their index entries are being updated)."""
        self._cookies: dict[str, asyncio.Future[None]] = {}
        self._root_ids: dict[str, tuple[int, int]] = {}
        """(device, inode) of each root's directory as watched now."""
        self._watches: dict[str, ObservedWatch] = {}
        self._missing: dict[str, str] = {}
        """Roots whose directory is gone, with the error text shown for each meanwhile."""
        self._deleted_roots: set[str] = set()
        """Roots whose watched directory was deleted (its watch ended), not yet handled."""
        self._local: dict[str, bool] = {}
        """Whether each root is on a file system where inotify sees every change."""

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._observer is not None

    async def start(self, roots: Iterable[str]) -> None:
        """Start watching ``roots`` (more can be added later with :meth:`add_roots`)."""
        if self._observer is not None:
            await self.add_roots(roots)
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        _install_overflow_hook()
        _overflow_listeners.append(self._on_overflow)
        _limit_listeners.append(self._on_watch_limit)
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self._flusher = self._loop.create_task(self._flush_loop())
        await self.add_roots(roots)
        self._ready.set()

    async def add_roots(self, roots: Iterable[str]) -> None:
        assert self._observer is not None and self._loop is not None
        new = [r for r in roots if r not in self.roots]
        for root in new:
            # Watch first, then index: a change during the walk is hinted and looked at after.
            try:
                self._watch(self._observer, root)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    text = _watch_error(root, exc)
                    log.error("%s", text)
                    self.errors.append(text)
                    continue
                self._on_watch_limit(root, exc)  # not even the root: it is polled
            self.roots.append(root)
            self._policy = PathPolicy.of(self.roots, self.engine.policy.symlink_policy)
            try:
                st = os.stat(root)
                self._root_ids[root] = (st.st_dev, st.st_ino)
            except OSError:
                pass
            self._local[root] = _filesystem_type(root) in LOCAL_FILESYSTEMS
            found = await self._loop.run_in_executor(None, _walk, root)
            with self._lock:
                for path, st in found.items():
                    self.index.setdefault(path, _Known.of(path, st))

    async def aclose(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            with _patch_lock:
                if self._on_overflow in _overflow_listeners:
                    _overflow_listeners.remove(self._on_overflow)
                if self._on_watch_limit in _limit_listeners:
                    _limit_listeners.remove(self._on_watch_limit)
            observer.stop()
            await asyncio.get_running_loop().run_in_executor(None, observer.join, 5)
        self._closing = True
        if self._flusher is not None:
            if self._wake is not None:
                self._wake.set()
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None

    def status(self) -> dict[str, Any]:
        return {
            "roots": list(self.roots),
            "degraded": self.degraded,
            "files": len(self.index),
            "errors": list(self.errors),
            "trustedRoots": [r for r in self.roots if self.trust and self._local.get(r)],
            **self.counters,
        }

    # -- scans confirmed from the index ----------------------------------------------------------

    async def trusted_view(self) -> TrustedView | None:
        """A view of the index a scan may trust, or None (then every file is stat-ed).

        Like watchman: a cookie file is created (and removed) in each root and its event
        awaited, so every change made before this call has been heard of (inotify reports the
        events of one watch in order). Then the paths with events not yet reconciled are
        taken as dirty. None when the watcher is not fully trustworthy: turned off, degraded
        by the watch limit, a rescan pending after an overflow, a dead observer thread, a
        cookie that could not be made or did not come back in time.
        """
        observer = self._observer
        if not self.trust or observer is None or self.degraded or not self._ready.is_set():
            return None
        roots = []
        for root in self.roots:
            if not self._local.get(root):
                continue
            try:
                st = os.stat(root)
            except OSError:
                continue
            if self._root_ids.get(root) == (st.st_dev, st.st_ino):
                roots.append(root)
        if not roots or not await self._sync(roots):
            return None
        with self._lock:
            rec = self._reconciling
            if self._full_rescan or self.degraded or (rec is not None and rec[2]):
                return None
            paths = set(self._hinted)
            dirs = {d.rstrip("/") or "/" for d in self._dirs}
            if rec is not None:
                paths |= rec[0]
                dirs |= {d.rstrip("/") or "/" for d in rec[1]}
        if not observer.is_alive() or any(not e.is_alive() for e in observer.emitters):
            return None
        devices = frozenset(self._root_ids[r][0] for r in roots)
        return TrustedView(self.index, frozenset(paths), frozenset(dirs), tuple(roots), devices)

    async def _sync(self, roots: Sequence[str]) -> bool:
        """Make a cookie in each root and wait for their events; False if that failed."""
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        names: list[str] = []
        ok = True
        try:
            for root in roots:
                name = os.path.join(root, f"{COOKIE_PREFIX}{os.getpid()}.{secrets.token_hex(4)}")
                fut: asyncio.Future[None] = loop.create_future()
                self._cookies[name] = fut
                names.append(name)
                waiting.append(fut)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                os.close(fd)
                os.unlink(name)
            _done, pending = await asyncio.wait(waiting, timeout=SYNC_TIMEOUT_S)
            ok = not pending
        except OSError as exc:  # a read-only root, no permission: stat every file
            log.debug("watcher: no cookie sync: %s", exc)
            ok = False
        finally:
            for name in names:
                self._cookies.pop(name, None)
        with self._lock:
            self.counters["syncs" if ok else "syncFailures"] += 1
        return ok

    def cookie_seen(self, path: str) -> None:
        """Observer thread: the event of a cookie arrived."""
        fut = self._cookies.get(path)
        loop = self._loop
        if fut is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_resolve, fut)

    def count_confirmed(self, n: int) -> None:
        if n:
            with self._lock:
                self.counters["confirmed"] += n

    # -- intake (observer threads) -------------------------------------------------------------

    def hint(self, paths: Sequence[str], is_directory: bool) -> None:
        now = time.monotonic()
        with self._lock:
            for p in paths:
                if is_directory:
                    self._dirs.add(p)
                elif not is_temp_name(os.path.basename(p)):
                    self._hinted.add(p)
            self.counters["events"] += 1
            if self._first is None:
                self._first = now
            self._last = now
            if self._kicked:  # the flush loop is already awake: it reads _first/_last
                return
            self._kicked = True
        self._kick()

    def root_deleted(self, root: str) -> None:
        """Observer thread: the directory a root's watch was on is deleted."""
        with self._lock:
            self._deleted_roots.add(root)
        self._kick()

    def _on_overflow(self, path: str) -> None:
        log.warning("inotify queue overflow below %r: rescanning the roots", path)
        self._report(
            _WARNING,
            f"inotify queue overflow below {path!r}: events were dropped, the roots are being "
            "rescanned (nothing is lost; raise fs.inotify.max_queued_events if this repeats)",
        )
        with self._lock:
            self.counters["overflows"] += 1
        self._mark_rescan(restart_debounce=True)
        self._kick()

    def _on_watch_limit(self, path: str, exc: OSError) -> None:
        """A directory could not be watched (OS limit): poll the roots from now on.

        The limit is per user, so any watcher of this process hitting it degrades all.
        """
        text = _watch_error(path, exc) + f"; polling the roots every {self.poll_s:g} s instead"
        with self._lock:
            first = not self.degraded
            self.degraded = True
            if first:
                self.errors.append(text)
        if first:
            log.error("%s", text)
            self._report(_ERROR, text)
        self._kick()

    def _report(self, level: int, text: str) -> None:
        """Tell the problem listeners, from any thread."""
        loop = self._loop
        if loop is not None and self.problem_listeners:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._tell, level, text)

    def _tell(self, level: int, text: str) -> None:
        for listener in list(self.problem_listeners):
            try:
                listener(level, text)
            except Exception:
                log.exception("watcher: a problem listener failed")

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(wake.set)

    # -- flushing (event loop) -----------------------------------------------------------------

    async def _flush_loop(self) -> None:
        assert self._wake is not None and self._loop is not None
        await self._ready.wait()
        while not self._closing:
            try:
                period = self.poll_s if self.degraded else self.health_check_s
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel that
                # lands as the event is set, and aclose then waited for this loop forever.
                async with asyncio.timeout(period):
                    await self._wake.wait()
            except TimeoutError:
                self._check_health()
                if not self.degraded:
                    continue
                self._mark_rescan()  # degraded: a periodic full rescan finds what was not heard
            self._wake.clear()
            with self._lock:
                self._kicked = False
            # Trailing debounce: wait until nothing happened for `debounce`, or until the first
            # pending change is MAX_WAIT_FACTOR periods old.
            while True:
                with self._lock:
                    first, last = self._first, self._last
                if first is None:
                    break
                now = time.monotonic()
                due = min(last + self.debounce, first + MAX_WAIT_FACTOR * self.debounce)
                if now >= due:
                    break
                await asyncio.sleep(due - now)
            # A large scan running now is looking at these very files: let it finish first
            # (the paths stay dirty meanwhile, so it does not trust the index for them).
            await self.engine.scans_settled(MAX_WAIT_FACTOR * self.debounce)
            with self._lock:
                if self._first is None:
                    continue
                hinted, self._hinted = self._hinted, set()
                dirs, self._dirs = self._dirs, set()
                full, self._full_rescan = self._full_rescan, False
                self._first = None
                if self.degraded and time.monotonic() - self._last_rescan >= self.poll_s:
                    full = True  # degraded: rescan at least every poll_s, busy or not
                self._reconciling = (hinted, dirs, full)
            try:
                events = await self._loop.run_in_executor(None, self._reconcile, hinted, dirs, full)
            except Exception as exc:
                log.exception("watcher: reconciling changes failed; rescanning next time")
                self._report(
                    _ERROR, f"the watcher failed to look at changes ({exc}); rescanning the roots"
                )
                self._mark_rescan(restart_debounce=True)
                self._kick()
                continue
            finally:
                with self._lock:
                    self._reconciling = None
            self.counters["flushes"] += 1
            if events:
                for subscriber in list(self.subscribers):
                    try:
                        subscriber(events)
                    except Exception:
                        log.exception("watcher: a subscriber failed")

    def _check_health(self) -> None:
        """An observer thread that died (a bug, an OS error) is restarted, then a full rescan
        reports whatever happened while nobody was listening. A root whose directory was
        replaced is watched again (see :meth:`_check_roots`)."""
        observer = self._observer
        if observer is None:
            return
        self._check_roots(observer)
        dead = [e for e in observer.emitters if not e.is_alive()]
        if not dead and observer.is_alive():
            return
        try:
            if observer.is_alive():
                observer.unschedule_all()
            else:  # the observer's own thread is gone: a new observer
                observer = Observer()
                observer.daemon = True
                observer.start()
                self._observer = observer
            for root in self.roots:
                if root in self._missing:
                    continue
                self._watch(observer, root)
        except Exception as exc:
            text = f"a watcher thread stopped and could not be restarted: {exc}"
            log.exception("watcher: %s", text)
            if text not in self.errors:
                self.errors.append(text)
                self._report(_ERROR, text)
            return
        self._problem("a watcher thread stopped; it was restarted and the roots rescanned", _ERROR)
        self._mark_rescan()
        self._kick()

    def _check_roots(self, observer: BaseObserver) -> None:
        """A root whose directory is gone, or is another directory now (``rm -rf`` and
        ``git clone``, a ``mv`` away and a new one in its place), is not watched by its old
        inotify watch any more: that watch went with the old directory. The new directory is
        watched, and a full rescan reports the difference; a missing root is reported, and
        watched again once it is back."""
        with self._lock:
            deleted, self._deleted_roots = self._deleted_roots, set()
        for root in self.roots:
            try:
                st = os.stat(root)
                ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError:
                ident = None
            if (
                ident is not None
                and ident == self._root_ids.get(root)
                and root not in self._missing
                and root not in deleted  # a new directory may get the old one's inode number
            ):
                continue
            watch = self._watches.get(root)
            if watch is not None:
                del self._watches[root]
                with contextlib.suppress(Exception):
                    observer.unschedule(watch)
            if ident is None:
                if root not in self._missing:
                    text = f"the root {root!r} is gone; it is watched again once it is back"
                    self._missing[root] = text
                    self._problem(text, _WARNING)
                    self._mark_rescan()  # what was indexed below it is reported removed
                    self._kick()
                continue
            gone = self._missing.pop(root, None)
            if gone is not None and gone in self.errors:
                self.errors.remove(gone)
            try:
                self._watch(observer, root)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    self._on_watch_limit(root, exc)
                else:
                    text = _watch_error(root, exc)
                    self._missing[root] = text
                    self._problem(text, _ERROR)
                    continue
            self._root_ids[root] = ident
            self._local[root] = _filesystem_type(root) in LOCAL_FILESYSTEMS
            self._problem(
                f"the root {root!r} is a new directory now; watching it and rescanning",
                _WARNING,
                keep=False,
            )
            self._mark_rescan()
            self._kick()

    def _watch(self, observer: BaseObserver, root: str) -> None:
        """Schedule the recursive watch of ``root`` (OSError if it cannot be watched)."""
        self._watches[root] = observer.schedule(
            _Handler(self, root), root, recursive=True, event_filter=EVENT_FILTER
        )

    def _problem(self, text: str, level: int, *, keep: bool = True) -> None:
        """Log ``text``, tell the sessions, and (``keep``) list it in ``errors`` (status)."""
        log.log(logging.ERROR if level == _ERROR else logging.WARNING, "watcher: %s", text)
        if keep and text not in self.errors:
            self.errors.append(text)
        self._report(level, text)

    def _mark_rescan(self, *, restart_debounce: bool = False) -> None:
        """Make the next flush a full rescan of the roots (and make a flush pending)."""
        now = time.monotonic()
        with self._lock:
            self._full_rescan = True
            self._first = self._first or now
            if restart_debounce:
                self._last = now

    def _reconcile(self, hinted: set[str], dirs: set[str], full: bool) -> list[FileEvent]:
        """Compare the index with the file system for the hinted paths; update it."""
        paths = set(hinted)
        index = self.index
        if full:
            self.counters["rescans"] += 1
            self._last_rescan = time.monotonic()
            for root in self.roots:
                paths.update(_walk(root))
            paths.update(index)
        if dirs:
            # Directories created, removed or moved: every known file below them, and every
            # file below them now (one pass over the index for all of them).
            prefixes = tuple(d.rstrip("/") + "/" for d in dirs)
            paths.update(p for p in list(index) if p.startswith(prefixes))
            for d in dirs:
                paths.update(_walk(d))
        resolver = Resolver(self._policy, self.engine.root_fds)
        created: dict[str, os.stat_result] = {}
        removed: dict[str, _Known] = {}
        changed: list[tuple[str, _Known, os.stat_result]] = []
        try:
            for path in sorted(paths):
                old = index.get(path)
                st = _lstat_file(path)
                if st is None:
                    if old is not None:
                        removed[path] = old
                elif old is None:
                    created[path] = st
                elif not old.same_stat(st):
                    changed.append((path, old, st))
                elif path in hinted and old.digest is not None:
                    # An event but the same stat: a rewrite within one timestamp tick looks
                    # like this. The content decides.
                    changed.append((path, old, st))
            events: list[FileEvent] = []
            # Renames: a file gone and a file appeared with the same inode.
            by_inode = {(k.dev, k.ino): p for p, k in removed.items()}
            for path, st in sorted(created.items()):
                src = by_inode.pop((st.st_dev, st.st_ino), None)
                digest = self._hash(resolver, path, st)
                if src is not None:
                    old = removed.pop(src)
                    index.pop(src, None)
                    events.append(FileEvent(path, "renamed", src, digest))
                else:
                    events.append(FileEvent(path, "created", None, digest))
                index[path] = _Known.of(path, st, digest)
            for path, old in sorted(removed.items()):
                index.pop(path, None)
                self._invalidate(old)
                events.append(FileEvent(path, "removed"))
            for path, old, st in changed:
                if old.digest is None:  # not hashed since the watcher started: maybe cached
                    old.digest = old.cached_digest(self.engine.stat_cache)
                digest = self._hash(resolver, path, st)
                index[path] = _Known.of(path, st, digest)
                self._invalidate(old)
                if digest is not None and digest == old.digest:
                    continue  # metadata only (chmod, touch): the content is what it was
                events.append(FileEvent(path, "modified", None, digest))
        finally:
            resolver.close()
        for ev in events:
            if ev.kind != "removed":
                ev.origin = self._origin_of(ev.file_path, ev.file_hash)
        return events

    def _hash(self, resolver: Resolver, path: str, st: os.stat_result) -> str | None:
        try:
            digest, _st, _n = current_hash(
                resolver, path, self.engine.config.max_file_bytes, self.engine.stat_cache
            )
        except PlokeIoError:
            return None
        return digest

    def _invalidate(self, old: _Known) -> None:
        self.engine.stat_cache.entries.pop(old.ino, None)

    def _origin_of(self, path: str, digest: str | None) -> str | None:
        """The origin of the write that produced this content, if the daemon made it."""
        parent, name = os.path.split(path)
        try:
            st = os.stat(parent)
        except OSError:
            return None
        engine = self.engine
        with engine._origins_lock:
            entry = engine.origins.get((st.st_dev, st.st_ino, name))
            if entry is None or digest is None or entry[1] != digest:
                return None
            del engine.origins[(st.st_dev, st.st_ino, name)]
            return entry[0]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _filesystem_type(path: str) -> str | None:
    """The type of the file system ``path`` is on (Linux: /proc/self/mountinfo), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        # id parent major:minor root mount-point options [optional...] - fstype source super
        left, sep, right = line.partition(" - ")
        fields = left.split(" ")
        if not sep or len(fields) < 5 or not right:
            continue
        mount = _unescape_mount(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split(" ")[0]
    return best_type


def _unescape_mount(field: str) -> str:
    """Mount points in mountinfo have space, tab, newline and backslash as octal escapes."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _lstat_file(path: str) -> os.stat_result | None:
    """The lstat of a regular file, or None (missing, a directory, a symlink, a temp file)."""
    if is_temp_name(os.path.basename(path)):
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _walk(top: str) -> dict[str, os.stat_result]:
    """Every regular file below ``top`` (symlinks not followed), with its lstat."""
    out: dict[str, os.stat_result] = {}
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False) and not is_temp_name(entry.name):
                            out[entry.path] = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
        except OSError:
            continue
    return out


def _watch_error(root: str, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"cannot watch {root!r}: the inotify watch limit is reached "
            "(raise fs.inotify.max_user_watches, see docs/watcher.md)"
        )
    if exc.errno == errno.EMFILE:
        return (
            f"cannot watch {root!r}: too many inotify instances "
            "(raise fs.inotify.max_user_instances, see docs/watcher.md)"
        )
    return f"cannot watch {root!r}: {exc.strerror or exc}"
