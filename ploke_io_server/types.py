"""Domain types of the engine: what operations take and return (no JSON-RPC here)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

import attrs

from .errors import PlokeIoError

__all__ = [
    "Created",
    "Edit",
    "EditResult",
    "FileHash",
    "HashResult",
    "NewFile",
    "ProgressFn",
    "Snippet",
    "SnippetRequest",
    "SnippetResult",
]


# The hot types are plain (non-frozen) slots classes: a frozen attrs __init__ costs ~3x more
# (1.1 us vs 0.4 us here), paid once per snippet of a batch. Treat them as immutable.


@attrs.define(slots=True)
class SnippetRequest:
    """One snippet to read: a whole file when both offsets are None."""

    file_path: str
    file_hash: str | None = None
    start_byte: int | None = None
    end_byte: int | None = None


@attrs.define(slots=True, eq=False)
class Snippet:
    """The text of a snippet and the hash of the whole file it was read from.

    ``content`` is the text as ``str``, or as UTF-8 ``bytes`` already checked to be valid
    (what the engine returns: texts stay compact and are decoded once, when encoded; a ``str``
    holding one emoji takes 4 bytes per character). Read ``text`` for a ``str``. ``whole`` is
    True when the snippet is the whole file.
    """

    content: str | bytes
    file_hash: str
    whole: bool = False

    @property
    def text(self) -> str:
        c = self.content
        return c if type(c) is str else c.decode("utf-8")  # type: ignore[union-attr]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snippet):
            return NotImplemented
        return self.file_hash == other.file_hash and self.text == other.text

    __hash__ = None  # type: ignore[assignment]


@attrs.define(slots=True)
class FileHash:
    file_hash: str
    size: int


@attrs.define(slots=True)
class Edit:
    """Replace bytes ``start_byte..end_byte`` of a file whose hash is ``expected_hash``."""

    file_path: str
    expected_hash: str
    start_byte: int
    end_byte: int
    replacement: str


@attrs.define(slots=True)
class EditResult:
    """A committed (or, with dryRun, computed) edit: where its replacement now lies."""

    file_path: str
    old_hash: str
    new_hash: str
    new_start_byte: int
    new_end_byte: int
    diff: str | None = None


@attrs.define(slots=True)
class NewFile:
    """A file to create with ``content``."""

    file_path: str
    content: str
    create_parents: bool = False
    overwrite: bool = False


@attrs.define(slots=True)
class Created:
    file_path: str
    file_hash: str


class ScanRequest(NamedTuple):
    """A file the client knows with ``file_hash``: has it changed?

    A plain ``(path, hash)`` tuple is accepted wherever one is expected.
    """

    file_path: str
    file_hash: str


class ScanStatus(enum.Enum):
    UNCHANGED = "unchanged"
    MODIFIED = "modified"
    REMOVED = "removed"


@attrs.frozen
class Scanned:
    """What a scan found: ``new_hash`` is set for ``modified``."""

    status: ScanStatus
    new_hash: str | None = None


UNCHANGED = Scanned(ScanStatus.UNCHANGED)
REMOVED = Scanned(ScanStatus.REMOVED)

SnippetResult = Snippet | PlokeIoError
HashResult = FileHash | PlokeIoError
ScanResult = Scanned | PlokeIoError

ProgressFn = Callable[[int, int], None]
"""Called on the event loop with (files done, files in total)."""
