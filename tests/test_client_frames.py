"""PlokeClient's frame reader against a real process writing frames cut at every byte,
packed with a notification, malformed, or cut short by its exit."""

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
