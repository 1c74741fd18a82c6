"""A measurement prototype, not a server to use: ploke-io-server's engine and models behind a
blocking stdin/stdout loop, without asyncio.

It serves ``ploke/writeSnippets`` with one edit exactly as the server's lone-write path does
(``fastjson`` parse, the params structuring, ``IoManager._write_alone``, ``encode_response``),
but reads and writes its pipes blocking, like ``rpc_floor_server.py``. Compared with the real
server in one run (``bench_write.py --blocking-prototype``), it measures what the event loop
around each request costs: see docs/performance.md. No lifecycle, no other methods, no
concurrency; it answers ``initialize``/``shutdown`` just enough for the benchmark client.

Usage: python benchmarks/blocking_prototype_server.py ROOT
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ploke_io_server import fastjson
from ploke_io_server.config import Config
from ploke_io_server.engine import IoManager
from ploke_io_server.engine import write as write_mod
from ploke_io_server.server.models import (
    STRUCTURE_PARAMS,
    EscapeMemo,
    WriteSnippetsResult,
    encode_response,
)


def main() -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())  # the engine's constructor wants one
    engine = IoManager(Config(roots=(os.path.abspath(sys.argv[1]),)))
    retired: list[int] = []
    # Replaced files are closed after the answer, as the server does (there, on the loop).
    engine._close_later = retired.extend  # type: ignore[method-assign]
    structure = STRUCTURE_PARAMS["ploke/writeSnippets"]
    memo = EscapeMemo(0)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
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
        msg = fastjson.loads(inp.read(length))
        if "id" not in msg:
            if msg.get("method") == "exit":
                return
            continue
        if msg["method"] == "ploke/writeSnippets":
            params = structure(msg["params"])
            result = engine._write_alone(params.edits[0], params.origin, None)
            assert result is not None, "a file too big for the prototype"
            chunks = encode_response(msg["id"], WriteSnippetsResult([result]), memo)
            assert chunks is not None
            body = b"".join(chunks)
        else:
            answer: Any = {"capabilities": {}} if msg["method"] == "initialize" else None
            body = fastjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": answer})
        out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        out.flush()
        if retired:
            write_mod.close_retired(retired, engine.retired_budget)
            retired.clear()


if __name__ == "__main__":
    main()
