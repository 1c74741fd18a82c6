"""Method names of the wire contract, defined once."""

from __future__ import annotations

__all__ = [
    "CREATE_FILES",
    "DID_CHANGE_FILES",
    "GET_SNIPPETS",
    "HASH_FILES",
    "PLOKE_REQUESTS",
    "SCAN_CHANGES",
    "STATUS",
    "WRITE_SNIPPETS",
]

GET_SNIPPETS = "ploke/getSnippets"
SCAN_CHANGES = "ploke/scanChanges"
HASH_FILES = "ploke/hashFiles"
WRITE_SNIPPETS = "ploke/writeSnippets"
CREATE_FILES = "ploke/createFiles"
STATUS = "ploke/status"
DID_CHANGE_FILES = "ploke/didChangeFiles"

PLOKE_REQUESTS = (GET_SNIPPETS, SCAN_CHANGES, HASH_FILES, WRITE_SNIPPETS, CREATE_FILES, STATUS)
