"""One short handler per ``ploke/*`` method: typed params in, engine call, typed result out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from lsprotocol import types as lsp

from .. import __version__, methods
from ..types import ProgressFn
from .models import (
    CreateFilesParams,
    CreateFilesResult,
    GetSnippetsParams,
    GetSnippetsResult,
    HashFilesParams,
    HashFilesResult,
    StatusParams,
    StatusResult,
    WatcherStatus,
    WriteSnippetsParams,
    WriteSnippetsResult,
)

if TYPE_CHECKING:
    from .connection import Connection
    from .protocol import PlokeLanguageServer

__all__ = ["register_handlers"]

_P = TypeVar("_P")
_R = TypeVar("_R")


def register_handlers(ls: PlokeLanguageServer, conn: Connection) -> None:
    """Register every ``ploke/*`` method of one connection."""
    engine = conn.engine

    def handler(
        method: str,
    ) -> Callable[[Callable[[_P], Awaitable[_R]]], Callable[[_P], Awaitable[_R]]]:
        """Register ``method``; count each request and keep its task in ``conn.inflight``.

        The task starts before the connection reads its next frame (asyncio runs ready
        callbacks in order), and leaves the set in a done-callback registered after pygls's
        own, so by the time it is gone its response has been written: exit/EOF wait for it.
        """

        def register(fn: Callable[[_P], Awaitable[_R]]) -> Callable[[_P], Awaitable[_R]]:
            @functools.wraps(fn)
            async def wrapper(params: _P) -> _R:
                task = asyncio.current_task()
                assert task is not None
                conn.inflight.add(task)
                task.add_done_callback(conn.inflight.discard)
                engine.counters.requests[method] += 1
                return await fn(params)

            ls.feature(method)(wrapper)
            return wrapper

        return register

    @handler(methods.GET_SNIPPETS)
    async def get_snippets(params: GetSnippetsParams) -> GetSnippetsResult:
        with _progress(ls, params.work_done_token, "Reading snippets") as report:
            results = await engine.get_snippets(
                params.snippets, policy=conn.session.policy, progress=report
            )
        return GetSnippetsResult(results)

    @handler(methods.HASH_FILES)
    async def hash_files(params: HashFilesParams) -> HashFilesResult:
        with _progress(ls, params.work_done_token, "Hashing files") as report:
            results = await engine.hash_files(
                params.paths, policy=conn.session.policy, progress=report
            )
        return HashFilesResult(results)

    @handler(methods.WRITE_SNIPPETS)
    async def write_snippets(params: WriteSnippetsParams) -> WriteSnippetsResult:
        with _progress(ls, params.work_done_token, "Writing files") as report:
            results = await engine.write_snippets(
                params.edits,
                origin=params.origin,
                atomic=params.atomic,
                dry_run=params.dry_run,
                policy=conn.session.policy,
                progress=report,
            )
        return WriteSnippetsResult(results)

    @handler(methods.CREATE_FILES)
    async def create_files(params: CreateFilesParams) -> CreateFilesResult:
        with _progress(ls, params.work_done_token, "Creating files") as report:
            results = await engine.create_files(
                params.files, origin=params.origin, policy=conn.session.policy, progress=report
            )
        return CreateFilesResult(results)

    @handler(methods.STATUS)
    async def status(params: StatusParams) -> StatusResult:
        s = engine.status(conn.session.policy)
        memo = conn.protocol.escape_memo
        s["counters"]["jsonCache"] = {
            "hits": memo.hits,
            "misses": memo.misses,
            "bytes": memo.size,
            "budget": memo.budget,
        }
        return StatusResult(
            version=__version__,
            roots=s["roots"],
            symlink_policy=s["symlinkPolicy"],
            fd_limit=s["fdLimit"],
            max_file_bytes=s["maxFileBytes"],
            watcher=WatcherStatus(enabled=False, debounce_ms=engine.config.debounce_ms),
            counters=s["counters"],
        )

    @handler(lsp.SHUTDOWN)
    async def shutdown(params: Any) -> None:
        # Requests of this connection still running (writes above all) finish first.
        me = asyncio.current_task()
        others = [t for t in conn.inflight if t is not me]
        if others:
            await asyncio.gather(*others, return_exceptions=True)


@contextlib.contextmanager
def _progress(
    ls: PlokeLanguageServer, token: int | str | None, title: str
) -> Iterator[ProgressFn | None]:
    """$/progress begin/report/end around a batch when the client gave a workDoneToken.

    ``window/workDoneProgress/cancel`` for the token cancels the request, like
    ``$/cancelRequest`` (answered -32800).
    """
    if token is None:
        yield None
        return
    progress = ls.work_done_progress
    progress.begin(token, lsp.WorkDoneProgressBegin(title=title, percentage=0, cancellable=True))
    task = asyncio.current_task()
    cancel_future = progress.tokens.get(token)

    def on_cancel(future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled() and task is not None:
            task.cancel()

    if cancel_future is not None:
        cancel_future.add_done_callback(on_cancel)
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = done * 100 // total
        if pct != last[0]:
            last[0] = pct
            progress.report(
                token, lsp.WorkDoneProgressReport(percentage=pct, message=f"{done}/{total} files")
            )

    try:
        yield report
    finally:
        progress.end(token, lsp.WorkDoneProgressEnd(message="done"))
        done_future = progress.tokens.pop(token, None)
        if done_future is not None and not done_future.done():
            done_future.set_result(None)
