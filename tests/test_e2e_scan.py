"""End to end: ploke/scanChanges and the stat cache against a real server process, over stdio
and over TCP, on real files.

The server runs with ``--racy-margin-ms 150``: a file is trusted to the stat cache once it is
150 ms old (2 s by default), so tests wait 0.2 s ("age") instead of 2 s before a scan that
should fill the cache.
"""

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

MARGIN = ["--racy-margin-ms", "150"]


async def age() -> None:
    await asyncio.sleep(0.2)


async def scan(client: Any, files: list[tuple[Path | str, str]], **extra: Any) -> list[Any]:
    items = [{"filePath": str(p), "fileHash": h} for p, h in files]
    result = await call(client, methods.SCAN_CHANGES, {"files": items, **extra})
    assert len(result["results"]) == len(items)
    return list(result["results"])


async def cache_stats(client: Any) -> dict[str, Any]:
    counters = (await call(client, methods.STATUS))["counters"]
    return {**counters["statCache"], "filesRead": counters["filesRead"]}


def h(path: Path) -> str:
    return b3(path.read_bytes())


async def test_every_status_in_input_order(
    start_server: Any, transport: str, workspace: Path, tmp_path: Path
) -> None:
    same = write(workspace / "same.rs", "fn a() {}\n")
    changed = write(workspace / "src" / "changed.rs", "fn b() {}\n")
    gone = write(workspace / "gone.rs", "x")
    old_changed = h(changed)
    changed.write_text("fn c() {}\n")
    gone.unlink()
    (workspace / "adir").mkdir()
    os.mkfifo(workspace / "fifo")
    outside = write(tmp_path / "outside.rs", "secret")
    client = await start_server(transport, "--root", str(workspace), *MARGIN)
    res = await scan(client, [
        (same, h(same)),
        (workspace / "nope" / "x.rs", h(same)),  # a directory that is not there
        (changed, old_changed),
        (outside, h(outside)),
        (gone, "0" * 64),
        (workspace / "adir", h(same)),
        ("relative.rs", h(same)),
        (workspace / "fifo", h(same)),
        (same, h(same).upper()),  # hashes compare case-insensitively
        (workspace / "same.rs" / "x", h(same)),  # a file where a directory was expected
    ])  # fmt: skip
    assert res[0] == {"status": "unchanged"}
    assert res[1] == {"status": "removed"}
    assert res[2] == {"status": "modified", "newHash": h(changed)}
    assert res[3]["status"] == "error" and res[3]["error"]["kind"] == "OutsideRoots"
    assert str(tmp_path) not in res[3]["error"]["message"].replace(str(outside), "")
    assert res[4] == {"status": "removed"}
    assert res[5]["status"] == "error" and res[5]["error"]["kind"] == "NotAFile"
    assert res[5]["error"]["message"] == "adir: not a regular file"
    assert res[6]["status"] == "error" and res[6]["error"]["kind"] == "InvalidPath"
    assert res[7]["status"] == "error" and res[7]["error"]["kind"] == "NotAFile"
    assert res[8] == {"status": "unchanged"}
    assert res[9] == {"status": "removed"}


async def test_malformed_items_fail_alone(
    start_server: Any, transport: str, workspace: Path
) -> None:
    f = write(workspace / "a.txt", "a")
    client = await start_server(transport, "--root", str(workspace))
    items: list[Any] = [
        {"filePath": str(f), "fileHash": h(f)},
        {"filePath": str(f)},
        {"filePath": 7, "fileHash": h(f)},
        "not an object",
        {"filePath": str(f), "fileHash": h(f), "ignored": [1, 2]},
    ]
    res = (await call(client, methods.SCAN_CHANGES, {"files": items}))["results"]
    assert res[0] == res[4] == {"status": "unchanged"}
    assert [r["error"]["kind"] for r in res[1:4]] == ["InvalidPath"] * 3
    assert "fileHash must be a string" in res[1]["error"]["message"]
    with pytest.raises(JsonRpcException) as info:
        await call(client, methods.SCAN_CHANGES, {"files": "nope"})
    assert info.value.code == -32602 and "files" in str(info.value)


async def test_an_unchanged_old_file_is_confirmed_without_a_read(
    start_server: Any, transport: str, workspace: Path
) -> None:
    files = [write(workspace / f"d{i % 3}" / f"f{i}.rs", f"fn f{i}() {{}}\n") for i in range(30)]
    await age()
    client = await start_server(transport, "--root", str(workspace), *MARGIN)
    known = [(p, h(p)) for p in files]
    assert {r["status"] for r in await scan(client, known)} == {"unchanged"}
    first = await cache_stats(client)
    assert first["filesRead"] == 30 and first["entries"] == 30 and first["racy"] == 0
    assert {r["status"] for r in await scan(client, known)} == {"unchanged"}
    second = await cache_stats(client)
    assert second["filesRead"] == 30  # nothing read the second time
    assert second["hits"] - first["hits"] == 30


async def test_a_file_changed_within_the_margin_is_reread_every_time(
    start_server: Any, transport: str, workspace: Path
) -> None:
    # The racy case: hashed right after it was written, a same-size rewrite within the same
    # timestamp tick would leave its stat unchanged, so such a file is never trusted.
    f = write(workspace / "hot.rs", "aaaa")
    client = await start_server(transport, "--root", str(workspace), "--racy-margin-ms", "60000")
    assert await scan(client, [(f, h(f))]) == [{"status": "unchanged"}]
    f.write_text("bbbb")  # same size, same second
    assert await scan(client, [(f, b3(b"aaaa"))]) == [
        {"status": "modified", "newHash": b3(b"bbbb")}
    ]
    stats = await cache_stats(client)
    assert stats["entries"] == 0 and stats["racy"] == 2 and stats["filesRead"] == 2


async def test_rename_over_and_utime_back_are_detected(
    start_server: Any, transport: str, workspace: Path
) -> None:
    a = write(workspace / "a.rs", "version 1\n")
    b = write(workspace / "b.rs", "version 1\n")
    await age()
    client = await start_server(transport, "--root", str(workspace), *MARGIN)
    old = h(a)
    assert await scan(client, [(a, old), (b, old)]) == [{"status": "unchanged"}] * 2
    assert (await cache_stats(client))["entries"] == 2
    # a: replaced by rename with a same-size file (new inode), its mtime copied over.
    st = a.stat()
    tmp = write(workspace / ".a.rs.tmp", "version 2\n")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, a)
    # b: rewritten in place, same size, then its mtime set back to the cached value
    # (ctime cannot be set back, so the stat still differs).
    st = b.stat()
    with open(b, "r+b") as f:
        f.write(b"version 3\n")
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert b.stat().st_mtime_ns == st.st_mtime_ns and b.stat().st_size == st.st_size
    res = await scan(client, [(a, old), (b, old)])
    assert res == [
        {"status": "modified", "newHash": b3(b"version 2\n")},
        {"status": "modified", "newHash": b3(b"version 3\n")},
    ]


async def test_reads_hashes_and_writes_keep_the_cache_true(
    start_server: Any, transport: str, workspace: Path
) -> None:
    f = write(workspace / "f.rs", "fn x() {}\n")
    g = write(workspace / "g.rs", "fn y() {}\n")
    await age()
    client = await start_server(transport, "--root", str(workspace), *MARGIN)
    # A snippet read fills the cache; hashFiles and scanChanges then use it.
    await call(client, methods.GET_SNIPPETS, {"snippets": [{"filePath": str(f)}]})
    [hashed] = (await call(client, methods.HASH_FILES, {"paths": [str(f)]}))["results"]
    assert hashed == {"ok": True, "fileHash": h(f), "size": 10}
    assert await scan(client, [(f, h(f))]) == [{"status": "unchanged"}]
    stats = await cache_stats(client)
    assert stats["filesRead"] == 1 and stats["hits"] == 2
    # A write through the server replaces the file: the old entry is gone, the scan sees it.
    old = h(f)
    edit = {"filePath": str(f), "expectedHash": old, "startByte": 3, "endByte": 4,
            "replacement": "z"}  # fmt: skip
    [w] = (await call(client, methods.WRITE_SNIPPETS, {"edits": [edit]}))["results"]
    assert await scan(client, [(f, old), (g, h(g))]) == [
        {"status": "modified", "newHash": w["newHash"]},
        {"status": "unchanged"},
    ]
    assert (await cache_stats(client))["invalidations"] >= 1


async def test_duplicates_and_different_hashes_for_one_file(
    start_server: Any, transport: str, workspace: Path
) -> None:
    f = write(workspace / "f.rs", "one\n")
    client = await start_server(transport, "--root", str(workspace), *MARGIN)
    res = await scan(
        client, [(f, h(f)), (f, "ab" * 32), (f, h(f)), (workspace / ".." / "ws" / "f.rs", h(f))]
    )
    assert res == [
        {"status": "unchanged"},
        {"status": "modified", "newHash": h(f)},
        {"status": "unchanged"},
        {"status": "unchanged"},
    ]
    stats = await cache_stats(client)
    # Once per distinct path as sent: read, or (the file being old enough) found in the cache.
    assert stats["filesRead"] + stats["hits"] == 2 and stats["filesRead"] >= 1


async def test_symlinks_follow_the_policy(
    start_server: Any, transport: str, workspace: Path, tmp_path: Path
) -> None:
    real = write(workspace / "real.rs", "real\n")
    secret = write(tmp_path / "secret.rs", "secret\n")
    (workspace / "inside").symlink_to(real)
    (workspace / "escape").symlink_to(secret)
    (workspace / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    client = await start_server(transport, "--root", str(workspace), *MARGIN)
    res = await scan(client, [
        (workspace / "inside", h(real)),
        (workspace / "escape", h(secret)),
        (workspace / "linkdir" / "secret.rs", h(secret)),
    ])  # fmt: skip
    assert res[0] == {"status": "unchanged"}
    for r in res[1:]:
        assert r["status"] == "error" and r["error"]["kind"] == "OutsideRoots", r
        assert "secret" not in r["error"]["message"].replace("secret.rs", "")


async def test_the_cache_never_grows_past_its_bound(
    start_server: Any, transport: str, workspace: Path
) -> None:
    files = [write(workspace / f"d{i % 4}" / f"f{i}", str(i)) for i in range(200)]
    await age()
    client = await start_server(
        transport, "--root", str(workspace), *MARGIN, "--stat-cache-entries", "50"
    )
    known = [(p, h(p)) for p in files]
    for _ in range(2):
        assert {r["status"] for r in await scan(client, known)} == {"unchanged"}
        stats = await cache_stats(client)
        assert stats["entries"] <= 50 and stats["capacity"] == 50
    assert stats["evictions"] >= 350
    client2 = await start_server(
        transport, "--root", str(workspace), *MARGIN, "--stat-cache-bytes", "0"
    )
    await scan(client2, known)
    assert (await cache_stats(client2))["entries"] == 0


async def test_progress_and_cancel_mid_scan(
    start_server: Any, transport: str, workspace: Path
) -> None:
    paths = [write(workspace / f"d{i % 60}" / f"f{i}.txt", "x" * 4000) for i in range(3000)]
    client = await start_server(transport, "--root", str(workspace))
    items = [{"filePath": str(p), "fileHash": "0" * 64} for p in paths]
    client.progress_reports["scan"] = []
    fut = asyncio.ensure_future(
        client.protocol.send_request_async(
            methods.SCAN_CHANGES, {"files": items, "workDoneToken": "scan"}, msg_id="scan-1"
        )
    )
    while not any(r.kind == "report" for r in client.progress_reports.get("scan", [])):
        assert not fut.done(), "the scan finished before it could be cancelled"
        await asyncio.sleep(0.001)
    client.cancel_request(lsp.CancelParams(id="scan-1"))
    with pytest.raises(JsonRpcException) as info:
        await asyncio.wait_for(fut, 30)
    assert info.value.code == -32800
    status = (await call(client, methods.STATUS))["counters"]
    assert status["cancelled"] == 1 and status["filesRead"] < len(paths)
    # A whole scan afterwards, with its progress to the end.
    client.progress_reports["scan2"] = []
    res = await scan(client, [(p, b3(b"x" * 4000)) for p in paths], workDoneToken="scan2")
    assert {r["status"] for r in res} == {"unchanged"}
    assert [r.kind for r in await progress_to_end(client, "scan2")][-1] == "end"


async def test_too_large_is_an_item_error_named_by_its_root_relative_path(
    start_server: Any, transport: str, workspace: Path
) -> None:
    big = write(workspace / "src" / "big.rs", "x" * 200)
    small = write(workspace / "src" / "small.rs", "x" * 20)
    client = await start_server(transport, "--root", str(workspace), "--max-file-bytes", "100")
    res = await scan(client, [(big, h(big)), (small, h(small))])
    assert res[0]["status"] == "error" and res[0]["error"]["kind"] == "TooLarge"
    assert res[0]["error"]["message"] == "src/big.rs: 200 bytes exceeds the limit of 100 bytes"
    assert res[1] == {"status": "unchanged"}


async def test_progress_counts_files_even_in_one_directory(
    start_server: Any, transport: str, workspace: Path
) -> None:
    paths = [write(workspace / "one" / f"f{i}.txt", str(i)) for i in range(1000)]
    client = await start_server(transport, "--root", str(workspace))
    client.progress_reports["p"] = []
    res = await scan(client, [(p, h(p)) for p in paths], workDoneToken="p")
    assert {r["status"] for r in res} == {"unchanged"}
    reports = await progress_to_end(client, "p")
    messages = [r.message for r in reports if r.kind == "report"]
    assert len(messages) >= 3 and messages[-1] == "1000/1000 files", messages
    assert {int(m.split("/")[1].split()[0]) for m in messages} == {1000}
