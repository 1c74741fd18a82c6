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
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    use_mcp = not args.no_mcp and ensure_mcp()
    ours = await PlokeClient.spawn(root=base)
    rpc_floor = await PlokeClient.spawn(
        command=[sys.executable, os.path.join(HERE, "rpc_floor_server.py")]
    )
    mcp = await McpClient.start(base) if use_mcp else None
    # Optional sequential contenders (phase a).
    extras: list[tuple[str, PlokeClient]] = []
    prototype = [sys.executable, os.path.join(HERE, "blocking_prototype_server.py"), base]
    if args.blocking_prototype:
        extras.append((f"blocking prototype, {args.files} req.", await PlokeClient.spawn(
            command=prototype)))  # fmt: skip
    if args.asyncio_prototype:
        extras.append((f"asyncio prototype, {args.files} req.", await PlokeClient.spawn(
            command=[*prototype, "--asyncio"])))  # fmt: skip
    if args.alt_env:
        name, _, value = args.alt_env.partition("=")
        # PYTHONSAFEPATH: ``python -m`` would otherwise put the current directory first on
        # sys.path, and run from a checkout it would import that checkout, not PYTHONPATH's.
        env = {**os.environ, name: value, "PYTHONSAFEPATH": "1"}
        extras.append((f"ours with {args.alt_env}", await PlokeClient.spawn(root=base, env=env)))

    gens: dict[str, int] = {}  # file set -> the generation its files are at
    known: dict[str, str] = {}  # path -> its hash, as the last write's answer gave it
    sets: dict[str, list[str]] = {}

    def file_sets(n: int) -> list[str]:
        """``n`` directories of ``args.files`` files each; every contender writes in each of
        them in turn (see :func:`interleave`)."""
        for i in range(len(sets), n):
            root = os.path.join(base, f"set{i}")
            sets[root] = make_files(root, args.files)
            gens[root] = 0
            known.update((p, hash_of(p)) for p in sets[root])
        return list(sets)[:n]

    def hash_of(path: str) -> str:
        with open(path, "rb") as f:
            return blake3(f.read()).hexdigest()

    stale: set[str] = set()  # file sets written by a contender that does not answer hashes

    def refresh() -> None:
        """Learn the hashes of the files a floor or MCP round wrote (outside the timings)."""
        while stale:
            known.update((p, hash_of(p)) for p in sets[stale.pop()])

    async def run_floor(root: str) -> None:
        g = gens[root]
        for p in sets[root]:
            old, new, _ = value_edit(p, g)
            floor_write(p, old, new)
        gens[root] = g + 1
        stale.add(root)

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

    async def run_ours_batch(root: str) -> None:
        g = gens[root]
        edits = []
        for p in sets[root]:
            old, new, start = value_edit(p, g)
            edits.append({"filePath": p, "expectedHash": known[p], "startByte": start,
                          "endByte": start + len(old.encode()), "replacement": new})  # fmt: skip
        results = await ours.write_snippets(edits)
        assert all(r["ok"] for r in results), results[:2]
        for e, r in zip(edits, results, strict=True):
            known[e["filePath"]] = r["newHash"]
        gens[root] = g + 1

    async def run_mcp(root: str) -> None:
        assert mcp is not None
        g = gens[root]
        for p in sets[root]:
            old, new, _ = value_edit(p, g)
            res = await mcp.call("tools/call", {"name": "edit_file", "arguments": {
                "path": p, "edits": [{"oldText": old, "newText": new}]}})  # fmt: skip
            assert not res.get("isError"), res
        gens[root] = g + 1
        stale.add(root)

    seq_name = f"ploke-io-server, {args.files} requests"
    run_ours_sequential = functools.partial(sequential, ours)
    phase_a: dict[str, Contender] = {
        "floor (in-process, durable)": run_floor,
        f"RPC floor, {args.files} requests": functools.partial(sequential, rpc_floor),
        seq_name: run_ours_sequential,
    }
    if mcp is not None:
        phase_a["MCP edit_file (no fsync)"] = run_mcp
    for name, client in extras:
        phase_a[name] = functools.partial(sequential, client)
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
        times = await interleave(contenders, args.repeat, file_sets(len(contenders)), refresh)
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
                    if len(ratios) >= 4 and name != base_name:
                        # the spread of the per-round ratios: how much one round tells
                        q1, _q2, q3 = statistics.quantiles(ratios, n=4)
                        row[f"{key}_p25_p75"] = [round(q1, 2), round(q3, 2)]
                        line += f" ({q1:.2f}-{q3:.2f})"
            rows.append(row)
            print(line)
        report["phases"].append({"phase": title, "rows": rows})
    await ours.close()
    await rpc_floor.close()
    for _name, client in extras:
        await client.close()
    if mcp is not None:
        await mcp.close()
    return report


Contender = Callable[[str], Awaitable[None]]
"""Runs one round of a contender's edits on the file set (a directory) it is given."""


async def interleave(
    contenders: dict[str, Contender],
    repeat: int,
    roots: list[str],
    between: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Run every contender once per round, ``repeat`` rounds; the seconds each took.

    Two things rotate from round to round, so that neither favours a contender:

    - the order: on ext4, creating a file costs more right after many files were deleted
      (the inode allocator skips recently deleted inodes, measured with perf: ext4_create ->
      recently_deleted), so whoever runs after a contender pays for its churn;
    - the file set: contender i writes in ``roots[(i + round) % n]``. Each directory's
      inodes live in their own block group, whose state (how many inodes were deleted there
      recently, by this run or an earlier one) differs: with fixed directories, two
      instances of the *same* server measured 1.14 and 1.62 ms per file in one run.

    ``between`` runs after each contender, outside the timings.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    n = len(names)
    for i, name in enumerate(names):
        await contenders[name](roots[i])  # warm-up
        between()
    for round_no in range(repeat):
        shift = round_no % n
        for name in names[shift:] + names[:shift]:
            root = roots[(names.index(name) + round_no) % n]
            t0 = time.perf_counter()
            await contenders[name](root)
            times[name].append(time.perf_counter() - t0)
            between()
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
