"""Read-path benchmark: ploke/getSnippets side by side with its floor and its peers.

(a) 10,000 random snippets with correct hashes in one request, end to end over stdio
    (client encode, server, client JSON decode);
(b) every file of the corpus read whole in one request.

Compared in the same run against:
  floor  - a plain in-process Python loop doing the same reads, hashes and slices, plus one
           JSON encode+decode of the request and one of the response (the least any RPC
           server can cost);
  naive  - a naive pygls 2 server (untyped params, one open per snippet):
           benchmarks/naive_server.py;
  mcp    - (b) only: the MCP filesystem server's read_multiple_files
           (npm @modelcontextprotocol/server-filesystem, installed under benchmarks/.work).

Usage: python benchmarks/bench_read.py [--tree DIR] [--files 700] [--snippets 10000]
                                       [--repeat 5] [--no-mcp] [--json OUT]
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
import subprocess
import sys
import time
from typing import Any

from blake3 import blake3

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from corpus import list_files, make_corpus  # noqa: E402

from ploke_io_server.client import PlokeClient  # noqa: E402

WORK = os.path.join(HERE, ".work")
MCP_PKG = "@modelcontextprotocol/server-filesystem"


# -- workload -------------------------------------------------------------------------------------


def make_snippets(files: list[str], n: int, seed: int = 11) -> list[dict[str, Any]]:
    """``n`` snippets on line boundaries (always valid UTF-8 ranges) with correct hashes."""
    rng = random.Random(seed)
    info: dict[str, tuple[str, list[int]]] = {}
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        starts = [0] + [i + 1 for i, b in enumerate(data) if b == 10]
        if starts[-1] != len(data):
            starts.append(len(data))
        info[path] = (blake3(data).hexdigest(), starts)
    out = []
    for _ in range(n):
        path = rng.choice(files)
        digest, starts = info[path]
        a = rng.randrange(len(starts) - 1) if len(starts) > 1 else 0
        b = min(len(starts) - 1, a + rng.randint(1, 30))
        out.append(
            {"filePath": path, "fileHash": digest, "startByte": starts[a], "endByte": starts[b]}
        )
    return out


def floor(request: dict[str, Any]) -> int:
    """The in-process floor: same reads/hashes/slices plus one JSON round trip each way."""
    req = json.loads(json.dumps(request))
    groups: dict[str, list[int]] = {}
    items = req["snippets"]
    for i, s in enumerate(items):
        groups.setdefault(s["filePath"], []).append(i)
    results: list[Any] = [None] * len(items)
    for path, idxs in groups.items():
        with open(path, "rb") as f:
            data = f.read()
        digest = blake3(data).hexdigest()
        data.decode("utf-8")
        for i in idxs:
            s = items[i]
            start = s.get("startByte") or 0
            end = s.get("endByte")
            end = len(data) if end is None else end
            if s.get("fileHash") not in (None, digest):
                results[i] = {"ok": False}
            else:
                results[i] = {
                    "ok": True,
                    "text": data[start:end].decode("utf-8"),
                    "fileHash": digest,
                }
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"results": results}}).encode()
    return len(json.loads(body)["result"]["results"])


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- peers ----------------------------------------------------------------------------------------


class McpClient:
    """Minimal MCP stdio client (newline-delimited JSON-RPC) for read_multiple_files."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.next_id = 0

    @classmethod
    async def start(cls, root: str) -> McpClient:
        entry = os.path.join(WORK, "mcp", "node_modules", MCP_PKG, "dist", "index.js")
        proc = await asyncio.create_subprocess_exec(
            "node",
            entry,
            root,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=1 << 30,
        )
        client = cls(proc)
        await client.call(
            "initialize",
            {
                "protocolVersion": "2024-11-05",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "0"},
            },
        )
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return client

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise ConnectionError("MCP server exited")
            msg = json.loads(line)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def ensure_mcp() -> bool:
    entry = os.path.join(WORK, "mcp", "node_modules", MCP_PKG, "dist", "index.js")
    if os.path.exists(entry):
        return True
    if not shutil.which("npm") or not shutil.which("node"):
        print("# npm/node not found: skipping the MCP filesystem server", file=sys.stderr)
        return False
    os.makedirs(os.path.join(WORK, "mcp"), exist_ok=True)
    print(f"# installing {MCP_PKG} from npm ...", file=sys.stderr)
    proc = subprocess.run(
        [
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            os.path.join(WORK, "mcp"),
            MCP_PKG,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(f"# npm install failed: {proc.stderr[-500:]}", file=sys.stderr)
        return False
    return os.path.exists(entry)


# -- main -----------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


async def run_case(
    title: str, items: list[dict[str, Any]], root: str, args: argparse.Namespace, use_mcp: bool
) -> dict[str, Any]:
    """Interleave the contenders round by round, so that a slow moment of this noisy machine
    hits all of them alike; report medians and the median of per-round ratios to the floor."""
    print(title)
    request = {"snippets": items}
    ours = await PlokeClient.spawn(root=root)
    # The same server without its JSON memo of whole files: what a first read costs.
    ours_cold = await PlokeClient.spawn("--json-cache-bytes", "0", root=root)
    naive = await PlokeClient.spawn(command=[sys.executable, os.path.join(HERE, "naive_server.py")])
    mcp = await McpClient.start(root) if use_mcp else None
    paths = [i["filePath"] for i in items]

    async def run_floor() -> None:
        floor(request)

    async def run_ours() -> None:
        res = await ours.get_snippets(items)
        assert len(res) == len(items) and all(r["ok"] for r in res), res[:3]

    async def run_ours_cold() -> None:
        res = await ours_cold.get_snippets(items)
        assert len(res) == len(items) and all(r["ok"] for r in res), res[:3]

    async def run_naive() -> None:
        res = await naive.get_snippets(items)
        assert len(res) == len(items)

    async def run_mcp() -> None:
        assert mcp is not None
        res = await mcp.call(
            "tools/call", {"name": "read_multiple_files", "arguments": {"paths": paths}}
        )
        assert res["content"]

    contenders = {
        "floor (in-process)": run_floor,
        "ploke-io-server": run_ours,
        "ploke-io-server, memo off": run_ours_cold,
    }
    if args.naive_rounds:
        contenders["naive pygls server"] = run_naive
    if mcp is not None:
        contenders["MCP filesystem server"] = run_mcp
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        await fn()  # warm-up
    for rnd in range(args.repeat):
        for name, fn in contenders.items():
            if name == "naive pygls server" and rnd >= args.naive_rounds:
                continue
            t0 = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t0)
    assert ours.process is not None
    rss = peak_rss_mb(ours.process.pid)
    resp_mb = ours.last_body_bytes / 1e6
    for client in (ours, ours_cold, naive):
        await client.close()
    if mcp is not None:
        await mcp.close()

    base = times["floor (in-process)"]
    rows = []
    for name, ts in times.items():
        # Per-round ratio to the floor of the same round (rounds past the naive's are skipped).
        ratios = [t / b for t, b in zip(ts, base, strict=False)]
        row = {
            "name": name,
            "median_ms": round(median(ts) * 1000, 1),
            "min_ms": round(min(ts) * 1000, 1),
            "x_floor": round(median(ratios), 2),
            "runs": len(ts),
        }
        extra = ""
        if name == "ploke-io-server":
            row.update(peak_rss_mb=round(rss), response_mb=round(resp_mb, 1))
            extra = f"peak RSS {rss:.0f} MB, response {resp_mb:.1f} MB"
        print(
            f"  {name:<26} median {row['median_ms']:8.1f} ms  min {row['min_ms']:8.1f}  "
            f"{row['x_floor']:6.2f}x floor  {extra}"
        )
        rows.append(row)
    med = {r["name"]: r["median_ms"] for r in rows}
    ours_ms = med["ploke-io-server"]
    summary = f"  => ours {rows[1]['x_floor']:.2f}x floor ({rows[2]['x_floor']:.2f}x memo off)"
    if "naive pygls server" in med:
        summary += f"; naive pygls is {med['naive pygls server'] / ours_ms:.1f}x slower than ours"
    if "MCP filesystem server" in med:
        mcp_ms = med["MCP filesystem server"]
        summary += f"; MCP is {mcp_ms / ours_ms:.1f}x slower than ours"
        summary += f" ({mcp_ms / med['ploke-io-server, memo off']:.1f}x with the memo off)"
    print(summary)
    return {"title": title, "rows": rows}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.tree:
        root = os.path.abspath(args.tree)
        files = [f for f in list_files(root) if _is_utf8(f)]
        label = f"tree {root}"
    else:
        root = os.path.join(WORK, f"corpus{args.files}")
        if not os.path.isdir(root):
            make_corpus(root, files=args.files)
        files = list_files(root)
        label = "generated corpus"
    total_bytes = sum(os.path.getsize(f) for f in files)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "corpus": f"{label}: {len(files)} files, {total_bytes / 1e6:.1f} MB",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cases": [],
    }
    print(f"# {report['machine']}")
    print(f"# {report['corpus']}; {args.repeat} interleaved rounds")
    use_mcp = not args.no_mcp and ensure_mcp()
    snippets = make_snippets(files, args.snippets)
    report["cases"].append(
        await run_case(
            f"(a) {len(snippets)} random snippets with hashes, one request",
            snippets,
            root,
            args,
            use_mcp=False,
        )
    )
    whole = [{"filePath": f} for f in files]
    report["cases"].append(
        await run_case(f"(b) {len(whole)} whole files, one request", whole, root, args, use_mcp)
    )
    return report


def _is_utf8(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read().decode("utf-8")
        return os.path.getsize(path) > 0
    except (UnicodeDecodeError, OSError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tree", help="benchmark a real source tree instead of the generated corpus")
    ap.add_argument("--files", type=int, default=700)
    ap.add_argument("--snippets", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-mcp", action="store_true")
    ap.add_argument(
        "--naive-rounds", type=int, default=3, help="rounds for the (slow) naive server; 0 = skip"
    )
    ap.add_argument("--json", help="write the figures as JSON here")
    args = ap.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
