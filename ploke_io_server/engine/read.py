"""Blocking read work, run on the engine's executor: one call per distinct file of a batch.

Each file is opened through the Resolver (path policy), read whole once, hashed once, decoded
once, and every snippet of the batch that names it is cut from that one copy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import ErrorKind, PlokeIoError, from_os_error
from ..hashing import hash_bytes
from ..paths import OpenedFile, Resolver
from ..types import FileHash, HashResult, Snippet, SnippetRequest, SnippetResult

__all__ = ["hash_one", "read_file_bytes", "snippets_of_file"]


def read_file_bytes(resolver: Resolver, path: str, max_bytes: int) -> tuple[bytes, OpenedFile]:
    """Open ``path`` under the policy and read it whole (TooLarge above ``max_bytes``)."""
    opened = resolver.open_read(path)
    try:
        if opened.size > max_bytes:
            raise _too_large(opened.shown, opened.size, max_bytes)
        # Ask for one byte more than fstat said, to notice a file that grew meanwhile.
        data = os.read(opened.fd, opened.size + 1)
        if len(data) > opened.size:
            parts = [data]
            total = len(data)
            while True:
                chunk = os.read(opened.fd, 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(opened.shown, total, max_bytes)
                parts.append(chunk)
            data = b"".join(parts)
        elif len(data) > max_bytes:
            raise _too_large(opened.shown, len(data), max_bytes)
        return data, opened
    except OSError as exc:
        raise from_os_error(exc, opened.shown) from None
    finally:
        os.close(opened.fd)


def _too_large(shown: str, size: int, limit: int) -> PlokeIoError:
    return PlokeIoError(
        ErrorKind.TooLarge,
        f"{shown}: {size} bytes exceeds the limit of {limit} bytes",
        {"size": size, "limit": limit},
    )


def _is_boundary(data: bytes, offset: int) -> bool:
    # A UTF-8 continuation byte is 0b10xxxxxx; every other position starts a character.
    return offset == len(data) or (data[offset] & 0xC0) != 0x80


def snippets_of_file(
    resolver: Resolver,
    path: str,
    indices: Sequence[int],
    requests: Sequence[SnippetRequest | PlokeIoError],
    results: list[SnippetResult | None],
    max_bytes: int,
) -> int:
    """Fill ``results[i]`` for every request ``i`` in ``indices`` (all naming ``path``).

    Returns the number of bytes read.
    """
    try:
        data, opened = read_file_bytes(resolver, path, max_bytes)
    except PlokeIoError as err:
        for i in indices:
            results[i] = err
        return 0
    shown = opened.shown
    size = len(data)
    digest = hash_bytes(data)
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = None
        not_utf8 = PlokeIoError(
            ErrorKind.NotUtf8, f"{shown}: not valid UTF-8 (at byte {exc.start})"
        )
    ascii_only = text is not None and len(text) == size
    for i in indices:
        req = requests[i]
        assert isinstance(req, SnippetRequest)
        want = req.file_hash
        if want is not None and want != digest and want.lower() != digest:
            results[i] = PlokeIoError(
                ErrorKind.ContentMismatch,
                f"{shown}: content changed (hash mismatch)",
                {"expected": want, "actual": digest},
            )
            continue
        if text is None:
            results[i] = not_utf8
            continue
        start = 0 if req.start_byte is None else req.start_byte
        end = size if req.end_byte is None else req.end_byte
        if start > end or end > size:
            results[i] = PlokeIoError(
                ErrorKind.InvalidRange,
                f"{shown}: range {start}..{end} is not within 0..{size}",
                {"startByte": start, "endByte": end, "size": size},
            )
        elif ascii_only:
            results[i] = Snippet(text if start == 0 and end == size else text[start:end], digest)
        elif not (_is_boundary(data, start) and _is_boundary(data, end)):
            results[i] = PlokeIoError(
                ErrorKind.InvalidRange,
                f"{shown}: range {start}..{end} is not on UTF-8 character boundaries",
                {"startByte": start, "endByte": end, "size": size},
            )
        elif start == 0 and end == size:
            results[i] = Snippet(text, digest)
        else:
            results[i] = Snippet(data[start:end].decode("utf-8"), digest)
    return size


def hash_one(resolver: Resolver, path: str, max_bytes: int) -> tuple[HashResult, int]:
    """Hash one file; returns the result and the number of bytes read."""
    try:
        data, _opened = read_file_bytes(resolver, path, max_bytes)
    except PlokeIoError as err:
        return err, 0
    return FileHash(file_hash=hash_bytes(data), size=len(data)), len(data)
