"""The RPC floor: the least an out-of-process writer can cost per request.

A blocking loop on stdin/stdout that reads one framed JSON-RPC request, does the durable steps
of the write floor (read, BLAKE3, verify, splice, temp file, fsync, rename, directory fsync) and
answers. No path policy, no locks, no concurrency, no error model: what remains of our
sequential write latency above this is the cost of those, not of crossing a process boundary.
It answers ``initialize``/``shutdown`` just enough for the benchmark client.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from blake3 import blake3


def write_one(e: dict[str, Any]) -> dict[str, Any]:
    path = e["filePath"]
    with open(path, "rb") as f:
        data = f.read()
    old = blake3(data).hexdigest()
    if old != e["expectedHash"]:
        return {"ok": False, "error": {"code": -33001, "kind": "ContentMismatch"}}
    new_data = data[: e["startByte"]] + e["replacement"].encode() + data[e["endByte"] :]
    new = blake3(new_data).hexdigest()
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.rpc-floor-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, new_data)
    os.fsync(fd)
    os.fchmod(fd, 0o644)
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    return {"ok": True, "oldHash": old, "newHash": new}


def read_messages(
    inp: BinaryIO, loads: Callable[[bytes], Any] = json.loads
) -> Iterator[dict[str, Any]]:
    """Framed JSON-RPC messages from a blocking stream, until EOF or ``exit``; notifications
    are skipped (shared with blocking_prototype_server.py)."""
    while True:
        length = -1
        while True:
            line = inp.readline()
            if not line:
                return
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        msg = loads(inp.read(length))
        if "id" in msg:
            yield msg
        elif msg.get("method") == "exit":
            return


def write_message(out: BinaryIO, body: bytes) -> None:
    out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    out.flush()


def main() -> None:
    out = sys.stdout.buffer
    for msg in read_messages(sys.stdin.buffer):
        result: Any = None
        if msg["method"] == "ploke/writeSnippets":
            result = {"results": [write_one(e) for e in msg["params"]["edits"]]}
        elif msg["method"] == "initialize":
            result = {"capabilities": {}}
        write_message(
            out, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
        )


if __name__ == "__main__":
    main()
