"""The engine: file operations under the path policy, with no JSON-RPC inside."""

from .manager import Counters, IoManager

__all__ = ["Counters", "IoManager"]
