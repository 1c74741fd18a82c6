"""Domain types of the engine: what operations take and return (no JSON-RPC here)."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .errors import PlokeIoError

__all__ = [
    "FileHash",
    "HashResult",
    "ProgressFn",
    "Snippet",
    "SnippetRequest",
    "SnippetResult",
]


@attrs.frozen(slots=True)
class SnippetRequest:
    """One snippet to read: a whole file when both offsets are None."""

    file_path: str
    file_hash: str | None = None
    start_byte: int | None = None
    end_byte: int | None = None


@attrs.frozen(slots=True)
class Snippet:
    """The text of a snippet and the hash of the whole file it was read from."""

    text: str
    file_hash: str


@attrs.frozen(slots=True)
class FileHash:
    file_hash: str
    size: int


SnippetResult = Snippet | PlokeIoError
HashResult = FileHash | PlokeIoError

ProgressFn = Callable[[int, int], None]
"""Called on the event loop with (files done, files in total)."""
