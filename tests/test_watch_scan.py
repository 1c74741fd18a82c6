"""ploke/scanChanges confirmed from the watcher's index (no stat per file), end to end.

A real server process with ``--watch`` on a real temp tree. What must hold: a change made
before a scan request is always reported, whether the watcher has reconciled it yet or not
(the cookie sync, the dirty paths and directories), and whatever the index cannot vouch for
(a hard-linked file, a session's narrower roots, a path through a symlink) is checked the
ordinary way. The counters show which route was taken.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from ploke_io_server import methods
from ploke_io_server.client import PlokeClient
from ploke_io_server.engine.watcher import LOCAL_FILESYSTEMS, _filesystem_type, _unescape_mount

from .conftest import TcpServer, b3, call, progress_to_end, write

# Files are cached once 100 ms old: the tests wait that long after making them.
ARGS = ["--watch", "--debounce-ms", "150", "--racy-margin-ms", "100"]
N = 600  # above the 512 files from which a scan asks the watcher


def make_tree(root: Path, n: int = N, dirs: int = 6) -> dict[Path, str]:
    files = {}
    for i in range(n):
        data = f"file {i}\n".encode() * (1 + i % 3)
        p = write(root / f"d{i % dirs}" / f"f{i}.txt", data)
        files[p] = b3(data)
    return files


async def scan(client: PlokeClient, known: dict[Path, str]) -> dict[Path, dict[str, Any]]:
    res = await client.scan_changes([{"filePath": str(p), "fileHash": h} for p, h in known.items()])
    return dict(zip(known, res, strict=True))


async def watcher_counters(client: PlokeClient) -> dict[str, Any]:
    return dict((await client.status())["counters"]["watcher"])


def changed(results: dict[Path, dict[str, Any]]) -> dict[Path, str]:
    return {p: r["status"] for p, r in results.items() if r["status"] != "unchanged"}


async def spawn(root: Path, *args: str) -> PlokeClient:
    return await PlokeClient.spawn(*ARGS, *args, root=str(root))


async def test_a_repeat_scan_is_confirmed_from_the_index(workspace: Path) -> None:
    known = make_tree(workspace)
    await asyncio.sleep(0.15)
    async with await spawn(workspace) as client:
        assert changed(await scan(client, known)) == {}  # reads and caches every file
        before = await watcher_counters(client)
        assert before["trustedRoots"] == [str(workspace)]
        assert changed(await scan(client, known)) == {}
        after = await watcher_counters(client)
        assert after["confirmed"] - before["confirmed"] == N
        assert after["syncs"] - before["syncs"] == 1
        files_read = (await client.status())["counters"]["filesRead"]
        assert changed(await scan(client, known)) == {}
        assert (await client.status())["counters"]["filesRead"] == files_read
        # A small scan does not pay for a cookie: it is checked file by file.
        small = dict(list(known.items())[:10])
        assert changed(await scan(client, small)) == {}
        assert (await watcher_counters(client))["syncs"] == after["syncs"] + 1


async def test_changes_just_made_are_always_reported(workspace: Path) -> None:
    """Changed right before the scan (before the debounce, mid-reconcile, or after it)."""
    known = make_tree(workspace)
    paths = list(known)
    await asyncio.sleep(0.15)
    rng = random.Random(5)
    async with await spawn(workspace) as client:
        assert changed(await scan(client, known)) == {}
        for round_no in range(12):
            expect: dict[Path, str] = {}
            for p in rng.sample(paths, 8):
                kind = rng.choice(["rewrite", "same-size", "delete", "atomic-save", "touch"])
                if kind == "delete":
                    p.unlink()
                    expect[p] = "removed"
                    continue
                old = p.read_bytes()
                if kind == "touch":  # metadata only: still unchanged
                    os.utime(p, ns=(0, os.stat(p).st_mtime_ns + 1_000_000_000))
                    continue
                if kind == "same-size":  # same size, same mtime as before
                    st = os.stat(p)
                    p.write_bytes(bytes(reversed(old)))
                    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
                    new = bytes(reversed(old))
                elif kind == "atomic-save":
                    new = old + b"saved\n"
                    tmp = p.with_name(p.name + ".tmp")
                    tmp.write_bytes(new)
                    os.replace(tmp, p)
                else:
                    new = old + b"more\n"
                    p.write_bytes(new)
                if b3(new) != known[p]:
                    expect[p] = "modified"
            # No sleep: the events are still in flight. Every few rounds, let the watcher
            # reconcile first (the index then holds the new stats and digests).
            if round_no % 3 == 2:
                await asyncio.sleep(0.5)
            results = await scan(client, known)
            assert changed(results) == expect, f"round {round_no}"
            for p, status in expect.items():
                if status == "removed":
                    write(p, b"back\n")
                    known[p] = b3(b"back\n")
                else:
                    known[p] = results[p]["newHash"]
            await asyncio.sleep(0.15)  # the rewritten files age past the racy margin
            assert changed(await scan(client, known)) == {}
        assert (await watcher_counters(client))["confirmed"] > 0


async def test_a_directory_replaced_by_one_with_the_same_stats(workspace: Path) -> None:
    """Same names, sizes and mtimes, other content: only the directory events tell."""
    known = make_tree(workspace)
    await asyncio.sleep(0.15)
    async with await spawn(workspace) as client:
        assert changed(await scan(client, known)) == {}
        d = workspace / "d1"
        shutil.copytree(d, workspace / "copy", copy_function=shutil.copy2)
        for f in (workspace / "copy").iterdir():  # same size, same mtime, other bytes
            st = f.stat()
            f.write_bytes(f.read_bytes().upper())
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(d, workspace / "old")
        os.rename(workspace / "copy", d)
        expect = {p: "modified" for p in known if p.parent == d}
        assert changed(await scan(client, known)) == expect


async def test_a_hard_linked_file_is_always_stat_ed(workspace: Path, tmp_path: Path) -> None:
    """Written through a link outside the watched tree, a file makes no event here."""
    known = make_tree(workspace)
    target = next(iter(known))
    outside = tmp_path / "outside-link"
    os.link(target, outside)
    await asyncio.sleep(0.15)
    async with await spawn(workspace) as client:
        assert changed(await scan(client, known)) == {}
        assert changed(await scan(client, known)) == {}
        with open(outside, "ab") as f:  # same inode, other path: no event in the workspace
            f.write(b"appended elsewhere\n")
        assert changed(await scan(client, known)) == {target: "modified"}
        assert (await watcher_counters(client))["confirmed"] >= N - 1


async def test_no_trust_watcher_stats_every_file(workspace: Path) -> None:
    known = make_tree(workspace)
    await asyncio.sleep(0.15)
    async with await spawn(workspace, "--no-trust-watcher") as client:
        for _ in range(2):
            assert changed(await scan(client, known)) == {}
        counters = await watcher_counters(client)
        assert counters["confirmed"] == 0 and counters["syncs"] == 0
        assert counters["trustedRoots"] == []


async def test_no_stat_cache_means_every_file_is_read(workspace: Path) -> None:
    """--stat-cache-entries 0 promises exact scans: the index's digests are not used either."""
    known = make_tree(workspace)
    async with await spawn(workspace, "--stat-cache-entries", "0") as client:
        for p in known:  # the watcher hashes what changed: its index then holds digests
            p.write_bytes(p.read_bytes() + b"more\n")
            known[p] = b3(p.read_bytes())
        await asyncio.sleep(1.0)
        read_before = (await client.status())["counters"]["filesRead"]
        assert changed(await scan(client, known)) == {}
        counters = (await client.status())["counters"]
        assert counters["watcher"]["confirmed"] == 0
        assert counters["filesRead"] - read_before == N


async def test_a_narrower_session_is_not_answered_outside_its_roots(workspace: Path) -> None:
    """The index covers the server's roots; a session's narrower roots still apply."""
    known = make_tree(workspace)
    await asyncio.sleep(0.15)
    server = await TcpServer.start(["--root", str(workspace), *ARGS], None)
    try:
        async with await PlokeClient.connect(server.host, server.port) as wide:
            assert changed(await scan(wide, known)) == {}  # the cache knows every file
            assert changed(await scan(wide, known)) == {}
            confirmed = (await watcher_counters(wide))["confirmed"]
            assert confirmed == N
            narrow = await PlokeClient.connect(server.host, server.port, initialize=False)
            async with narrow:
                await narrow.initialize(workspace_folders=[str(workspace / "d0")])
                results = await scan(narrow, known)
                outside = {p for p, r in results.items() if r["status"] == "error"}
                assert outside == {p for p in known if p.parent != workspace / "d0"}
                assert {results[p]["error"]["kind"] for p in outside} == {"OutsideRoots"}
                inside = {r["status"] for p, r in results.items() if p not in outside}
                assert inside == {"unchanged"}
                after = (await watcher_counters(narrow))["confirmed"]
                assert after - confirmed == N - len(outside)
    finally:
        await server.stop()


async def test_a_path_through_a_symlink_is_left_to_the_policy(
    workspace: Path, tmp_path: Path
) -> None:
    known = make_tree(workspace)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = write(elsewhere / "secret.txt", "secret\n")
    (workspace / "link").symlink_to(elsewhere, target_is_directory=True)
    via_link = workspace / "link" / "secret.txt"
    known[via_link] = b3(b"secret\n")
    await asyncio.sleep(0.15)
    async with await spawn(workspace) as client:
        for _ in range(2):
            results = await scan(client, known)
            assert results[via_link]["status"] == "error", results[via_link]
            assert results[via_link]["error"]["kind"] == "OutsideRoots"
            assert changed(results) == {via_link: "error"}
    assert secret.read_text() == "secret\n"


async def test_progress_of_a_confirmed_scan_reaches_the_end(
    start_server: Any, transport: str, workspace: Path
) -> None:
    known = make_tree(workspace)
    await asyncio.sleep(0.15)
    client = await start_server(transport, "--root", str(workspace), *ARGS)
    items = [{"filePath": str(p), "fileHash": h} for p, h in known.items()]
    await call(client, methods.SCAN_CHANGES, {"files": items})
    client.progress_reports["p"] = []
    res = await call(client, methods.SCAN_CHANGES, {"files": items, "workDoneToken": "p"})
    assert {r["status"] for r in res["results"]} == {"unchanged"}
    reports = await progress_to_end(client, "p")
    messages = [r.message for r in reports if r.kind == "report"]
    assert messages and messages[-1] == f"{N}/{N} files", messages
    counters = (await call(client, methods.STATUS))["counters"]["watcher"]
    assert counters["confirmed"] == N


def test_filesystem_types() -> None:
    assert _filesystem_type("/proc") == "proc"
    assert _filesystem_type("/proc") not in LOCAL_FILESYSTEMS
    assert _filesystem_type("/") is not None
    assert _unescape_mount(r"/mnt/with\040space\134x") == "/mnt/with space\\x"
    assert _unescape_mount("/plain") == "/plain"


@pytest.mark.parametrize("n", [N])
async def test_a_deleted_directory_and_a_recreated_file(workspace: Path, n: int) -> None:
    known = make_tree(workspace, n)
    await asyncio.sleep(0.15)
    async with await spawn(workspace) as client:
        assert changed(await scan(client, known)) == {}
        shutil.rmtree(workspace / "d2")
        gone = {p: "removed" for p in known if p.parent == workspace / "d2"}
        assert changed(await scan(client, known)) == gone
        victim = next(p for p in known if p.parent == workspace / "d2")
        write(victim, b"new life\n")
        results = await scan(client, known)
        assert results[victim] == {"status": "modified", "newHash": b3(b"new life\n")}


async def test_files_on_a_mount_inside_a_root_are_stat_ed(workspace: Path) -> None:
    """Another file system mounted inside a root (maybe NFS) is never taken from the index."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount command")
    inner = workspace / "mnt"
    inner.mkdir()
    mounted = await asyncio.create_subprocess_exec(
        "mount", "-t", "tmpfs", "none", str(inner),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await mounted.wait() != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        known = make_tree(workspace / "local", 300)
        known.update(make_tree(inner, 300))
        await asyncio.sleep(0.15)
        async with await spawn(workspace) as client:
            assert changed(await scan(client, known)) == {}
            before = (await watcher_counters(client))["confirmed"]
            assert changed(await scan(client, known)) == {}
            assert (await watcher_counters(client))["confirmed"] - before == 300
    finally:
        umount = await asyncio.create_subprocess_exec("umount", str(inner))
        await umount.wait()
