"""Error kinds of the wire contract and the one exception type the engine raises.

Every failure the engine reports is a :class:`PlokeIoError` carrying one :class:`ErrorKind`::

    PlokeIoError(kind, message, data=None)
    ├── ContentMismatch   -33001  the file's hash is not the expected one (data: expected, actual)
    ├── OutsideRoots      -33002  the path resolves outside every allowed root, or through a
    │                             symlink the policy refuses
    ├── NotFound          -33003  no such file (or a parent is missing / not a directory)
    ├── InvalidRange      -33004  start > end, end > size, offset off a UTF-8 boundary,
    │                             a range field of the wrong type
    ├── NotUtf8           -33005  the file is not valid UTF-8
    ├── PermissionDenied  -33006  the OS refused access
    ├── AlreadyExists     -33007  a create found something at the path
    ├── NotAFile          -33008  a directory, FIFO, socket or device
    ├── TooLarge          -33009  the file is larger than --max-file-bytes
    ├── InvalidPath       -33010  not an absolute path string, empty, or holds a NUL byte
    └── Io                -33011  any other OS error

Messages name paths relative to their root and never print a resolved path outside the roots.
The protocol shell turns a PlokeIoError into an ``ItemError`` in exactly one place.
"""

from __future__ import annotations

import enum
import errno
from typing import Any

__all__ = ["ErrorKind", "PlokeIoError", "from_os_error"]


class ErrorKind(enum.Enum):
    """The error kinds of the contract; the value is the JSON-RPC error code."""

    ContentMismatch = -33001
    OutsideRoots = -33002
    NotFound = -33003
    InvalidRange = -33004
    NotUtf8 = -33005
    PermissionDenied = -33006
    AlreadyExists = -33007
    NotAFile = -33008
    TooLarge = -33009
    InvalidPath = -33010
    Io = -33011

    @property
    def code(self) -> int:
        return self.value


class PlokeIoError(Exception):
    """A failure of one item (or one whole operation) with its contract kind."""

    __slots__ = ("data", "kind", "message")

    def __init__(self, kind: ErrorKind, message: str, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.data = data

    @property
    def code(self) -> int:
        return self.kind.value

    def __repr__(self) -> str:
        return f"PlokeIoError({self.kind.name}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlokeIoError) and (self.kind, self.message, self.data) == (
            other.kind,
            other.message,
            other.data,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.message))


_ERRNO_KINDS: dict[int, ErrorKind] = {
    errno.ENOENT: ErrorKind.NotFound,
    errno.ENOTDIR: ErrorKind.NotFound,
    errno.EACCES: ErrorKind.PermissionDenied,
    errno.EPERM: ErrorKind.PermissionDenied,
    errno.EROFS: ErrorKind.PermissionDenied,
    errno.EEXIST: ErrorKind.AlreadyExists,
    errno.EISDIR: ErrorKind.NotAFile,
    errno.ENXIO: ErrorKind.NotAFile,
    errno.ENAMETOOLONG: ErrorKind.InvalidPath,
    errno.EFBIG: ErrorKind.TooLarge,
}

_KIND_TEXT: dict[ErrorKind, str] = {
    ErrorKind.NotFound: "no such file",
    ErrorKind.PermissionDenied: "permission denied",
    ErrorKind.AlreadyExists: "already exists",
    ErrorKind.NotAFile: "not a regular file",
    ErrorKind.InvalidPath: "invalid path",
    ErrorKind.TooLarge: "file too large",
}


def from_os_error(exc: OSError, shown_path: str) -> PlokeIoError:
    """Map an OSError to a contract error whose message names ``shown_path`` only.

    ``shown_path`` must already be root-relative: the OSError's own filename is never used,
    so a resolved path outside the roots cannot leak into a message.
    """
    kind = _ERRNO_KINDS.get(exc.errno or 0, ErrorKind.Io)
    text = _KIND_TEXT.get(kind) or (exc.strerror or "I/O error").lower()
    return PlokeIoError(kind, f"{shown_path}: {text}")
