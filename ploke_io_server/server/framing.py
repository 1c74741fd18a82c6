"""Outgoing frames: an ordered, flow-controlled writer over a pipe or a socket.

Messages are queued in the order they are sent and written by one task per connection that
waits for the transport to drain between chunks. A large response is written as a list of
chunks, so it is never copied whole into the transport's buffer, and a client that reads
slowly holds the server back instead of making it buffer without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import stat
from typing import Protocol

__all__ = ["QUEUE_HIGH_WATER", "FileSink", "FrameWriter", "PipeSink", "Sink", "SocketSink"]

log = logging.getLogger(__name__)

_SMALL = 64 * 1024
QUEUE_HIGH_WATER = 32 * 1024 * 1024


class Sink(Protocol):
    """What FrameWriter writes to."""

    def write(self, data: bytes) -> None: ...

    def writable_now(self) -> bool:
        """True if a small write now would not have to wait (the transport is not paused)."""
        ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class _PipeProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)


class PipeSink:
    """The write end of a pipe (stdout), with flow control."""

    def __init__(self, transport: asyncio.WriteTransport, protocol: _PipeProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def open(cls, fd: int) -> PipeSink:
        """Flow-controlled writes to a pipe, socket or terminal (ValueError for other files)."""
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError("not a pipe, socket or character device")
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(fd, "wb", buffering=0)
        transport, protocol = await loop.connect_write_pipe(_PipeProtocol, pipe)
        return cls(transport, protocol)

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise ConnectionResetError("pipe closed")
        self._transport.write(data)

    def writable_now(self) -> bool:
        return self._protocol.writable.is_set() and not self._transport.is_closing()

    async def drain(self) -> None:
        await self._protocol.writable.wait()
        if self._protocol.closed.done():
            raise ConnectionResetError("pipe closed")

    def close(self) -> None:
        self._transport.close()

    async def wait_closed(self) -> None:
        await self._protocol.closed


class FileSink:
    """Blocking writes to a descriptor that is not a pipe or socket (stdout to a file)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def writable_now(self) -> bool:
        return True

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    async def wait_closed(self) -> None:
        return None


class SocketSink:
    """A TCP connection (asyncio.StreamWriter), with flow control."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("connection closed")
        self._writer.write(data)

    def writable_now(self) -> bool:
        transport = self._writer.transport
        return not transport.is_closing() and transport.get_write_buffer_size() == 0

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()


class FrameWriter:
    """Frames message bodies (``Content-Length``) and writes them in order."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._queue: collections.deque[list[bytes]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self.closed = False
        self.queued_bytes = 0
        """Bytes queued and not yet handed to the transport."""
        self._busy = False  # the pump is in the middle of a message
        self._drained = asyncio.Event()
        self._drained.set()

    def write(self, body: bytes) -> None:
        """One whole body (the pygls writer interface, without headers)."""
        self.send([body])

    def send(self, chunks: list[bytes]) -> None:
        """Queue one message whose body is the concatenation of ``chunks``."""
        if self.closed or self._closing:
            return
        total = sum(map(len, chunks))
        header = b"Content-Length: %d\r\n\r\n" % total
        if total <= _SMALL and not self._busy and not self._queue and self._sink.writable_now():
            # Fast path: nothing queued and the transport is not paused: write it now.
            try:
                self._sink.write(header + b"".join(chunks))
            except (ConnectionError, OSError, RuntimeError) as exc:
                log.info("client went away while writing: %s", exc)
                self.closed = True
            return
        self.queued_bytes += total + len(header)
        if self.queued_bytes > QUEUE_HIGH_WATER:
            self._drained.clear()
        if total <= _SMALL:
            self._queue.append([header + b"".join(chunks)])
        else:
            self._queue.append([header, *chunks])
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())
        self._wakeup.set()

    async def _pump(self) -> None:
        try:
            while True:
                while self._queue:
                    message = self._queue.popleft()
                    self._busy = True
                    for chunk in message:
                        self._sink.write(chunk)
                        await self._sink.drain()
                        self._account(len(chunk))
                    self._busy = False
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        except (ConnectionError, OSError, RuntimeError) as exc:
            log.info("client went away while writing: %s", exc)
            self.closed = True
            self._queue.clear()
            self.queued_bytes = 0
            self._drained.set()

    def _account(self, written: int) -> None:
        self.queued_bytes -= written
        if self.queued_bytes <= QUEUE_HIGH_WATER:
            self._drained.set()

    @property
    def drained(self) -> bool:
        """No more than QUEUE_HIGH_WATER bytes of responses wait for the client."""
        return self._drained.is_set()

    async def wait_drained(self) -> None:
        """Wait while more than QUEUE_HIGH_WATER bytes of responses wait for the client.

        The connection calls this before reading the next request: a client that does not
        read its responses stops being read, instead of making the server buffer them all.
        """
        await self._drained.wait()

    def close(self) -> None:
        """The pygls writer interface: flush and close in the background."""
        if not self._closing:
            self._close_task = asyncio.get_running_loop().create_task(self.aclose())

    async def aclose(self) -> None:
        """Write what is queued, then close the sink."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self.closed = True
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self._sink.close()
            await asyncio.wait_for(self._sink.wait_closed(), timeout=30)
