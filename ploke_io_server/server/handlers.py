"""One short handler per ``ploke/*`` method: typed params in, engine call, typed result out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
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
    ScanChangesParams,
    ScanChangesResult,
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


Handler = Callable[[Any], Awaitable[Any]]


def register_handlers(ls: PlokeLanguageServer, conn: Connection) -> dict[str, Handler]:
    """The ``ploke/*`` handlers of one connection, by method (``shutdown`` goes to pygls).

    The connection dispatches ``ploke/*`` requests itself (see ``Connection._start``): one task
    per request, no detour through pygls's generic handler machinery.
    """
    engine = conn.engine
    table: dict[str, Handler] = {}

    def alone() -> bool:
        """This request is the only one the server has running: it may run on the loop."""
        return engine.in_flight == 1

    def handler(method: str) -> Callable[[Callable[[_P], Awaitable[_R]]], Handler]:
        def register(fn: Callable[[_P], Awaitable[_R]]) -> Handler:
            table[method] = fn
            return fn

        return register

    @handler(methods.GET_SNIPPETS)
    async def get_snippets(params: GetSnippetsParams) -> GetSnippetsResult:
        with _progress(ls, params.work_done_token, "Reading snippets") as report:
            results = await engine.get_snippets(
                params.snippets, policy=conn.session.policy, progress=report, inline=alone()
            )
        return GetSnippetsResult(results)

    @handler(methods.HASH_FILES)
    async def hash_files(params: HashFilesParams) -> HashFilesResult:
        with _progress(ls, params.work_done_token, "Hashing files") as report:
            results = await engine.hash_files(
                params.paths, policy=conn.session.policy, progress=report, inline=alone()
            )
        return HashFilesResult(results)

    @handler(methods.SCAN_CHANGES)
    async def scan_changes(params: ScanChangesParams) -> ScanChangesResult:
        with _progress(ls, params.work_done_token, "Scanning for changes") as report:
            results = await engine.scan_changes(
                params.files, policy=conn.session.policy, progress=report, inline=alone()
            )
        return ScanChangesResult(results)

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
                inline=alone(),
            )
        return WriteSnippetsResult(results)

    @handler(methods.CREATE_FILES)
    async def create_files(params: CreateFilesParams) -> CreateFilesResult:
        with _progress(ls, params.work_done_token, "Creating files") as report:
            results = await engine.create_files(
                params.files,
                origin=params.origin,
                policy=conn.session.policy,
                progress=report,
                inline=alone(),
            )
        return CreateFilesResult(results)

    @handler(methods.STATUS)
    async def status(params: StatusParams) -> StatusResult:
        s = engine.status(conn.session.policy)
        memo = conn.protocol.escape_memo
        if engine.watcher is not None:
            s["counters"]["watcher"] = engine.watcher.status()
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
            watcher=WatcherStatus(
                enabled=conn.session.watch
                and engine.watcher is not None
                and engine.watcher.running,
                debounce_ms=engine.config.debounce_ms,
            ),
            counters=s["counters"],
        )

    @ls.feature(lsp.SHUTDOWN)
    async def shutdown(params: Any) -> None:
        # Requests of this connection still running (writes above all) finish first; EOF or
        # exit right after waits for this answer too.
        me = asyncio.current_task()
        assert me is not None
        engine.counters.requests[lsp.SHUTDOWN] += 1
        others = [t for t in conn.inflight if t is not me]
        conn.inflight.add(me)
        me.add_done_callback(conn.inflight.discard)
        if others:
            await asyncio.gather(*others, return_exceptions=True)

    return table


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
