"""BLAKE3 content hashes: lowercase hex of the 256-bit digest, as ``b3sum`` prints."""

from __future__ import annotations

from blake3 import blake3

__all__ = ["HASH_HEX_LEN", "hash_bytes", "is_hash"]

HASH_HEX_LEN = 64
# Above this size the Rust side hashes on several threads (the GIL is released).
_MULTITHREAD_THRESHOLD = 4 * 1024 * 1024


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """Return the hex BLAKE3 digest of ``data``."""
    if len(data) >= _MULTITHREAD_THRESHOLD:
        return blake3(data, max_threads=blake3.AUTO).hexdigest()
    return blake3(data).hexdigest()


_HEX = frozenset("0123456789abcdef")


def is_hash(value: str) -> bool:
    """True if ``value`` looks like a lowercase hex BLAKE3-256 digest."""
    return len(value) == HASH_HEX_LEN and _HEX.issuperset(value)
