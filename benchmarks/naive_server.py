"""The naive pygls server the benchmarks compare against.

What a first attempt looks like: pygls 2 with untyped params (pygls builds namedtuples), one
open/read/hash per snippet, no path policy, default serialisation.
"""

from __future__ import annotations

from typing import Any

from blake3 import blake3
from pygls.lsp.server import LanguageServer

server = LanguageServer("naive-ploke-io", "0")


@server.feature("ploke/getSnippets")
def get_snippets(ls: LanguageServer, params: Any) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for s in params.snippets:
        try:
            with open(s.filePath, "rb") as f:
                data = f.read()
        except OSError as exc:
            out.append({"ok": False, "error": {"code": -33011, "kind": "Io", "message": str(exc)}})
            continue
        digest = blake3(data).hexdigest()
        want = getattr(s, "fileHash", None)
        if want is not None and want != digest:
            out.append({"ok": False, "error": {"code": -33001, "kind": "ContentMismatch"}})
            continue
        start = getattr(s, "startByte", None) or 0
        end = getattr(s, "endByte", None)
        end = len(data) if end is None else end
        out.append({"ok": True, "text": data[start:end].decode("utf-8"), "fileHash": digest})
    return {"results": out}


if __name__ == "__main__":
    server.start_io()
