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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from rpc_floor_server import read_messages, write_message  # noqa: E402

from ploke_io_server import fastjson  # noqa: E402
from ploke_io_server.config import Config  # noqa: E402
from ploke_io_server.engine import IoManager  # noqa: E402
from ploke_io_server.engine import write as write_mod  # noqa: E402
from ploke_io_server.server.models import (  # noqa: E402
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
    out = sys.stdout.buffer
    for msg in read_messages(sys.stdin.buffer, fastjson.loads):
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
        write_message(out, body)
        if retired:
            write_mod.close_retired(retired, engine.retired_budget)
            retired.clear()


if __name__ == "__main__":
    main()
