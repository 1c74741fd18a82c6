"""End to end: the Neovim plugin (editors/nvim) in a real headless Neovim against a real server.

The Lua side (editors/nvim/tests/integration.lua) starts the server through the plugin, runs
:PlokeStatus, reads a snippet through the Lua API and :PlokeSnippet, writes a "ready" file,
then waits for the ploke/didChangeFiles event of the file this test changes, and writes its
results as JSON. Skipped when ``nvim`` is not installed (``apt-get install neovim``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import b3, write

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "editors" / "nvim"
DRIVER = PLUGIN / "tests" / "integration.lua"
NVIM = shutil.which("nvim")
TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(
    NVIM is None, reason="nvim is not installed (apt-get install neovim); plugin test skipped"
)


def wait_for(cond: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll cond() until true; fail early if Neovim has exited, or after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if proc.poll() is not None:
            return  # Neovim quit: its results say why
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_nvim_plugin_snippet_status_and_change_events(workspace: Path, tmp_path: Path) -> None:
    assert NVIM is not None
    data = 'fn main() {\n    println!("héllo, wörld");\n}\n'.encode()
    src = write(workspace / "src" / "main.rs", data)
    start, end = 12, data.index(b"}") + 2  # the body, with non-ASCII text and the last newline
    changed = workspace / "changed.txt"
    ready, out = tmp_path / "ready", tmp_path / "out.json"
    env = {
        **os.environ,
        "PLOKE_TEST_CMD": json.dumps(
            [sys.executable, "-m", "ploke_io_server", "--root", str(workspace)]
        ),
        "PLOKE_TEST_ROOT": str(workspace),
        "PLOKE_TEST_FILE": str(src),
        "PLOKE_TEST_START": str(start),
        "PLOKE_TEST_END": str(end),
        "PLOKE_TEST_READY": str(ready),
        "PLOKE_TEST_CHANGED": str(changed),
        "PLOKE_TEST_OUT": str(out),
        # Keep Neovim's state and LSP log (lsp.log) out of the user's home.
        **{
            v: str(tmp_path / "xdg" / v)
            for v in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME")
        },
    }
    cmd = [NVIM, "--headless", "--clean", "-u", "NONE", "--cmd", f"set rtp+={PLUGIN}"]
    cmd += ["-c", f"luafile {DRIVER}"]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    new = b"changed from outside Neovim\n"
    try:
        wait_for(ready.exists, proc, "the plugin to read the snippet")
        if proc.poll() is None:
            write(changed, new)
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"Neovim did not quit in {TIMEOUT} s:\n{output.decode(errors='replace')}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log = output.decode(errors="replace")
    assert proc.returncode == 0, log
    assert out.exists(), f"Neovim wrote no results:\n{log}"
    res = json.loads(out.read_text())
    assert "error" not in res, f"{res['error']}\n{log}"

    status = res["status"]
    assert status["roots"] == [str(workspace)]
    assert status["watcher"]["enabled"] is True
    assert "watch on" in res["status_summary"]

    expected = data[start:end].decode()
    assert res["api_text"] == expected
    assert res["api_hash"] == b3(data)
    assert res["api_whole"] == data.decode()
    assert res["api_missing_error"].startswith("NotFound:"), res["api_missing_error"]
    assert res["buf_text"] == expected
    assert res["buf_lines"] == expected.rstrip("\n").split("\n")
    assert res["buf_name"].endswith(f"{src}:{start}-{end}")

    assert res["got_event"] is True, (res["events"], res["ms"], log)
    mine = [ev for ev in res["events"] if ev["filePath"] == str(changed)]
    assert mine and mine[-1]["kind"] in ("created", "modified"), res["events"]
    assert mine[-1].get("fileHash") == b3(new)
