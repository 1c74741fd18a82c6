"""Engine tests of writes and file creation on real files (no JSON-RPC)."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploke_io_server import Config, ErrorKind, IoManager, PlokeIoError
from ploke_io_server.engine.write import TEMP_MARK
from ploke_io_server.types import Created, Edit, EditResult, NewFile

from .conftest import b3, temps, write


@pytest.fixture(params=["executor", "inline"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IoManager]:
    """An engine whose writes run on the executor, or (as the server asks when a request is
    the only one running) inline: a lone edit then takes ``IoManager._write_alone``."""
    root = tmp_path / "root"
    root.mkdir()
    manager = IoManager(Config.from_sources(roots=[str(root)]))
    if request.param == "inline":
        general = manager.write_snippets

        async def write_inline(edits: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("inline", True)
            return await general(edits, **kwargs)

        manager.write_snippets = write_inline  # type: ignore[method-assign]
    yield manager
    await manager.aclose()


def root_of(engine: IoManager) -> Path:
    return Path(engine.config.roots[0])


def ok(result: EditResult | PlokeIoError) -> EditResult:
    assert isinstance(result, EditResult), result
    return result


def failed(result: object, kind: ErrorKind) -> PlokeIoError:
    assert isinstance(result, PlokeIoError), result
    assert result.kind is kind, result
    return result


async def test_single_edit_is_committed_with_hashes_and_range(engine: IoManager) -> None:
    f = write(root_of(engine) / "src" / "a.rs", "fn main() {}\n")
    f.chmod(0o640)
    old = b3(f.read_bytes())
    [r] = await engine.write_snippets([Edit(str(f), old, 3, 7, "start")], origin="agent-1")
    r = ok(r)
    assert f.read_text() == "fn start() {}\n"
    assert (r.old_hash, r.new_hash) == (old, b3(f.read_bytes()))
    assert f.read_bytes()[r.new_start_byte : r.new_end_byte] == b"start"
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert temps(root_of(engine)) == []
    assert "agent-1" in [o for o, _h in engine.origins.values()]


async def test_edits_of_one_file_apply_to_the_same_original(engine: IoManager) -> None:
    f = write(root_of(engine) / "m.txt", "héllo wörld, ünïcode\r\n")
    data = f.read_bytes()
    h = b3(data)
    w = data.index("wörld".encode())
    edits = [
        Edit(str(f), h, w, w + len("wörld".encode()), "мир"),
        Edit(str(f), h, 0, 1, "J"),
        Edit(str(f), h, len(data) - 2, len(data) - 2, "!"),  # insertion before CRLF
    ]
    results = [ok(r) for r in await engine.write_snippets(edits)]
    new = f.read_bytes()
    assert new.decode() == "Jéllo мир, ünïcode!\r\n"
    assert [new[r.new_start_byte : r.new_end_byte].decode() for r in results] == ["мир", "J", "!"]
    assert {r.new_hash for r in results} == {b3(new)}


async def test_preconditions_leave_the_file_untouched(engine: IoManager) -> None:
    root = root_of(engine)
    f = write(root / "f.txt", "abc déf\n")
    h = b3(f.read_bytes())
    bad = write(root / "bad.bin", b"\xff\xfeabc")
    cases = [
        ([Edit(str(f), "0" * 64, 0, 1, "x")], ErrorKind.ContentMismatch),
        ([Edit(str(f), h, 5, 6, "x")], ErrorKind.InvalidRange),  # inside é
        ([Edit(str(f), h, 0, 99, "x")], ErrorKind.InvalidRange),
        ([Edit(str(f), h, 3, 1, "x")], ErrorKind.InvalidRange),  # start after end
        ([Edit(str(f), h, 0, 1, "ok \udcff")], ErrorKind.NotUtf8),  # a lone surrogate
        ([Edit(str(f), h, 0, 3, "x"), Edit(str(f), h, 2, 4, "y")], ErrorKind.InvalidRange),
        ([Edit(str(f), h, 0, 1, "x"), Edit(str(f), "1" * 64, 2, 3, "y")], ErrorKind.InvalidRange),
        ([Edit(str(f), h, 1, 1, "x"), Edit(str(f), h, 1, 1, "y")], ErrorKind.InvalidRange),
        ([Edit(str(bad), b3(bad.read_bytes()), 0, 1, "x")], ErrorKind.NotUtf8),
        ([Edit(str(root / "missing.txt"), h, 0, 0, "x")], ErrorKind.NotFound),
        ([Edit(str(root.parent / "elsewhere.txt"), h, 0, 0, "x")], ErrorKind.OutsideRoots),
    ]
    for edits, kind in cases:
        results = await engine.write_snippets(edits)
        for r in results:
            failed(r, kind)
        assert f.read_text() == "abc déf\n"
    mismatch = (await engine.write_snippets([Edit(str(f), "0" * 64, 0, 1, "x")]))[0]
    assert isinstance(mismatch, PlokeIoError) and mismatch.data == {
        "expected": "0" * 64,
        "actual": h,
    }
    assert temps(root) == []


async def test_atomic_batch_changes_nothing_when_one_file_fails(engine: IoManager) -> None:
    root = root_of(engine)
    files = [write(root / f"f{i}.txt", f"file {i}\n") for i in range(5)]
    edits = [Edit(str(f), b3(f.read_bytes()), 0, 4, "FILE") for f in files]
    edits[3] = Edit(str(files[3]), "0" * 64, 0, 4, "FILE")
    results = await engine.write_snippets(edits, atomic=True)
    failed(results[3], ErrorKind.ContentMismatch)
    for i in (0, 1, 2, 4):
        err = failed(results[i], ErrorKind.Io)
        assert err.data == {"reason": "batchAborted"}
    assert [f.read_text() for f in files] == [f"file {i}\n" for i in range(5)]
    assert temps(root) == []
    edits[3] = Edit(str(files[3]), b3(files[3].read_bytes()), 0, 4, "FILE")
    assert all(isinstance(r, EditResult) for r in await engine.write_snippets(edits, atomic=True))
    assert [f.read_text() for f in files] == [f"FILE {i}\n" for i in range(5)]


async def test_dry_run_returns_a_diff_and_writes_nothing(engine: IoManager) -> None:
    f = write(root_of(engine) / "d.py", "a = 1\nb = 2\n")
    h = b3(f.read_bytes())
    [r] = await engine.write_snippets([Edit(str(f), h, 4, 5, "10")], dry_run=True)
    r = ok(r)
    assert f.read_text() == "a = 1\nb = 2\n"
    assert r.new_hash == b3(b"a = 10\nb = 2\n")
    assert r.diff is not None and "-a = 1\n+a = 10\n" in r.diff and "a/d.py" in r.diff


async def test_create_files(engine: IoManager, tmp_path: Path) -> None:
    root = root_of(engine)
    existing = write(root / "exists.txt", "old")
    (root / "dangling").symlink_to("nowhere")
    results = await engine.create_files(
        [
            NewFile(str(root / "new.txt"), "new ✓"),
            NewFile(str(existing), "x"),
            NewFile(str(root / "dangling"), "x"),
            NewFile(str(root / "a" / "b" / "c.txt"), "deep", create_parents=True),
            NewFile(str(root / "x" / "y.txt"), "no parents"),
            NewFile(str(existing), "replaced", overwrite=True),
            NewFile(str(tmp_path / "outside.txt"), "x"),
        ]
    )
    assert isinstance(results[0], Created) and results[0].file_hash == b3("new ✓".encode())
    assert (root / "new.txt").read_text() == "new ✓"
    mode = stat.S_IMODE((root / "new.txt").stat().st_mode)
    assert mode == 0o666 & ~_umask()
    failed(results[1], ErrorKind.AlreadyExists)
    failed(results[2], ErrorKind.AlreadyExists)
    assert os.readlink(root / "dangling") == "nowhere" and not (root / "nowhere").exists()
    assert (root / "a" / "b" / "c.txt").read_text() == "deep"
    failed(results[4], ErrorKind.NotFound)
    assert existing.read_text() == "replaced"
    failed(results[6], ErrorKind.OutsideRoots)
    assert not (tmp_path / "outside.txt").exists()
    assert temps(root) == []


async def test_text_with_a_lone_surrogate_is_an_item_error(engine: IoManager) -> None:
    """JSON's "\\udcff" escape parses to a string no UTF-8 can encode: NotUtf8 for that item,
    before anything is touched (it was an internal error for the whole request)."""
    root = root_of(engine)
    f = write(root / "f.txt", "abc\n")
    g = write(root / "g.txt", "def\n")
    h, hg = b3(f.read_bytes()), b3(g.read_bytes())
    bad, good = Edit(str(f), h, 0, 1, "\ud800"), Edit(str(g), hg, 0, 1, "D")
    [r] = await engine.write_snippets([bad], dry_run=True)
    assert "U+D800 at character 0" in failed(r, ErrorKind.NotUtf8).message
    r1, r2 = await engine.write_snippets([bad, good], atomic=True)
    failed(r1, ErrorKind.NotUtf8)
    assert isinstance(r2, PlokeIoError) and g.read_text() == "def\n"
    r1, r2 = await engine.write_snippets([bad, good])
    failed(r1, ErrorKind.NotUtf8)
    assert ok(r2) and g.read_text() == "Def\n" and f.read_text() == "abc\n"
    [c] = await engine.create_files(
        [NewFile(str(root / "new" / "n.txt"), "x\udcff", create_parents=True)]
    )
    failed(c, ErrorKind.NotUtf8)
    assert not (root / "new").exists()
    assert temps(root) == []


async def test_creates_of_one_path_in_a_batch_go_in_input_order(engine: IoManager) -> None:
    """As separate requests would: the first wins, the next is AlreadyExists unless it has
    overwrite (it used to be a race between two workers, either could win)."""
    root = root_of(engine)
    for n in range(20):
        p = str(root / f"dup{n}.txt")
        others = [NewFile(str(root / f"o{n}-{k}.txt"), "o") for k in range(4)]
        r = await engine.create_files(
            [
                *others[:2],
                NewFile(p, "first"),
                *others[2:],
                NewFile(p, "second"),
                NewFile(p, "third", overwrite=True),
            ]
        )
        assert isinstance(r[2], Created) and r[2].file_hash == b3(b"first")
        failed(r[5], ErrorKind.AlreadyExists)
        assert isinstance(r[6], Created) and r[6].file_hash == b3(b"third")
        assert (root / f"dup{n}.txt").read_text() == "third"
        assert all(isinstance(x, Created) for x in r[:2] + r[3:5])


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


async def test_concurrent_writes_with_the_same_expected_hash(engine: IoManager) -> None:
    f = write(root_of(engine) / "race.txt", "0\n")
    h = b3(f.read_bytes())
    edits = [[Edit(str(f), h, 0, 1, f"v{i}")] for i in range(200)]
    outcomes = await asyncio.gather(*(engine.write_snippets(e) for e in edits))
    winners = [i for i, [r] in enumerate(outcomes) if isinstance(r, EditResult)]
    assert len(winners) == 1
    for i, [r] in enumerate(outcomes):
        if i != winners[0]:
            failed(r, ErrorKind.ContentMismatch)
    assert f.read_text() == f"v{winners[0]}\n"


async def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "r"
    dead = write(root / "sub" / f".a.txt{TEMP_MARK}999999999.abcd0123", "torn")
    mine = write(root / f".b.txt{TEMP_MARK}{os.getpid()}.abcd0123", "in use")
    keep = write(root / "normal.ploke-tmp.txt", "not ours")
    notes = write(root / ".notes.ploke-tmp.txt", "a user's file that only looks like ours")
    manager = IoManager(Config.from_sources(roots=[str(root)]))
    await manager.start()
    await manager.wait_started()
    assert not dead.exists() and mine.exists() and keep.exists() and notes.exists()
    assert manager.counters.temps_removed == 1
    await manager.aclose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_edits_equal_a_reference_splice(tmp_path: Path, data: st.DataObject) -> None:
    text = data.draw(st.text(min_size=0, max_size=200), label="text")
    raw = text.encode()
    boundaries = sorted({0, len(raw)} | {len(text[:i].encode()) for i in range(len(text) + 1)})
    cuts = sorted(data.draw(st.lists(st.sampled_from(boundaries), max_size=8), label="cuts"))
    spans = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False)]
    spans = [s for n, s in enumerate(spans) if n == 0 or s[0] > spans[n - 1][1]]
    repls = [data.draw(st.text(max_size=10), label="replacement") for _ in spans]
    order = data.draw(st.permutations(range(len(spans))), label="order")
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    f = write(root / "f.txt", raw)
    edits = [Edit(str(f), b3(raw), spans[k][0], spans[k][1], repls[k]) for k in order]

    async def run() -> list[EditResult | PlokeIoError]:
        manager = IoManager(Config.from_sources(roots=[str(root)]))
        try:
            return await manager.write_snippets(edits)
        finally:
            await manager.aclose()

    results = asyncio.run(run())
    expected = bytearray(raw)
    for (a, b), r in sorted(zip(spans, repls, strict=True), reverse=True):
        expected[a:b] = r.encode()
    new = f.read_bytes()
    assert new == bytes(expected)
    new.decode("utf-8")
    for k, r in zip(order, results, strict=True):
        r = ok(r)
        assert new[r.new_start_byte : r.new_end_byte] == repls[k].encode()


@pytest.mark.parametrize("inline", [False, True])
async def test_directory_swapped_for_a_symlink_cannot_redirect_writes(
    tmp_path: Path, inline: bool
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write(outside / "f.txt", "outside: never touched\n")
    d = root / "d"
    f = write(d / "f.txt", "0\n")
    manager = IoManager(Config.from_sources(roots=[str(root)]))
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        # d is, in turn, the real directory and a symlink to outside.
        while not stop.is_set():
            os.rename(d, root / "d-real")
            os.symlink(outside, d)
            os.unlink(d)
            os.rename(root / "d-real", d)
            swaps[0] += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    kinds: set[str] = set()
    try:
        for i in range(300):
            path = str(d / "f.txt")
            try:
                current = (root / "d-real" / "f.txt").read_bytes()
            except FileNotFoundError:
                try:
                    current = f.read_bytes()
                except (FileNotFoundError, NotADirectoryError):
                    continue
            [r] = await manager.write_snippets(
                [Edit(path, b3(current), 0, 0, f"{i}")], inline=inline
            )
            kinds.add(type(r).__name__ if isinstance(r, EditResult) else r.kind.name)
            [c] = await manager.create_files([NewFile(str(d / f"new{i}.txt"), "x")])
            kinds.add("Created" if isinstance(c, Created) else c.kind.name)
    finally:
        stop.set()
        thread.join()
        await manager.aclose()
    assert swaps[0] > 10, swaps
    assert "OutsideRoots" in kinds or "NotFound" in kinds, kinds  # the swaps were seen
    assert secret.read_text() == "outside: never touched\n"
    assert os.listdir(outside) == ["f.txt"], "a temp file or a created file landed outside"
    assert "EditResult" in kinds and "Created" in kinds  # writes did go through, inside
    assert kinds <= {"EditResult", "Created", "OutsideRoots", "NotFound", "ContentMismatch", "Io"}
    assert temps(root) == []


async def test_cached_root_descriptor_follows_a_replaced_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "f.txt", "first")
    manager = IoManager(Config.from_sources(roots=[str(root)]))
    try:
        [r] = await manager.hash_files([str(root / "f.txt")])
        assert not isinstance(r, PlokeIoError) and r.file_hash == b3(b"first")
        # Recreated (as by `rm -rf && git clone`): the new directory is served.
        os.rename(root, tmp_path / "old-root")
        write(root / "f.txt", "second")
        [r] = await manager.hash_files([str(root / "f.txt")])
        assert not isinstance(r, PlokeIoError) and r.file_hash == b3(b"second")
        # Replaced by a symlink to elsewhere: refused, never followed.
        os.rename(root, tmp_path / "second-root")
        os.symlink(tmp_path / "old-root", root)
        [r] = await manager.hash_files([str(root / "f.txt")])
        failed(r, ErrorKind.OutsideRoots)
    finally:
        await manager.aclose()


async def test_review_regressions(engine: IoManager) -> None:
    root = root_of(engine)
    f = write(root / "a.txt", "abc")
    h = b3(b"abc")
    # One file under two spellings in an atomic batch: refused, not a lost update.
    results = await engine.write_snippets(
        [Edit(str(f), h, 0, 1, "X"), Edit(f"{root}//a.txt", h, 2, 3, "Z")], atomic=True
    )
    for r in results:
        failed(r, ErrorKind.InvalidRange)
    assert f.read_text() == "abc"
    # A directory or FIFO at the path of a create: AlreadyExists.
    (root / "adir").mkdir()
    os.mkfifo(root / "fifo")
    for name in ("adir", "fifo"):
        [c] = await engine.create_files([NewFile(str(root / name), "x")])
        failed(c, ErrorKind.AlreadyExists)
    # Edits count in bytesWritten; setuid/setgid bits survive a write.
    f.chmod(0o6755)
    before = engine.counters.bytes_written
    [r] = await engine.write_snippets([Edit(str(f), h, 0, 1, "ab")])
    ok(r)
    assert engine.counters.bytes_written - before == len(b"abbc")
    assert stat.S_IMODE(f.stat().st_mode) == 0o6755
    # A dry-run diff marks a last line without a newline, as git does.
    [d] = await engine.write_snippets([Edit(str(f), b3(b"abbc"), 3, 4, "d")], dry_run=True)
    assert ok(d).diff == (
        "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-abbc\n\\ No newline at end of file\n"
        "+abbd\n\\ No newline at end of file\n"
    )


async def test_long_multibyte_names_can_be_edited_and_created(engine: IoManager) -> None:
    name = "é" * 120 + ".txt"  # 244 bytes: the temp name must be cut by bytes, not characters
    f = write(root_of(engine) / name, "x")
    [r] = await engine.write_snippets([Edit(str(f), b3(b"x"), 0, 1, "y")])
    ok(r)
    assert f.read_text() == "y"
    [c] = await engine.create_files([NewFile(str(root_of(engine) / ("ü" * 125)), "z")])
    assert isinstance(c, Created)
    assert temps(root_of(engine)) == []


async def test_running_out_of_descriptors_is_an_item_error_not_a_crash(engine: IoManager) -> None:
    # A real EMFILE: the soft limit is lowered to just above what the process has open, and
    # raised one descriptor at a time, so that each step of walking, creating the parents
    # (mkdir, fsync of the parent) and committing runs out of descriptors in turn.
    import resource

    f = write(root_of(engine) / "a.txt", "x")
    await engine.hash_files([str(f)])  # executor threads and the root descriptor exist now
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    outcomes: set[str] = set()
    for extra in range(12):
        deep = root_of(engine) / f"n{extra}" / "a" / "b" / "f.txt"
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + extra, hard))
        try:
            [r] = await engine.create_files([NewFile(str(deep), "y", create_parents=True)])
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if isinstance(r, Created):
            outcomes.add("created")
            assert deep.read_text() == "y"
        else:
            err = failed(r, ErrorKind.Io)
            assert "too many open files" in err.message
            assert str(root_of(engine)) not in err.message
            outcomes.add("emfile")
    assert outcomes == {"created", "emfile"}
    assert temps(root_of(engine)) == []
