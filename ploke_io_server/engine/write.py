"""Blocking write work, run on the engine's executor: edits and file creation, committed safely.

Per file, under a lock keyed by the directory entry (the directory's device and inode, and the
name), shared by every client of the process::

    read -> verify expectedHash -> check UTF-8 and ranges -> splice
    -> temp file in the same directory (O_CREAT|O_EXCL|O_NOFOLLOW, 0600, recognisable name)
    -> write -> fsync -> restore the original mode -> rename over the target (same dir fd)
    -> fsync the directory

A failed fsync is a failed write and is never retried. Every name is opened relative to the
directory descriptor the path policy resolved, so a directory swapped for a symlink after the
check cannot redirect the temp file or the rename.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import itertools
import os
import queue
import random
import re
import secrets
import stat
import threading
from collections.abc import Callable, Sequence

import attrs

from ..errors import ErrorKind, PlokeIoError, from_os_error
from ..hashing import hash_bytes
from ..paths import Located, Resolver
from ..types import Created, Edit, EditResult, NewFile
from .read import read_all

__all__ = [
    "TEMP_MARK",
    "DirSync",
    "FdBudget",
    "FileLocks",
    "PreparedFile",
    "Retired",
    "close_retired",
    "commit",
    "create_file",
    "dir_key",
    "discard",
    "is_temp_name",
    "prepare_edits",
    "remove_stale_temps",
    "rename_into_place",
    "sync_temp",
    "validate_group",
]

TEMP_MARK = ".ploke-tmp."
"""Temp files are named ``.<name>.ploke-tmp.<pid>.<random>``: recognisable at start-up."""

_NAME_MAX = 255
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


_EUID_EGID = (os.geteuid(), os.getegid())
"""The server's effective user and group (a process's credentials do not change here)."""

_TEMP_RE = re.compile(r"^\..*\.ploke-tmp\.(\d+)\.[0-9a-f]{8}$", re.DOTALL)


def is_temp_name(name: str) -> bool:
    """True for the exact names our temp files get (``.<name>.ploke-tmp.<pid>.<8 hex>``)."""
    return _TEMP_RE.match(name) is not None


class _TempNames:
    """The pid and a random source for temp names, without a system call per name (the pid
    is read again after a fork). The names need not be unpredictable: temp files are created
    with O_EXCL | O_NOFOLLOW relative to a directory descriptor."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.pid = os.getpid()
        self.random = random.Random(secrets.randbits(64))


_NAMES = _TempNames()


def _temp_name(name: str) -> str:
    """``.<name>.ploke-tmp.<pid>.<hex>``, the name cut (on a character) to fit 255 bytes."""
    suffix = f"{TEMP_MARK}{_NAMES.pid}.{_NAMES.random.getrandbits(32):08x}"
    room = _NAME_MAX - len(suffix) - 1
    head = os.fsencode(name)[:room]
    return "." + head.decode("utf-8", "ignore") + suffix


class _LockEntry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class FileLocks:
    """One lock per directory entry, shared by every operation of the engine."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[int, int, str], _LockEntry] = {}

    def hold(self, keys: Sequence[tuple[int, int, str]]) -> _Held:
        """Hold the locks of ``keys`` (taken in sorted order: no deadlock between batches)."""
        return _Held(self, sorted(set(keys)) if len(keys) > 1 else list(keys))


class _Held:
    """The context manager of :meth:`FileLocks.hold` (a class: the write path's hottest one)."""

    __slots__ = ("_entries", "_keys", "_locks", "_taken")

    def __init__(self, locks: FileLocks, keys: list[tuple[int, int, str]]) -> None:
        self._locks = locks
        self._keys = keys
        self._entries: list[_LockEntry] = []
        self._taken = 0

    def __enter__(self) -> None:
        locks = self._locks
        entries = self._entries
        with locks._guard:
            for key in self._keys:
                entry = locks._locks.get(key)
                if entry is None:
                    entry = locks._locks[key] = _LockEntry()
                entry.users += 1
                entries.append(entry)
        try:
            for entry in entries:
                entry.lock.acquire()
                self._taken += 1
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        entries = self._entries
        for entry in reversed(entries[: self._taken]):
            entry.lock.release()
        self._taken = 0
        locks = self._locks
        with locks._guard:
            for key, entry in zip(self._keys, entries, strict=True):
                entry.users -= 1
                if entry.users == 0:
                    del locks._locks[key]
        entries.clear()


def dir_key(located: Located) -> tuple[int, int]:
    """The device and inode of a located file's directory."""
    try:
        st = os.fstat(located.dir_fd)
    except OSError as exc:
        raise from_os_error(exc, located.shown) from None
    return (st.st_dev, st.st_ino)


def lock_key(located: Located) -> tuple[int, int, str]:
    return (*dir_key(located), located.name)


@attrs.define
class PreparedFile:
    """One file's edits, verified and written to a temp file, ready to be renamed in place."""

    located: Located
    old_hash: str
    new_hash: str
    results: list[tuple[int, EditResult]]
    temp: str | None = None
    mode: int = 0o644
    new_size: int = 0
    old_fd: int = -1
    """The original's read descriptor, held across the rename (see :class:`Retired`)."""
    temp_fd: int = -1
    """The temp file, written but not yet fsynced (``prepare_edits(sync=False)``)."""
    key: tuple[int, int, str] | None = None
    """The file's :func:`lock_key`, when the caller took its lock with it."""


class FdBudget:
    """How many replaced files' descriptors the engine may hold open at once (Retired)."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self.held = 0

    def take(self) -> bool:
        with self._lock:
            if self.held >= self._limit:
                return False
            self.held += 1
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.held -= n


class Retired:
    """Descriptors of replaced files, to be closed once the request has its answer.

    Renaming over a file does not free the old inode while a descriptor of it is open: the
    kernel frees it (truncation, block release, a discard on SSDs) at the last close. Keeping
    the descriptor the original was read through across the rename moves that work, ~0.2 ms
    per file on this machine's ext4, off the write's latency; the engine closes these after
    the results are handed back. Nothing about durability changes: the new content is made
    durable by the temp file's and the directory's fsyncs, not by freeing the old one.
    Beyond the engine's ``budget`` (twice the fd limit, across all requests), a descriptor
    is closed at once instead.
    """

    __slots__ = ("_budget", "_done", "_fds", "_lock")

    def __init__(self, budget: FdBudget) -> None:
        self._lock = threading.Lock()
        self._budget = budget
        self._fds: list[int] = []
        self._done = False

    def add(self, fd: int) -> None:
        with self._lock:
            if not self._done and self._budget.take():
                self._fds.append(fd)
                return
        _close_quietly(fd)  # over budget, or a worker outlived its request: close now

    def take(self) -> list[int]:
        """The descriptors gathered so far (the caller closes them with
        :func:`close_retired`); any added later are closed at once."""
        with self._lock:
            self._done = True
            fds, self._fds = self._fds, []
        return fds


class Closer:
    """A thread that closes replaced files' descriptors (:class:`Retired`) for the lone-write
    path, so that freeing the old inode (~0.2-0.3 ms on this machine's ext4 with
    ``discard``: a synchronous discard) overlaps the client's next request instead of
    delaying it (docs/performance.md). Started on first use (again in a forked child)."""

    def __init__(self, budget: FdBudget) -> None:
        self._budget = budget
        self._queue: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, fds: list[int]) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="ploke-closer", daemon=True
                    )
                    self._thread.start()
        self._queue.put(fds)

    def _run(self) -> None:
        while (fds := self._queue.get()) is not None:
            close_retired(fds, self._budget)

    def stop(self) -> None:
        """Close what is queued and end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join()


def close_retired(fds: Sequence[int], budget: FdBudget) -> None:
    for fd in fds:
        _close_quietly(fd)
    budget.give_back(len(fds))


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def validate_group(edits: Sequence[tuple[int, Edit]]) -> PlokeIoError | None:
    """Edits of one file must agree on expectedHash and must not overlap (else InvalidRange)."""
    hashes = {e.expected_hash.lower() for _i, e in edits}
    if len(hashes) > 1:
        return PlokeIoError(
            ErrorKind.InvalidRange,
            "edits of one file disagree on expectedHash; the file was not changed",
        )
    spans = sorted((e.start_byte, e.end_byte) for _i, e in edits)
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        if s2 < e1 or (s1 == s2 and (s1 == e1 or s2 == e2)):
            return PlokeIoError(
                ErrorKind.InvalidRange,
                f"edits {s1}..{e1} and {s2}..{e2} of one file overlap; the file was not changed",
            )
    for _i, e in edits:
        if e.start_byte > e.end_byte:
            return PlokeIoError(
                ErrorKind.InvalidRange,
                f"range {e.start_byte}..{e.end_byte}: start is after end",
            )
    return None


def _read_locked(located: Located, max_bytes: int) -> tuple[bytes, os.stat_result, int]:
    """The file's bytes, its stat and its (still open) descriptor."""
    shown = located.shown
    try:
        fd = os.open(located.name, _READ_FLAGS, dir_fd=located.dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PlokeIoError(
                ErrorKind.Io, f"{shown}: replaced by a symlink during the write; retry"
            ) from None
        raise from_os_error(exc, shown) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a regular file")
        return read_all(fd, st.st_size, max_bytes, shown), st, fd
    except OSError as exc:
        os.close(fd)
        raise from_os_error(exc, shown) from None
    except BaseException:
        os.close(fd)
        raise


def prepare_edits(
    located: Located,
    edits: Sequence[tuple[int, Edit]],
    max_bytes: int,
    *,
    dry_run: bool,
    sync: bool = True,
) -> PreparedFile:
    """Verify and splice one file's edits (its lock held); write the temp file unless dry_run.

    ``sync=False`` leaves the temp file unsynced and open (``temp_fd``): the caller fsyncs
    it with :func:`sync_temp` (a batch fsyncs its files in parallel) before the rename.
    """
    data, st, fd = _read_locked(located, max_bytes)
    try:
        prepared = _prepare(located, edits, data, st, dry_run=dry_run, sync=sync)
    except BaseException:
        os.close(fd)
        raise
    if dry_run:
        os.close(fd)
    else:
        prepared.old_fd = fd
    return prepared


def _prepare(
    located: Located,
    edits: Sequence[tuple[int, Edit]],
    data: bytes,
    st: os.stat_result,
    *,
    dry_run: bool,
    sync: bool,
) -> PreparedFile:
    shown = located.shown
    old_hash = hash_bytes(data)
    want = edits[0][1].expected_hash
    if want.lower() != old_hash:
        raise PlokeIoError(
            ErrorKind.ContentMismatch,
            f"{shown}: content changed (hash mismatch); the file was not changed",
            {"expected": want, "actual": old_hash},
        )
    try:
        old_text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlokeIoError(
            ErrorKind.NotUtf8, f"{shown}: not valid UTF-8 (at byte {exc.start})"
        ) from None
    size = len(data)
    for _i, e in edits:
        for off in (e.start_byte, e.end_byte):
            if off > size:
                raise PlokeIoError(
                    ErrorKind.InvalidRange,
                    f"{shown}: range {e.start_byte}..{e.end_byte} is not within 0..{size}",
                    {"startByte": e.start_byte, "endByte": e.end_byte, "size": size},
                )
            if off < size and data[off] & 0xC0 == 0x80:
                raise PlokeIoError(
                    ErrorKind.InvalidRange,
                    f"{shown}: range {e.start_byte}..{e.end_byte} is not on UTF-8 "
                    "character boundaries",
                    {"startByte": e.start_byte, "endByte": e.end_byte, "size": size},
                )
    # Splice in offset order; each replacement's new range shifts by what came before it.
    parts: list[bytes] = []
    pos = 0
    shift = 0
    placed: dict[int, tuple[int, int]] = {}
    for i, e in sorted(edits, key=lambda item: (item[1].start_byte, item[1].end_byte)):
        repl = utf8_of(e.replacement, "the replacement", shown)
        parts.append(data[pos : e.start_byte])
        parts.append(repl)
        pos = e.end_byte
        new_start = e.start_byte + shift
        placed[i] = (new_start, new_start + len(repl))
        shift += len(repl) - (e.end_byte - e.start_byte)
    parts.append(data[pos:])
    new_data = b"".join(parts)
    new_hash = hash_bytes(new_data)
    diff = None
    if dry_run:
        diff = unified_diff(old_text, new_data.decode("utf-8"), shown)
    results = [
        (
            i,
            EditResult(
                file_path=e.file_path,
                old_hash=old_hash,
                new_hash=new_hash,
                new_start_byte=placed[i][0],
                new_end_byte=placed[i][1],
                diff=diff,
            ),
        )
        for i, e in edits
    ]
    prepared = PreparedFile(
        located, old_hash, new_hash, results, mode=stat.S_IMODE(st.st_mode), new_size=len(new_data)
    )
    if not dry_run:
        prepared.temp, prepared.temp_fd = _write_temp(
            located, new_data, prepared.mode, st, sync=sync
        )
    return prepared


def utf8_of(text: str, what: str, shown: str) -> bytes:
    """``text`` as UTF-8; NotUtf8 if it holds a lone surrogate, which no UTF-8 can encode
    (JSON's ``\\udcff`` escape, or a Python string from ``os.fsdecode``)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PlokeIoError(
            ErrorKind.NotUtf8,
            f"{shown}: {what} is not valid Unicode text (a lone surrogate "
            f"U+{ord(text[exc.start]):04X} at character {exc.start}); nothing was changed",
        ) from None


def unified_diff(old: str, new: str, shown: str) -> str:
    """A unified diff, with git's marker for a last line that has no newline."""
    out = []
    for line in difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"a/{shown}",
        tofile=f"b/{shown}",
    ):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _write_temp(
    located: Located, data: bytes, mode: int, st: os.stat_result | None, *, sync: bool = True
) -> tuple[str, int]:
    """Write ``data`` to a new temp file beside the target, give it the target's owner and
    mode, and fsync it (owner and mode first, so the fsync makes them durable too).

    Returns the temp file's name, and with ``sync=False`` its still open, unsynced
    descriptor (else -1).
    """
    shown = located.shown
    temp = _temp_name(located.name)
    try:
        fd = os.open(temp, _WRITE_FLAGS, 0o600, dir_fd=located.dir_fd)
    except OSError as exc:
        raise from_os_error(exc, shown) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if st is not None and (st.st_uid, st.st_gid) != _EUID_EGID:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, mode)  # after fchown, which clears setuid/setgid
        if sync:
            os.fsync(fd)  # a failure here fails the write: never retried (fsyncgate)
    except OSError as exc:
        os.close(fd)
        _unlink_quietly(located, temp)
        raise from_os_error(exc, shown) from None
    if sync:
        os.close(fd)
        return temp, -1
    return temp, fd


def sync_temp(prepared: PreparedFile) -> PlokeIoError | None:
    """Fsync a temp file written by ``prepare_edits(sync=False)`` and close it; on failure
    remove it (and close the original) and return the error: the file is not changed."""
    fd, prepared.temp_fd = prepared.temp_fd, -1
    if fd < 0:
        return None
    try:
        os.fsync(fd)  # a failure here fails the write: never retried (fsyncgate)
    except OSError as exc:
        discard(prepared)
        return from_os_error(exc, prepared.located.shown)
    finally:
        os.close(fd)
    return None


def commit(
    prepared: PreparedFile,
    dirs: DirSync,
    retired: Retired,
    directory: tuple[int, int] | None = None,
) -> None:
    """Rename the temp file over the target, then make the rename durable (directory fsync).
    ``directory``: the target directory's :func:`dir_key`, if the caller has it."""
    rename_into_place(prepared, retired)
    dirs.sync(prepared.located, directory)


def rename_into_place(prepared: PreparedFile, retired: Retired) -> None:
    """Rename the temp file over the target (not yet durable: see :class:`DirSync`); the
    original's descriptor goes to ``retired``."""
    located = prepared.located
    assert prepared.temp is not None
    assert prepared.temp_fd < 0, "a temp file is renamed only once fsynced"
    try:
        os.replace(
            prepared.temp, located.name, src_dir_fd=located.dir_fd, dst_dir_fd=located.dir_fd
        )
    except OSError as exc:
        discard(prepared)
        raise from_os_error(exc, located.shown) from None
    prepared.temp = None
    if prepared.old_fd >= 0:
        retired.add(prepared.old_fd)
        prepared.old_fd = -1


class _DirState:
    __slots__ = ("done", "error", "failed_upto", "requested", "running", "users")

    def __init__(self) -> None:
        self.requested = 0  # tickets handed out (one per rename waiting to be durable)
        self.done = 0  # every ticket up to this one is covered by a successful fsync
        self.failed_upto = 0  # every ticket up to this one was in a failed fsync
        self.error: PlokeIoError | None = None  # of the last failed fsync
        self.running = False
        self.users = 0


class DirSync:
    """Directory fsyncs, group-committed across every thread and client of the engine.

    After a rename, a writer needs *an* fsync of its directory that started after the rename;
    it need not be its own. So each rename takes a ticket; one thread at a time fsyncs a
    given directory, covering every ticket taken before it started, and the writers it covered
    return without an fsync of their own. A single writer pays exactly one fsync, as before;
    a batch of 200 files in 10 directories pays a few dozen instead of 200.

    A failed fsync fails every write it covered and is never retried for them (fsyncgate);
    renames after it get a fresh fsync.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._dirs: dict[tuple[int, int], _DirState] = {}

    def sync(self, located: Located, key: tuple[int, int] | None = None) -> None:
        """Return once an fsync of ``located``'s directory (``key``: its :func:`dir_key`, if
        the caller has it) that started after this call has succeeded."""
        if key is None:
            key = dir_key(located)
        cond = self._cond
        with cond:
            state = self._dirs.get(key)
            if state is None:
                state = self._dirs[key] = _DirState()
            state.users += 1
            state.requested += 1
            ticket = state.requested
        try:
            while True:
                with cond:
                    while True:
                        if state.done >= ticket:
                            return
                        if state.failed_upto >= ticket:
                            assert state.error is not None
                            raise PlokeIoError(
                                state.error.kind,
                                f"{located.shown}: the directory fsync after the rename failed "
                                "(another write's, which covered this one); the change may not "
                                "be durable",
                            )
                        if not state.running:
                            state.running = True
                            target = state.requested
                            break
                        cond.wait()
                try:
                    fsync_dir(located)
                except PlokeIoError as err:
                    with cond:
                        state.running = False
                        state.failed_upto = target
                        state.error = err
                        cond.notify_all()
                    raise
                with cond:
                    state.running = False
                    state.done = target
                    cond.notify_all()
        finally:
            with cond:
                state.users -= 1
                if state.users == 0:
                    del self._dirs[key]


def fsync_dir(located: Located) -> None:
    try:
        try:
            os.fsync(located.dir_fd)  # a directory opened for reading (paths._BENEATH_FLAGS)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            # An O_PATH descriptor (the root, or a directory the component walk opened).
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=located.dir_fd)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        raise from_os_error(exc, located.shown) from None


def discard(prepared: PreparedFile) -> None:
    """Remove a temp file that will not be committed (and close the original)."""
    if prepared.temp is not None:
        _unlink_quietly(prepared.located, prepared.temp)
        prepared.temp = None
    if prepared.old_fd >= 0:
        _close_quietly(prepared.old_fd)
        prepared.old_fd = -1
    if prepared.temp_fd >= 0:
        _close_quietly(prepared.temp_fd)
        prepared.temp_fd = -1


def _unlink_quietly(located: Located, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=located.dir_fd)


def create_file(
    resolver: Resolver,
    new: NewFile,
    locks: FileLocks,
    dirs: DirSync,
    max_bytes: int,
    may_commit: Callable[[], bool],
    committed: Callable[[Located, int, str], None],
) -> Created | None:
    """Create one file durably: temp file, fsync, then link (no replace) or rename (overwrite).

    ``may_commit()`` is asked just before the file appears (False: cancelled, nothing done,
    None returned); ``committed(located, size, digest)`` is told after.
    """
    path = new.file_path
    data = utf8_of(new.content, "the content", resolver.shown(path))
    if new.create_parents:
        parent = os.path.dirname(path)
        if parent and parent != path:
            os.close(resolver.directory(parent, create=True))
    try:
        located = resolver.locate(path, follow_last=False)
    except PlokeIoError as err:
        if err.kind is ErrorKind.NotAFile and not new.overwrite:  # a directory, FIFO, ...
            raise PlokeIoError(
                ErrorKind.AlreadyExists, f"{err.message.split(':')[0]}: already exists"
            ) from None
        raise
    try:
        if len(data) > max_bytes:
            raise PlokeIoError(
                ErrorKind.TooLarge,
                f"{located.shown}: {len(data)} bytes exceeds the limit of {max_bytes} bytes",
                {"size": len(data), "limit": max_bytes},
            )
        key = lock_key(located)
        with locks.hold([key]):
            exists = _exists(located)
            if exists and not new.overwrite:
                raise PlokeIoError(ErrorKind.AlreadyExists, f"{located.shown}: already exists")
            umask = _umask()
            temp, _fd = _write_temp(located, data, 0o666 & ~umask, None)
            if not may_commit():
                _unlink_quietly(located, temp)
                return None
            try:
                if new.overwrite:
                    os.replace(
                        temp, located.name, src_dir_fd=located.dir_fd, dst_dir_fd=located.dir_fd
                    )
                else:
                    os.link(
                        temp,
                        located.name,
                        src_dir_fd=located.dir_fd,
                        dst_dir_fd=located.dir_fd,
                        follow_symlinks=False,
                    )
            except FileExistsError:
                raise PlokeIoError(
                    ErrorKind.AlreadyExists, f"{located.shown}: already exists"
                ) from None
            except OSError as exc:
                raise from_os_error(exc, located.shown) from None
            finally:
                _unlink_quietly(located, temp)
            dirs.sync(located, key[:2])
            digest = hash_bytes(data)
            committed(located, len(data), digest)
        return Created(file_path=path, file_hash=digest)
    finally:
        os.close(located.dir_fd)


def _exists(located: Located) -> bool:
    try:
        os.stat(located.name, dir_fd=located.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by a guarded swap."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def remove_stale_temps(roots: Sequence[str]) -> int:
    """Remove temp files that a crashed process left under ``roots``; returns how many.

    A temp file names the pid that made it: one whose process is gone is removed; one of a
    live process (this one, or another server on the same tree) is left alone.
    """
    removed = 0
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                m = _TEMP_RE.match(name)
                if m is None or _alive(int(m.group(1))):
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
