"""Write-path benchmark: ploke/writeSnippets side by side with its floor and the MCP server.

(a) 200 sequential single-edit writes, one request each, awaited one after the other, against
    - floor: a plain in-process Python loop doing the same durable steps (read, BLAKE3, verify,
      splice, temp file, write, fsync, rename, directory fsync) with no RPC at all;
    - the RPC floor (rpc_floor_server.py): those same steps in a blocking stdin/stdout loop,
      driven by the same client, i.e. the floor plus the cheapest possible process boundary
      (no path policy, locks, concurrency or error model);
    - the MCP filesystem server's ``edit_file`` on a copy of the same files (it does not fsync).
(b) the same 200 edits as ONE batch request (files committed in parallel, fsyncs overlapped)
    against our 200 sequential requests.

(a) and (b) are two phases of one run, each its own interleaved comparison: each round runs
every contender of the phase once, in an order that rotates from round to round (see
below); ratios are medians of per-round ratios. They are separate because on an ext4
without a journal the inodes every contender frees slow whoever creates files next, and a
batch (200 creates in ~60 ms) feels that far more than sequential writes do (see
docs/performance.md). ``--together`` runs all contenders in one phase, as before.

File system: by default the files go under benchmarks/.work, on whatever file system that is.
``--journaled-ext4`` (root only: mkfs.ext4 and a loop mount) runs the same benchmark on a fresh
ext4 with a journal, mkfs.ext4's defaults: the file system of most Linux machines. This VM's
root is ext4 *without* a journal and mounted with ``discard``, where creating and freeing
inodes costs far more and fsync far less than usual (see docs/performance.md).

Usage: python benchmarks/bench_write.py [--files 200] [--repeat 5] [--no-mcp] [--json OUT]
                                        [--dir DIR | --journaled-ext4] [--together]
                                        [--blocking-prototype] [--asyncio-prototype]
                                        [--alt-env NAME=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from blake3 import blake3

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_read import WORK, McpClient, ensure_mcp  # noqa: E402

from ploke_io_server.client import PlokeClient  # noqa: E402

SETTLE_S = 0.1
"""Pause between contenders, outside the timings."""


def make_files(root: str, n: int) -> list[str]:
    shutil.rmtree(root, ignore_errors=True)
    paths = []
    for i in range(n):
        d = os.path.join(root, f"pkg{i % 10}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"mod{i}.rs")
        with open(p, "w", encoding="utf-8") as f:
            f.write(f"// module {i} — naïve\nfn value() -> u32 {{ 0 }}\n" + "// filler\n" * 50)
        paths.append(p)
    return paths


def floor_write(path: str, old: str, new: str) -> None:
    """The durable steps of one edit, in process: the least a safe writer can do."""
    with open(path, "rb") as f:
        data = f.read()
    blake3(data).hexdigest()
    start = data.index(old.encode())
    new_data = data[:start] + new.encode() + data[start + len(old.encode()) :]
    blake3(new_data).hexdigest()
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.floor-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, new_data)
    os.fsync(fd)
    os.fchmod(fd, 0o644)
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


def value_edit(path: str, gen: int) -> tuple[str, str, int]:
    """(old text, new text, byte offset) for moving the file from generation gen to gen+1."""
    with open(path, "rb") as f:
        data = f.read()
    old = f"{{ {gen} }}"
    start = data.index(old.encode())
    return old, f"{{ {gen + 1} }}", start


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = os.path.join(args.dir or WORK, "writes")
    ours_root = os.path.join(base, "ours")
    batch_root = os.path.join(base, "batch")
    floor_root = os.path.join(base, "floor")
    mcp_root = os.path.join(base, "mcp")
    rpc_root = os.path.join(base, "rpc-floor")
    roots = (ours_root, batch_root, floor_root, mcp_root, rpc_root)
    sets = {r: make_files(r, args.files) for r in roots}
    gens = dict.fromkeys(roots, 0)
    use_mcp = not args.no_mcp and ensure_mcp()
    ours = await PlokeClient.spawn(root=base)
    rpc_floor = await PlokeClient.spawn(
        command=[sys.executable, os.path.join(HERE, "rpc_floor_server.py")]
    )
    mcp = await McpClient.start(mcp_root) if use_mcp else None
    # Optional sequential contenders (phase a), each on its own copy of the files.
    extras: list[tuple[str, PlokeClient, str]] = []

    async def extra(name: str, directory: str, **spawn: Any) -> None:
        root = os.path.join(base, directory)
        sets[root] = make_files(root, args.files)
        gens[root] = 0
        extras.append((name, await PlokeClient.spawn(**spawn), root))

    prototype = [sys.executable, os.path.join(HERE, "blocking_prototype_server.py"), base]
    if args.blocking_prototype:
        await extra(f"blocking prototype, {args.files} req.", "prototype", command=prototype)
    if args.asyncio_prototype:
        await extra(
            f"asyncio prototype, {args.files} req.", "aprototype", command=[*prototype, "--asyncio"]
        )
    if args.alt_env:
        name, _, value = args.alt_env.partition("=")
        await extra(f"ours with {args.alt_env}", "alt", root=base, env={**os.environ, name: value})

    def hash_of(path: str) -> str:
        with open(path, "rb") as f:
            return blake3(f.read()).hexdigest()

    # What a client knows after each write: the newHash of its answer (no re-read needed).
    known = {p: hash_of(p) for r in sets if r not in (floor_root, mcp_root) for p in sets[r]}

    async def run_floor() -> None:
        g = gens[floor_root]
        for p in sets[floor_root]:
            old, new, _ = value_edit(p, g)
            floor_write(p, old, new)
        gens[floor_root] = g + 1

    async def run_ours_sequential() -> None:
        await sequential(ours, ours_root)

    async def sequential(client: PlokeClient, root: str) -> None:
        g = gens[root]
        for p in sets[root]:
            old, new, start = value_edit(p, g)
            [r] = await client.write_snippets([{
                "filePath": p, "expectedHash": known[p], "startByte": start,
                "endByte": start + len(old.encode()), "replacement": new}])  # fmt: skip
            assert r["ok"], r
            known[p] = r["newHash"]
        gens[root] = g + 1

    async def run_rpc_floor() -> None:
        await sequential(rpc_floor, rpc_root)

    async def run_ours_batch() -> None:
        g = gens[batch_root]
        edits = []
        for p in sets[batch_root]:
            old, new, start = value_edit(p, g)
            edits.append({"filePath": p, "expectedHash": known[p], "startByte": start,
                          "endByte": start + len(old.encode()), "replacement": new})  # fmt: skip
        results = await ours.write_snippets(edits)
        assert all(r["ok"] for r in results), results[:2]
        for e, r in zip(edits, results, strict=True):
            known[e["filePath"]] = r["newHash"]
        gens[batch_root] = g + 1

    async def run_mcp() -> None:
        assert mcp is not None
        g = gens[mcp_root]
        for p in sets[mcp_root]:
            old, new, _ = value_edit(p, g)
            res = await mcp.call("tools/call", {"name": "edit_file", "arguments": {
                "path": p, "edits": [{"oldText": old, "newText": new}]}})  # fmt: skip
            assert not res.get("isError"), res
        gens[mcp_root] = g + 1

    seq_name = f"ploke-io-server, {args.files} requests"
    phase_a = {
        "floor (in-process, durable)": run_floor,
        f"RPC floor, {args.files} requests": run_rpc_floor,
        seq_name: run_ours_sequential,
    }
    if mcp is not None:
        phase_a["MCP edit_file (no fsync)"] = run_mcp
    for name, client, root in extras:
        phase_a[name] = functools.partial(sequential, client, root)
    phase_b = {seq_name: run_ours_sequential, "ploke-io-server, 1 batch": run_ours_batch}
    if args.together:
        phases = [("all contenders together", {**phase_a, **phase_b})]
    else:
        phases = [("(a) sequential writes", phase_a), ("(b) batch vs sequential", phase_b)]
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "files": args.files,
        "phases": [],
    }
    print(f"# {report['machine']}; files on {_filesystem(base)}")
    print(f"# {args.files} files, one edit each per round; {args.repeat} interleaved rounds")
    for title, contenders in phases:
        times = await interleave(contenders, args.repeat)
        rows = []
        print(f"## {title}")
        for name, ts in times.items():
            row: dict[str, Any] = {
                "name": name,
                "median_ms": round(statistics.median(ts) * 1000, 1),
                "per_file_ms": round(statistics.median(ts) * 1000 / args.files, 2),
            }
            line = f"  {name:<30} median {row['median_ms']:8.1f} ms"
            line += f" ({row['per_file_ms']:.2f} ms/file)"
            for key, base_name in (("x_floor", "floor (in-process, durable)"),
                                   ("x_sequential", seq_name)):  # fmt: skip
                if base_name in times:
                    ratios = [t / b for t, b in zip(ts, times[base_name], strict=True)]
                    row[key] = round(statistics.median(ratios), 2)
                    line += f"  {row[key]:5.2f}x {key[2:]}"
            rows.append(row)
            print(line)
        report["phases"].append({"phase": title, "rows": rows})
    await ours.close()
    await rpc_floor.close()
    for _name, client, _root in extras:
        await client.close()
    if mcp is not None:
        await mcp.close()
    return report


async def interleave(
    contenders: dict[str, Callable[[], Awaitable[None]]], repeat: int
) -> dict[str, list[float]]:
    """Run every contender once per round, ``repeat`` rounds; the seconds each took."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        await fn()  # warm-up
    # The order rotates every round: on ext4, creating a file costs more right after many
    # files were deleted (the inode allocator skips recently deleted inodes, measured with
    # perf: ext4_create -> recently_deleted), so whoever runs after a contender pays for its
    # churn. Rotating gives each contender every position equally.
    names = list(contenders)
    for round_no in range(repeat):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            fn = contenders[name]
            t0 = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t0)
            # Work a contender leaves behind after answering (our server closes replaced
            # files' descriptors after the reply) must not run inside the next one's timing.
            await asyncio.sleep(SETTLE_S)
    return times


def _filesystem(path: str) -> str:
    """The type and mount options of the file system ``path`` is on (Linux)."""
    best = ("", "?", "?")
    real = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            _dev, mnt, fstype, opts, *_ = line.split()
            if (real + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[0]):
                best = (mnt, fstype, opts)
    return f"{best[1]} ({best[2]}) at {best[0]}"


@contextlib.contextmanager
def journaled_ext4() -> Iterator[str]:
    """A fresh 2 GiB ext4 with a journal (mkfs.ext4 defaults), loop-mounted under .work."""
    img = os.path.join(WORK, "ext4-journaled.img")
    mnt = os.path.join(WORK, "ext4-journaled")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL, check=False)
    with open(img, "wb") as f:
        f.truncate(2 << 30)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", img, mnt], check=True, capture_output=True)
    except BaseException:
        os.unlink(img)
        raise
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.unlink(img)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-mcp", action="store_true")
    ap.add_argument(
        "--dir", help="where the files go (default benchmarks/.work): pick the file system"
    )
    ap.add_argument("--json", help="write the figures as JSON here")
    ap.add_argument(
        "--blocking-prototype",
        action="store_true",
        help="also run blocking_prototype_server.py (our engine without asyncio)",
    )
    ap.add_argument(
        "--asyncio-prototype",
        action="store_true",
        help="also run that prototype's --asyncio variant (asyncio pipes, no tasks)",
    )
    ap.add_argument(
        "--together",
        action="store_true",
        help="one phase: the batch interleaved with every sequential contender (see docs)",
    )
    ap.add_argument(
        "--alt-env",
        metavar="NAME=VALUE",
        help="A/B: also run our server sequentially with this environment variable set",
    )
    ap.add_argument(
        "--journaled-ext4",
        action="store_true",
        help="run on a fresh loop-mounted ext4 with a journal (needs root and mkfs.ext4)",
    )
    args = ap.parse_args()
    if args.journaled_ext4:
        if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
            print("# --journaled-ext4: skipped (needs root and mkfs.ext4 for a loop mount)")
            return
        try:
            mounted = journaled_ext4()
            mnt = mounted.__enter__()
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"# --journaled-ext4: skipped (no loop mount here: {exc})")
            return
        try:
            args.dir = mnt
            report = asyncio.run(run(args))
        finally:
            mounted.__exit__(None, None, None)
        report["filesystem"] = "ext4 with a journal (mkfs.ext4 defaults), loop-mounted"
    else:
        report = asyncio.run(run(args))
        report["filesystem"] = _filesystem(args.dir or WORK)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
