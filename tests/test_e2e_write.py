"""End to end: ploke/writeSnippets and ploke/createFiles against real server processes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pygls.exceptions import JsonRpcException

from ploke_io_server import methods

from .conftest import TcpServer, b3, call, progress_to_end, write


async def edits_of(client: Any, edits: list[dict[str, Any]], **flags: Any) -> list[dict[str, Any]]:
    result = await call(client, methods.WRITE_SNIPPETS, {"edits": edits, **flags})
    assert len(result["results"]) == len(edits)
    return list(result["results"])


async def test_write_and_create_over_the_wire(
    start_server: Any, transport: str, workspace: Path
) -> None:
    f = write(workspace / "src" / "lib.rs", "pub fn a() {}\npub fn b() {}\n")
    f.chmod(0o640)
    h = b3(f.read_bytes())
    client = await start_server(transport, "--root", str(workspace))
    res = await edits_of(
        client,
        [
            {"filePath": str(f), "expectedHash": h, "startByte": 7, "endByte": 8,
             "replacement": "alpha"},
            {"filePath": str(f), "expectedHash": h, "startByte": 21, "endByte": 22,
             "replacement": "β"},
            {"filePath": str(workspace / "nope.rs"), "expectedHash": h, "startByte": 0,
             "endByte": 0, "replacement": ""},
            {"filePath": str(f), "expectedHash": h, "startByte": "0", "endByte": 1,
             "replacement": "x"},
        ],
        origin="me",
    )  # fmt: skip
    new = f.read_bytes()
    assert new.decode() == "pub fn alpha() {}\npub fn β() {}\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    for r, text in zip(res[:2], ["alpha", "β"], strict=True):
        assert r["ok"] and r["oldHash"] == h and r["newHash"] == b3(new)
        assert r["filePath"] == str(f)
        assert new[r["newStartByte"] : r["newEndByte"]].decode() == text
    assert res[2]["error"]["kind"] == "NotFound"
    assert res[3]["error"]["kind"] == "InvalidRange"
    created = (await call(client, methods.CREATE_FILES, {"files": [
        {"filePath": str(workspace / "new" / "mod.rs"), "content": "mod x;\n",
         "createParents": True},
        {"filePath": str(f), "content": "clobber"},
    ]}))["results"]  # fmt: skip
    assert created[0] == {
        "ok": True, "filePath": str(workspace / "new" / "mod.rs"), "fileHash": b3(b"mod x;\n")
    }  # fmt: skip
    assert created[1]["error"]["kind"] == "AlreadyExists"
    assert f.read_bytes() == new
    dry = await edits_of(
        client,
        [{"filePath": str(f), "expectedHash": b3(new), "startByte": 0, "endByte": 3,
          "replacement": "PUB"}],
        dryRun=True,
    )  # fmt: skip
    assert "+PUB fn alpha() {}" in dry[0]["diff"] and f.read_bytes() == new
    status = await call(client, methods.STATUS)
    assert status["counters"]["filesWritten"] == 1 and status["counters"]["filesCreated"] == 1


async def test_malformed_write_params_name_the_field(
    start_server: Any, transport: str, workspace: Path
) -> None:
    client = await start_server(transport, "--root", str(workspace))
    for params, field in (
        ({"edits": "x"}, "edits"),
        ({"edits": [], "atomic": "yes"}, "atomic"),
        ({"edits": [], "origin": 5}, "origin"),
        ({"files": None}, "files"),
    ):
        method = methods.CREATE_FILES if "files" in params else methods.WRITE_SNIPPETS
        with pytest.raises(JsonRpcException) as info:
            await call(client, method, params)
        assert info.value.code == -32602 and field in info.value.message


async def test_200_pipelined_writes_with_one_expected_hash_over_stdio(
    start_server: Any, workspace: Path
) -> None:
    f = write(workspace / "race.txt", "start\n")
    h = b3(f.read_bytes())
    client = await start_server("stdio", "--root", str(workspace))

    def edit(i: int) -> dict[str, Any]:
        return {"filePath": str(f), "expectedHash": h, "startByte": 0, "endByte": 5,
                "replacement": f"w{i}"}  # fmt: skip

    requests = [
        client.protocol.send_request_async(methods.WRITE_SNIPPETS, {"edits": [edit(i)]})
        for i in range(200)
    ]
    results = [r["results"][0] for r in await asyncio.gather(*requests)]
    winners = [i for i, r in enumerate(results) if r["ok"]]
    assert len(winners) == 1
    assert {r["error"]["kind"] for r in results if not r["ok"]} == {"ContentMismatch"}
    assert f.read_text() == f"w{winners[0]}\n"
    assert results[winners[0]]["newHash"] == b3(f.read_bytes())


async def test_several_tcp_clients_race_for_one_file(workspace: Path, tmp_path: Path) -> None:
    f = write(workspace / "shared.txt", "0")
    server = await TcpServer.start(["--root", str(workspace)], tmp_path / "tok")
    try:
        clients = [await server.connect() for _ in range(4)]
        # Each client increments the counter 25 times, re-reading on ContentMismatch:
        # no update may be lost.

        async def bump(client: Any, n: int) -> int:
            retries = 0
            for _ in range(n):
                while True:
                    [s] = (await call(client, methods.GET_SNIPPETS,
                                      {"snippets": [{"filePath": str(f)}]}))["results"]  # fmt: skip
                    value = int(s["text"])
                    [r] = await edits_of(client, [{
                        "filePath": str(f), "expectedHash": s["fileHash"], "startByte": 0,
                        "endByte": len(s["text"]), "replacement": str(value + 1)}])  # fmt: skip
                    if r["ok"]:
                        break
                    assert r["error"]["kind"] == "ContentMismatch"
                    retries += 1
            return retries

        retries = await asyncio.gather(*(bump(c, 25) for c in clients))
        assert f.read_text() == "100"
        assert sum(retries) > 0  # they really did race
    finally:
        await server.stop()


async def test_shutdown_waits_for_a_write_batch(workspace: Path) -> None:
    from .test_e2e_lifecycle import Raw

    files = [write(workspace / f"f{i}.txt", "a") for i in range(100)]
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    edits = [{"filePath": str(p), "expectedHash": b3(b"a"), "startByte": 0, "endByte": 1,
              "replacement": "b"} for p in files]  # fmt: skip
    raw.send(
        {"jsonrpc": "2.0", "id": "w", "method": methods.WRITE_SNIPPETS, "params": {"edits": edits}}
    )
    raw.send({"jsonrpc": "2.0", "id": "s", "method": "shutdown"})
    first, second = await raw.recv(), await raw.recv()
    assert first is not None and second is not None
    assert first["id"] == "w" and all(r["ok"] for r in first["result"]["results"])
    assert second["id"] == "s"
    raw.send({"jsonrpc": "2.0", "method": "exit"})
    assert await raw.exit_code() == 0
    assert {p.read_text() for p in files} == {"b"}
    assert not [n for n in os.listdir(workspace) if ".ploke-tmp." in n]
    json.dumps(first)  # a plain JSON value


async def test_the_daemon_removes_temp_files_a_crash_left(
    start_server: Any, transport: str, workspace: Path
) -> None:
    left = write(workspace / "src" / ".lib.rs.ploke-tmp.999999999.0badf00d", "torn")
    users = write(workspace / ".notes.ploke-tmp.txt", "not ours")
    client = await start_server(transport, "--root", str(workspace))
    for _ in range(200):
        if (await call(client, methods.STATUS))["counters"]["tempsRemoved"] == 1:
            break
        await asyncio.sleep(0.02)
    assert not left.exists() and users.exists()


async def test_temp_files_in_a_clients_workspace_are_removed_too(
    start_server: Any, transport: str, workspace: Path
) -> None:
    left = write(workspace / ".a.rs.ploke-tmp.999999999.0badf00d", "torn")
    # No --root: the server's default is its cwd, which it does not walk; the client's
    # workspace folder is cleaned when the client brings it.
    client = await start_server(transport, folders=[str(workspace)])
    for _ in range(200):
        if not left.exists():
            break
        await asyncio.sleep(0.02)
    assert not left.exists()
    assert (await call(client, methods.STATUS))["counters"]["tempsRemoved"] == 1


async def test_write_batches_report_progress(
    start_server: Any, transport: str, workspace: Path
) -> None:
    files = [write(workspace / f"p{i}.txt", "a") for i in range(50)]
    client = await start_server(transport, "--root", str(workspace))
    client.progress_reports["w"] = []
    client.progress_reports["c"] = []
    edits = [{"filePath": str(p), "expectedHash": b3(b"a"), "startByte": 0, "endByte": 1,
              "replacement": "b"} for p in files]  # fmt: skip
    res = await edits_of(client, edits, workDoneToken="w")
    assert all(r["ok"] for r in res)
    news = [{"filePath": str(workspace / f"n{i}.txt"), "content": "n"} for i in range(20)]
    created = await call(client, methods.CREATE_FILES, {"files": news, "workDoneToken": "c"})
    assert all(r["ok"] for r in created["results"])
    for token in ("w", "c"):
        reports = await progress_to_end(client, token)
        kinds = [r.kind for r in reports]
        assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds, kinds


async def test_files_whose_names_are_not_utf8_are_read_written_and_created(
    workspace: Path,
) -> None:
    """Such a name travels as Python spells it (``os.fsdecode``: lone surrogates, sent as
    ``\\udcXX`` escapes) and reaches exactly the file with those bytes."""
    from ploke_io_server.client import PlokeClient

    base = os.fsencode(workspace)
    raw = base + b"/caf\xe9.rs"
    with open(raw, "wb") as f:
        f.write(b"fn a() {}\n")
    name = os.fsdecode(raw)
    client = await PlokeClient.spawn(root=str(workspace))
    try:
        [s] = await client.get_snippets([{"filePath": name, "startByte": 3, "endByte": 4}])
        assert s == {"ok": True, "text": "a", "fileHash": b3(b"fn a() {}\n")}
        [w] = await client.write_snippets([{"filePath": name, "expectedHash": s["fileHash"],
            "startByte": 3, "endByte": 4, "replacement": "b"}])  # fmt: skip
        assert w["ok"] and w["filePath"] == name, w
        new = os.fsdecode(base + b"/n\xff.rs")
        [c] = await client.create_files([{"filePath": new, "content": "z"}])
        assert c == {"ok": True, "filePath": new, "fileHash": b3(b"z")}
    finally:
        await client.close()
    with open(raw, "rb") as f:
        assert f.read() == b"fn b() {}\n"
    with open(base + b"/n\xff.rs", "rb") as f:
        assert f.read() == b"z"
    assert sorted(os.listdir(base)) == sorted([b"caf\xe9.rs", b"n\xff.rs"])
