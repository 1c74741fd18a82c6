"""Observability: latency histograms in ploke/status, --trace spans and JSON logs on stderr
(never on stdout, which carries the protocol), against a real server process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ploke_io_server.client import PlokeClient

from .conftest import write


async def test_trace_spans_as_json_and_latency_histograms(workspace: Path) -> None:
    f = write(workspace / "a.txt", "hello")
    client = await PlokeClient.spawn(
        "--trace", "--log-format", "json", root=str(workspace), stderr=asyncio.subprocess.PIPE
    )
    try:
        res = await client.get_snippets(
            [{"filePath": str(f)}, {"filePath": str(workspace / "missing")}, {"filePath": "x"}]
        )
        assert [r["ok"] for r in res] == [True, False, False]
        for _ in range(3):
            await client.hash_files([str(f)])
        status = await client.status()
    finally:
        code = await client.close()
    assert code == 0
    latency = status["counters"]["latencyMs"]
    assert latency["ploke/getSnippets"]["count"] == 1
    assert latency["ploke/hashFiles"]["count"] == 3
    hist = latency["ploke/hashFiles"]
    assert sum(hist["buckets"].values()) == 3 and hist["sumMs"] > 0 and hist["p50Ms"] is not None
    assert client.process is not None and client.process.stderr is not None
    lines = (await client.process.stderr.read()).decode().splitlines()
    records = [json.loads(line) for line in lines]  # every stderr line is one JSON object
    spans = [r for r in records if r["logger"] == "ploke_io_server.trace"]
    snippet = next(r for r in spans if r["span"] == "ploke/getSnippets")
    assert snippet["items"] == 3 and snippet["outcome"] == "ok"
    assert snippet["itemErrors"] == {"NotFound": 1, "InvalidPath": 1}
    assert snippet["ms"] > 0 and snippet["connection"] == "stdio"
    assert sum(r["span"] == "ploke/hashFiles" for r in spans) == 3


async def test_no_trace_by_default(workspace: Path) -> None:
    client = await PlokeClient.spawn(root=str(workspace), stderr=asyncio.subprocess.PIPE)
    await client.status()
    await client.close()
    assert client.process is not None and client.process.stderr is not None
    assert b"ploke/status" not in await client.process.stderr.read()
