"""Unit tests of the wire models: item parsing and the JSON encoder of batch results."""

from __future__ import annotations

import json

from ploke_io_server.errors import ErrorKind, PlokeIoError
from ploke_io_server.server.framing import FrameWriter
from ploke_io_server.server.models import (
    EscapeMemo,
    GetSnippetsResult,
    HashFilesResult,
    WriteSnippetsResult,
    encode_response,
    structure_get_snippets,
)
from ploke_io_server.server.protocol import PlokeLanguageServer
from ploke_io_server.types import EditResult, FileHash, Snippet, SnippetRequest


def decode(chunks: list[bytes] | None) -> dict[str, object]:
    assert chunks is not None
    return dict(json.loads(b"".join(chunks)))


def test_encoded_batch_equals_json_dumps_of_the_same_values() -> None:
    texts = ['quote " back \\ tab \t nl \n', "日本語 🦀", "\x00\x1f ctrl", ""]
    results: list[Snippet | PlokeIoError] = [
        Snippet(t.encode(), "ab" * 32, whole=i % 2 == 0) for i, t in enumerate(texts)
    ]
    results.insert(2, PlokeIoError(ErrorKind.NotFound, "x: no such file", {"k": 1}))
    msg = decode(encode_response(7, GetSnippetsResult(list(results) * 300), EscapeMemo(1 << 20)))
    assert msg["id"] == 7 and msg["jsonrpc"] == "2.0"
    items = msg["result"]["results"]  # type: ignore[index]
    assert len(items) == 1500
    assert items[0] == {"ok": True, "text": texts[0], "fileHash": "ab" * 32}
    assert items[2] == {
        "ok": False,
        "error": {
            "code": -33003,
            "kind": "NotFound",
            "message": "x: no such file",
            "data": {"k": 1},
        },
    }
    assert [i.get("text") for i in items[:5]] == [texts[0], texts[1], None, texts[2], texts[3]]


def test_hash_results_encode() -> None:
    msg = decode(encode_response("a", HashFilesResult([FileHash("cd" * 32, 5)]), EscapeMemo(0)))
    assert msg["result"] == {"results": [{"ok": True, "fileHash": "cd" * 32, "size": 5}]}


def test_escape_memo_stays_within_budget_and_is_keyed_by_hash() -> None:
    memo = EscapeMemo(budget=40_000, min_bytes=100)
    snippets = [Snippet(bytes([65 + i]) * 9_000, f"{i:064x}", whole=True) for i in range(10)]
    for s in snippets:
        assert json.loads(memo.escaped(s)) == s.text
    assert memo.size <= 40_000 and memo.misses == 10
    assert json.loads(memo.escaped(snippets[-1])) == snippets[-1].text
    assert memo.hits == 1
    # Slices and small texts are never memoized.
    memo.escaped(Snippet(b"y" * 9_000, "f" * 64, whole=False))
    memo.escaped(Snippet(b"z" * 10, "e" * 64, whole=True))
    assert memo.misses == 10


def test_items_of_the_wrong_type_fail_alone() -> None:
    params = structure_get_snippets(
        {"snippets": [{"filePath": "/a"}, {"filePath": "/b", "startByte": True}, 3], "x": 1}
    )
    first, second, third = params.snippets
    assert first == SnippetRequest("/a")
    assert isinstance(second, PlokeIoError) and second.kind is ErrorKind.InvalidRange
    assert isinstance(third, PlokeIoError) and third.kind is ErrorKind.InvalidPath


class _ListSink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def writable_now(self) -> bool:
        return True

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def _bodies(raw: bytes) -> list[dict[str, object]]:
    out = []
    while raw:
        header, _, rest = raw.partition(b"\r\n\r\n")
        length = int(header.split(b":")[1])
        out.append(json.loads(rest[:length]))
        raw = rest[length:]
    return out


async def test_a_result_that_cannot_be_encoded_is_answered_with_an_internal_error() -> None:
    """send_result: a batch result goes to its encoder; if encoding fails, the request still
    gets an answer (-32603) and the next one is answered as usual."""
    server = PlokeLanguageServer()
    sink = _ListSink()
    server.protocol.frame_writer = FrameWriter(sink)
    ok = EditResult("/r/a.rs", "a" * 64, "b" * 64, 1, 2)
    broken = EditResult("/r/a.rs", "a" * 64, "b" * 64, 1, 2, diff=object())  # type: ignore[arg-type]
    server.protocol.send_result(7, WriteSnippetsResult([broken]))
    server.protocol.send_result(8, WriteSnippetsResult([ok]))
    first, second = _bodies(sink.data)
    assert first == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": -32603, "message": "internal error: cannot encode the result"},
    }
    assert second["id"] == 8
    assert second["result"] == {"results": [{
        "ok": True, "filePath": "/r/a.rs", "oldHash": "a" * 64, "newHash": "b" * 64,
        "newStartByte": 1, "newEndByte": 2}]}  # fmt: skip
