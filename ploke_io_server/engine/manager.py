"""The IoManager: the engine's public face, usable as a plain Python library.

It owns the executor (the limiter: at most ``fd_limit`` worker threads, each holding at most
one file open at a time), the counters, and the default path policy. Every operation takes an
optional :class:`~ploke_io_server.paths.PathPolicy` so that sessions with narrowed roots share
one engine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs

from ..config import Config
from ..errors import PlokeIoError
from ..paths import PathPolicy, Resolver
from ..types import HashResult, ProgressFn, SnippetRequest, SnippetResult
from . import read

__all__ = ["BATCH_PARALLELISM", "Counters", "IoManager"]

log = logging.getLogger(__name__)

BATCH_PARALLELISM = 1
"""Worker threads one batch uses. Files in the page cache are CPU work under the GIL, where
more threads only add lock convoys (measured on 2 cores: 700 cached files, 46-75 ms on one
thread, 75-110 ms on several; cold reads gained nothing measurable on this VM's disk). Separate
requests and clients still run in parallel, up to the fd limit."""

_J = TypeVar("_J")


@attrs.define
class Counters:
    """Process-wide counters, reported by ``ploke/status``."""

    requests: collections.Counter[str] = attrs.field(factory=collections.Counter)
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    files_read: int = 0
    bytes_read: int = 0
    cancelled: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "filesRead": self.files_read,
            "bytesRead": self.bytes_read,
            "cancelled": self.cancelled,
        }


class IoManager:
    """File I/O engine: batch reads and hashes under a path policy and a concurrency limit."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = PathPolicy.of(config.roots, config.symlink_policy)
        self.counters = Counters()
        self.utf8 = read.Utf8Index()
        self._executor = ThreadPoolExecutor(
            max_workers=config.fd_limit, thread_name_prefix="ploke-io"
        )
        self._closed = False

    # -- operations ----------------------------------------------------------------------------

    async def get_snippets(
        self,
        requests: Sequence[SnippetRequest | PlokeIoError],
        *,
        policy: PathPolicy | None = None,
        progress: ProgressFn | None = None,
    ) -> list[SnippetResult]:
        """Read snippets; results in input order. An input PlokeIoError passes through."""
        results: list[SnippetResult | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, SnippetRequest]]] = {}
        for i, req in enumerate(requests):
            if isinstance(req, PlokeIoError):
                results[i] = req
            else:
                group = groups.get(req.file_path)
                if group is None:
                    groups[req.file_path] = [(i, req)]
                else:
                    group.append((i, req))
        max_bytes = self.config.max_file_bytes

        def work(resolver: Resolver, job: tuple[str, list[tuple[int, SnippetRequest]]]) -> None:
            n = read.snippets_of_file(resolver, job[0], job[1], results, max_bytes, self.utf8)
            self._count_read(n)

        await self._run(policy, list(groups.items()), work, progress)
        return self._finish(results)

    async def hash_files(
        self,
        paths: Sequence[str | PlokeIoError],
        *,
        policy: PathPolicy | None = None,
        progress: ProgressFn | None = None,
    ) -> list[HashResult]:
        """Hash files; results in input order, each distinct path read once."""
        results: list[HashResult | None] = [None] * len(paths)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            if isinstance(p, PlokeIoError):
                results[i] = p
            else:
                groups.setdefault(p, []).append(i)
        max_bytes = self.config.max_file_bytes

        def work(resolver: Resolver, job: tuple[str, list[int]]) -> None:
            result, n = read.hash_one(resolver, job[0], max_bytes)
            self._count_read(n)
            for i in job[1]:
                results[i] = result

        await self._run(policy, list(groups.items()), work, progress)
        return self._finish(results)

    def status(self, policy: PathPolicy | None = None) -> dict[str, Any]:
        policy = policy or self.policy
        return {
            "roots": policy.root_paths(),
            "symlinkPolicy": policy.symlink_policy.value,
            "fdLimit": self.config.fd_limit,
            "maxFileBytes": self.config.max_file_bytes,
            "counters": self.counters.snapshot(),
        }

    async def aclose(self) -> None:
        """Stop the executor after the work in flight has finished."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # -- batch runner --------------------------------------------------------------------------

    def _finish(self, results: list[_J | None]) -> list[_J]:
        """Check every slot is filled and count the errors."""
        errors = self.counters.errors
        out: list[_J] = []
        for r in results:
            if r is None:
                raise AssertionError("a result slot was left empty")
            if isinstance(r, PlokeIoError):
                errors[r.kind.name] += 1
            out.append(r)
        return out

    def _count_read(self, nbytes: int | None) -> None:
        # Counters are updated from worker threads; int += under the GIL can interleave, so
        # take a lock (cheap next to a file read).
        if nbytes is None:
            return
        with _COUNTER_LOCK:
            self.counters.files_read += 1
            self.counters.bytes_read += nbytes

    async def _run(
        self,
        policy: PathPolicy | None,
        jobs: list[_J],
        work: Callable[[Resolver, _J], None],
        progress: ProgressFn | None,
    ) -> None:
        """Run ``work`` over ``jobs`` on BATCH_PARALLELISM executor threads sharing a Resolver.

        Cancelling the awaiting task stops the workers between files; the Resolver (and its
        directory descriptors) is closed only after every worker has returned.
        """
        if not jobs:
            return
        if self._closed:
            raise RuntimeError("IoManager is closed")
        loop = asyncio.get_running_loop()
        resolver = Resolver(policy or self.policy)
        stop = threading.Event()
        feed: Iterator[_J] = iter(jobs)
        feed_lock = threading.Lock()
        total = len(jobs)
        done = [0]
        step = max(1, total // 100)

        def report(n: int) -> None:
            if progress is not None:
                progress(n, total)

        def worker() -> None:
            while not stop.is_set():
                with feed_lock:
                    job = next(feed, None)
                if job is None:
                    return
                work(resolver, job)
                if progress is not None:
                    with feed_lock:
                        done[0] += 1
                        n = done[0]
                    if n % step == 0 or n == total:
                        loop.call_soon_threadsafe(report, n)

        nworkers = min(self.config.fd_limit, BATCH_PARALLELISM, total)
        futures = [loop.run_in_executor(self._executor, worker) for _ in range(nworkers)]
        try:
            await asyncio.gather(*futures)
        except asyncio.CancelledError:
            with _COUNTER_LOCK:
                self.counters.cancelled += 1
            raise
        finally:
            stop.set()
            # Never close descriptors a worker may still use: close when the last one returns,
            # even if this task is cancelled again while waiting.
            waiter = asyncio.gather(*futures, return_exceptions=True)
            waiter.add_done_callback(lambda _f: resolver.close())
            await asyncio.shield(waiter)


_COUNTER_LOCK = threading.Lock()
