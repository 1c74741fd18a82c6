"""A measurement prototype, not a server to use: ploke-io-server's engine and models behind a
blocking stdin/stdout loop, without asyncio.

It serves ``ploke/writeSnippets`` with one edit exactly as the server's lone-write path does
(``fastjson`` parse, the params structuring, ``IoManager._write_alone``, ``encode_response``),
but reads and writes its pipes blocking, like ``rpc_floor_server.py``. Compared with the real
server in one run (``bench_write.py --blocking-prototype``), it measures what the event loop
around each request costs: see docs/performance.md. No lifecycle, no other methods, no
concurrency; it answers ``initialize``/``shutdown`` just enough for the benchmark client.

With ``--asyncio`` the same work runs inside an asyncio read-pipe protocol instead: frames
are cut and served in ``data_received``, answers go through a write-pipe transport. That
variant separates the cost of asyncio's pipes and epoll from that of the server's tasks.

Usage: python benchmarks/blocking_prototype_server.py ROOT [--asyncio]
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
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the engine's constructor wants one
    engine = IoManager(Config(roots=(os.path.abspath(sys.argv[1]),)))
    retired: list[int] = []
    # Replaced files are closed after the answer, as the server does (there, on the loop).
    engine._close_later = retired.extend  # type: ignore[method-assign]
    structure = STRUCTURE_PARAMS["ploke/writeSnippets"]
    memo = EscapeMemo(0)

    def answer(msg: dict[str, Any]) -> bytes:
        if msg["method"] == "ploke/writeSnippets":
            params = structure(msg["params"])
            result = engine._write_alone(params.edits[0], params.origin, None)
            assert result is not None, "a file too big for the prototype"
            chunks = encode_response(msg["id"], WriteSnippetsResult([result]), memo)
            assert chunks is not None
            return b"".join(chunks)
        res: Any = {"capabilities": {}} if msg["method"] == "initialize" else None
        return fastjson.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": res})

    def close_retired() -> None:
        if retired:
            write_mod.close_retired(retired, engine.retired_budget)
            retired.clear()

    if "--asyncio" in sys.argv:
        loop.run_until_complete(_serve_asyncio(answer, close_retired))
        return
    out = sys.stdout.buffer
    for msg in read_messages(sys.stdin.buffer, fastjson.loads):
        write_message(out, answer(msg))
        close_retired()


async def _serve_asyncio(answer: Any, close_retired: Any) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    out, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(sys.stdout.fileno(), "wb", buffering=0)
    )

    class Reader(asyncio.Protocol):
        buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = int(self.buf[:end].split(b":")[1])
                if len(self.buf) < end + 4 + length:
                    return
                msg = fastjson.loads(self.buf[end + 4 : end + 4 + length])
                self.buf = self.buf[end + 4 + length :]
                if "id" in msg:
                    body = answer(msg)
                    out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    close_retired()
                elif msg.get("method") == "exit" and not done.done():
                    done.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

    await loop.connect_read_pipe(Reader, os.fdopen(sys.stdin.fileno(), "rb", buffering=0))
    await done


if __name__ == "__main__":
    main()
