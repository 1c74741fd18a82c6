"""Blocking read work, run on the engine's executor: one call per distinct file of a batch.

Each file is opened through the Resolver (path policy), read whole once, hashed once, decoded
once, and every snippet of the batch that names it is cut from that one copy.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator, Sequence
from stat import S_ISLNK, S_ISREG
from typing import TYPE_CHECKING, Any

from ..errors import ErrorKind, PlokeIoError, from_os_error
from ..hashing import hash_bytes
from ..paths import OpenedFile, PathPolicy, Resolver
from ..types import (
    REMOVED,
    UNCHANGED,
    FileHash,
    HashResult,
    Scanned,
    ScanResult,
    ScanStatus,
    Snippet,
    SnippetRequest,
    SnippetResult,
)
from .statcache import STAT_KEY, StatCache

if TYPE_CHECKING:
    from .watcher import TrustedView

__all__ = [
    "INLINE_MAX_BYTES",
    "Offload",
    "Utf8Index",
    "compare",
    "current_hash",
    "hash_one",
    "inline_mode",
    "read_all",
    "read_file_bytes",
    "scan_directory",
    "scan_one",
    "snippets_of_file",
]

INLINE_MAX_BYTES = 1 << 20
"""Largest file a job run on the event loop's thread may read (see ``IoManager._run``)."""

_local = threading.local()


class Offload(Exception):
    """Raised by :func:`read_all` in inline mode for a file too big to read on the loop."""


@contextlib.contextmanager
def inline_mode() -> Iterator[None]:
    """Within this context, on this thread, :func:`read_all` refuses big files (Offload)."""
    _local.inline = True
    try:
        yield
    finally:
        _local.inline = False


def set_inline(on: bool) -> None:
    """:func:`inline_mode` without a context manager, for the hottest path (a lone write)."""
    _local.inline = on


def read_file_bytes(resolver: Resolver, path: str, max_bytes: int) -> tuple[bytes, OpenedFile]:
    """Open ``path`` under the policy and read it whole (TooLarge above ``max_bytes``)."""
    opened = resolver.open_read(path)
    try:
        return read_all(opened.fd, opened.size, max_bytes, opened.shown), opened
    finally:
        os.close(opened.fd)


def read_all(fd: int, size: int, max_bytes: int, shown: str) -> bytes:
    """Read an open file to EOF; ``size`` is what fstat said (TooLarge above ``max_bytes``).

    A read may return less than asked (FUSE, NFS, > 2 GiB) and the file may have grown since
    fstat, so this reads until EOF, asking for one byte more than ``size`` to see EOF at once.
    """
    if size > max_bytes:
        raise _too_large(shown, size, max_bytes)
    if size > INLINE_MAX_BYTES and getattr(_local, "inline", False):
        raise Offload
    try:
        data = os.read(fd, size + 1)
        if data and len(data) <= max_bytes:
            parts = [data]
            total = len(data)
            while True:
                chunk = os.read(fd, max(size + 1 - total, 1 << 16))
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(shown, total, max_bytes)
                parts.append(chunk)
            if len(parts) > 1:
                data = b"".join(parts)
    except OSError as exc:
        raise from_os_error(exc, shown) from None
    if len(data) > max_bytes:
        raise _too_large(shown, len(data), max_bytes)
    return data


def _too_large(shown: str, size: int, limit: int) -> PlokeIoError:
    return PlokeIoError(
        ErrorKind.TooLarge,
        f"{shown}: {size} bytes exceeds the limit of {limit} bytes",
        {"size": size, "limit": limit},
    )


class Utf8Index:
    """BLAKE3 digests of contents already checked to be valid UTF-8, with their ASCII-ness.

    A file whose digest is here is not decoded again to be checked: the key is the hash of the
    bytes themselves, so an entry can never be stale. Bounded; the oldest entries go first.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: dict[str, bool] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, digest: str) -> bool | None:
        return self._entries.get(digest)

    def add(self, digest: str, ascii_only: bool) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            self._entries[digest] = ascii_only

    def __len__(self) -> int:
        return len(self._entries)


def snippets_of_file(
    resolver: Resolver,
    path: str,
    group: Sequence[tuple[int, SnippetRequest]],
    results: list[SnippetResult | None],
    max_bytes: int,
    utf8: Utf8Index,
    cache: StatCache | None = None,
) -> int | None:
    """Fill ``results[i]`` for every ``(i, request)`` of ``group`` (all naming ``path``).

    The file is read and hashed once, and checked to be UTF-8 once per distinct content;
    returns the number of bytes read, or None if the file could not be read. Snippet texts
    stay UTF-8 bytes (decoded by whoever needs a str). This loop runs once per snippet of a
    batch, so it is written for speed (no helper calls per item).
    """
    started = time.time_ns()
    try:
        data, opened = read_file_bytes(resolver, path, max_bytes)
    except PlokeIoError as err:
        for i, _req in group:
            results[i] = err
        return None
    shown = opened.shown
    size = len(data)
    digest = hash_bytes(data)
    if cache is not None:
        cache.store(opened.st, digest, started)
    ascii_only = utf8.get(digest)
    if ascii_only is None:
        ascii_only = data.isascii()
        if not ascii_only:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                not_utf8 = PlokeIoError(
                    ErrorKind.NotUtf8, f"{shown}: not valid UTF-8 (at byte {exc.start})"
                )
                for i, req in group:
                    results[i] = _mismatch(shown, req.file_hash, digest) or not_utf8
                return size
        utf8.add(digest, ascii_only)
    for i, req in group:
        want = req.file_hash
        if want is not None and want != digest and want.lower() != digest:
            results[i] = _mismatch(shown, want, digest)
            continue
        start = req.start_byte
        end = req.end_byte
        if start is None:
            if end is None:
                results[i] = Snippet(data, digest, True)
                continue
            start = 0
        elif end is None:
            end = size
        if start > end or end > size or start < 0:
            results[i] = PlokeIoError(
                ErrorKind.InvalidRange,
                f"{shown}: range {start}..{end} is not within 0..{size}",
                {"startByte": start, "endByte": end, "size": size},
            )
        # A UTF-8 continuation byte is 0b10xxxxxx; every other offset starts a character.
        elif not ascii_only and (
            (start < size and data[start] & 0xC0 == 0x80)
            or (end < size and data[end] & 0xC0 == 0x80)
        ):
            results[i] = PlokeIoError(
                ErrorKind.InvalidRange,
                f"{shown}: range {start}..{end} is not on UTF-8 character boundaries",
                {"startByte": start, "endByte": end, "size": size},
            )
        elif start == 0 and end == size:
            results[i] = Snippet(data, digest, True)
        else:
            results[i] = Snippet(data[start:end], digest)  # valid UTF-8: checked above
    return size


def _mismatch(shown: str, want: str | None, digest: str) -> PlokeIoError | None:
    if want is None or want == digest or want.lower() == digest:
        return None
    return PlokeIoError(
        ErrorKind.ContentMismatch,
        f"{shown}: content changed (hash mismatch)",
        {"expected": want, "actual": digest},
    )


def hash_one(
    resolver: Resolver, path: str, max_bytes: int, cache: StatCache | None = None
) -> tuple[HashResult, int | None]:
    """Hash one file; returns the result and the number of bytes read (None: not read).

    With a stat cache, a file whose stat matches a trusted entry is not read at all.
    """
    try:
        digest, st, nread = current_hash(resolver, path, max_bytes, cache)
    except PlokeIoError as err:
        return err, None
    # The size of what was hashed: the bytes read, or (a cache hit) the size in the stat that
    # matched the entry, which is the size of the content the digest was made from.
    return FileHash(file_hash=digest, size=st.st_size if nread is None else nread), nread


def current_hash(
    resolver: Resolver, path: str, max_bytes: int, cache: StatCache | None
) -> tuple[str, os.stat_result, int | None]:
    """(digest, stat, bytes read or None) of a regular file, from the stat cache if it can.

    A miss reads and hashes the file and offers the result to the cache with the fstat of the
    descriptor it read from and a timestamp taken before any stat (the racy rule).
    """
    started = time.time_ns()
    if cache is not None:
        st = resolver.stat(path)
        digest = cache.lookup(st)
        if digest is not None:
            return digest, st, None
    data, opened = read_file_bytes(resolver, path, max_bytes)
    digest = hash_bytes(data)
    if cache is not None:
        cache.store(opened.st, digest, started)
    return digest, opened.st, len(data)


def scan_one(
    resolver: Resolver, path: str, want: str, max_bytes: int, cache: StatCache | None
) -> tuple[ScanResult, int | None]:
    """unchanged / modified / removed / error for one file the client knows by hash."""
    try:
        digest, _st, nread = current_hash(resolver, path, max_bytes, cache)
    except PlokeIoError as err:
        if err.kind is ErrorKind.NotFound:
            return REMOVED, None
        return err, None
    return _status(digest, want), nread


def confirm_from_index(
    view: TrustedView,
    policy: PathPolicy,
    files: Sequence[Any],
    span: tuple[int, int],
    results: list[Any],
    cache: StatCache,
    directories: dict[str, bool],
) -> tuple[list[int], int]:
    """Answer the files of ``files[span[0]:span[1]]`` that the watcher vouches for.

    Returns (the indices left for the stat route, how many were answered). A file is answered
    when the watcher's index has it, it has had no event since, its directory is trusted
    (``view``), it is on the file system of its root (not a mount inside), it is inside the
    session's roots (``policy``; the index holds no path through a
    symlink), and its digest is known: the index entry's own (hashed since the watcher last
    looked at it) or the stat cache's for exactly the indexed stat. No system call.
    ``directories`` memoizes the directory check across calls.
    """
    index_get = view.index.get
    dirty = view.dirty_paths
    devices = view.devices
    entries = cache.entries
    touch = entries.move_to_end
    left: list[int] = []
    add = left.append
    unchanged, modified = UNCHANGED, ScanStatus.MODIFIED
    confirmed = 0
    first, end = span
    for i, item in enumerate(files[first:end], first):
        try:
            path, want = item
        except TypeError:  # an item that is already an error
            add(i)
            continue
        k = index_get(path)
        if k is None or path in dirty:
            add(i)
            continue
        ok = directories.get(k.directory)
        if ok is None:
            d = k.directory
            ok = directories[d] = view.directory_trusted(d) and policy.match(d) is not None
        if not ok or k.nlink != 1 or k.dev not in devices:
            add(i)
            continue
        digest = k.digest
        if digest is None:
            # Not hashed since indexed: the stat cache may know this exact stat. The digest
            # then stays with the entry, which is replaced on the file's next event.
            value = entries.get(k.ino)
            if value is None or not value.startswith(k.key):
                add(i)
                continue
            digest = k.digest = value[32:].hex()
        try:  # keep the cache entry warm  # noqa: SIM105 (cheaper than contextlib.suppress)
            touch(k.ino)
        except KeyError:  # evicted (its digest lives on in the index entry)
            pass
        results[i] = (
            unchanged if want == digest or want.lower() == digest else Scanned(modified, digest)
        )
        confirmed += 1
    return left, confirmed


_SCAN_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def scan_directory(
    resolver: Resolver,
    directory: str,
    indices: Sequence[int],
    files: Sequence[Any],
    results: list[Any],
    max_bytes: int,
    cache: StatCache | None,
) -> tuple[int, int]:
    """Scan ``files[i]`` (``(path, hash)``) for each ``i`` of ``indices``, all in ``directory``.

    Returns (files read, bytes read).

    The hot loop of ``ploke/scanChanges``: the directory is resolved once under the policy
    (a descriptor walked component by component, as for any path), then each file is one
    ``fstatat`` relative to it, never following a symlink; a stat-cache hit needs nothing
    more. A symlink goes through the general per-path route, which applies the policy.
    Every path of ``indices`` is ``directory`` + "/" + a plain name.
    """
    started = time.time_ns()
    nfiles = nbytes = hits = misses = 0

    def general_route(i: int) -> None:
        """Scan one path by the per-path route (the policy follows symlinks), and count."""
        nonlocal nfiles, nbytes
        path, want = files[i]
        results[i], n = scan_one(resolver, path, want, max_bytes, cache)
        if n is not None:
            nfiles, nbytes = nfiles + 1, nbytes + n

    try:
        dir_fd = resolver.directory(directory)
    except PlokeIoError as err:
        if err.kind in (ErrorKind.NotFound, ErrorKind.NotAFile):  # vanished, or unreachable
            for i in indices:
                results[i] = REMOVED
            return 0, 0
        # Outside the roots, a symlink, no permission...: each file by the general route, so
        # that each gets its own message (and a symlinked directory the policy's decision).
        for i in indices:
            general_route(i)
        return nfiles, nbytes
    cut = len(directory.rstrip("/")) + 1
    # The cache probe, inlined (this loop runs once per file of a scan): see StatCache.probe.
    known: collections.OrderedDict[int, bytes] = (
        cache.entries if cache is not None else collections.OrderedDict()
    )
    pack = STAT_KEY.pack
    touch = known.move_to_end
    # stat first (a hit then costs one syscall) while hits are possible; after a run of
    # misses (a cold cache, a directory of new files) open first instead, which saves the
    # stat that every miss would otherwise pay on top of open + fstat + read.
    stat_first = cache is not None and len(cache) > 0
    streak = 0
    stat_ = os.stat
    unchanged, modified = UNCHANGED, ScanStatus.MODIFIED
    try:
        for i in indices:
            path, want = files[i]
            name = path[cut:]
            digest: str | None = None
            if stat_first:
                try:
                    st = stat_(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    results[i] = REMOVED
                    continue
                except OSError as exc:
                    results[i] = from_os_error(exc, resolver.shown(path))
                    continue
                if not S_ISREG(st.st_mode):
                    if S_ISLNK(st.st_mode):
                        general_route(i)
                    else:
                        not_a_file = f"{resolver.shown(path)}: not a regular file"
                        results[i] = PlokeIoError(ErrorKind.NotAFile, not_a_file)
                    continue
                value = known.get(st.st_ino)
                if value is not None and value.startswith(
                    pack(st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                ):
                    digest = value[32:].hex()
                    try:  # noqa: SIM105 (cheaper than contextlib.suppress here)
                        touch(st.st_ino)
                    except KeyError:  # evicted meanwhile by another thread
                        pass
            if digest is not None:
                hits += 1
                streak = 0
            else:
                try:
                    digest, n = _read_and_hash(
                        dir_fd, name, resolver, path, max_bytes, cache, started
                    )
                except _Symlinked:
                    general_route(i)
                    continue
                except PlokeIoError as err:
                    results[i] = REMOVED if err.kind is ErrorKind.NotFound else err
                    continue
                if n < 0:  # open-first found it in the cache after all
                    hits += 1
                else:
                    misses += 1
                    streak += 1
                    if streak >= 16:
                        stat_first = False
                    nfiles += 1
                    nbytes += n
            results[i] = (
                unchanged if want == digest or want.lower() == digest else Scanned(modified, digest)
            )
    finally:
        os.close(dir_fd)
        if cache is not None:
            cache.count(hits, misses)
    return nfiles, nbytes


class _Symlinked(Exception):
    """The name turned into a symlink between the stat and the open."""


def _read_and_hash(
    dir_fd: int,
    name: str,
    resolver: Resolver,
    path: str,
    max_bytes: int,
    cache: StatCache | None,
    started: int,
) -> tuple[str, int]:
    """(digest, bytes read) of ``name``; bytes read is -1 when the cache knew the digest."""
    try:
        fd = os.open(name, _SCAN_READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        shown = resolver.shown(path)
        if exc.errno == errno.ELOOP:
            raise _Symlinked from None
        if exc.errno == errno.ENXIO:
            raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a regular file") from None
        raise from_os_error(exc, shown) from None
    try:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise from_os_error(exc, resolver.shown(path)) from None
        if not S_ISREG(st.st_mode):
            raise PlokeIoError(ErrorKind.NotAFile, f"{resolver.shown(path)}: not a regular file")
        if cache is not None:
            known = cache.probe(st)
            if known is not None:
                return known, -1
        try:
            # The root-relative name costs a policy lookup: only made for an error message.
            data = read_all(fd, st.st_size, max_bytes, "")
        except PlokeIoError as err:  # its message starts with the (empty) name
            raise PlokeIoError(err.kind, resolver.shown(path) + err.message, err.data) from None
    finally:
        os.close(fd)
    digest = hash_bytes(data)
    if cache is not None:
        cache.store(st, digest, started)
    return digest, len(data)


def _status(digest: str, want: str) -> Scanned:
    if want == digest or want.lower() == digest:
        return UNCHANGED
    return Scanned(ScanStatus.MODIFIED, digest)


def compare(found: Scanned, first_want: str, want: str) -> Scanned:
    """The status for ``want`` of a file already scanned for ``first_want``."""
    if found.status is ScanStatus.REMOVED:
        return found
    digest = found.new_hash if found.new_hash is not None else first_want.lower()
    return _status(digest, want)
