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
from typing import Any

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


def main() -> None:
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
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
        msg = json.loads(inp.read(length))
        if "id" not in msg:
            if msg.get("method") == "exit":
                return
            continue
        result: Any = None
        if msg["method"] == "ploke/writeSnippets":
            result = {"results": [write_one(e) for e in msg["params"]["edits"]]}
        elif msg["method"] == "initialize":
            result = {"capabilities": {}}
        body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
        out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        out.flush()


if __name__ == "__main__":
    main()
