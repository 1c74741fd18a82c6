"""The examples in the docs are real: re-run the script that produced them and compare.

docs/protocol.md ends with the script that produced its examples (and those of writes.md and
watcher.md): it runs a real server over stdio on a temp workspace and prints every message
(``-> {...}`` sent, ``<- {...}`` received), with the temp prefix replaced by ``/home/me``. This
test runs that script and checks every JSON-RPC message shown in the docs against what the
server said this time: an example the script produces must be exactly what the docs show
(volatile counters aside). Examples made with other flags are not produced by the script and
are skipped, but most must match, or the test fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```(json|jsonc)\n(.*?)```", re.DOTALL)


def appendix_script() -> str:
    text = (DOCS / "protocol.md").read_text()
    start = text.index("## Appendix: reproducing the examples")
    m = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert m is not None, "the appendix has no python block"
    return m.group(1)


def doc_blocks(name: str) -> list[list[dict[str, Any]]]:
    """The JSON-RPC objects of each json/jsonc block of a doc (comment lines dropped)."""
    blocks: list[list[dict[str, Any]]] = []
    decoder = json.JSONDecoder()
    for _lang, body in BLOCK.findall((DOCS / name).read_text()):
        out: list[dict[str, Any]] = []
        blocks.append(out)
        text = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("//"))
        pos = 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                break
            try:
                value, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break  # an abbreviated example ("[...]"): the rest of this block is skipped
            if isinstance(value, dict) and value.get("jsonrpc") == "2.0":
                out.append(value)
    return blocks


def keyed(messages: list[dict[str, Any]]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Each message with a key: a call by (id, method, params), an answer by its request's.

    An answer whose request is not among ``messages`` gets no key (None): it cannot be told
    apart from answers to other requests with the same id.
    """
    requests: dict[Any, tuple[Any, ...]] = {}
    out: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for msg in messages:
        if "method" in msg:
            key = (
                "call",
                msg.get("id"),
                msg["method"],
                json.dumps(msg.get("params"), sort_keys=True),
            )
            if "id" in msg:
                requests[msg["id"]] = key
            out.append((key, msg))
        elif msg.get("id") in requests:
            out.append((("answer", *requests[msg["id"]][1:]), msg))
    return out


def _stable(msg: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately changes from run to run: status counters."""
    result = msg.get("result")
    if isinstance(result, dict) and "counters" in result and "version" in result:
        return {**msg, "result": {k: v for k, v in result.items() if k != "counters"}}
    return msg


def test_the_protocol_examples_are_what_the_server_says(tmp_path: Path) -> None:
    script = tmp_path / "appendix.py"
    script.write_text(appendix_script())
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    printed: list[dict[str, Any]] = []
    for line in run.stdout.splitlines():
        if line.startswith(("-> ", "<- ")):
            try:
                printed.append(json.loads(line[3:]))
            except json.JSONDecodeError:
                continue
    seen: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for key, msg in keyed(printed):
        seen.setdefault(key, []).append(_stable(msg))
    matched = 0
    checked: list[str] = []
    for doc in ("protocol.md", "writes.md", "watcher.md"):
        for block in doc_blocks(doc):
            for key, shown in keyed(block):
                candidates = seen.get(key)
                if not candidates:
                    continue  # made in another session (other flags): not this script's
                stable = _stable(shown)
                checked.append(f"{doc}: {key[:3]}")
                assert stable in candidates, (
                    f"{doc}: the example {json.dumps(shown)[:300]} is not what the server says "
                    f"now: {json.dumps(candidates[0])[:300]}"
                )
                matched += 1
    assert matched >= 30, f"only {matched} examples matched the script's output: {checked}"
    print(f"{matched} examples checked")
