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
    # Per file: root-relative path, bytes, duration, outcome.
    reads = [r for r in spans if r["span"] == "read"]
    assert {(r["path"], r["outcome"]) for r in reads} == {
        ("a.txt", "ok"),
        ("missing", "NotFound"),
        ("x", "InvalidPath"),
    }
    assert next(r for r in reads if r["path"] == "a.txt")["bytes"] == 5
    assert all(r["ms"] >= 0 for r in reads)
    assert sum(r["span"] == "hash" and r["path"] == "a.txt" for r in spans) == 3


async def test_no_trace_by_default(workspace: Path) -> None:
    client = await PlokeClient.spawn(root=str(workspace), stderr=asyncio.subprocess.PIPE)
    await client.status()
    await client.close()
    assert client.process is not None and client.process.stderr is not None
    assert b"ploke/status" not in await client.process.stderr.read()


async def test_write_create_and_scan_spans(workspace: Path) -> None:
    from .conftest import b3

    f = write(workspace / "d" / "w.txt", "abc")
    client = await PlokeClient.spawn(
        "--trace", "--log-format", "json", root=str(workspace), stderr=asyncio.subprocess.PIPE
    )
    try:
        edit = {"filePath": str(f), "expectedHash": "0" * 64, "startByte": 0, "endByte": 1,
                "replacement": "z"}  # fmt: skip
        [w] = await client.write_snippets([edit])
        assert not w["ok"]
        await client.create_files([{"filePath": str(workspace / "d" / "n.txt"), "content": "hi"}])
        await client.scan_changes([{"filePath": str(f), "fileHash": b3(b"abc")}])
    finally:
        await client.close()
    assert client.process is not None and client.process.stderr is not None
    records = [json.loads(x) for x in (await client.process.stderr.read()).decode().splitlines()]
    spans = {r["span"]: r for r in records if r["logger"] == "ploke_io_server.trace"}
    assert spans["write"]["path"] == "d/w.txt" and spans["write"]["outcome"] == "ContentMismatch"
    assert spans["create"]["path"] == "d/n.txt" and spans["create"]["bytes"] == 2
    assert spans["scan"]["directory"] == "d" and spans["scan"]["files"] == 1


async def test_lone_writes_are_counted_and_timed_like_any_request(workspace: Path) -> None:
    """A lone small write is served in the read loop itself, not in a task of its own; it
    still counts in ploke/status (requests, latency, errors) like every other request."""
    f = write(workspace / "a.txt", "hello")
    client = await PlokeClient.spawn(root=str(workspace))
    try:
        [h] = await client.hash_files([str(f)])
        current = h["fileHash"]
        for i in range(3):
            [r] = await client.write_snippets([{"filePath": str(f), "expectedHash": current,
                "startByte": 0, "endByte": 1, "replacement": str(i)}])  # fmt: skip
            assert r["ok"], r
            current = r["newHash"]
        [stale] = await client.write_snippets([{"filePath": str(f), "expectedHash": h["fileHash"],
            "startByte": 0, "endByte": 1, "replacement": "x"}])  # fmt: skip
        assert stale["error"]["kind"] == "ContentMismatch"
        status = await client.status()
    finally:
        await client.close()
    assert f.read_text() == "2ello"
    counters = status["counters"]
    assert counters["requests"]["ploke/writeSnippets"] == 4
    assert counters["latencyMs"]["ploke/writeSnippets"]["count"] == 4
    assert counters["errors"]["ContentMismatch"] == 1
