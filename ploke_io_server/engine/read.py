"""Blocking read work, run on the engine's executor: one call per distinct file of a batch.

Each file is opened through the Resolver (path policy), read whole once, hashed once, decoded
once, and every snippet of the batch that names it is cut from that one copy.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence

from ..errors import ErrorKind, PlokeIoError, from_os_error
from ..hashing import hash_bytes
from ..paths import OpenedFile, Resolver
from ..types import FileHash, HashResult, Snippet, SnippetRequest, SnippetResult

__all__ = [
    "INLINE_MAX_BYTES",
    "Offload",
    "Utf8Index",
    "hash_one",
    "inline_mode",
    "read_all",
    "read_file_bytes",
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
) -> int | None:
    """Fill ``results[i]`` for every ``(i, request)`` of ``group`` (all naming ``path``).

    The file is read and hashed once, and checked to be UTF-8 once per distinct content;
    returns the number of bytes read, or None if the file could not be read. Snippet texts
    stay UTF-8 bytes (decoded by whoever needs a str). This loop runs once per snippet of a
    batch, so it is written for speed (no helper calls per item).
    """
    try:
        data, opened = read_file_bytes(resolver, path, max_bytes)
    except PlokeIoError as err:
        for i, _req in group:
            results[i] = err
        return None
    shown = opened.shown
    size = len(data)
    digest = hash_bytes(data)
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


def hash_one(resolver: Resolver, path: str, max_bytes: int) -> tuple[HashResult, int | None]:
    """Hash one file; returns the result and the number of bytes read (None: not read)."""
    try:
        data, _opened = read_file_bytes(resolver, path, max_bytes)
    except PlokeIoError as err:
        return err, None
    return FileHash(file_hash=hash_bytes(data), size=len(data)), len(data)
