"""The ``ploke-io`` command, run as a new user would: a real process against a real server
(one it spawns over stdio, or a TCP server with a token), every subcommand, and its errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TcpServer, b3, write

CLI = [sys.executable, "-m", "ploke_io_server.cli_client"]


def run(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def tree(workspace: Path) -> Path:
    write(workspace / "src" / "main.rs", 'fn main() {\n    println!("héllo");\n}\n')
    write(workspace / "README.md", "# proj\n")
    return workspace


def test_status_hash_and_snippets_over_a_spawned_server(tree: Path) -> None:
    r = run("status", cwd=tree)
    assert r.returncode == 0, r.stderr
    assert f"roots:          {tree}" in r.stdout and "watcher:        off" in r.stdout
    r = run("--json", "status", cwd=tree)
    assert json.loads(r.stdout)["roots"] == [str(tree)]
    r = run("hash", "src/main.rs", "README.md", cwd=tree)
    main = (tree / "src" / "main.rs").read_bytes()
    assert r.returncode == 0
    assert r.stdout == f"{b3(main)}  src/main.rs\n{b3(b'# proj' + bytes([10]))}  README.md\n"
    r = run("snippets", "src/main.rs:16-32", cwd=tree)
    assert r.returncode == 0 and r.stdout == main[16:32].decode()
    r = run("snippets", "README.md", "src/main.rs:0-2", cwd=tree)
    assert r.stdout == "==> README.md <==\n# proj\n==> src/main.rs:0-2 <==\nfn\n"


def test_item_errors_are_readable_and_exit_1(tree: Path, tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.txt", "s")
    r = run("snippets", "README.md", str(secret), "missing.rs", "src/main.rs:0-100", cwd=tree)
    assert r.returncode == 1
    assert r.stdout.startswith("==> README.md <==\n# proj\n")
    assert f"ploke-io: {secret}: OutsideRoots: " in r.stderr
    assert "ploke-io: missing.rs: NotFound: missing.rs: no such file" in r.stderr
    assert "InvalidRange" in r.stderr
    assert str(tmp_path) not in r.stderr.replace(str(secret), "")


def test_scan_with_a_b3sum_list_and_a_progress_bar(tree: Path) -> None:
    listing = "".join(
        f"{b3(p.read_bytes())}  {p.relative_to(tree)}\n" for p in sorted(tree.rglob("*.*"))
    )
    (tree / "index.b3").write_text(listing)
    (tree / "README.md").write_text("# changed\n")
    r = run("scan", "--hashes", "index.b3", "--progress", "gone.rs=" + "0" * 64, cwd=tree)
    assert r.returncode == 0, r.stderr
    assert f"modified  README.md  {b3(b'# changed' + bytes([10]))}\n" in r.stdout
    assert "removed   gone.rs\n" in r.stdout
    assert r.stdout.endswith("3 files: 1 modified, 1 removed, 1 unchanged\n")
    assert "100% 3/3 files" in r.stderr
    bad = run("scan", "README.md", cwd=tree)
    assert bad.returncode == 2 and "expected FILE=HASH" in bad.stderr
    bad = run("scan", "README.md=abc", cwd=tree)
    assert bad.returncode == 2 and "a hash is 64 hex digits" in bad.stderr
    bad = run("scan", "--hashes", "missing.b3", cwd=tree)
    assert bad.returncode == 2 and "cannot read missing.b3" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_write_dry_run_conflict_and_create(tree: Path) -> None:
    readme = tree / "README.md"
    h = b3(readme.read_bytes())
    r = run("write", "README.md", "2", "6", "ploke", "--expect", h, "--dry-run", cwd=tree)
    assert r.returncode == 0 and "-# proj\n+# ploke\n" in r.stdout
    assert readme.read_text() == "# proj\n"
    r = run("write", "README.md", "2", "6", "ploke", "--expect", h, "--origin", "me", cwd=tree)
    assert r.returncode == 0, r.stderr
    assert readme.read_text() == "# ploke\n"
    assert f"-> {b3(readme.read_bytes())} (replacement at 2..7)" in r.stdout
    r = run("write", "README.md", "2", "6", "again", "--expect", h, cwd=tree)  # stale hash
    assert r.returncode == 1 and "ContentMismatch" in r.stderr
    assert f"the file's hash is now {b3(readme.read_bytes())}" in r.stderr
    r = run("create", "notes/new.md", "--parents", cwd=tree, stdin="from stdin\n")
    assert r.returncode == 0 and (tree / "notes" / "new.md").read_text() == "from stdin\n"
    r = run("create", "notes/new.md", "--content", "x", cwd=tree)
    assert r.returncode == 1 and "AlreadyExists" in r.stderr


async def test_tcp_with_token_wrong_token_and_watch(tree: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    server = await TcpServer.start(["--root", str(tree), "--debounce-ms", "80"], token_file)
    addr = f"{server.host}:{server.port}"
    try:
        r = await asyncio.to_thread(
            run, "--connect", addr, "--token-file", str(token_file), "status", cwd=tree
        )
        assert r.returncode == 0 and f"roots:          {tree}" in r.stdout
        bad = tmp_path / "bad-token"
        bad.write_text("not the token\n")
        r = await asyncio.to_thread(
            run, "--connect", addr, "--token-file", str(bad), "status", cwd=tree
        )
        assert r.returncode == 2
        assert "authentication failed: wrong or missing authToken" in r.stderr
        r = await asyncio.to_thread(run, "--connect", "127.0.0.1:1", "status", cwd=tree)
        assert r.returncode == 2 and "cannot connect" in r.stderr
        r = await asyncio.to_thread(
            run, "--connect", addr, "--token-file", str(tmp_path / "nope"), "status", cwd=tree
        )
        assert r.returncode == 2 and "cannot read the token file" in r.stderr
        # watch: prints events as they arrive (stops after --count)
        proc = await asyncio.create_subprocess_exec(
            *CLI, "--connect", addr, "--token-file", str(token_file), "watch", "--count", "1",
            cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None and proc.stdout is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line.decode().startswith("ploke-io: watching ")
        f = write(tree / "src" / "lib.rs", "pub fn x() {}\n")
        out = await asyncio.wait_for(proc.stdout.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert out.decode() == f"created   {f}\n"
    finally:
        await server.stop()


async def test_file_names_that_are_not_utf8_are_printed_as_their_bytes(tree: Path) -> None:
    """As ls and b3sum print them; in --json, as \\udcXX escapes that give the bytes back."""
    raw = b"caf\xe9.rs"  # Latin-1
    with open(bytes(tree) + b"/" + raw, "wb") as f:
        f.write(b"x")
    # Strict streams, as Python has them under a UTF-8 locale such as en_US.UTF-8 (under the C
    # locales, the only ones installed here, they already use surrogateescape).
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    r = subprocess.run([*CLI, "hash", raw], cwd=tree, capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b3(b"x").encode() + b"  " + raw + b"\n"
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--json", "watch", "--count", "1",
        cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert line.startswith(b"ploke-io: watching "), line
    with open(bytes(tree) + b"/n\xff.rs", "wb") as f:
        f.write(b"y")
    out = await asyncio.wait_for(proc.stdout.read(), 30)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    event = json.loads(out.decode("utf-8"))
    assert os.fsencode(event["filePath"]) == bytes(tree) + b"/n\xff.rs"
    assert event["kind"] == "created"
