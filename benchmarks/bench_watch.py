"""Watcher benchmark: ploke/didChangeFiles side by side with watchman subscriptions.

Each contender watches its own copy of the same generated tree (``--tree-files`` small source
files, 100 per directory), so neither sees the other's changes, and both run for the whole
benchmark: the idle one costs nothing (inotify watches are per directory). Both wait for the
same quiet time before reporting: our ``--debounce-ms`` and watchman's ``settle``.

1. *Save latency*: ``--saves`` editor-style atomic saves of existing files (new content written
   to a temp file in the same directory, then ``os.replace`` over the target). The clock runs
   from just before ``os.replace`` to the arrival, at this process, of the first notification
   naming the target with its new content hash (BLAKE3 for us, SHA-1 for watchman); only then
   comes the next save. The contenders alternate save by save, the order swapping every round.
2. *Burst*: one child process creates ``--files`` files (500 per directory, in new directories)
   and then rewrites each once, as fast as it can (the writer of tests/test_e2e_watch.py, plus
   timestamps). Counted: distinct burst paths reported, paths never reported (lost), paths
   whose last report is not their final content (stale), and the times from the writer's last
   write to the moment every path had its final content reported (complete) and to the last
   notification (last event; the collector listens for a quiet tail after completion).

How watchman runs: a private server (``watchman --foreground`` with its own socket, state,
log and pid files under benchmarks/.work/watch/watchman-state, ``--no-save-state``), stopped
at the end; this process speaks its JSON protocol over the unix socket (newline-terminated
JSON PDUs, as pywatchman's JSON transport does): ``watch`` on the exact root (``watch-project``
would climb to the repository's ``.git``), then ``subscribe`` with fields name, exists and
content.sha1hex; subscription results arrive as unilateral PDUs. The CLI is no simpler: ``-j``
reads exactly one JSON command, and ``-p`` relays the server's BSER as JSON. watchman 4.9 has
no per-subscription settle (a ``settle`` in the subscribe options is ignored; the default is
20 ms), so the settle goes into a ``.watchmanconfig`` at the root, read when the root is
watched.

If ``watchman`` is not on PATH it is skipped (``apt-get install watchman`` on Debian).

Usage: python benchmarks/bench_watch.py [--saves 500] [--files 20000] [--debounce 250]
           [--tree-files 2000] [--bursts 1] [--warmup 5] [--no-watchman] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from blake3 import blake3

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ploke_io_server import methods  # noqa: E402
from ploke_io_server.client import PlokeClient  # noqa: E402

WORK = os.path.join(HERE, ".work")
BASE = os.path.join(WORK, "watch")

# tests/test_e2e_watch.py's BURST_WRITER, with the target directory as given and the monotonic
# times (the same clock in every process on Linux) of its first and last write printed.
BURST_WRITER = """
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
t0 = time.monotonic()
for i in range(n):
    d = os.path.join(root, f"d{i // 500}")
    if i % 500 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"v1 {i}")
for i in range(n):
    with open(os.path.join(root, f"d{i // 500}", f"f{i}.txt"), "w") as f:
        f.write(f"v2 {i}")
print(t0, time.monotonic())
"""

Batch = list[tuple[str, str | None]]
"""One notification: (absolute path, content hash or None when gone/unknown) per file."""


def make_tree(root: str, n: int) -> list[str]:
    shutil.rmtree(root, ignore_errors=True)
    paths = []
    for i in range(n):
        d = os.path.join(root, "src", f"pkg{i // 100}")
        if i % 100 == 0:
            os.makedirs(d)
        p = os.path.join(d, f"mod{i}.rs")
        with open(p, "w") as f:
            f.write(f"// module {i}\nfn value() -> u32 {{ {i} }}\n" + "// filler line\n" * 40)
        paths.append(p)
    return paths


def git_head() -> str:
    """The commit measured (+dirty when the server's sources differ from it)."""
    top = os.path.dirname(HERE)
    try:
        head = subprocess.run(
            ["git", "-C", top, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", top, "status", "--porcelain", "--", "ploke_io_server"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return head + ("+dirty" if dirty else "")


def percentile(xs: list[float], q: float) -> float:
    """Nearest rank."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


# -- contenders ---------------------------------------------------------------------------------


class Ours:
    name = "ploke-io-server"

    def __init__(self, client: PlokeClient, root: str, log: Any) -> None:
        self.client = client
        self.root = root
        self._log = log

    @classmethod
    async def start(cls, root: str, debounce_ms: int) -> Ours:
        log = open(os.path.join(BASE, "ours-server.log"), "w")  # noqa: SIM115
        client = await PlokeClient.spawn(
            "--debounce-ms",
            str(debounce_ms),
            root=root,
            init_options={"watch": True},
            env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)},
            stderr=log.fileno(),
        )
        return cls(client, root, log)

    @staticmethod
    def digest(data: bytes) -> str:
        return blake3(data).hexdigest()

    async def next_batch(self, timeout: float | None) -> Batch:
        while True:
            method, params = await asyncio.wait_for(self.client.notifications.get(), timeout)
            if method == methods.DID_CHANGE_FILES:
                return [
                    (e["filePath"], None if e["kind"] == "removed" else e.get("fileHash"))
                    for e in params["events"]
                ]

    async def extra(self) -> dict[str, Any]:
        return dict((await self.client.status())["counters"]["watcher"])

    async def close(self) -> None:
        await self.client.close()
        self._log.close()


class Watchman:
    def __init__(self, proc: subprocess.Popen[bytes], sock: str, version: str) -> None:
        self.proc = proc
        self.sock = sock
        self.version = version
        self.name = f"watchman {version}"
        self.root = ""
        self.warnings: list[str] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    async def start(cls) -> Watchman:
        state = os.path.join(BASE, "watchman-state")
        sock = os.path.join(state, "sock")
        if os.path.exists(sock):  # a server left over from an interrupted run
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["watchman", f"--sockname={sock}", "--no-spawn", "shutdown-server"],
                    capture_output=True,
                    timeout=10,
                )
        shutil.rmtree(state, ignore_errors=True)
        os.makedirs(state)
        proc = subprocess.Popen(
            [
                "watchman",
                "--foreground",
                f"--sockname={sock}",
                f"--statefile={os.path.join(state, 'state')}",
                f"--logfile={os.path.join(state, 'log')}",
                f"--pidfile={os.path.join(state, 'pid')}",
                "--no-save-state",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 28)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(
                        f"watchman did not start (see {os.path.join(state, 'log')})"
                    ) from None
                await asyncio.sleep(0.05)
        wm = cls(proc, sock, "?")
        wm._reader, wm._writer = reader, writer
        wm.version = (await wm.command(["version"]))["version"]
        wm.name = f"watchman {wm.version}"
        return wm

    async def command(self, cmd: list[Any]) -> dict[str, Any]:
        """Send one command; its answer (unilateral PDUs in between are dropped)."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(json.dumps(cmd).encode() + b"\n")
        await self._writer.drain()
        while True:
            pdu = json.loads(await self._reader.readline())
            if pdu.get("unilateral"):
                continue
            if "error" in pdu:
                raise RuntimeError(f"watchman {cmd[0]}: {pdu['error']}")
            return dict(pdu)

    async def watch(self, root: str, settle_ms: int) -> None:
        """Watch root (settle from its .watchmanconfig) and subscribe; wait for the first PDU."""
        with open(os.path.join(root, ".watchmanconfig"), "w") as f:
            json.dump({"settle": settle_ms}, f)
        self.root = root
        answer = await self.command(["watch", root])
        assert answer.get("watcher") == "inotify", answer
        await self.command(["subscribe", root, "bench", {
            "expression": ["type", "f"],
            "fields": ["name", "exists", "content.sha1hex"]}])  # fmt: skip
        while True:  # the fresh-instance result: every file, once the crawl is done
            assert self._reader is not None
            pdu = json.loads(await asyncio.wait_for(self._reader.readline(), 120))
            if pdu.get("subscription") == "bench" and pdu.get("is_fresh_instance"):
                return

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha1(data).hexdigest()

    async def next_batch(self, timeout: float | None) -> Batch:
        assert self._reader is not None
        while True:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
            if not line:
                raise ConnectionError("watchman closed the connection")
            pdu = json.loads(line)
            if "warning" in pdu:
                self.warnings.append(str(pdu["warning"]))
            if pdu.get("subscription") != "bench" or "files" not in pdu:
                continue
            root = pdu.get("root", self.root)
            return [
                (os.path.join(root, f["name"]), f.get("content.sha1hex") if f["exists"] else None)
                for f in pdu["files"]
            ]

    async def extra(self) -> dict[str, Any]:
        return {"warnings": list(self.warnings)}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command(["shutdown-server"]), 10)
        if self._writer is not None:
            self._writer.close()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only the server this benchmark started
            self.proc.wait()


Contender = Ours | Watchman


# -- 1. save latency ----------------------------------------------------------------------------


async def one_save(c: Contender, target: str, gen: int, timeout: float) -> float | None:
    """Atomically save new content over target; ms until it is reported (None: timed out)."""
    d, name = os.path.split(target)
    data = f"// saved {gen}\nfn value() -> u32 {{ {gen} }}\n".encode() + b"// filler line\n" * 40
    want = c.digest(data)
    tmp = os.path.join(d, f".{name}.{gen}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    t0 = time.perf_counter()
    os.replace(tmp, target)
    deadline = t0 + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        try:
            batch = await c.next_batch(left)
        except TimeoutError:
            return None
        t1 = time.perf_counter()
        # A report of the target with another hash is a late word about an earlier save.
        if any(p == target and (h == want or h is None) for p, h in batch):
            return (t1 - t0) * 1000


async def drain(c: Contender, quiet: float) -> None:
    with contextlib.suppress(TimeoutError):
        while True:
            await c.next_batch(quiet)


async def latencies(
    contenders: list[Contender],
    trees: dict[str, list[str]],
    saves: int,
    warmup: int,
    debounce_ms: int,
) -> dict[str, dict[str, Any]]:
    got: dict[str, list[float]] = {c.name: [] for c in contenders}
    timeouts = dict.fromkeys(got, 0)
    for i in range(warmup + saves):
        order = contenders if i % 2 == 0 else contenders[::-1]
        for c in order:
            files = trees[c.name]
            ms = await one_save(c, files[i % len(files)], 1_000_000 + i, timeout=10.0)
            if i < warmup:
                continue
            if ms is None:
                timeouts[c.name] += 1
            else:
                got[c.name].append(ms)
    out = {}
    for name, xs in got.items():
        out[name] = {
            "saves": saves,
            "timeouts": timeouts[name],
            "p50_ms": round(statistics.median(xs), 1) if xs else None,
            "p90_ms": round(percentile(xs, 90), 1) if xs else None,
            "p99_ms": round(percentile(xs, 99), 1) if xs else None,
            "min_ms": round(min(xs), 1) if xs else None,
            "max_ms": round(max(xs), 1) if xs else None,
            "over_debounce_plus_50": sum(x > debounce_ms + 50 for x in xs),
            "worst_ms": [round(x, 1) for x in sorted(xs)[-5:][::-1]],
        }
    return out


# -- 2. burst -----------------------------------------------------------------------------------


async def burst(c: Contender, root: str, n: int, tail: float, quiet: float) -> dict[str, Any]:
    bdir = os.path.join(root, "burst")
    shutil.rmtree(bdir, ignore_errors=True)
    expected = {
        os.path.join(bdir, f"d{i // 500}", f"f{i}.txt"): c.digest(f"v2 {i}".encode())
        for i in range(n)
    }
    arrivals: asyncio.Queue[tuple[float, Batch]] = asyncio.Queue()

    async def collect() -> None:
        while True:
            batch = await c.next_batch(None)
            arrivals.put_nowait((time.monotonic(), batch))

    collector = asyncio.create_task(collect())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BURST_WRITER, bdir, str(n), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    w_start, w_end = map(float, out.split())

    final: dict[str, str | None] = {}
    timeline: list[list[float]] = []  # [s since the writer's first write, burst paths in it]
    notifications = reports = 0
    t_first = t_last = t_complete = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            t, batch = await asyncio.wait_for(arrivals.get(), tail if t_complete else quiet)
        except TimeoutError:
            break
        mine = [(p, h) for p, h in batch if p in expected]
        if not mine:
            continue
        notifications += 1
        reports += len(mine)
        timeline.append([round(t - w_start, 3), len(mine)])
        t_first = t_first or t
        t_last = t
        final.update(mine)
        if t_complete is None and len(final) == n and final == expected:
            t_complete = t
    collector.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await collector
    lost = n - len(final)
    stale = sum(1 for p, h in final.items() if h != expected[p])

    def since_end(t: float | None) -> float | None:
        return None if t is None else round(t - w_end, 3)

    return {
        "files": n,
        "write_s": round(w_end - w_start, 3),
        "reported": len(final),
        "lost": lost,
        "stale": stale,
        "notifications": notifications,
        "reports": reports,
        "first_event_after_start_s": None if t_first is None else round(t_first - w_start, 3),
        "complete_after_end_s": since_end(t_complete),
        "last_event_after_end_s": since_end(t_last),
        "extra": await c.extra(),
        "timeline": timeline,
    }


# -- driver -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    os.makedirs(BASE, exist_ok=True)
    use_watchman = not args.no_watchman
    if use_watchman and shutil.which("watchman") is None:
        print("# watchman is not on PATH: skipping it (Debian: apt-get install watchman)")
        use_watchman = False

    roots = {"ours": os.path.join(BASE, "ours"), "watchman": os.path.join(BASE, "watchman")}
    trees = {
        k: make_tree(r, args.tree_files) for k, r in roots.items() if k == "ours" or use_watchman
    }
    contenders: list[Contender] = []
    tree_of: dict[str, list[str]] = {}
    root_of: dict[str, str] = {}
    ours = await Ours.start(roots["ours"], args.debounce)
    contenders.append(ours)
    tree_of[ours.name], root_of[ours.name] = trees["ours"], roots["ours"]
    if use_watchman:
        wm = await Watchman.start()
        await wm.watch(roots["watchman"], args.debounce)
        contenders.append(wm)
        tree_of[wm.name], root_of[wm.name] = trees["watchman"], roots["watchman"]

    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "commit": git_head(),
        "debounce_ms": args.debounce,
        "tree_files": args.tree_files,
        "contenders": [c.name for c in contenders],
        # Anything else busy on the machine skews both; the 1-minute load is kept to tell.
        "loadavg_1min_start": round(os.getloadavg()[0], 2),
    }
    print(f"# {report['machine']}; commit {report['commit']}")
    print(
        f"# debounce (ours) = settle (watchman) = {args.debounce} ms; each watches its own "
        f"tree of {args.tree_files} files"
    )
    try:
        quiet = max(1.0, 4 * args.debounce / 1000)
        for c in contenders:
            await drain(c, quiet)
        lat = await latencies(contenders, tree_of, args.saves, args.warmup, args.debounce)
        report["latency"] = lat
        print(
            f"# 1. atomic save -> notification naming the target: {args.saves} saves each, "
            f"alternating ({args.warmup} warm-up saves not counted)"
        )
        print(
            f"  {'':<20} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'min ms':>8} "
            f"{'max ms':>8} {'timeouts':>9}"
        )
        for name, r in lat.items():
            cells = [r[k] for k in ("p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")]
            print(
                f"  {name:<20} "
                + " ".join(f"{x if x is not None else '-':>8}" for x in cells)
                + f" {r['timeouts']:>9}"
            )
        for name, r in lat.items():
            print(
                f"  {name}: {r['over_debounce_plus_50']} saves over debounce + 50 ms; "
                f"worst {r['worst_ms']}"
            )

        bursts: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
        for k in range(args.bursts):
            order = contenders if k % 2 == 0 else contenders[::-1]
            for c in order:
                await drain(c, quiet)
                bursts[c.name].append(
                    await burst(c, root_of[c.name], args.files, tail=quiet + 2.0, quiet=20.0)
                )
        report["burst"] = bursts
        print(
            f"# 2. burst: {args.files} files created, then each rewritten, by one child "
            f"process; {args.bursts} burst(s) each; times in s from the writer's last write"
        )
        print(
            f"  {'':<20} {'write s':>8} {'reported':>9} {'lost':>6} {'stale':>6} "
            f"{'notifs':>7} {'reports':>8} {'complete':>9} {'last evt':>9}"
        )
        for name, rs in bursts.items():
            for r in rs:
                print(
                    f"  {name:<20} {r['write_s']:>8} {r['reported']:>9} {r['lost']:>6} "
                    f"{r['stale']:>6} {r['notifications']:>7} {r['reports']:>8} "
                    f"{r['complete_after_end_s']!s:>9} {r['last_event_after_end_s']!s:>9}"
                )
        for name, rs in bursts.items():
            extra = rs[-1]["extra"]
            if extra:
                print(f"  {name}: {extra}")

        # The targets.
        targets: dict[str, Any] = {}
        p50 = lat[ours.name]["p50_ms"]
        targets["ours_p50_within_debounce_plus_20ms"] = (
            p50 is not None and p50 <= args.debounce + 20
        )
        print("# targets")
        print(
            f"  ours p50 {p50} ms <= debounce + 20 = {args.debounce + 20} ms: "
            f"{'yes' if targets['ours_p50_within_debounce_plus_20ms'] else 'NO'}"
        )
        if use_watchman:
            lost_ours = max(r["lost"] + r["stale"] for r in bursts[ours.name])
            lost_wm = max(r["lost"] + r["stale"] for r in bursts[contenders[1].name])
            targets["ours_lost_not_above_watchman"] = lost_ours <= lost_wm
            print(
                f"  lost or stale, ours {lost_ours} <= watchman {lost_wm}: "
                f"{'yes' if lost_ours <= lost_wm else 'NO'}"
            )
        report["targets"] = targets
        report["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
        print(
            f"# 1-minute load average: {report['loadavg_1min_start']} at the start, "
            f"{report['loadavg_1min_end']} at the end"
        )
    finally:
        for c in contenders:
            await c.close()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--saves", type=int, default=500, help="timed saves per contender")
    ap.add_argument("--warmup", type=int, default=5, help="untimed saves first")
    ap.add_argument("--files", type=int, default=20_000, help="files in the burst")
    ap.add_argument("--bursts", type=int, default=1, help="bursts per contender")
    ap.add_argument("--debounce", type=int, default=250, help="ms: our debounce, their settle")
    ap.add_argument("--tree-files", type=int, default=2000, help="files in each watched tree")
    ap.add_argument("--no-watchman", action="store_true")
    ap.add_argument("--json", help="write the figures as JSON here")
    args = ap.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
