"""ploke-io-server: a file I/O daemon for coding agents and editors.

The engine (:class:`IoManager`) is usable as a plain Python library; the daemon serves it over
LSP-style JSON-RPC (stdio or TCP). See ``docs/protocol.md`` for the wire contract.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, ConfigError, SymlinkPolicy
from .engine import IoManager
from .errors import ErrorKind, PlokeIoError
from .paths import PathPolicy
from .types import FileHash, Snippet, SnippetRequest

__all__ = [
    "Config",
    "ConfigError",
    "ErrorKind",
    "FileHash",
    "IoManager",
    "PathPolicy",
    "PlokeIoError",
    "Snippet",
    "SnippetRequest",
    "SymlinkPolicy",
    "__version__",
]
