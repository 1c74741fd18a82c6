"""One client connection: framing, the LSP lifecycle of the contract, dispatch.

``ploke/*`` requests are dispatched here (one task each, with their own ``$/cancelRequest``
registry); pygls handles the LSP lifecycle methods, ``$/progress`` and other notifications.
This module owns what pygls 2.1 leaves out or gets wrong for us:

* reading frames robustly: a bad header, a non-JSON body or an oversized message gets a
  JSON-RPC error and the connection keeps going;
* the lifecycle: -32002 before ``initialize``, -32600 after ``shutdown``, ``exit`` and EOF
  ending this connection (never ``sys.exit`` from inside a callback);
* the TCP token check and the session (roots, symlink policy, watch) set at ``initialize``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, SupportsIndex
from urllib.parse import unquote, urlparse

import attrs
import cattrs
import orjson
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException

from .. import fastjson
from ..config import ConfigError, SymlinkPolicy
from ..engine import IoManager
from ..engine.manager import Latency
from ..engine.watcher import FileEvent, merge_event
from ..errors import PlokeIoError
from ..methods import DID_CHANGE_FILES, WRITE_SNIPPETS
from ..paths import PathPolicy
from ..types import EditResult
from .framing import FrameWriter, Sink
from .handlers import Handler, register_handlers
from .models import (
    STRUCTURE_PARAMS,
    EscapeMemo,
    ParamsError,
    WriteSnippetsParams,
    WriteSnippetsResult,
    batch_size,
    parse_init_options,
)
from .protocol import PlokeLanguageServer

__all__ = ["Connection", "FrameStreamReader", "Session"]

log = logging.getLogger(__name__)
TRACE = logging.getLogger("ploke_io_server.trace")
"""Request spans; enabled at INFO by ``--trace``."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
INVALID_PARAMS = -32602
SERVER_NOT_INITIALIZED = -32002
REQUEST_CANCELLED = -32800

MAX_INFLIGHT = 256
"""Requests one connection may have running at once; beyond, it is not read further."""
PREAUTH_MAX_MESSAGE = 1024 * 1024
"""Largest message a TCP client may send before it has authenticated."""
HEADER_LINE_MAX = 1024 * 1024
"""Longest header line read; a longer one is skipped and reported (-32700)."""
READ_CHUNK = 256 * 1024
"""Most bytes taken from the stream per read into the connection's buffer."""

# How strict each policy is: a client may pick one at least as strict as an operator's choice.
_STRICTNESS = {
    SymlinkPolicy.FOLLOW_WITHIN_ROOTS: 0,
    SymlinkPolicy.DENY_CROSS_ROOT: 1,
    SymlinkPolicy.DENY: 2,
}


class State(enum.Enum):
    NEW = "new"
    READY = "ready"
    SHUTDOWN = "shutdown"


@attrs.define
class Session:
    """What one client chose at ``initialize``."""

    policy: PathPolicy
    watch: bool = False


class _FrameError(Exception):
    """A frame that cannot be read as a message; the connection goes on."""

    def __init__(self, message: str, code: int = PARSE_ERROR) -> None:
        super().__init__(message)
        self.code = code


class FrameStreamReader(asyncio.StreamReader):
    """A StreamReader that first offers what arrives to its connection
    (:meth:`Connection._frame_on_arrival`), which may serve it at once."""

    on_arrival: Callable[[bytes], bool] | None = None

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        hook = self.on_arrival
        if hook is not None and isinstance(data, bytes) and hook(data):
            return
        super().feed_data(data)


class Connection:
    """Serve one client until ``exit``, EOF or a broken transport; returns the exit code."""

    def __init__(
        self,
        engine: IoManager,
        reader: asyncio.StreamReader,
        sink: Sink,
        *,
        auth_token: str | None = None,
        name: str = "stdio",
        escape_memo: EscapeMemo | None = None,
    ) -> None:
        self.engine = engine
        self.config = engine.config
        self.reader = reader
        self.name = name
        self.auth_token = auth_token
        self.state = State.NEW
        self.session = Session(policy=engine.policy, watch=engine.config.watch)
        self.inflight: set[asyncio.Task[Any]] = set()
        self.server = PlokeLanguageServer()
        self.protocol = self.server.protocol
        self.writer = FrameWriter(sink)
        self.protocol.frame_writer = self.writer
        self.protocol.escape_memo = escape_memo or EscapeMemo(engine.config.json_cache_bytes)
        self.protocol.set_writer(self.writer, include_headers=False)
        self._closing = False
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._auth_deadline = asyncio.get_running_loop().time() + self.config.auth_timeout_s
        self.handlers = register_handlers(self.server, self)
        self._outbox: dict[str, FileEvent] = {}
        self._outbox_task: asyncio.Task[None] | None = None
        self.requests: dict[int | str, asyncio.Task[None]] = {}
        """``ploke/*`` requests running, by id (for ``$/cancelRequest``)."""
        self._buf = bytearray()
        """Bytes read from the client and not yet cut into frames."""
        self._eof = False
        self._at_boundary = False
        """The read loop waits for the first byte of a frame, its buffer empty."""
        if isinstance(reader, FrameStreamReader):
            reader.on_arrival = self._frame_on_arrival

    def _preauth(self) -> bool:
        return self.auth_token is not None and self.state is State.NEW

    def stop(self) -> None:
        """End the connection as if the client closed it (SIGTERM, server stop)."""
        self._closing = True
        if not self._stopped.done():
            self._stopped.set_result(None)

    async def _next_frame(self) -> bytes | None:
        """The next frame, or None at EOF.

        A TCP client that has not authenticated within ``--auth-timeout`` is disconnected.
        """
        if not self._preauth():
            return await self._read_frame()
        timeout = self._auth_deadline - asyncio.get_running_loop().time()
        if timeout <= 0:  # even a client that never stops sending
            raise TimeoutError
        return await asyncio.wait_for(self._read_frame(), timeout)

    # -- main loop -------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until ``exit``, EOF or :meth:`stop`; then let in-flight requests finish.

        Returns the exit code: 0 after ``shutdown``, 1 otherwise (``exit`` decides the same).
        """
        exit_code: int | None = None
        reading = asyncio.get_running_loop().create_task(self._read_loop())
        try:
            await asyncio.wait((reading, self._stopped), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                exit_code = await reading
        finally:
            await self._drain_inflight()
            if self.engine.watcher is not None:
                with contextlib.suppress(ValueError):
                    self.engine.watcher.subscribers.remove(self._on_file_events)
                with contextlib.suppress(ValueError):
                    self.engine.watcher.problem_listeners.remove(self._on_watcher_problem)
            await self.writer.aclose()
        if exit_code is None:
            exit_code = 0 if self.state is State.SHUTDOWN else 1
        return exit_code

    async def _read_loop(self) -> int | None:
        """Read and dispatch frames; an exit code when ``exit`` came, None at EOF."""
        try:
            while not self._closing:
                # Back-pressure: stop reading while the client leaves its answers unread or
                # keeps too many requests running.
                await self.writer.wait_drained()
                while len(self.inflight) >= MAX_INFLIGHT:
                    await asyncio.wait(set(self.inflight), return_when=asyncio.FIRST_COMPLETED)
                try:
                    body = await self._next_frame()
                except _FrameError as exc:
                    self.send_error(None, exc.code, str(exc))
                    continue
                except TimeoutError:
                    log.warning("%s: no successful initialize in time; closing", self.name)
                    return None
                if body is None:  # EOF
                    return None
                try:
                    exit_code = self._handle_body(body)
                except Exception:  # a bug of ours must not take the connection down
                    log.exception("%s: error while handling a message", self.name)
                    continue
                finally:
                    # Not kept while the request runs and the next frame is awaited: the body
                    # of a large batch is megabytes (peak RSS of a 10,000-snippet read).
                    del body
                if exit_code is not None:
                    return exit_code
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("%s: connection lost: %s", self.name, exc)
        return None

    async def _drain_inflight(self) -> None:
        if self.inflight:
            await asyncio.gather(*self.inflight, return_exceptions=True)

    async def _more(self, boundary: bool = False) -> bool:
        """Append the client's next bytes to the buffer; False at EOF. ``boundary``: the
        buffer is empty between two frames, so the next frame may be served on arrival
        (:meth:`_frame_on_arrival`)."""
        if self._eof:
            return False
        self._at_boundary = boundary
        try:
            chunk = await self.reader.read(READ_CHUNK)
        finally:
            self._at_boundary = False
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def _header_line(self, first: bool = False) -> bytes | None:
        """The next header line, newline included; None at EOF. A line longer than
        HEADER_LINE_MAX is discarded whole and returned as b"" (reported by the caller).
        ``first``: no line of this frame was read yet."""
        buf = self._buf
        searched = 0
        while True:
            end = buf.find(b"\n", searched)
            if end >= 0:
                line = bytes(buf[: end + 1]) if end < HEADER_LINE_MAX else b""
                del buf[: end + 1]
                return line
            searched = len(buf)
            if searched > HEADER_LINE_MAX:
                while True:  # skip to the end of the line, a chunk at a time
                    del buf[:]
                    if not await self._more():
                        return None
                    end = buf.find(b"\n")
                    if end >= 0:
                        del buf[: end + 1]
                        return b""
            if not await self._more(boundary=first and not buf):
                if buf.strip():
                    log.info("%s: EOF inside a header", self.name)
                del buf[:]
                return None

    async def _read_frame(self) -> bytes | None:
        """The next message body, or None at EOF.

        Frames are cut from the connection's own buffer, one ``read`` per chunk of the
        stream, not one await per header line and per body: a client that sends one small
        request at a time costs one wake-up each (see docs/performance.md).
        """
        length: int | None = None
        problem: str | None = None
        seen_header = False
        while True:
            line = await self._header_line(first=not seen_header)
            if line is None:
                return None
            if not line:
                problem = "malformed header: line too long"
                seen_header = True
                continue
            if line in (b"\r\n", b"\n"):
                if not seen_header:
                    continue  # stray blank line between messages
                break
            seen_header = True
            name, sep, value = line.partition(b":")
            if not sep:
                problem = problem or f"malformed header line {line[:80]!r}"
                continue
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                    if length < 0:
                        raise ValueError
                except ValueError:
                    problem = problem or f"invalid Content-Length {value.strip()[:40]!r}"
                    length = None
        if problem is None and length is None:
            problem = "missing Content-Length header"
        if problem is not None:
            if length is not None:
                await self._discard(length)
            raise _FrameError(problem)
        assert length is not None
        limit = self.config.max_message_bytes
        if self._preauth():
            limit = min(limit, PREAUTH_MAX_MESSAGE)
        if length > limit:
            await self._discard(length)
            raise _FrameError(
                f"message of {length} bytes exceeds the limit of {limit} bytes"
                + (" before authentication" if self._preauth() else " (--max-message-bytes)"),
                INVALID_REQUEST,
            )
        buf = self._buf
        if len(buf) >= length:
            body = bytes(buf[:length])
            del buf[:length]
            return body
        have = bytes(buf)
        del buf[:]
        if self._eof:
            raise asyncio.IncompleteReadError(have, length)
        return have + await self.reader.readexactly(length - len(have))

    async def _discard(self, length: int) -> None:
        buf = self._buf
        taken = min(length, len(buf))
        del buf[:taken]
        length -= taken
        while length > 0:
            chunk = await self.reader.read(min(length, 1 << 20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(chunk)

    def _frame_on_arrival(self, data: bytes) -> bool:
        """Serve ``data`` as it arrives, without waking the read loop, when it is exactly
        one plain frame (``Content-Length`` only) and the read loop waits between frames
        with nothing held back. False: ``data`` goes to the read loop as usual.

        This is the path of a client that sends one request at a time: its request is
        handled in the same turn of the event loop that read it (a lone small write is then
        answered before the turn ends: see :meth:`_write_now`).
        """
        message = self._plain_frame(data) if self._at_boundary else None
        if message is None:
            self._at_boundary = False  # the read loop has bytes to read now
            return False
        try:
            self._handle_message(message)
        except Exception:  # a bug of ours must not take the connection down
            log.exception("%s: error while handling a message", self.name)
        return True

    def _plain_frame(self, data: bytes) -> dict[str, Any] | None:
        """The message of ``data`` if it may be served on arrival: exactly one frame with only
        a ``Content-Length`` header, a JSON object that is not ``exit``, from a client that
        the read loop would read now (authenticated, responses drained, under MAX_INFLIGHT).
        None for anything else, which the read loop reads, checks and reports."""
        if (
            self._closing
            or self._preauth()
            or not self.writer.drained
            or len(self.inflight) >= MAX_INFLIGHT
            or not data.startswith(b"Content-Length:")
        ):
            return None
        end = data.find(b"\r\n\r\n")
        try:
            length = int(data[15:end]) if end > 0 else -1
        except ValueError:
            return None
        if length != len(data) - end - 4 or length > self.config.max_message_bytes:
            return None
        try:
            message = fastjson.loads(data[end + 4 :])
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("method") == lsp.EXIT:
            return None
        return message

    # -- one message -----------------------------------------------------------------------------

    def _handle_body(self, body: bytes) -> int | None:
        """Handle one message; returns an exit code when the connection must end."""
        try:
            data = fastjson.loads(body)
        except ValueError as exc:
            self.send_error(None, PARSE_ERROR, f"parse error: {exc}")
            return None
        return self._handle_message(data)

    def _handle_message(self, data: Any) -> int | None:
        """Handle one parsed message; returns an exit code when the connection must end."""
        if not isinstance(data, dict):
            self.send_error(
                None, INVALID_REQUEST, "expected a JSON object (batches are not supported)"
            )
            return None
        msg_id = data.get("id")
        has_id = "id" in data
        if has_id and (not isinstance(msg_id, int | str) or isinstance(msg_id, bool)):
            if "method" in data:  # a request whose id cannot be echoed back
                self.send_error(None, INVALID_REQUEST, "id must be an integer or a string")
            return None  # else a response with an unusable id: nothing to match it to
        method = data.get("method")
        if data.get("jsonrpc") != "2.0":
            self.send_error(msg_id if has_id else None, INVALID_REQUEST, 'jsonrpc must be "2.0"')
            return None
        if method is None:
            if has_id and ("result" in data or "error" in data):
                self._pass_to_pygls(data, None)  # a response to a request of ours
            else:
                self.send_error(msg_id if has_id else None, INVALID_REQUEST, "missing method")
            return None
        if not isinstance(method, str):
            self.send_error(msg_id if has_id else None, INVALID_REQUEST, "method must be a string")
            return None
        if method == lsp.EXIT:
            return 0 if self.state is State.SHUTDOWN else 1
        if self.state is State.NEW:
            if method == lsp.INITIALIZE and has_id:
                self._initialize(data, msg_id)
            elif has_id:
                self.send_error(msg_id, SERVER_NOT_INITIALIZED, "server not initialized")
            return None
        if self.state is State.SHUTDOWN:
            if has_id:
                self.send_error(msg_id, INVALID_REQUEST, "server is shutting down")
            return None
        if method == lsp.INITIALIZE:
            if has_id:
                self.send_error(msg_id, INVALID_REQUEST, "already initialized")
            return None
        if method == lsp.SHUTDOWN and has_id:
            self.state = State.SHUTDOWN
        handler = self.handlers.get(method)
        if handler is not None:
            if has_id:
                assert msg_id is not None
                self._start(method, msg_id, handler, data.get("params"))
            else:
                log.warning("%s: ignoring %s sent as a notification", self.name, method)
            return None
        if method == lsp.CANCEL_REQUEST and not has_id and self._cancel(data.get("params")):
            return None
        self._pass_to_pygls(data, msg_id if has_id else None)
        return None

    # -- ploke/* requests ------------------------------------------------------------------------

    def _start(self, method: str, msg_id: int | str, handler: Handler, raw: Any) -> None:
        """Structure the params and run the handler in a task of its own."""
        try:
            params = self._ploke_params(method, raw)
        except ParamsError as exc:
            self.send_error(msg_id, INVALID_PARAMS, f"invalid params: {exc}")
            return
        self.engine.counters.requests[method] += 1
        started = time.perf_counter()
        if (
            method == WRITE_SNIPPETS
            and self.engine.in_flight == 0
            and params.work_done_token is None
            and self._write_now(msg_id, params, started)
        ):
            return
        self.engine.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._serve(msg_id, handler, params, method, started)
        )
        self.requests[msg_id] = task
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    def _write_now(self, msg_id: int | str, params: WriteSnippetsParams, started: float) -> bool:
        """Serve a lone small write right here, in the read loop, when nothing else is
        running anywhere in the server: no task, no turn of the loop between the request and
        its answer, and the answer sent as soon as the change is durable, before the
        engine's bookkeeping (docs/performance.md). False when it does not apply: nothing
        was done, and the request takes the general path."""
        engine = self.engine
        answered = 0.0  # when the answer was sent

        def reply(results: list[EditResult | PlokeIoError]) -> None:
            nonlocal answered
            self.protocol.send_result(msg_id, WriteSnippetsResult(results))
            answered = time.perf_counter()

        engine.in_flight += 1
        try:
            if not engine.write_now(
                params.edits,
                reply,
                origin=params.origin,
                dry_run=params.dry_run,
                policy=self.session.policy,
            ):
                return False
        except Exception as exc:
            log.exception("%s: request %r failed", self.name, msg_id)
            if not answered:
                self.send_error(
                    msg_id, INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"
                )
        finally:
            engine.in_flight -= 1
        self._record(WRITE_SNIPPETS, started, answered)
        return True

    def _record(self, method: str, started: float, ended: float = 0.0) -> float:
        """Add a request's duration (until ``ended``, or now) to its method's latency;
        returns it in ms."""
        ms = ((ended or time.perf_counter()) - started) * 1000
        latency = self.engine.counters.latency.get(method)
        if latency is None:
            latency = self.engine.counters.latency[method] = Latency()
        latency.add(ms)
        return ms

    async def _serve(
        self, msg_id: int | str, handler: Handler, params: Any, method: str, started: float
    ) -> None:
        outcome = "ok"
        kinds: dict[str, int] = {}
        try:
            result = await handler(params)
        except asyncio.CancelledError:
            outcome = "cancelled"
            self.send_error(msg_id, REQUEST_CANCELLED, f'Request with id "{msg_id}" is canceled')
        except JsonRpcException as exc:
            outcome = f"error {exc.code}"
            self.send_error(msg_id, exc.code, exc.message or "request failed")
        except Exception as exc:
            outcome = "internal error"
            log.exception("%s: request %r failed", self.name, msg_id)
            self.send_error(msg_id, INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
        else:
            if TRACE.isEnabledFor(logging.INFO):  # before sending: encoding releases the items
                kinds = _error_kinds(result)
            self.protocol.send_result(msg_id, result)
        finally:
            self.engine.in_flight -= 1
            if self.requests.get(msg_id) is asyncio.current_task():
                del self.requests[msg_id]
            ms = self._record(method, started)
            if TRACE.isEnabledFor(logging.INFO):
                self._trace(method, msg_id, params, kinds, outcome, ms)

    def _trace(
        self,
        method: str,
        msg_id: Any,
        params: Any,
        kinds: dict[str, int],
        outcome: str,
        ms: float,
    ) -> None:
        """One span per request (``--trace``): method, items, item errors by kind, duration."""
        fields: dict[str, Any] = {
            "span": method,
            "connection": self.name,
            "id": msg_id,
            "ms": round(ms, 3),
            "outcome": outcome,
        }
        batch = batch_size(params)
        if batch is not None:
            fields["items"] = batch[1]
        if kinds:
            fields["itemErrors"] = kinds
        TRACE.info("%s %s %.1f ms", method, outcome, ms, extra={"fields": fields})

    def _cancel(self, params: Any) -> bool:
        """``$/cancelRequest`` for a running ``ploke/*`` request: True if it was one."""
        target = params.get("id") if isinstance(params, dict) else None
        if not isinstance(target, int | str) or isinstance(target, bool):
            return False
        task = self.requests.get(target)
        if task is None:
            return False
        task.cancel()
        return True

    def _ploke_params(self, method: str, raw: Any) -> Any:
        params = STRUCTURE_PARAMS[method](raw)
        batch = batch_size(params)
        if batch is not None and batch[1] > self.config.max_batch_items:
            raise ParamsError(
                batch[0],
                f"batch of {batch[1]} items exceeds the limit of "
                f"{self.config.max_batch_items} (--max-batch-items); split the request",
            )
        return params

    def _pass_to_pygls(self, data: dict[str, Any], msg_id: Any) -> None:
        """Structure a message with its typed model and let pygls dispatch it."""
        method = data.get("method")
        try:
            if method is None:  # a response to a request of ours
                message: Any = self.protocol.structure_message(data)
            else:
                message = self._structure(data, method, msg_id)
                if message is None:
                    return
        except ParamsError as exc:
            if msg_id is None:  # a notification: never answered, whatever is wrong with it
                log.warning("%s: dropping notification %s: %s", self.name, method, exc)
                return
            self.send_error(msg_id, INVALID_PARAMS, f"invalid params: {exc}")
            return
        except JsonRpcException as exc:
            self.send_error(msg_id, exc.code, exc.message or "invalid message")
            return
        self._dispatch(message, msg_id)

    def _dispatch(self, message: Any, msg_id: Any) -> None:
        """Hand a typed message to pygls; whatever goes wrong in there, this client stays."""
        try:
            self.protocol.handle_message(message)
        except Exception:
            log.exception("%s: error while dispatching %s", self.name, type(message).__name__)
            if msg_id is not None:
                self.send_error(msg_id, INTERNAL_ERROR, "internal error while dispatching")

    def _structure(self, data: dict[str, Any], method: str, msg_id: Any) -> Any:
        message_type = self.protocol.get_message_type(method)
        if message_type is None:
            if msg_id is not None:
                self.send_error(msg_id, METHOD_NOT_FOUND, f"method not found: {method}")
            return None
        if msg_id is not None and "id" not in attrs.fields_dict(message_type):
            self.send_error(msg_id, METHOD_NOT_FOUND, f"{method} is a notification, not a request")
            return None
        try:
            return self.protocol.ploke_converter.structure(data, message_type)
        except Exception as exc:
            if isinstance(exc, cattrs.ClassValidationError):
                detail = "; ".join(cattrs.transform_error(exc, path="$")).replace("$.", "")
            else:
                detail = str(exc)
            # Name fields as they are on the wire (camelCase), not as Python attributes.
            detail = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), detail)
            raise ParamsError(method, detail) from None

    # -- initialize ------------------------------------------------------------------------------

    def _initialize(self, data: dict[str, Any], msg_id: Any) -> None:
        params = data.get("params")
        raw_opts = params.get("initializationOptions") if isinstance(params, dict) else None
        if self.auth_token is not None:
            given = raw_opts.get("authToken") if isinstance(raw_opts, dict) else None
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode(), self.auth_token.encode()
            ):
                log.warning("%s: initialize with a wrong or missing auth token", self.name)
                self.send_error(
                    msg_id, INVALID_REQUEST, "authentication failed: wrong or missing authToken"
                )
                self._closing = True
                return
        try:
            opts = parse_init_options(raw_opts)
            message = self._structure(data, lsp.INITIALIZE, msg_id)
            session, warnings = self._session_for(message.params, opts)
        except ParamsError as exc:
            self.send_error(msg_id, INVALID_PARAMS, f"invalid params: {exc}")
            return
        self.session = session
        self.state = State.READY
        self.engine.clean_roots(session.policy.root_paths())
        for text in warnings:
            log.warning("%s: %s", self.name, text)
            self.server.window_log_message(
                lsp.LogMessageParams(type=lsp.MessageType.Warning, message=text)
            )
        if not session.watch:
            self._dispatch(message, msg_id)
            return
        # Answer initialize once the watcher watches this session's roots: every change the
        # client makes after the answer is then reported.
        task = asyncio.get_running_loop().create_task(self._start_watching(message, msg_id))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _start_watching(self, message: Any, msg_id: Any) -> None:
        try:
            watcher = await self.engine.start_watcher(self.session.policy.root_paths())
        except Exception as exc:
            log.exception("%s: cannot start the watcher", self.name)
            self.session.watch = False
            self.server.window_log_message(
                lsp.LogMessageParams(
                    type=lsp.MessageType.Error, message=f"the watcher could not start: {exc}"
                )
            )
        else:
            for text in watcher.errors:
                self.server.window_log_message(
                    lsp.LogMessageParams(type=lsp.MessageType.Error, message=text)
                )
            watcher.subscribers.append(self._on_file_events)
            watcher.problem_listeners.append(self._on_watcher_problem)
        self._dispatch(message, msg_id)

    def _on_watcher_problem(self, level: int, text: str) -> None:
        """Trouble the watcher ran into after this session started watching (overflow, the
        watch limit, a thread restarted): the client hears of it, not only the log."""
        if self._closing or self.state is not State.READY:
            return
        self.server.window_log_message(
            lsp.LogMessageParams(type=lsp.MessageType(level), message=f"watcher: {text}")
        )

    # -- ploke/didChangeFiles ------------------------------------------------------------------

    def _on_file_events(self, events: list[FileEvent]) -> None:
        """Queue this session's share of a watcher flush; sent as the client can take it.

        A client that reads slowly does not make the server buffer without bound: pending
        events are merged per path (at most one per file) until the client catches up.
        """
        if self._closing or self.state is not State.READY:
            return
        match = self.session.policy.match
        for event in events:
            inside = match(event.file_path) is not None
            old_path = event.old_path
            if event.kind == "renamed" and old_path is not None:
                came_from_inside = match(old_path) is not None
                if inside and not came_from_inside:  # moved in from another root: new here
                    event = FileEvent(
                        event.file_path, "created", None, event.file_hash, event.origin
                    )
                elif came_from_inside and not inside:  # moved out of this session's roots
                    event = FileEvent(old_path, "removed")
                    inside = True
            if inside:
                merge_event(self._outbox, event)
        if self._outbox and self._outbox_task is None:
            self._outbox_task = asyncio.get_running_loop().create_task(self._send_events())

    async def _send_events(self) -> None:
        try:
            while self._outbox and not self._closing:
                await self.writer.wait_drained()
                batch = [e.to_json() for e in self._outbox.values()]
                self._outbox.clear()
                for body in _event_notifications(batch):
                    self.writer.write(body)
                    self.engine.counters.notifications += 1
        except (ConnectionError, RuntimeError):
            self._outbox.clear()
        finally:
            self._outbox_task = None

    def _session_for(self, params: lsp.InitializeParams, opts: Any) -> tuple[Session, list[str]]:
        warnings: list[str] = []
        base = self.engine.policy
        policy = base
        if opts.symlink_policy is not None:
            try:
                wanted = SymlinkPolicy.parse(opts.symlink_policy)
            except ConfigError as exc:
                raise ParamsError("initializationOptions.symlinkPolicy", str(exc)) from None
            if (
                self.config.symlink_policy_from_cli
                and _STRICTNESS[wanted] < _STRICTNESS[base.symlink_policy]
            ):
                warnings.append(
                    f"symlinkPolicy {wanted.value!r} is looser than the server's "
                    f"{base.symlink_policy.value!r}; keeping {base.symlink_policy.value!r}"
                )
            else:
                policy = attrs.evolve(policy, symlink_policy=wanted)
        client_roots = _client_roots(params)
        if client_roots:
            if self.config.roots_from_cli:
                policy, rejected = policy.narrow(client_roots)
                for r in rejected:
                    warnings.append(f"ignoring workspace root {r!r}: not inside the server's roots")
            else:
                usable = [r for r in client_roots if os.path.isdir(r)]
                for r in client_roots:
                    if r not in usable:
                        warnings.append(f"ignoring workspace root {r!r}: not a directory")
                if usable:
                    policy = PathPolicy.of(usable, policy.symlink_policy)
        watch = self.config.watch or bool(opts.watch)
        return Session(policy=policy, watch=watch), warnings

    # -- sending ---------------------------------------------------------------------------------

    def send_error(self, msg_id: Any, code: int, message: str, data: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        payload = {"jsonrpc": "2.0", "id": msg_id, "error": error}
        self.writer.write(json.dumps(payload).encode())


def _event_notifications(events: list[dict[str, Any]]) -> list[bytes]:
    """``ploke/didChangeFiles`` bodies for one flush: one, or two when a path is not UTF-8.

    Such a path holds lone surrogates (``os.fsdecode``), sent as ``\\udcXX`` escapes: valid
    JSON that Python and JavaScript decode, but that stricter decoders refuse (Neovim's
    ``vim.json.decode``). Those events go in a notification of their own, after the others,
    so a client that cannot decode it loses only them.
    """
    note: dict[str, Any] = {"jsonrpc": "2.0", "method": DID_CHANGE_FILES}
    try:
        return [orjson.dumps({**note, "params": {"events": events}})]
    except TypeError:  # orjson refuses lone surrogates
        pass
    clean: list[dict[str, Any]] = []
    odd: list[dict[str, Any]] = []
    for event in events:
        try:
            orjson.dumps(event)
        except TypeError:
            odd.append(event)
        else:
            clean.append(event)
    bodies = [fastjson.dumps({**note, "params": {"events": part}}) for part in (clean, odd)]
    return bodies if clean else bodies[1:]


def _error_kinds(result: Any) -> dict[str, int]:
    """Item errors of a batch result, by kind."""
    kinds: dict[str, int] = {}
    items = getattr(result, "results", None)
    if isinstance(items, list):
        for r in items:
            kind = getattr(getattr(r, "kind", None), "name", None)
            if kind is not None:
                kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _uri_to_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return unquote(parsed.path) or None


def _client_roots(params: lsp.InitializeParams) -> list[str]:
    roots: list[str] = []
    for folder in params.workspace_folders or []:
        path = _uri_to_path(folder.uri)
        if path:
            roots.append(path)
    if not roots and params.root_uri:
        path = _uri_to_path(params.root_uri)
        if path:
            roots.append(path)
    if not roots and params.root_path:
        roots.append(params.root_path)
    return roots
