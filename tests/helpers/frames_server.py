"""A stand-in server for the client's frame reader: it answers each request with bytes cut
and packed as the request's method asks (tests/test_client_frames.py)."""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from rpc_floor_server import read_messages  # the same blocking frame reader


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def main() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    for msg in read_messages(inp):  # the requests (notifications are skipped)
        method, msg_id = msg["method"], msg["id"]
        answer = frame({"jsonrpc": "2.0", "id": msg_id, "result": {"method": method, "n": 2**40}})
        if method == "silent":
            continue
        if method == "split":  # one byte per write
            for i in range(len(answer)):
                out.write(answer[i : i + 1])
                out.flush()
                time.sleep(0.0005)
        elif method == "packed":  # a notification, two headers, then the answer: one write
            note = frame({"jsonrpc": "2.0", "method": "note", "params": {"x": "é" * 3}})
            extra = b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
            out.write(note + extra + answer)
            out.flush()
        elif method == "garbage":
            out.write(b"Content-Length: 5\r\n\r\n{oops")
            out.flush()
        elif method == "half":  # half an answer, then exit
            out.write(answer[: len(answer) // 2])
            out.flush()
            return
        else:
            out.write(answer)
            out.flush()


if __name__ == "__main__":
    main()
