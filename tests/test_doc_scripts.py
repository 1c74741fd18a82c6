"""The Python examples of the docs and README run: every ``python`` block that is a whole
program (it calls ``asyncio.run``) is executed against real servers on a temp workspace.

The examples name places a reader would have (``/home/me/proj``, port 2087, a token file);
the test points them at a temp workspace, a real TCP server on a free port and its token
file, and passes the argument a script reads from ``sys.argv``. A script must exit 0 without
a traceback; an API change that breaks an example fails here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TcpServer, write

REPO = Path(__file__).resolve().parent.parent
PLACES = ("/home/me/src/myrepo", "/home/me/proj")


def examples() -> Iterator[tuple[str, str]]:
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for n, m in enumerate(re.finditer(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)):
            if "asyncio.run(" in m.group(1):
                yield f"{doc.name}#{n}", m.group(1)


EXAMPLES = dict(examples())


def test_there_are_examples_to_run() -> None:
    assert len(EXAMPLES) >= 5, sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_example_runs(name: str, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    write(root / "src" / "main.rs", 'fn main() {\n    println!("héllo, wörld");\n}\n')
    write(root / "README.md", "# proj\n")
    code = EXAMPLES[name]
    for place in PLACES:
        code = code.replace(place, str(root))
    token_file = root / ".ploke-io" / "token"
    server = None
    if "2087" in code:  # a TCP example: a real server with a token, on a free port
        token_file.parent.mkdir()
        server = await TcpServer.start(["--root", str(root)], token_file)
        code = code.replace("2087", str(server.port))
    argv = [str(token_file)] if "TOKEN_FILE" in code else [str(root)]
    script = tmp_path / "example.py"
    script.write_text(code)
    try:
        run = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(script), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        if server is not None:
            await server.stop()
    assert run.returncode == 0, f"{name} failed:\n{run.stdout[-1500:]}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
