"""PlokeClient's frame reader against a real process writing frames cut at every byte,
packed with a notification, malformed, or cut short by its exit; and the same parser behind
a client built on a plain stream."""

from __future__ import annotations

import asyncio
import sys

import pytest

from ploke_io_server.client import PlokeClient

SERVER = [sys.executable, "-m", "tests.helpers.frames_server"]


async def test_frames_cut_at_every_byte_or_packed_are_read_whole() -> None:
    client = await PlokeClient.spawn(command=SERVER)
    try:
        assert await client.request("split") == {"method": "split", "n": 2**40}
        assert await client.request("packed") == {"method": "packed", "n": 2**40}
        assert client.notifications.get_nowait() == ("note", {"x": "ééé"})
        # pipelined, answered in order
        results = await asyncio.gather(*(client.request(m) for m in ("a", "split", "b")))
        assert [r["method"] for r in results] == ["a", "split", "b"]
    finally:
        await client.close()


@pytest.mark.parametrize("method", ["garbage", "half"])
async def test_a_malformed_or_cut_answer_fails_what_is_pending_and_closes(method: str) -> None:
    client = await PlokeClient.spawn(command=SERVER)
    try:
        _id, pending = client.send_request("silent")
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(client.request(method), 10)
        with pytest.raises(ConnectionError):
            await pending
        await asyncio.wait_for(client.closed, 10)
        with pytest.raises(ConnectionError):
            await client.request("after the end")
    finally:
        if client.process is not None:
            client.process.kill()
            await client.process.wait()


class _Sent:
    """The write side of a client built on a plain stream: keeps what it is sent."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


async def test_a_client_on_a_plain_stream_reads_it_with_the_same_frame_parser() -> None:
    """PlokeClient(reader, writer) on any StreamReader: a task feeds the parser that
    spawn() and connect() feed as bytes arrive; frames cut anywhere, then EOF."""
    reader = asyncio.StreamReader()
    client = PlokeClient(reader, _Sent())
    msg_id, answer = client.send_request("m")
    _other, never = client.send_request("n")
    body = b'{"jsonrpc":"2.0","id":%d,"result":{"v":"\xc3\xa9"}}' % msg_id
    frame = b"Content-Length: %d\r\n\r\n" % len(body) + body
    for i in range(0, len(frame), 7):
        reader.feed_data(frame[i : i + 7])
        await asyncio.sleep(0)
    assert await asyncio.wait_for(answer, 10) == {"v": "é"}
    reader.feed_data(b"Content-Length: 9\r\n\r\n{")  # cut short by EOF
    reader.feed_eof()
    with pytest.raises(ConnectionError, match="server closed the connection"):
        await asyncio.wait_for(never, 10)
    await asyncio.wait_for(client.closed, 10)
