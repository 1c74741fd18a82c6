"""End to end: lifecycle, bad input, TCP auth and several clients, roots and policies.

Raw tests speak bytes to a real server process (stdio pipes or a TCP socket) so that they
can send what a well-behaved client never would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from lsprotocol import types as lsp

from ploke_io_server import methods

from .conftest import SERVER, TcpServer, call, write

INIT = {"processId": None, "rootUri": None, "capabilities": {}}


class Raw:
    """A byte-level JSON-RPC peer of a real server process."""

    opened: list[Raw] = []

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: Any,
        proc: asyncio.subprocess.Process | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.proc = proc
        Raw.opened.append(self)

    @classmethod
    async def stdio(cls, *args: str) -> Raw:
        proc = await asyncio.create_subprocess_exec(
            *SERVER, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        return cls(proc.stdout, proc.stdin, proc)

    @classmethod
    async def tcp(cls, server: TcpServer) -> Raw:
        reader, writer = await asyncio.open_connection(server.host, server.port, limit=1 << 24)
        return cls(reader, writer)

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, msg: Any) -> None:
        body = json.dumps(msg).encode()
        self.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def recv(self, timeout: float = 20) -> dict[str, Any] | None:
        """The next message, or None at EOF."""

        async def read() -> dict[str, Any] | None:
            length = None
            while True:
                line = await self.reader.readline()
                if not line:
                    return None
                if line == b"\r\n":
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            assert length is not None
            return dict(json.loads(await self.reader.readexactly(length)))

        return await asyncio.wait_for(read(), timeout)

    async def response(self, msg_id: Any) -> dict[str, Any]:
        while True:
            msg = await self.recv()
            assert msg is not None, "connection closed before the response"
            if msg.get("id") == msg_id and "method" not in msg:
                return msg

    async def request(self, msg_id: Any, method: str, params: Any = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return await self.response(msg_id)

    async def initialize(self, **options: Any) -> None:
        params = dict(INIT, initializationOptions=options) if options else INIT
        reply = await self.request("init", "initialize", params)
        assert "result" in reply, reply
        self.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})

    def close_input(self) -> None:
        self.writer.close()

    async def exit_code(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), 30)


@pytest.fixture(autouse=True)
async def close_raw_peers() -> Any:
    yield
    while Raw.opened:
        raw = Raw.opened.pop()
        raw.writer.close()
        if raw.proc is None:
            with contextlib.suppress(ConnectionError):
                await raw.writer.wait_closed()
        elif raw.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                raw.proc.kill()
            await raw.proc.wait()


def error_code(reply: dict[str, Any]) -> int:
    assert "error" in reply, reply
    return int(reply["error"]["code"])


@pytest.fixture
async def tcp_server(workspace: Path, tmp_path: Path) -> Any:
    server = await TcpServer.start(["--root", str(workspace)], tmp_path / "token")
    yield server
    await server.stop()


# -- lifecycle ------------------------------------------------------------------------------------


@pytest.fixture
async def raw_any(transport: str, workspace: Path, tmp_path: Path) -> Any:
    """A Raw peer of a fresh server over ``transport``, not yet initialized."""
    if transport == "stdio":
        raw = await Raw.stdio("--root", str(workspace))
        raw.token = None  # type: ignore[attr-defined]
        yield raw
        raw.close_input()
        await raw.exit_code()
    else:
        server = await TcpServer.start(["--root", str(workspace)], tmp_path / "tok")
        raw = await Raw.tcp(server)
        raw.token = server.token  # type: ignore[attr-defined]
        yield raw
        raw.writer.close()
        await server.stop()


async def test_requests_before_initialize_get_32002(raw_any: Raw, workspace: Path) -> None:
    for i, method in enumerate((methods.STATUS, methods.GET_SNIPPETS, methods.HASH_FILES)):
        assert error_code(await raw_any.request(i, method, {"snippets": []})) == -32002
    raw_any.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})  # ignored
    token = raw_any.token  # type: ignore[attr-defined]
    await (raw_any.initialize(authToken=token) if token else raw_any.initialize())
    status = await raw_any.request(9, methods.STATUS)
    assert status["result"]["roots"] == [str(workspace)]


async def test_ids_beyond_64_bits_and_strings_come_back_as_sent(raw_any: Raw) -> None:
    """orjson would read 2**64 as a float (it did: the answer had id null)."""
    token = raw_any.token  # type: ignore[attr-defined]
    await (raw_any.initialize(authToken=token) if token else raw_any.initialize())
    for msg_id in (2**64, 2**64 + 1, -(2**70), "2**64", 0):
        reply = await raw_any.request(msg_id, methods.STATUS)
        assert reply["id"] == msg_id and type(reply["id"]) is type(msg_id), reply
        assert "result" in reply


async def test_empty_by_position_params_mean_no_params(raw_any: Raw, workspace: Path) -> None:
    """vscode-jsonrpc sends an undefined parameter as [null]."""
    token = raw_any.token  # type: ignore[attr-defined]
    await (raw_any.initialize(authToken=token) if token else raw_any.initialize())
    for i, params in enumerate(([None], [], None)):
        reply = await raw_any.request(i + 1, methods.STATUS, params)
        assert reply["result"]["roots"] == [str(workspace)], reply
    reply = await raw_any.request(9, methods.HASH_FILES, [None])
    assert error_code(reply) == -32602 and "paths: expected an array" in reply["error"]["message"]
    reply = await raw_any.request(10, methods.STATUS, [1])
    assert error_code(reply) == -32602 and "expected an object, got array" in str(reply)


async def test_initialize_twice_is_invalid(raw_any: Raw) -> None:
    token = raw_any.token  # type: ignore[attr-defined]
    await (raw_any.initialize(authToken=token) if token else raw_any.initialize())
    assert error_code(await raw_any.request(2, "initialize", INIT)) == -32600
    assert "result" in await raw_any.request(3, methods.STATUS)


async def test_shutdown_refuses_requests_and_exit_code_0(workspace: Path) -> None:
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    assert (await raw.request(1, "shutdown")) == {"jsonrpc": "2.0", "id": 1, "result": None}
    for i, method in enumerate((methods.STATUS, methods.GET_SNIPPETS, "initialize"), start=2):
        reply = await raw.request(i, method, {"snippets": []})
        assert error_code(reply) == -32600
    raw.send({"jsonrpc": "2.0", "method": "exit"})
    assert await raw.exit_code() == 0


async def test_exit_without_shutdown_is_code_1(workspace: Path) -> None:
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    raw.send({"jsonrpc": "2.0", "method": "exit"})
    assert await raw.exit_code() == 1


@pytest.mark.parametrize(("shutdown", "code"), [(True, 0), (False, 1)])
async def test_eof_on_stdin_is_exit(workspace: Path, shutdown: bool, code: int) -> None:
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    if shutdown:
        await raw.request(1, "shutdown")
    raw.close_input()
    assert await raw.exit_code() == code


async def test_eof_lets_requests_in_flight_answer_first(workspace: Path) -> None:
    paths = [write(workspace / f"d{i % 20}" / f"f{i}.txt", f"{i}") for i in range(2000)]
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    raw.send({
        "jsonrpc": "2.0", "id": 7, "method": methods.GET_SNIPPETS,
        "params": {"snippets": [{"filePath": str(p)} for p in paths]},
    })  # fmt: skip
    raw.close_input()
    reply = await raw.response(7)
    assert [r["text"] for r in reply["result"]["results"]] == [str(i) for i in range(2000)]
    assert await raw.exit_code() == 1


async def test_shutdown_waits_for_requests_in_flight(workspace: Path) -> None:
    paths = [write(workspace / f"d{i % 20}" / f"f{i}.txt", "z") for i in range(2000)]
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    raw.send({
        "jsonrpc": "2.0", "id": "big", "method": methods.GET_SNIPPETS,
        "params": {"snippets": [{"filePath": str(p)} for p in paths]},
    })  # fmt: skip
    raw.send({"jsonrpc": "2.0", "id": "bye", "method": "shutdown"})
    first = await raw.recv()
    second = await raw.recv()
    assert first is not None and second is not None
    assert first["id"] == "big" and len(first["result"]["results"]) == 2000
    assert second == {"jsonrpc": "2.0", "id": "bye", "result": None}
    raw.send({"jsonrpc": "2.0", "method": "exit"})
    assert await raw.exit_code() == 0


async def test_sigterm_stops_a_tcp_server_cleanly(workspace: Path, tmp_path: Path) -> None:
    server = await TcpServer.start(["--root", str(workspace)], tmp_path / "tok")
    client = await server.connect()
    assert (await call(client, methods.STATUS))["roots"] == [str(workspace)]
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(server.proc.wait(), 30) == 0
    await server.stop()


async def test_wire_format_of_a_batch_response(workspace: Path) -> None:
    text = 'naïve 日本 🦀 "quoted" back\\slash\ttab\n'
    f = write(workspace / "m.txt", text)
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    raw.send({
        "jsonrpc": "2.0", "id": 3, "method": methods.GET_SNIPPETS,
        "params": {"snippets": [{"filePath": str(f)}, {"filePath": "rel"}]},
    })  # fmt: skip
    header = await raw.reader.readuntil(b"\r\n\r\n")
    length = int(header.split(b":")[1])
    body = await raw.reader.readexactly(length)
    assert body.isascii()  # non-ASCII text is sent as \u escapes
    msg = json.loads(body)
    assert msg["jsonrpc"] == "2.0" and msg["id"] == 3
    assert msg["result"]["results"][0]["text"] == text
    assert msg["result"]["results"][1]["error"]["kind"] == "InvalidPath"


# -- bad input ------------------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


DEEP_PARAMS = (
    b'{"jsonrpc":"2.0","id":9,"method":"ploke/hashFiles","params":{"paths":'
    + b"[" * 3_000
    + b"]" * 3_000
    + b"}}"
)
BAD_FRAMES = [
    (b"this is not a header\r\n\r\n", -32700),
    (b"Content-Length: nope\r\n\r\n", -32700),
    (b"Content-Type: text/plain\r\n\r\n", -32700),
    (b"Content-Length: 7\r\n\r\n{oops!}", -32700),
    (b"Content-Length: 4\r\n\r\n\xff\xfe\xfd\xfc", -32700),
    (b"Content-Length: 2\r\n\r\n[]", -32600),
    (b'Content-Length: 14\r\n\r\n{"id":1,"a":2}', -32600),
    (b'Content-Length: 42\r\n\r\n{"jsonrpc":"2.0","id":1,"method":["list"]}', -32600),
    # Nested deeper than the parsers go: a parse error, not a traceback and silence.
    (frame(b"[" * 100_000 + b"]" * 100_000), -32700),
    (frame(DEEP_PARAMS), -32700),
]


async def check_bad_frames(raw: Raw, workspace: Path) -> None:
    for frame, code in BAD_FRAMES:
        raw.send_bytes(frame)
        reply = await raw.recv()
        assert reply is not None, frame
        assert error_code(reply) == code, (frame, reply)
    # A notification is never answered, even a malformed one.
    raw.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": [1]}})
    raw.send({"jsonrpc": "2.0", "method": "ploke/noSuchNotification", "params": 3})
    unknown = await raw.request(5, "ploke/noSuchMethod", {})
    assert error_code(unknown) == -32601
    status = await raw.request(6, methods.STATUS)
    assert status["result"]["roots"] == [str(workspace)]


async def test_malformed_frames_get_errors_and_stdio_goes_on(workspace: Path) -> None:
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    await check_bad_frames(raw, workspace)
    raw.close_input()
    assert await raw.exit_code() == 1


async def test_malformed_frames_get_errors_and_tcp_goes_on(
    tcp_server: TcpServer, workspace: Path
) -> None:
    raw = await Raw.tcp(tcp_server)
    await raw.initialize(authToken=tcp_server.token)
    await check_bad_frames(raw, workspace)
    # Another client never noticed.
    other = await tcp_server.connect()
    assert (await call(other, methods.STATUS))["roots"] == [str(workspace)]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 3.5, 1e308])
    if kind == 3:
        return rng.choice(["", "x", "/etc/passwd", "\u0000", "🦀" * 3, "a" * 300])
    if kind == 4:
        return rng.choice([[], {}])
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["id", "token", "filePath", "snippets", "paths", "value", "workDoneToken", "startByte"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


async def test_random_garbage_messages_never_take_the_server_down(workspace: Path) -> None:
    """Every method the server knows, with random params and ids; it answers each request
    (never a notification) and is still fine at the end."""
    f = write(workspace / "f.txt", "still here")
    rng = random.Random(1234)
    method_names = [
        "$/cancelRequest", "$/progress", "$/setTrace", "window/workDoneProgress/cancel",
        "initialized", "workspace/didChangeWorkspaceFolders", "textDocument/didOpen",
        methods.GET_SNIPPETS, methods.HASH_FILES, methods.STATUS, "ploke/unknown",
    ]  # fmt: skip
    raw = await Raw.stdio("--root", str(workspace))
    await raw.initialize()
    expected = 0
    for n in range(400):
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": rng.choice(method_names)}
        if rng.random() < 0.8:
            msg["params"] = random_json(rng)
        if rng.random() < 0.5:
            msg["id"] = f"r{n}"
            expected += 1
        elif rng.random() < 0.2:
            msg["id"] = random_json(rng)  # often not a valid id: answered -32600 with id null
            expected += 1
        raw.send(msg)
    got = 0
    while got < expected:
        reply = await raw.recv(timeout=30)
        assert reply is not None, f"server closed after {got} of {expected} answers"
        if "method" not in reply:
            got += 1
    reply = await raw.request("last", methods.GET_SNIPPETS, {"snippets": [{"filePath": str(f)}]})
    assert reply["result"]["results"][0]["text"] == "still here"


async def test_frames_cut_anywhere_or_packed_together(raw_any: Raw, workspace: Path) -> None:
    """The server cuts frames from its own buffer: a frame split at every byte, frames split
    at random points, and many frames in one write all read the same."""
    token = raw_any.token  # type: ignore[attr-defined]
    await (raw_any.initialize(authToken=token) if token else raw_any.initialize())
    f = write(workspace / "f.txt", "alpha beta")
    current = blake3(b"alpha beta").hexdigest()

    def edit(i: int) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": i, "method": methods.WRITE_SNIPPETS, "params": {
            "edits": [{"filePath": str(f), "expectedHash": current, "startByte": 0,
                       "endByte": 5, "replacement": f"w{i:04d}"}]}}  # fmt: skip

    # One byte at a time, headers and body alike (and a stray blank line before it).
    one = b"\r\n" + frame(json.dumps(edit(1)).encode())
    for i in range(len(one)):
        raw_any.send_bytes(one[i : i + 1])
        if i % 7 == 0:
            await raw_any.writer.drain()
            await asyncio.sleep(0)
    reply = await raw_any.response(1)
    current = reply["result"]["results"][0]["newHash"]
    assert f.read_text() == "w0001 beta"
    # 60 requests in one stream cut at random points: each one names the hash the previous
    # one leaves, so they succeed only if read whole and in order.
    rng = random.Random(7)
    stream = b""
    hashes = []
    for i in range(2, 62):
        stream += frame(json.dumps(edit(i)).encode())
        current = blake3(f"w{i:04d} beta".encode()).hexdigest()
        hashes.append(current)
    pos = 0
    while pos < len(stream):
        step = rng.choice((1, 2, 3, 17, 64, 500, 4096))
        raw_any.send_bytes(stream[pos : pos + step])
        pos += step
        if rng.random() < 0.3:
            await raw_any.writer.drain()
            await asyncio.sleep(0.001)
    for i in range(2, 62):
        reply = await raw_any.response(i)
        assert reply["result"]["results"][0]["ok"], reply
        assert reply["result"]["results"][0]["newHash"] == hashes[i - 2]
    assert f.read_text() == "w0061 beta"
    # Many small frames packed into one write, answered in order.
    raw_any.send_bytes(b"".join(frame(json.dumps(
        {"jsonrpc": "2.0", "id": f"s{i}", "method": methods.STATUS}).encode()) for i in range(50)
    ))  # fmt: skip
    for i in range(50):
        assert "result" in await raw_any.response(f"s{i}")


async def test_an_overlong_header_line_is_skipped_and_reported(raw_any: Raw) -> None:
    token = raw_any.token  # type: ignore[attr-defined]
    await (raw_any.initialize(authToken=token) if token else raw_any.initialize())
    # Longer than the 1 MiB header limit: sent in pieces, then with its newline at once.
    for pieces in ([b"X-Padding: " + b"p" * 700_000, b"p" * 700_000 + b"\r\n"],
                   [b"X-Padding: " + b"p" * 1_500_000 + b"\r\n"]):  # fmt: skip
        for piece in pieces:
            raw_any.send_bytes(piece)
            await raw_any.writer.drain()
        raw_any.send_bytes(b"Content-Length: 2\r\n\r\n{}")
        reply = await raw_any.recv()
        assert reply is not None and error_code(reply) == -32700, reply
        assert "line too long" in reply["error"]["message"]
        assert "result" in await raw_any.request(1, methods.STATUS)


async def test_oversized_message_is_skipped(workspace: Path) -> None:
    raw = await Raw.stdio("--root", str(workspace), "--max-message-bytes", "4096")
    await raw.initialize()
    big = {"snippets": [{"filePath": str(workspace / "x"), "pad": "p" * 5000}]}
    raw.send({"jsonrpc": "2.0", "id": 1, "method": methods.GET_SNIPPETS, "params": big})
    reply = await raw.recv()
    assert reply is not None and reply["id"] is None  # its id was never read
    assert error_code(reply) == -32600 and "4096" in reply["error"]["message"]
    status = await raw.request(2, methods.STATUS)
    assert status["result"]["roots"] == [str(workspace)]


async def test_client_disconnecting_mid_request_leaves_the_server_up(
    tcp_server: TcpServer, workspace: Path
) -> None:
    paths = [write(workspace / f"d{i % 20}" / f"f{i}.txt", "y" * 500) for i in range(3000)]
    raw = await Raw.tcp(tcp_server)
    await raw.initialize(authToken=tcp_server.token)
    raw.send({
        "jsonrpc": "2.0", "id": 1, "method": methods.GET_SNIPPETS,
        "params": {"snippets": [{"filePath": str(p)} for p in paths]},
    })  # fmt: skip
    raw.writer.close()  # gone, before the answer
    # A client that dies half way through sending a frame, too.
    half = await Raw.tcp(tcp_server)
    await half.initialize(authToken=tcp_server.token)
    half.send_bytes(b'Content-Length: 1000\r\n\r\n{"jsonrpc":')
    half.writer.close()
    other = await tcp_server.connect()
    res = await call(other, methods.GET_SNIPPETS, {"snippets": [{"filePath": str(paths[0])}]})
    assert res["results"][0]["text"] == "y" * 500
    assert tcp_server.proc.returncode is None


# -- TCP: auth and several clients ----------------------------------------------------------------


async def test_tcp_token_file_is_private(tcp_server: TcpServer, tmp_path: Path) -> None:
    mode = stat.S_IMODE(os.stat(tmp_path / "token").st_mode)
    assert mode == 0o600
    assert tcp_server.token and len(tcp_server.token) >= 32


@pytest.mark.parametrize("token", ["wrong-token", None, 12345])
async def test_tcp_wrong_or_missing_token_fails_initialize_and_closes(
    tcp_server: TcpServer, workspace: Path, token: Any
) -> None:
    raw = await Raw.tcp(tcp_server)
    options = {} if token is None else {"authToken": token}
    reply = await raw.request(1, "initialize", dict(INIT, initializationOptions=options))
    assert error_code(reply) == -32600
    assert "auth" in reply["error"]["message"]
    assert await raw.recv() is None  # the server closed the connection
    good = await tcp_server.connect()
    assert (await call(good, methods.STATUS))["roots"] == [str(workspace)]


async def test_tcp_unauthenticated_clients_are_limited(workspace: Path, tmp_path: Path) -> None:
    server = await TcpServer.start(
        ["--root", str(workspace), "--auth-timeout", "1.5"], tmp_path / "tok"
    )
    try:
        idle = await Raw.tcp(server)
        chatty = await Raw.tcp(server)
        # Before authenticating, no message over 1 MiB is read.
        chatty.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": "x" * (2 << 20)})
        reply = await chatty.recv()
        assert reply is not None and error_code(reply) == -32600
        assert "before authentication" in reply["error"]["message"]
        # Neither gets longer than --auth-timeout, however fast it keeps sending.
        assert await idle.recv(timeout=10) is None
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        replies = 0
        while loop.time() < end:
            chatty.send({"jsonrpc": "2.0", "id": replies, "method": methods.STATUS})
            try:
                reply = await chatty.recv(timeout=1)
            except (TimeoutError, ConnectionError):
                break
            if reply is None:
                break
            assert error_code(reply) == -32002
            replies += 1
        assert loop.time() < end, "the chatty client was never disconnected"
        good = await server.connect()
        assert (await call(good, methods.STATUS))["roots"] == [str(workspace)]
    finally:
        await server.stop()


async def test_tcp_no_auth_needs_no_token(workspace: Path) -> None:
    server = await TcpServer.start(["--root", str(workspace)], None)
    try:
        client = await server.connect(token=None)
        assert (await call(client, methods.STATUS))["roots"] == [str(workspace)]
    finally:
        await server.stop()


async def test_two_tcp_clients_at_once_share_one_engine(
    tcp_server: TcpServer, workspace: Path
) -> None:
    a_files = [write(workspace / "a" / f"{i}.txt", f"a{i}") for i in range(200)]
    b_files = [write(workspace / "b" / f"{i}.txt", f"b{i}") for i in range(200)]
    a = await tcp_server.connect(folders=[str(workspace / "a")])
    b = await tcp_server.connect()

    async def read_all(client: Any, files: list[Path]) -> list[str]:
        out = []
        for chunk in range(0, len(files), 50):
            items = [{"filePath": str(p)} for p in files[chunk : chunk + 50]]
            res = await call(client, methods.GET_SNIPPETS, {"snippets": items})
            out += [r.get("text", r.get("error", {}).get("kind")) for r in res["results"]]
        return out

    got_a, got_b, a_on_b = await asyncio.gather(
        read_all(a, a_files), read_all(b, b_files), read_all(a, b_files[:10])
    )
    assert got_a == [f"a{i}" for i in range(200)]
    assert got_b == [f"b{i}" for i in range(200)]
    assert a_on_b == ["OutsideRoots"] * 10  # a narrowed its roots to workspace/a
    sa, sb = await asyncio.gather(call(a, methods.STATUS), call(b, methods.STATUS))
    assert sa["roots"] == [str(workspace / "a")] and sb["roots"] == [str(workspace)]
    # One engine: the counters are shared.
    assert sa["counters"]["filesRead"] == sb["counters"]["filesRead"] == 400


# -- roots and symlink policy ---------------------------------------------------------------------


async def test_client_roots_narrow_and_outside_ones_are_ignored(
    start_server: Any, transport: str, tmp_path: Path, workspace: Path
) -> None:
    inside = write(workspace / "sub" / "in.txt", "in")
    other = write(workspace / "other.txt", "other")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    client = await start_server(
        transport, "--root", str(workspace), folders=[str(workspace / "sub"), str(elsewhere)]
    )
    status = await call(client, methods.STATUS)
    assert status["roots"] == [str(workspace / "sub")]
    res = await call(
        client,
        methods.GET_SNIPPETS,
        {"snippets": [{"filePath": str(inside)}, {"filePath": str(other)}]},
    )
    assert res["results"][0]["text"] == "in"
    assert res["results"][1]["error"]["kind"] == "OutsideRoots"
    warnings = [m.message for m in client.log_messages if m.type == lsp.MessageType.Warning]
    assert any(str(elsewhere) in w and "ignoring" in w for w in warnings), warnings


async def test_without_root_flags_the_client_folder_is_the_root(
    start_server: Any, transport: str, workspace: Path
) -> None:
    f = write(workspace / "f.txt", "f")
    client = await start_server(transport, folders=[str(workspace)])
    assert (await call(client, methods.STATUS))["roots"] == [str(workspace)]
    res = await call(client, methods.GET_SNIPPETS, {"snippets": [{"filePath": str(f)}]})
    assert res["results"][0]["text"] == "f"


async def test_client_chooses_symlink_policy(
    start_server: Any, transport: str, workspace: Path
) -> None:
    write(workspace / "real.txt", "real")
    (workspace / "link.txt").symlink_to("real.txt")
    link = {"snippets": [{"filePath": str(workspace / "link.txt")}]}
    loose = await start_server(transport, "--root", str(workspace))
    assert (await call(loose, methods.GET_SNIPPETS, link))["results"][0]["text"] == "real"
    strict = await start_server(
        transport, "--root", str(workspace), options={"symlinkPolicy": "deny"}
    )
    status = await call(strict, methods.STATUS)
    assert status["symlinkPolicy"] == "deny"
    res = await call(strict, methods.GET_SNIPPETS, link)
    assert res["results"][0]["error"]["kind"] == "OutsideRoots"


async def test_operator_policy_is_a_ceiling(
    start_server: Any, transport: str, workspace: Path
) -> None:
    client = await start_server(
        transport, "--root", str(workspace), "--symlink-policy", "deny",
        options={"symlinkPolicy": "followWithinRoots"},
    )  # fmt: skip
    assert (await call(client, methods.STATUS))["symlinkPolicy"] == "deny"
    assert any("looser" in m.message for m in client.log_messages)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"symlinkPolicy": "sometimes"}, "initializationOptions.symlinkPolicy"),
        ({"symlinkPolicy": 3}, "initializationOptions.symlinkPolicy"),
        ({"watch": "yes"}, "initializationOptions.watch"),
        ("not-an-object", "initializationOptions"),
    ],
)
async def test_bad_initialization_options_name_the_field(
    workspace: Path, options: Any, field: str
) -> None:
    raw = await Raw.stdio("--root", str(workspace))
    reply = await raw.request(1, "initialize", dict(INIT, initializationOptions=options))
    assert error_code(reply) == -32602
    assert field in reply["error"]["message"]
    await raw.initialize()  # still usable
    raw.close_input()
    assert await raw.exit_code() == 1


def test_stdio_from_and_to_regular_files(workspace: Path, tmp_path: Path) -> None:
    """``ploke-io-server < requests > responses``: files instead of pipes work too."""
    import subprocess

    f = write(workspace / "f.txt", "from a file")
    frames = b""
    for msg in (
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT},
        {"jsonrpc": "2.0", "id": 2, "method": methods.GET_SNIPPETS,
         "params": {"snippets": [{"filePath": str(f)}]}},
        {"jsonrpc": "2.0", "id": 3, "method": "shutdown"},
        {"jsonrpc": "2.0", "method": "exit"},
    ):  # fmt: skip
        body = json.dumps(msg).encode()
        frames += b"Content-Length: %d\r\n\r\n" % len(body) + body
    (tmp_path / "in").write_bytes(frames)
    with open(tmp_path / "in", "rb") as stdin, open(tmp_path / "out", "wb") as stdout:
        proc = subprocess.run(
            [*SERVER, "--root", str(workspace)], stdin=stdin, stdout=stdout, timeout=60
        )
    assert proc.returncode == 0
    out = (tmp_path / "out").read_bytes()
    bodies = [
        json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in out.split(b"Content-Length")[1:]
    ]
    by_id = {b["id"]: b for b in bodies}
    assert by_id[2]["result"]["results"][0]["text"] == "from a file"
    assert by_id[3]["result"] is None


def test_cli_rejects_a_missing_root(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [*SERVER, "--root", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "not an existing directory" in proc.stderr
    assert proc.stdout == ""


def test_python_dash_m_and_console_script_agree() -> None:
    import subprocess

    via_m = subprocess.run([*SERVER, "--version"], capture_output=True, text=True, timeout=60)
    script = os.path.join(os.path.dirname(sys.executable), "ploke-io-server")
    via_script = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert via_m.returncode == via_script.returncode == 0
    assert via_m.stdout == via_script.stdout and "ploke-io-server" in via_m.stdout
