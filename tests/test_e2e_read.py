"""End to end: ploke/getSnippets, ploke/hashFiles and ploke/status against a real server
process, over stdio and over TCP (every test runs on both transports)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException

from ploke_io_server import methods

from .conftest import b3, call, progress_to_end, write

MULTI = "héllo 日本語 🦀 wörld\n"
MULTI_B = MULTI.encode()


@pytest.fixture
def files(workspace: Path) -> dict[str, Path]:
    out = {
        "ascii": write(workspace / "ascii.txt", "hello world\n"),
        "multi": write(workspace / "src" / "multi.rs", MULTI_B),
        "crlf": write(workspace / "crlf.txt", b"a\r\nb\r\n"),
        "bad": write(workspace / "bad.bin", b"ok \xff\xfe not utf-8"),
        "empty": write(workspace / "empty.txt", b""),
    }
    (workspace / "adir").mkdir()
    os.mkfifo(workspace / "fifo")
    return out


async def snippets(client: Any, items: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    result = await call(client, methods.GET_SNIPPETS, {"snippets": items, **extra})
    assert len(result["results"]) == len(items)
    return list(result["results"])


def ok(item: dict[str, Any]) -> str:
    assert item["ok"] is True, item
    return str(item["text"])


def err(item: dict[str, Any], kind: str) -> dict[str, Any]:
    assert item["ok"] is False, item
    error = item["error"]
    assert error["kind"] == kind, error
    codes = {
        "ContentMismatch": -33001, "OutsideRoots": -33002, "NotFound": -33003,
        "InvalidRange": -33004, "NotUtf8": -33005, "PermissionDenied": -33006,
        "AlreadyExists": -33007, "NotAFile": -33008, "TooLarge": -33009,
        "InvalidPath": -33010, "Io": -33011,
    }  # fmt: skip
    assert error["code"] == codes[kind]
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


async def test_whole_file_and_hash_reported(
    start_server: Any, transport: str, workspace: Path, files: dict[str, Path]
) -> None:
    client = await start_server(transport, "--root", str(workspace))
    res = await snippets(
        client, [{"filePath": str(files["multi"])}, {"filePath": str(files["empty"])}]
    )
    assert ok(res[0]) == MULTI
    assert res[0]["fileHash"] == b3(MULTI_B)
    assert ok(res[1]) == "" and res[1]["fileHash"] == b3(b"")


async def test_multibyte_ranges_on_and_off_boundaries(
    start_server: Any, transport: str, workspace: Path, files: dict[str, Path]
) -> None:
    client = await start_server(transport, "--root", str(workspace))
    p = str(files["multi"])
    h = b3(MULTI_B)
    cjk = MULTI_B.index("日".encode())
    crab = MULTI_B.index("🦀".encode())
    items = [
        {"filePath": p, "fileHash": h, "startByte": cjk, "endByte": cjk + 9},  # 日本語
        {"filePath": p, "fileHash": h, "startByte": crab, "endByte": crab + 4},  # 🦀
        {"filePath": p, "startByte": 1, "endByte": 3},  # é
        {"filePath": p, "startByte": cjk + 1, "endByte": cjk + 3},  # inside 日
        {"filePath": p, "startByte": crab, "endByte": crab + 2},  # half a crab
        {"filePath": p, "startByte": 2},  # starts inside é
        {"filePath": p, "startByte": crab + 4},  # startByte alone: to the end
        {"filePath": p, "endByte": 6},  # endByte alone: from 0
        {"filePath": p, "startByte": 5, "endByte": 2},  # start > end
        {"filePath": p, "startByte": 0, "endByte": len(MULTI_B) + 1},  # past the end
        {"filePath": p, "startByte": len(MULTI_B), "endByte": len(MULTI_B)},  # empty at end
        {"filePath": str(files["crlf"]), "startByte": 0, "endByte": 3},  # CRLF kept
    ]
    res = await snippets(client, items)
    assert ok(res[0]) == "日本語"
    assert ok(res[1]) == "🦀"
    assert ok(res[2]) == "é"
    for i in (3, 4, 5):
        e = err(res[i], "InvalidRange")
        assert "boundar" in e["message"]
    assert ok(res[6]) == MULTI_B[crab + 4 :].decode()
    assert ok(res[7]) == "héllo"
    err(res[8], "InvalidRange")
    e = err(res[9], "InvalidRange")
    assert e["data"]["size"] == len(MULTI_B)
    assert ok(res[10]) == ""
    assert ok(res[11]) == "a\r\n"
    assert all(r["fileHash"] == h for r in res[:3])


async def test_hash_verified_for_every_request_in_a_batch(
    start_server: Any, transport: str, workspace: Path, files: dict[str, Path]
) -> None:
    client = await start_server(transport, "--root", str(workspace))
    p = str(files["ascii"])
    good = b3(b"hello world\n")
    stale = b3(b"hello world, before the edit\n")
    items = [
        {"filePath": p, "fileHash": good, "startByte": 0, "endByte": 5},
        {"filePath": p, "fileHash": stale, "startByte": 0, "endByte": 5},
        {"filePath": p, "fileHash": good, "startByte": 6, "endByte": 11},
        {"filePath": p, "fileHash": good.upper(), "startByte": 6, "endByte": 11},
        {"filePath": p, "fileHash": stale},
    ]
    res = await snippets(client, items)
    assert ok(res[0]) == "hello"
    e = err(res[1], "ContentMismatch")
    assert e["data"] == {"expected": stale, "actual": good}
    assert ok(res[2]) == "world"
    assert ok(res[3]) == "world"
    assert err(res[4], "ContentMismatch")["data"]["actual"] == good


async def test_every_error_kind_in_input_order(
    start_server: Any, transport: str, tmp_path: Path, workspace: Path, files: dict[str, Path]
) -> None:
    outside = write(tmp_path / "outside" / "secret.txt", "secret")
    write(tmp_path / "ws-evil" / "x.txt", "evil")
    (workspace / "escape").symlink_to(outside)
    (workspace / "inner-link").symlink_to("ascii.txt")
    (workspace / "loop-a").symlink_to("loop-b")
    (workspace / "loop-b").symlink_to("loop-a")
    client = await start_server(transport, "--root", str(workspace))
    ws = str(workspace)
    items: list[Any] = [
        {"filePath": str(files["ascii"]), "startByte": 0, "endByte": 5},
        {"filePath": f"{ws}/../outside/secret.txt"},
        {"filePath": f"{ws}-evil/x.txt"},
        {"filePath": f"{ws}/escape"},
        {"filePath": f"{ws}/inner-link", "endByte": 5},
        {"filePath": f"{ws}/missing.txt"},
        {"filePath": str(files["bad"])},
        {"filePath": f"{ws}/adir"},
        {"filePath": f"{ws}/fifo"},
        {"filePath": "relative/path.txt"},
        {"filePath": ""},
        {"filePath": f"{ws}/nul\u0000byte"},
        {"filePath": 42},
        {"filePath": str(files["ascii"]), "startByte": "0"},
        {"filePath": str(files["ascii"]), "endByte": -1},
        {"filePath": str(files["ascii"]), "startByte": 1.5},
        {"filePath": str(files["ascii"]), "fileHash": 7},
        "not an object",
        {"filePath": str(files["ascii"]), "startByte": 6, "extra": {"ignored": True}},
        {"filePath": str(files["ascii"]), "startByte": 3, "endByte": 99},
        {"filePath": f"{ws}/loop-a"},
    ]
    res = await snippets(client, items)
    assert ok(res[0]) == "hello"
    for i in (1, 2, 3):
        e = err(res[i], "OutsideRoots")
        assert str(outside.parent) not in e["message"]
    assert ok(res[4]) == "hello"
    err(res[5], "NotFound")
    err(res[6], "NotUtf8")
    err(res[7], "NotAFile")
    err(res[8], "NotAFile")
    for i in (9, 10, 11, 12):
        err(res[i], "InvalidPath")
    for i in (13, 14, 15):
        err(res[i], "InvalidRange")
    err(res[16], "InvalidPath")
    err(res[17], "InvalidPath")
    assert ok(res[18]) == "world\n"
    err(res[19], "InvalidRange")
    assert "symbolic links" in err(res[20], "Io")["message"]


async def test_too_large(start_server: Any, transport: str, workspace: Path) -> None:
    big = write(workspace / "big.txt", "x" * 101)
    small = write(workspace / "small.txt", "x" * 100)
    client = await start_server(transport, "--root", str(workspace), "--max-file-bytes", "100")
    res = await snippets(client, [{"filePath": str(big), "endByte": 1}, {"filePath": str(small)}])
    e = err(res[0], "TooLarge")
    assert e["data"] == {"size": 101, "limit": 100}
    assert ok(res[1]) == "x" * 100
    hashed = (await call(client, methods.HASH_FILES, {"paths": [str(big)]}))["results"]
    err(hashed[0], "TooLarge")


@pytest.mark.parametrize("transport", ["stdio"])
async def test_permission_denied(start_server: Any, transport: str, tmp_path: Path) -> None:
    # We run as root, which ignores file modes: drop the two capabilities that let it.
    root = tmp_path / "perm"
    locked = write(root / "locked.txt", "no")
    locked.chmod(0)
    readable = write(root / "open.txt", "yes")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    client = await start_server(transport, "--root", str(root), prefix=prefix)
    res = await snippets(client, [{"filePath": str(locked)}, {"filePath": str(readable)}])
    err(res[0], "PermissionDenied")
    assert ok(res[1]) == "yes"


async def test_each_distinct_file_read_once_per_batch(
    start_server: Any, transport: str, workspace: Path, files: dict[str, Path]
) -> None:
    client = await start_server(transport, "--root", str(workspace))
    before = (await call(client, methods.STATUS))["counters"]
    items = [
        {"filePath": str(files[name]), "startByte": 0, "endByte": 1}
        for name in ("ascii", "multi", "crlf")
        for _ in range(5)
    ]
    res = await snippets(client, items)
    assert [r["text"] for r in res] == ["h"] * 5 + ["h"] * 5 + ["a"] * 5
    after = (await call(client, methods.STATUS))["counters"]
    assert after["filesRead"] - before["filesRead"] == 3
    assert (
        after["requests"][methods.GET_SNIPPETS]
        == before["requests"].get(methods.GET_SNIPPETS, 0) + 1
    )


async def test_hash_files(
    start_server: Any, transport: str, workspace: Path, files: dict[str, Path]
) -> None:
    client = await start_server(transport, "--root", str(workspace))
    paths: list[Any] = [
        str(files["multi"]), str(workspace / "nope"), str(files["bad"]), 17,
        str(files["multi"]), str(workspace / "adir"),
    ]  # fmt: skip
    res = (await call(client, methods.HASH_FILES, {"paths": paths}))["results"]
    assert res[0] == {"ok": True, "fileHash": b3(MULTI_B), "size": len(MULTI_B)}
    err(res[1], "NotFound")
    assert res[2]["ok"] and res[2]["fileHash"] == b3(files["bad"].read_bytes())  # bytes, any
    err(res[3], "InvalidPath")
    assert res[4] == res[0]
    err(res[5], "NotAFile")


async def test_status(start_server: Any, transport: str, workspace: Path) -> None:
    client = await start_server(
        transport, "--root", str(workspace), "--fd-limit", "2000", "--symlink-policy", "deny"
    )
    status = await call(client, methods.STATUS)
    assert status["roots"] == [str(workspace)]
    assert status["symlinkPolicy"] == "deny"
    assert status["fdLimit"] == 1024
    assert status["watcher"] == {"enabled": False, "debounceMs": 250}
    assert isinstance(status["version"], str)
    assert set(status["counters"]) >= {"requests", "errors", "filesRead", "bytesRead"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"snippets": "all"}, "snippets"),
        ({}, "snippets"),
        ({"snippets": None}, "snippets"),
        ({"snippets": [], "workDoneToken": [1]}, "workDoneToken"),
        (["not", "an", "object"], "params"),
    ],
)
async def test_malformed_params_name_the_field(
    start_server: Any, transport: str, workspace: Path, params: Any, field: str
) -> None:
    client = await start_server(transport, "--root", str(workspace))
    with pytest.raises(JsonRpcException) as info:
        await call(client, methods.GET_SNIPPETS, params)
    assert info.value.code == -32602
    assert field in str(info.value.message)
    with pytest.raises(JsonRpcException) as info:
        await call(client, methods.HASH_FILES, {"paths": {"a": 1}})
    assert info.value.code == -32602 and "paths" in str(info.value.message)
    assert (await call(client, methods.STATUS))["roots"] == [str(workspace)]


async def test_huge_batch_is_refused_clearly(
    start_server: Any, transport: str, workspace: Path, files: dict[str, Path]
) -> None:
    client = await start_server(transport, "--root", str(workspace), "--max-batch-items", "1000")
    item = {"filePath": str(files["ascii"]), "startByte": 0, "endByte": 1}
    with pytest.raises(JsonRpcException) as info:
        await call(client, methods.GET_SNIPPETS, {"snippets": [item] * 1001})
    assert info.value.code == -32602
    assert "1001" in info.value.message and "1000" in info.value.message
    res = await snippets(client, [item] * 1000)
    assert {ok(r) for r in res} == {"h"}


async def test_progress_reported_with_a_work_done_token(
    start_server: Any, transport: str, workspace: Path
) -> None:
    paths = [write(workspace / f"d{i % 10}" / f"f{i}.txt", f"file {i}\n") for i in range(300)]
    client = await start_server(transport, "--root", str(workspace))
    client.progress_reports["tok-1"] = []  # a client-made token: the client knows it
    res = await snippets(client, [{"filePath": str(p)} for p in paths], workDoneToken="tok-1")
    assert [ok(r) for r in res] == [f"file {i}\n" for i in range(300)]
    reports = await progress_to_end(client, "tok-1")
    kinds = [r.kind for r in reports]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
    percents = [r.percentage for r in reports if r.kind == "report"]
    assert percents == sorted(percents) and percents[-1] == 100


async def test_cancel_a_batch_in_flight(start_server: Any, transport: str, workspace: Path) -> None:
    paths = [write(workspace / f"d{i % 50}" / f"f{i}.txt", "x" * 2000) for i in range(3000)]
    client = await start_server(transport, "--root", str(workspace))
    items = [{"filePath": str(p)} for p in paths]
    params = {"snippets": items, "workDoneToken": "t"}
    client.progress_reports["t"] = []
    fut = asyncio.ensure_future(
        client.protocol.send_request_async(methods.GET_SNIPPETS, params, msg_id="cancel-me")
    )
    # Wait until the engine is reading (its first progress report), then cancel.
    while not any(r.kind == "report" for r in client.progress_reports.get("t", [])):
        assert not fut.done(), "the batch finished before it could be cancelled"
        await asyncio.sleep(0.001)
    client.cancel_request(lsp.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as info:
        await asyncio.wait_for(fut, 30)
    assert info.value.code == -32800
    status = await call(client, methods.STATUS)
    assert status["counters"]["cancelled"] == 1
    assert status["counters"]["filesRead"] < len(paths)
    # The server is still fine, and a later batch is whole.
    res = await snippets(client, [{"filePath": str(p), "endByte": 3} for p in paths])
    assert {ok(r) for r in res} == {"xxx"}


async def test_whole_file_json_memo_is_keyed_by_content(
    start_server: Any, transport: str, workspace: Path
) -> None:
    big = write(workspace / "big.rs", "// café\n" + "fn x() {}\n" * 1000)
    client = await start_server(transport, "--root", str(workspace))
    first = (await snippets(client, [{"filePath": str(big)}]))[0]
    again = (await snippets(client, [{"filePath": str(big)}]))[0]
    assert ok(first) == ok(again) == big.read_text()
    memo = (await call(client, methods.STATUS))["counters"]["jsonCache"]
    assert memo["misses"] == 1 and memo["hits"] == 1 and memo["bytes"] > 10_000
    # Same size, same second: a new content is a new key, never the old text.
    changed = big.read_text().replace("café", "cafe").replace("x()", "y()", 1) + " "
    big.write_text(changed)
    after = (await snippets(client, [{"filePath": str(big)}]))[0]
    assert ok(after) == changed and after["fileHash"] == b3(changed.encode())


async def test_json_memo_can_be_turned_off(
    start_server: Any, transport: str, workspace: Path
) -> None:
    big = write(workspace / "big.txt", "x" * 10_000)
    client = await start_server(transport, "--root", str(workspace), "--json-cache-bytes", "0")
    for _ in range(2):
        assert ok((await snippets(client, [{"filePath": str(big)}]))[0]) == "x" * 10_000
    memo = (await call(client, methods.STATUS))["counters"]["jsonCache"]
    assert memo == {"hits": 0, "misses": 0, "bytes": 0, "budget": 0}


async def test_lone_requests_small_and_over_the_inline_limit(
    start_server: Any, transport: str, workspace: Path
) -> None:
    # One request at a time: small files are served on the loop, a file over 1 MiB goes to
    # the executor; both answer the same way, and so does a write of each.
    small = write(workspace / "s.rs", "fn café() {}\n")
    big_text = "é" * (1 << 20)
    big = write(workspace / "b.rs", big_text)
    client = await start_server(transport, "--root", str(workspace))
    [s, b] = [(await snippets(client, [{"filePath": str(p)}]))[0] for p in (small, big)]
    assert ok(s) == small.read_text() and ok(b) == big_text
    for p, data in ((small, small.read_bytes()), (big, big.read_bytes())):
        edit = {"filePath": str(p), "expectedHash": b3(data), "startByte": 0, "endByte": 2,
                "replacement": "ü"}  # fmt: skip
        [r] = (await call(client, methods.WRITE_SNIPPETS, {"edits": [edit]}))["results"]
        assert r["ok"], r
        assert p.read_bytes() == "ü".encode() + data[2:]
