"""Change-scan benchmark: ploke/scanChanges side by side with a read-and-hash-everything floor.

On a generated tree of 100,000 small files (and, with ``--tree``, a copy of a real tree), per
round, end to end through the Python client (request encoding and response decoding
included):

- *floor*: a plain in-process Python loop that reads and BLAKE3-hashes every file and compares
  with the known hash: what an indexer does without this server;
- *cold*: a freshly started server's first scan (empty stat cache; the OS page cache is warm
  for everyone, as the floor ran just before);
- *repeat*: the same scan again, nothing changed;
- *1% changed*: 1% of the files rewritten (same size, new content), then the scan again at
  once (with the watcher on, their events are still in flight).

Each case runs against two servers in turn: *stat* (no watcher: every file is stat-ed and the
stat cache answers) and *watch* (``--watch``: files the watcher heard nothing about since it
indexed them are confirmed from its index without a stat, after a cookie sync). Every round
starts new servers, so every round has cold scans. The tree is made (or copied)
once and left to age past the stat cache's racy margin (2 s) before the first round: files
changed within the margin before a scan are re-read by design.

Usage: python benchmarks/bench_scan.py [--files 100000] [--rounds 3] [--tree DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from typing import Any

from blake3 import blake3

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ploke_io_server.client import PlokeClient  # noqa: E402
from ploke_io_server.engine.statcache import RACY_MARGIN_NS  # noqa: E402

WORK = os.path.join(HERE, ".work")


def make_tree(root: str, n: int) -> list[str]:
    """n small files, 250 per directory, 20 directories per top-level directory."""
    marker = os.path.join(root, f".complete-{n}")
    per_dir = 250
    paths = []
    for i in range(n):
        d = i // per_dir
        paths.append(os.path.join(root, f"top{d // 20}", f"dir{d}", f"f{i}.rs"))
    if os.path.exists(marker):
        return paths
    shutil.rmtree(root, ignore_errors=True)
    for i, p in enumerate(paths):
        if i % per_dir == 0:
            os.makedirs(os.path.dirname(p))
        with open(p, "w") as f:
            f.write(f"// file {i}\nfn value() -> u32 {{ {i} }}\n" + "// filler line\n" * 4)
    open(marker, "w").close()
    return paths


def copy_tree(src: str, dest: str) -> list[str]:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, symlinks=True)
    out = []
    for d, _dirs, files in os.walk(dest):
        for name in files:
            p = os.path.join(d, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return sorted(out)


def hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return blake3(f.read()).hexdigest()


def floor(known: dict[str, str]) -> int:
    """Read and hash every file; the number that changed."""
    changed = 0
    for p, h in known.items():
        try:
            with open(p, "rb") as f:
                if blake3(f.read()).hexdigest() != h:
                    changed += 1
        except FileNotFoundError:
            changed += 1
    return changed


def touch_one_percent(paths: list[str], rng: random.Random) -> list[str]:
    """Rewrite 1% of the files in place: same size, different bytes."""
    nonempty = [p for p in paths if os.path.getsize(p) > 0]
    chosen = rng.sample(nonempty, max(1, len(paths) // 100))
    for p in chosen:
        with open(p, "r+b") as f:
            data = bytearray(f.read())
            data[0] = ord("#") if data[0] != ord("#") else ord("/")
            f.seek(0)
            f.write(data)
    return chosen


MODES = {
    "stat": [],  # every file stat-ed, the stat cache answers (no watcher)
    "watch": ["--watch"],  # the watcher's index vouches for files it heard nothing about
}


async def run_tree(name: str, root: str, paths: list[str], rounds: int) -> dict[str, Any]:
    known = {p: hash_file(p) for p in paths}
    age = time.time_ns() - max(os.stat(p).st_ctime_ns for p in paths[:: max(1, len(paths) // 1000)])
    if age < RACY_MARGIN_NS + 100_000_000:
        await asyncio.sleep((RACY_MARGIN_NS + 100_000_000 - age) / 1e9)
    rng = random.Random(7)
    times: dict[str, list[float]] = {"floor": []}
    for mode in MODES:
        for case in ("cold", "repeat", "1% changed"):
            times[f"{mode}: {case}"] = []
    stats: dict[str, Any] = {}
    for _ in range(rounds):
        t0 = time.perf_counter()
        assert floor(known) == 0
        times["floor"].append(time.perf_counter() - t0)
        for mode, server_args in MODES.items():
            # The watcher indexes the tree at start-up, before initialize is answered: not
            # part of any timed scan (a daemon starts once and scans many times).
            client = await PlokeClient.spawn(
                *server_args, root=root, env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
            )
            files = [{"filePath": p, "fileHash": h} for p, h in known.items()]
            for case in ("cold", "repeat"):
                t0 = time.perf_counter()
                res = await client.scan_changes(files)
                times[f"{mode}: {case}"].append(time.perf_counter() - t0)
                assert all(r["status"] == "unchanged" for r in res), [
                    r for r in res if r["status"] != "unchanged"
                ][:3]
            changed = touch_one_percent(paths, rng)  # then scanned at once: events in flight
            t0 = time.perf_counter()
            res = await client.scan_changes(files)
            times[f"{mode}: 1% changed"].append(time.perf_counter() - t0)
            assert sum(r["status"] == "modified" for r in res) == len(changed)
            counters = (await client.status())["counters"]
            stats[mode] = {"statCache": counters["statCache"]}
            if "watcher" in counters:
                w = counters["watcher"]
                stats[mode]["watcher"] = {k: w[k] for k in ("files", "syncs", "confirmed")}
            await client.close()
            for p in changed:  # the client learns the new hashes, as an indexer would
                known[p] = hash_file(p)
            await asyncio.sleep(RACY_MARGIN_NS / 1e9)  # the changed files age for the next scan
    floor_t = times["floor"]
    rows = []
    print(f"# {name}: {len(paths)} files, {rounds} rounds")
    for label, ts in times.items():
        ratio = statistics.median([f / t for f, t in zip(floor_t, ts, strict=True)])
        rows.append({"case": label, "median_s": round(statistics.median(ts), 3),
                     "floor_over_case": round(ratio, 2)})  # fmt: skip
        print(f"  {label:<22} median {statistics.median(ts):7.3f} s   floor/this {ratio:5.2f}x")
    print(f"  counters after the last round: {stats}")
    return {"tree": name, "files": len(paths), "rounds": rows, "counters": stats}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "trees": [],
    }
    print(f"# {report['machine']}")
    generated = os.path.join(WORK, "scan-tree")
    paths = make_tree(generated, args.files)
    report["trees"].append(await run_tree("generated", generated, paths, args.rounds))
    if args.tree:
        dest = os.path.join(WORK, "scan-real")
        paths = copy_tree(args.tree, dest)
        report["trees"].append(await run_tree(args.tree, dest, paths, args.rounds))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", help="also measure a copy of this real source tree")
    ap.add_argument("--json", help="write the figures as JSON here")
    args = ap.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
