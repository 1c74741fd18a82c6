"""Path policy and read-path tests on real files in ``tmp_path`` (no mocks of the file system).

Layout made by the ``tree`` fixture::

    tmp_path/x/
      root/                 the allowed root
        file.txt            "hello\\n"
        sub/inner.txt       "inner\\n"
        realdir/deep/g.txt  "deep\\n"
      outside/secret.txt    "secret\\n"  (never readable)
      root-evil/f.txt       a sibling whose name starts with the root's name
      rootx/f.txt
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import attrs
import pytest
from blake3 import blake3

from ploke_io_server import paths as paths_mod
from ploke_io_server.config import Config, SymlinkPolicy
from ploke_io_server.engine import IoManager
from ploke_io_server.engine import read as read_mod
from ploke_io_server.errors import ErrorKind, PlokeIoError
from ploke_io_server.paths import MAX_SYMLINK_HOPS, PathPolicy, Resolver, check_path_string
from ploke_io_server.types import FileHash, Snippet, SnippetRequest

DENY_CROSS = SymlinkPolicy.DENY_CROSS_ROOT
FOLLOW = SymlinkPolicy.FOLLOW_WITHIN_ROOTS
DENY = SymlinkPolicy.DENY
ALL_POLICIES = [DENY_CROSS, FOLLOW, DENY]
FOLLOWING = [DENY_CROSS, FOLLOW]

OUTSIDE = ErrorKind.OutsideRoots


@attrs.frozen
class Tree:
    base: Path
    root: Path
    outside: Path

    def r(self, rel: str) -> str:
        """An absolute path string under the root, spelled exactly as given."""
        return f"{self.root}/{rel}"


@pytest.fixture(autouse=True, params=["openat2", "per-component"])
def walk_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: with the one-call ``openat2`` walk of plain directory paths (where
    the kernel has it), and with the component-by-component walk alone."""
    mode: str = request.param
    if mode == "per-component":
        monkeypatch.setattr(paths_mod, "_openat2", None)
    elif paths_mod._openat2 is None:
        pytest.skip("openat2 is not available on this system")
    return mode


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    base = tmp_path / "x"
    root = base / "root"
    outside = base / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "realdir" / "deep").mkdir(parents=True)
    outside.mkdir()
    (root / "file.txt").write_bytes(b"hello\n")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "realdir" / "deep" / "g.txt").write_bytes(b"deep\n")
    (outside / "secret.txt").write_bytes(b"secret\n")
    for sibling in ("root-evil", "rootx"):
        (base / sibling).mkdir()
        (base / sibling / "f.txt").write_bytes(b"evil\n")
    return Tree(base=base, root=root, outside=outside)


def resolver(roots: Iterable[Path | str], policy: SymlinkPolicy = DENY_CROSS) -> Resolver:
    return Resolver(PathPolicy.of([str(r) for r in roots], policy))


def read_ok(res: Resolver, path: str) -> bytes:
    """Open ``path`` through the resolver and return the whole content."""
    opened = res.open_read(path)
    try:
        parts: list[bytes] = []
        while chunk := os.read(opened.fd, 1 << 16):
            parts.append(chunk)
        data = b"".join(parts)
    finally:
        os.close(opened.fd)
    assert len(data) == opened.size
    return data


def read_err(res: Resolver, path: object) -> PlokeIoError:
    """Open ``path`` expecting a PlokeIoError (never an fd); return the error."""
    with pytest.raises(PlokeIoError) as info:
        opened = res.open_read(path)  # type: ignore[arg-type]
        os.close(opened.fd)
    return info.value


def assert_err(
    roots: Iterable[Path | str], policy: SymlinkPolicy, path: object, kind: ErrorKind
) -> PlokeIoError:
    with resolver(roots, policy) as res:
        err = read_err(res, path)
    assert err.kind is kind, err
    assert err.code == kind.value
    return err


def assert_read(roots: Iterable[Path | str], policy: SymlinkPolicy, path: str, data: bytes) -> None:
    with resolver(roots, policy) as res:
        assert read_ok(res, path) == data


def assert_no_leak(err: PlokeIoError, tree: Tree, rel: str = "") -> None:
    """The message names no resolved outside path (nor even the temp dir).

    ``rel`` is the client's own root-relative spelling, which the message may repeat.
    """
    assert str(tree.outside) not in err.message
    assert str(tree.base) not in err.message
    if "secret" not in rel:
        assert "secret" not in err.message


def b3(data: bytes) -> str:
    return blake3(data).hexdigest()


ManagerFactory = Callable[..., IoManager]


@pytest.fixture
async def make_manager() -> AsyncIterator[ManagerFactory]:
    """Build IoManagers from ``Config.from_sources`` keyword arguments; closed at teardown."""
    made: list[IoManager] = []

    def make(**kwargs: object) -> IoManager:
        kwargs.setdefault("env", {})
        manager = IoManager(Config.from_sources(**kwargs))  # type: ignore[arg-type]
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.aclose()


# == traversal ====================================================================================


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize(
    "rel",
    [
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        "../../x/outside/secret.txt",
        "../" * 30 + "etc/passwd",
        "../root-evil/f.txt",
        "../root/../outside/secret.txt",
    ],
)
def test_dotdot_out_of_the_root_is_outside_roots(
    tree: Tree, policy: SymlinkPolicy, rel: str
) -> None:
    err = assert_err([tree.root], policy, tree.r(rel), OUTSIDE)
    assert str(tree.base) not in err.message


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize(
    "rel",
    [
        "../root/file.txt",
        "sub/../file.txt",
        "sub/../../root/file.txt",
        "../../x/root/file.txt",
        "./file.txt",
        "sub/./../file.txt",
        "/file.txt",  # a doubled slash after the root
    ],
)
def test_dotdot_that_comes_back_in_is_allowed(tree: Tree, policy: SymlinkPolicy, rel: str) -> None:
    assert_read([tree.root], policy, tree.r(rel), b"hello\n")


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("rel", ["..", "../", "sub/../..", "../.."])
def test_path_ending_in_dotdot_of_the_root_is_outside_roots(
    tree: Tree, policy: SymlinkPolicy, rel: str
) -> None:
    assert_err([tree.root], policy, tree.r(rel), OUTSIDE)


def test_dotdot_into_a_directory_of_the_root_itself_is_not_a_file(tree: Tree) -> None:
    assert_err([tree.root], DENY_CROSS, tree.r("sub/.."), ErrorKind.NotAFile)
    assert_err([tree.root], DENY_CROSS, tree.r("../root"), ErrorKind.NotAFile)


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("sibling", ["root-evil", "rootx"])
def test_sibling_sharing_the_root_name_prefix_is_outside(
    tree: Tree, policy: SymlinkPolicy, sibling: str
) -> None:
    assert_err([tree.root], policy, f"{tree.base}/{sibling}/f.txt", OUTSIDE)


def test_paths_outside_every_root_are_outside_roots(tree: Tree) -> None:
    assert_err([tree.root], DENY_CROSS, str(tree.outside / "secret.txt"), OUTSIDE)
    assert_err([tree.root], DENY_CROSS, "/etc/passwd", OUTSIDE)
    assert_err([tree.root], DENY_CROSS, str(tree.base), OUTSIDE)
    assert_err([tree.root], DENY_CROSS, "/", OUTSIDE)


# == malformed path strings =======================================================================


@pytest.mark.parametrize(
    "path", ["file.txt", "./file.txt", "../root/file.txt", "root/file.txt", "~/file.txt", " /x"]
)
def test_relative_path_is_invalid(tree: Tree, path: str) -> None:
    assert_err([tree.root], DENY_CROSS, path, ErrorKind.InvalidPath)


def test_empty_path_is_invalid(tree: Tree) -> None:
    assert_err([tree.root], DENY_CROSS, "", ErrorKind.InvalidPath)


@pytest.mark.parametrize("rel", ["file.txt\x00", "fi\x00le.txt", "\x00/../outside/secret.txt"])
def test_nul_byte_is_invalid(tree: Tree, rel: str) -> None:
    assert_err([tree.root], DENY_CROSS, tree.r(rel), ErrorKind.InvalidPath)


@pytest.mark.parametrize("value", [None, 42, 1.5, b"/tmp/file", ["/tmp/file"], Path("/tmp/f")])
def test_non_string_is_invalid(tree: Tree, value: object) -> None:
    with pytest.raises(PlokeIoError) as info:
        check_path_string(value)
    assert info.value.kind is ErrorKind.InvalidPath
    assert_err([tree.root], DENY_CROSS, value, ErrorKind.InvalidPath)


def test_check_path_string_accepts_absolute_strings() -> None:
    assert check_path_string("/a/b") == "/a/b"
    assert check_path_string("/") == "/"


def test_over_long_component_is_invalid(tree: Tree) -> None:
    assert_err([tree.root], DENY_CROSS, tree.r("a" * 300), ErrorKind.InvalidPath)


# == symlinks =====================================================================================


def assert_followed_unless_deny(tree: Tree, policy: SymlinkPolicy, path: str, data: bytes) -> None:
    """A path through in-root links reads ``data``, except under deny (OutsideRoots)."""
    if policy is DENY:
        assert_err([tree.root], policy, path, OUTSIDE)
    else:
        assert_read([tree.root], policy, path, data)


@pytest.mark.parametrize("kind", ["relative", "absolute", "up-relative"])
@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_link_inside_root_to_file_inside_root(tree: Tree, policy: SymlinkPolicy, kind: str) -> None:
    if kind == "relative":
        (tree.root / "lnk").symlink_to("file.txt")
        path = tree.r("lnk")
    elif kind == "absolute":
        (tree.root / "lnk").symlink_to(tree.root / "file.txt")
        path = tree.r("lnk")
    else:
        (tree.root / "sub" / "lnk").symlink_to("../file.txt")
        path = tree.r("sub/lnk")
    assert_followed_unless_deny(tree, policy, path, b"hello\n")


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize(
    ("where", "target"),
    [
        ("esc", "ABS"),
        ("esc", "../outside/secret.txt"),
        ("sub/esc", "../../outside/secret.txt"),
        ("esc", "/etc/passwd"),
        ("esc", "../root/../outside/secret.txt"),
        ("esc", "ABS_VIA_ROOT"),  # lexically under the root, then ../ out of it
    ],
)
def test_link_to_file_outside_the_roots(
    tree: Tree, policy: SymlinkPolicy, where: str, target: str
) -> None:
    if target == "ABS":
        target = str(tree.outside / "secret.txt")
    elif target == "ABS_VIA_ROOT":
        target = f"{tree.root}/../outside/secret.txt"
    (tree.root / where).symlink_to(target)
    err = assert_err([tree.root], policy, tree.r(where), OUTSIDE)
    assert_no_leak(err, tree)


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_chained_links_inside_the_root(tree: Tree, policy: SymlinkPolicy) -> None:
    (tree.root / "c").symlink_to("sub/inner.txt")
    (tree.root / "sub" / "b").symlink_to(tree.root / "c")  # absolute hop
    (tree.root / "a").symlink_to("sub/b")
    assert_followed_unless_deny(tree, policy, tree.r("a"), b"inner\n")


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("last", ["../outside/secret.txt", "ABS"])
def test_chain_whose_last_hop_leaves_the_root(tree: Tree, policy: SymlinkPolicy, last: str) -> None:
    (tree.root / "c").symlink_to(str(tree.outside / "secret.txt") if last == "ABS" else last)
    (tree.root / "b").symlink_to("c")
    (tree.root / "a").symlink_to("b")
    err = assert_err([tree.root], policy, tree.r("a"), OUTSIDE)
    assert_no_leak(err, tree)


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("target", ["realdir", "./realdir/", "ABS", "sub/../realdir"])
def test_directory_link_in_the_middle(tree: Tree, policy: SymlinkPolicy, target: str) -> None:
    (tree.root / "linkdir").symlink_to(str(tree.root / "realdir") if target == "ABS" else target)
    path = tree.r("linkdir/deep/g.txt")
    assert_followed_unless_deny(tree, policy, path, b"deep\n")


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_openat2_opens_plain_directories_and_leaves_symlinks_to_the_walk(
    tree: Tree, policy: SymlinkPolicy, walk_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if walk_mode != "openat2":
        pytest.skip("about the openat2 walk")
    real = paths_mod._openat2
    assert real is not None
    calls: list[tuple[str, int | None]] = []

    def spy(dir_fd: int, path: str) -> int:
        try:
            fd = real(dir_fd, path)
        except OSError as exc:
            calls.append((path, exc.errno))
            raise
        calls.append((path, None))
        return fd

    monkeypatch.setattr(paths_mod, "_openat2", spy)
    (tree.root / "linkdir").symlink_to("realdir")
    (tree.root / "out").symlink_to(tree.outside)
    with resolver([tree.root], policy) as res:
        assert read_ok(res, tree.r("realdir/deep/g.txt")) == b"deep\n"
        assert read_ok(res, tree.r("realdir/deep/g.txt")) == b"deep\n"  # cached: no call
        assert calls == [("realdir/deep", None)]
        # A symlink on the way: openat2 refuses it, and the walk applies the policy.
        if policy is DENY:
            assert read_err(res, tree.r("linkdir/deep/g.txt")).kind is OUTSIDE
        else:
            assert read_ok(res, tree.r("linkdir/deep/g.txt")) == b"deep\n"
        assert read_err(res, tree.r("out/x/../secret.txt")).kind is OUTSIDE
        (tree.outside / "d").mkdir()
        (tree.outside / "d" / "s.txt").write_bytes(b"secret\n")
        assert read_err(res, tree.r("out/d/s.txt")).kind is OUTSIDE
    assert calls[1:] == [("linkdir/deep", errno.ELOOP), ("out/d", errno.ELOOP)]


@pytest.mark.parametrize("policy", FOLLOWING)
def test_dotdot_after_a_directory_link_is_physical(tree: Tree, policy: SymlinkPolicy) -> None:
    # sub/up -> ../realdir/deep ; sub/up/.. is realdir (physically), not sub.
    (tree.root / "realdir" / "r.txt").write_bytes(b"realdir\n")
    (tree.root / "sub" / "up").symlink_to("../realdir/deep")
    assert_read([tree.root], policy, tree.r("sub/up/../r.txt"), b"realdir\n")
    assert_err([tree.root], policy, tree.r("sub/up/../inner.txt"), ErrorKind.NotFound)


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_directory_link_to_outside(tree: Tree, policy: SymlinkPolicy) -> None:
    (tree.root / "out").symlink_to("../outside")
    (tree.root / "outabs").symlink_to(tree.outside)
    for rel in ("out/secret.txt", "outabs/secret.txt", "outabs/../root/file.txt"):
        err = assert_err([tree.root], policy, tree.r(rel), OUTSIDE)
        assert_no_leak(err, tree, rel)
    # x/outside/../root/file.txt resolves back into the root (taken lexically, nothing outside
    # is opened): allowed when links are followed at all.
    assert_followed_unless_deny(tree, policy, tree.r("out/../root/file.txt"), b"hello\n")


@pytest.mark.parametrize("policy", FOLLOWING)
def test_link_out_and_back_into_the_same_root(tree: Tree, policy: SymlinkPolicy) -> None:
    (tree.root / "back").symlink_to("../root/file.txt")
    assert_read([tree.root], policy, tree.r("back"), b"hello\n")


@pytest.mark.parametrize("policy", FOLLOWING)
def test_link_to_the_root_itself(tree: Tree, policy: SymlinkPolicy) -> None:
    (tree.root / "here").symlink_to(".")
    (tree.root / "sub" / "top").symlink_to(tree.root)
    assert_read([tree.root], policy, tree.r("here/here/file.txt"), b"hello\n")
    assert_read([tree.root], policy, tree.r("sub/top/sub/inner.txt"), b"inner\n")


@pytest.mark.parametrize("policy", FOLLOWING)
def test_final_link_to_a_directory_is_not_a_file(tree: Tree, policy: SymlinkPolicy) -> None:
    (tree.root / "dl").symlink_to("sub")
    assert_err([tree.root], policy, tree.r("dl"), ErrorKind.NotAFile)


class TestTwoRoots:
    @pytest.fixture
    def roots(self, tree: Tree) -> tuple[Path, Path]:
        a, b = tree.base / "rootA", tree.base / "rootB"
        (a / "d").mkdir(parents=True)
        (b / "bd").mkdir(parents=True)
        (a / "a.txt").write_bytes(b"A\n")
        (b / "b.txt").write_bytes(b"B\n")
        (b / "bd" / "bb.txt").write_bytes(b"BB\n")
        (a / "abs").symlink_to(b / "b.txt")
        (a / "rel").symlink_to("../rootB/b.txt")
        (a / "d" / "deeprel").symlink_to("../../rootB/b.txt")
        (a / "bdir").symlink_to(b / "bd")
        (a / "bdirrel").symlink_to("../rootB/bd")
        (a / "toout").symlink_to(tree.outside / "secret.txt")
        return a, b

    LINKS = ["abs", "rel", "d/deeprel", "bdir/bb.txt", "bdirrel/bb.txt"]

    @pytest.mark.parametrize("link", LINKS)
    def test_cross_root_link_denied_under_deny_cross_root(
        self, tree: Tree, roots: tuple[Path, Path], link: str
    ) -> None:
        a, _b = roots
        err = assert_err(roots, DENY_CROSS, f"{a}/{link}", OUTSIDE)
        assert_no_leak(err, tree)
        assert str(roots[1]) not in err.message

    @pytest.mark.parametrize("link", LINKS)
    def test_cross_root_link_allowed_under_follow_within_roots(
        self, roots: tuple[Path, Path], link: str
    ) -> None:
        a, _b = roots
        expected = b"BB\n" if "bb" in link or "bdir" in link else b"B\n"
        assert_read(roots, FOLLOW, f"{a}/{link}", expected)

    @pytest.mark.parametrize("link", LINKS)
    def test_cross_root_link_denied_under_deny(self, roots: tuple[Path, Path], link: str) -> None:
        a, _b = roots
        assert_err(roots, DENY, f"{a}/{link}", OUTSIDE)

    @pytest.mark.parametrize("policy", ALL_POLICIES)
    def test_both_roots_readable_directly(
        self, roots: tuple[Path, Path], policy: SymlinkPolicy
    ) -> None:
        a, b = roots
        with resolver(roots, policy) as res:
            assert read_ok(res, f"{a}/a.txt") == b"A\n"
            assert read_ok(res, f"{b}/b.txt") == b"B\n"
            # A client's own ../ may move between roots: no symlink is involved.
            assert read_ok(res, f"{a}/../rootB/b.txt") == b"B\n"

    @pytest.mark.parametrize("policy", ALL_POLICIES)
    def test_link_outside_both_roots(
        self, tree: Tree, roots: tuple[Path, Path], policy: SymlinkPolicy
    ) -> None:
        a, _b = roots
        err = assert_err(roots, policy, f"{a}/toout", OUTSIDE)
        assert_no_leak(err, tree)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("policy", FOLLOWING)
@pytest.mark.parametrize("rel", ["a", "b", "self", "loopdir/x", "loopdir/loopdir/x"])
def test_symlink_loop_is_io_error_and_does_not_hang(
    tree: Tree, policy: SymlinkPolicy, rel: str
) -> None:
    (tree.root / "a").symlink_to("b")
    (tree.root / "b").symlink_to(tree.root / "a")
    (tree.root / "self").symlink_to("self")
    (tree.root / "loopdir").symlink_to("loopdir")
    started = time.monotonic()
    assert_err([tree.root], policy, tree.r(rel), ErrorKind.Io)
    assert time.monotonic() - started < 5


def test_symlink_loop_under_deny_is_outside_roots(tree: Tree) -> None:
    (tree.root / "a").symlink_to("b")
    (tree.root / "b").symlink_to("a")
    assert_err([tree.root], DENY, tree.r("a"), OUTSIDE)


@pytest.mark.parametrize("policy", FOLLOWING)
def test_symlink_hop_limit(tree: Tree, policy: SymlinkPolicy) -> None:
    prev = "file.txt"
    for i in range(MAX_SYMLINK_HOPS + 1):
        (tree.root / f"h{i}").symlink_to(prev)
        prev = f"h{i}"
    with resolver([tree.root], policy) as res:
        # h{N-1} needs N hops: the limit (40, like Linux) itself is allowed.
        assert read_ok(res, tree.r(f"h{MAX_SYMLINK_HOPS - 1}")) == b"hello\n"
        assert read_err(res, tree.r(f"h{MAX_SYMLINK_HOPS}")).kind is ErrorKind.Io


@pytest.mark.parametrize("policy", FOLLOWING)
@pytest.mark.parametrize("target", ["missing.txt", "ABS", "sub/nodir/missing.txt"])
def test_dangling_symlink_is_not_found(tree: Tree, policy: SymlinkPolicy, target: str) -> None:
    (tree.root / "dangle").symlink_to(str(tree.root / "missing") if target == "ABS" else target)
    assert_err([tree.root], policy, tree.r("dangle"), ErrorKind.NotFound)


def test_dangling_symlink_under_deny_is_outside_roots(tree: Tree) -> None:
    (tree.root / "dangle").symlink_to("missing.txt")
    assert_err([tree.root], DENY, tree.r("dangle"), OUTSIDE)


def test_dangling_symlink_pointing_outside_is_outside_roots(tree: Tree) -> None:
    (tree.root / "dangle").symlink_to("../outside/missing.txt")
    err = assert_err([tree.root], DENY_CROSS, tree.r("dangle"), OUTSIDE)
    assert_no_leak(err, tree)


# == root configured through a symlinked spelling =================================================


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_root_given_through_a_symlink(tmp_path: Path, policy: SymlinkPolicy) -> None:
    real = tmp_path / "real_root"
    (real / "d").mkdir(parents=True)
    (real / "f.txt").write_bytes(b"F\n")
    (real / "d" / "g.txt").write_bytes(b"G\n")
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    with resolver([alias], policy) as res:
        for _ in range(2):  # second round through the directory cache
            assert read_ok(res, f"{alias}/f.txt") == b"F\n"
            assert read_ok(res, f"{real}/f.txt") == b"F\n"
            assert read_ok(res, f"{alias}/d/g.txt") == b"G\n"
            assert read_ok(res, f"{real}/d/g.txt") == b"G\n"
            assert read_ok(res, f"{alias}/../real_root/f.txt") == b"F\n"
        assert read_err(res, f"{tmp_path}/other/f.txt").kind is OUTSIDE


@pytest.mark.parametrize("policy", FOLLOWING)
def test_links_inside_a_symlinked_root_may_use_either_spelling(
    tmp_path: Path, policy: SymlinkPolicy
) -> None:
    real = tmp_path / "real_root"
    real.mkdir()
    (real / "f.txt").write_bytes(b"F\n")
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    (real / "via_real").symlink_to(real / "f.txt")
    (real / "via_alias").symlink_to(alias / "f.txt")
    with resolver([alias], policy) as res:
        assert read_ok(res, f"{alias}/via_real") == b"F\n"
        assert read_ok(res, f"{alias}/via_alias") == b"F\n"


async def test_root_given_through_a_symlink_via_manager(
    tmp_path: Path, make_manager: ManagerFactory
) -> None:
    real = tmp_path / "real_root"
    real.mkdir()
    (real / "f.txt").write_bytes(b"F\n")
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    manager = make_manager(roots=[str(alias)])
    got = await manager.get_snippets(
        [SnippetRequest(f"{alias}/f.txt"), SnippetRequest(f"{real}/f.txt")]
    )
    assert got == [Snippet("F\n", b3(b"F\n"))] * 2


# == non-regular files and missing files ==========================================================


@pytest.mark.timeout(10)
@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_fifo_is_not_a_file_and_does_not_block(tree: Tree, policy: SymlinkPolicy) -> None:
    os.mkfifo(tree.root / "fifo")
    os.mkfifo(tree.root / "sub" / "fifo2")
    started = time.monotonic()
    with resolver([tree.root], policy) as res:
        assert read_err(res, tree.r("fifo")).kind is ErrorKind.NotAFile
        assert read_err(res, tree.r("sub/fifo2")).kind is ErrorKind.NotAFile
        assert read_err(res, tree.r("fifo/x")).kind is ErrorKind.NotFound
    assert time.monotonic() - started < 5


@pytest.mark.timeout(10)
async def test_fifo_via_manager_does_not_block(tree: Tree, make_manager: ManagerFactory) -> None:
    os.mkfifo(tree.root / "fifo")
    (tree.root / "to_fifo").symlink_to("fifo")
    manager = make_manager(roots=[str(tree.root)])
    started = time.monotonic()
    snippets = await manager.get_snippets(
        [SnippetRequest(tree.r("fifo")), SnippetRequest(tree.r("to_fifo"))]
    )
    hashes = await manager.hash_files([tree.r("fifo")])
    assert time.monotonic() - started < 5
    for result in [*snippets, *hashes]:
        assert isinstance(result, PlokeIoError)
        assert result.kind is ErrorKind.NotAFile


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_directory_is_not_a_file(tree: Tree, policy: SymlinkPolicy) -> None:
    with resolver([tree.root], policy) as res:
        assert read_err(res, tree.r("sub")).kind is ErrorKind.NotAFile
        assert read_err(res, tree.r("realdir/deep")).kind is ErrorKind.NotAFile
        assert read_err(res, str(tree.root)).kind is ErrorKind.NotAFile
        assert read_err(res, tree.r("")).kind is ErrorKind.NotAFile
        assert read_err(res, tree.r(".")).kind is ErrorKind.NotAFile


def test_unix_socket_is_not_a_file(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bind through a short relative name: the tmp path may exceed the sun_path limit.
    monkeypatch.chdir(tree.root / "sub")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind("sock")
        assert stat.S_ISSOCK(os.lstat(tree.root / "sub" / "sock").st_mode)
        for policy in ALL_POLICIES:
            assert_err([tree.root], policy, tree.r("sub/sock"), ErrorKind.NotAFile)


def test_device_is_not_a_file(tree: Tree) -> None:
    try:
        os.mknod(tree.root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here: {exc}")
    assert_err([tree.root], DENY_CROSS, tree.r("null"), ErrorKind.NotAFile)


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize(
    "rel",
    ["missing.txt", "sub/missing.txt", "nodir/x.txt", "nodir/deeper/x.txt", "sub/../missing.txt"],
)
def test_missing_file_is_not_found(tree: Tree, policy: SymlinkPolicy, rel: str) -> None:
    assert_err([tree.root], policy, tree.r(rel), ErrorKind.NotFound)


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize("rel", ["file.txt/x", "file.txt/x/y", "sub/inner.txt/x"])
def test_path_under_a_regular_file_is_not_found(
    tree: Tree, policy: SymlinkPolicy, rel: str
) -> None:
    assert_err([tree.root], policy, tree.r(rel), ErrorKind.NotFound)


def test_messages_name_the_path_relative_to_the_root(tree: Tree) -> None:
    with resolver([tree.root]) as res:
        for rel in ("sub/missing.txt", "sub", "file.txt/x"):
            err = read_err(res, tree.r(rel))
            assert err.message.startswith(f"{rel}:"), err.message
            assert str(tree.root) not in err.message


# == the directory descriptor cache ===============================================================


def _nested_files(root: Path) -> dict[str, bytes]:
    """50 files in 5 nested directories d0/d1/d2/d3/d4; returns rel path -> content."""
    files: dict[str, bytes] = {}
    rel = ""
    for depth in range(5):
        rel = f"{rel}d{depth}/"
        (root / rel).mkdir()
        for n in range(10):
            name = f"{rel}f{n}.txt"
            data = f"depth {depth} file {n} ({name})\n".encode()
            (root / name).write_bytes(data)
            files[name] = data
    return files


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_resolver_reused_for_many_paths(tree: Tree, policy: SymlinkPolicy) -> None:
    files = _nested_files(tree.root)
    assert len(files) == 50
    (tree.root / "real").mkdir()
    (tree.root / "real" / "x").write_bytes(b"real x\n")
    (tree.root / "link").symlink_to("../outside")
    (tree.root / "alias").symlink_to("real")
    (tree.outside / "x").write_bytes(b"outside x\n")
    with resolver([tree.root], policy) as res:
        for _ in range(3):
            for rel, data in files.items():
                assert read_ok(res, tree.r(rel)) == data
            # Mixed spellings of the same files through the cache.
            assert read_ok(res, tree.r("d0/d1/../d1/f3.txt")) == files["d0/d1/f3.txt"]
            assert read_ok(res, tree.r("d0//d1/f4.txt")) == files["d0/d1/f4.txt"]
        assert read_ok(res, tree.r("real/x")) == b"real x\n"
        # The policy still applies to other spellings after real/ is in the cache.
        err = read_err(res, tree.r("link/x"))
        assert err.kind is OUTSIDE
        assert_no_leak(err, tree)
        if policy is DENY:
            assert read_err(res, tree.r("alias/x")).kind is OUTSIDE
        else:
            assert read_ok(res, tree.r("alias/x")) == b"real x\n"
        assert read_err(res, tree.r("link/x")).kind is OUTSIDE
        assert read_err(res, tree.r("d0/../link/x")).kind is OUTSIDE
        assert read_err(res, tree.r("d0/d1/missing")).kind is ErrorKind.NotFound


def test_directory_swapped_for_a_symlink_during_a_batch_never_escapes(tree: Tree) -> None:
    (tree.root / "real").mkdir()
    (tree.root / "real" / "x").write_bytes(b"real x\n")
    (tree.outside / "x").write_bytes(b"outside x\n")
    with resolver([tree.root]) as res:
        assert read_ok(res, tree.r("real/x")) == b"real x\n"
        os.rename(tree.root / "real", tree.root / "old")
        (tree.root / "real").symlink_to("../outside")
        # The batch may keep using the directory it already opened (inside the root), or
        # refuse; it must never follow the new symlink out of the root.
        for rel in ("real/x", "real/secret.txt", "real/../real/x"):
            try:
                assert read_ok(res, tree.r(rel)) == b"real x\n"
            except PlokeIoError as err:
                assert err.kind in (OUTSIDE, ErrorKind.NotFound), err
                assert_no_leak(err, tree, rel)
    with resolver([tree.root]) as fresh:
        assert read_err(fresh, tree.r("real/x")).kind is OUTSIDE


async def test_many_files_via_manager(tree: Tree, make_manager: ManagerFactory) -> None:
    files = _nested_files(tree.root)
    (tree.root / "link").symlink_to("../outside")
    manager = make_manager(roots=[str(tree.root)])
    paths = [tree.r(rel) for rel in files] + [tree.r("link/secret.txt")]
    got = await manager.get_snippets([SnippetRequest(p) for p in paths])
    assert got[:-1] == [Snippet(d.decode(), b3(d)) for d in files.values()]
    assert isinstance(got[-1], PlokeIoError)
    assert got[-1].kind is OUTSIDE
    hashes = await manager.hash_files(paths)
    assert hashes[:-1] == [FileHash(b3(d), len(d)) for d in files.values()]
    assert isinstance(hashes[-1], PlokeIoError)
    assert hashes[-1].kind is OUTSIDE


# == size limit ===================================================================================


async def test_too_large(tmp_path: Path, make_manager: ManagerFactory) -> None:
    (tmp_path / "eleven").write_bytes(b"x" * 11)
    (tmp_path / "ten").write_bytes(b"y" * 10)
    manager = make_manager(roots=[str(tmp_path)], max_file_bytes=10)
    got = await manager.get_snippets(
        [
            SnippetRequest(f"{tmp_path}/eleven"),
            SnippetRequest(f"{tmp_path}/eleven", None, 0, 1),
            SnippetRequest(f"{tmp_path}/ten"),
        ]
    )
    for err in got[:2]:
        assert isinstance(err, PlokeIoError)
        assert err.kind is ErrorKind.TooLarge
        assert err.data == {"size": 11, "limit": 10}
        assert str(tmp_path) not in err.message
    assert got[2] == Snippet("y" * 10, b3(b"y" * 10))
    hashes = await manager.hash_files([f"{tmp_path}/eleven", f"{tmp_path}/ten"])
    assert isinstance(hashes[0], PlokeIoError)
    assert hashes[0].kind is ErrorKind.TooLarge
    assert hashes[1] == FileHash(b3(b"y" * 10), 10)


async def test_zero_max_file_bytes_allows_only_empty_files(
    tmp_path: Path, make_manager: ManagerFactory
) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "one").write_bytes(b"1")
    manager = make_manager(roots=[str(tmp_path)], max_file_bytes=0)
    got = await manager.hash_files([f"{tmp_path}/empty", f"{tmp_path}/one"])
    assert got[0] == FileHash(b3(b""), 0)
    assert isinstance(got[1], PlokeIoError)
    assert got[1].kind is ErrorKind.TooLarge


# == UTF-8 ranges, hashes and ordering ============================================================

# a(1) é(2) €(3) 😀(4) z(1): byte offsets a=0, é=1..3, €=3..6, 😀=6..10, z=10..11
TEXT = "aé€😀z"
DATA = TEXT.encode()
assert len(DATA) == 11


@pytest.fixture
def utf8_root(tmp_path: Path) -> Path:
    root = tmp_path / "u"
    root.mkdir()
    (root / "multi.txt").write_bytes(DATA)
    (root / "ascii.txt").write_bytes(b"hello world\n")
    (root / "bad.txt").write_bytes(b"ab\xffcd")
    (root / "empty.txt").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [
        (0, 1, "a"),
        (1, 3, "é"),
        (3, 6, "€"),
        (6, 10, "😀"),
        (10, 11, "z"),
        (0, 11, TEXT),
        (1, 10, "é€😀"),
        (0, 0, ""),
        (3, 3, ""),
        (11, 11, ""),
        (None, None, TEXT),
        (3, None, "€😀z"),  # startByte alone reads to the end
        (11, None, ""),
        (None, 6, "aé€"),  # endByte alone reads from 0
        (None, 0, ""),
    ],
)
async def test_utf8_range_on_boundaries(
    utf8_root: Path, make_manager: ManagerFactory, start: int | None, end: int | None, text: str
) -> None:
    manager = make_manager(roots=[str(utf8_root)])
    got = await manager.get_snippets([SnippetRequest(f"{utf8_root}/multi.txt", None, start, end)])
    assert got == [Snippet(text, b3(DATA))]


async def assert_invalid_range(
    make_manager: ManagerFactory, root: Path, name: str, start: int | None, end: int | None
) -> None:
    manager = make_manager(roots=[str(root)])
    [got] = await manager.get_snippets([SnippetRequest(f"{root}/{name}", None, start, end)])
    assert isinstance(got, PlokeIoError)
    assert got.kind is ErrorKind.InvalidRange


@pytest.mark.parametrize(
    ("start", "end"),
    [(2, 3), (1, 2), (0, 2), (4, 6), (3, 5), (7, 10), (6, 9), (0, 8), (2, None), (None, 7)],
)
async def test_utf8_range_splitting_a_character(
    utf8_root: Path, make_manager: ManagerFactory, start: int | None, end: int | None
) -> None:
    await assert_invalid_range(make_manager, utf8_root, "multi.txt", start, end)


@pytest.mark.parametrize(
    ("name", "start", "end"),
    [
        *[
            (name, start, end)
            for name in ("multi.txt", "ascii.txt")
            for start, end in [(5, 3), (1, 0), (11, 10), (0, 100), (100, None), (None, 13)]
        ],
        ("multi.txt", 0, 12),  # multi.txt is 11 bytes long
        ("multi.txt", 12, None),
        ("ascii.txt", 0, 13),  # ascii.txt is 12 bytes long
        ("ascii.txt", 13, None),
        ("empty.txt", 0, 1),
        ("empty.txt", 1, None),
    ],
)
async def test_range_out_of_order_or_past_the_end(
    utf8_root: Path, make_manager: ManagerFactory, name: str, start: int | None, end: int | None
) -> None:
    await assert_invalid_range(make_manager, utf8_root, name, start, end)


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [(6, None, "world\n"), (None, 5, "hello"), (6, 11, "world"), (12, 12, ""), (None, None, None)],
)
async def test_ascii_ranges(
    utf8_root: Path, make_manager: ManagerFactory, start: int | None, end: int | None, text: str
) -> None:
    data = b"hello world\n"
    manager = make_manager(roots=[str(utf8_root)])
    got = await manager.get_snippets([SnippetRequest(f"{utf8_root}/ascii.txt", None, start, end)])
    assert got == [Snippet(data.decode() if text is None else text, b3(data))]


@pytest.mark.parametrize(
    "raw", [b"ab\xffcd", b"\xc0\xaf", b"\xed\xa0\x80", b"ok\xe2\x82", b"\x80", b"\xf5\x80\x80\x80"]
)
async def test_not_utf8(tmp_path: Path, make_manager: ManagerFactory, raw: bytes) -> None:
    (tmp_path / "bad").write_bytes(raw)
    manager = make_manager(roots=[str(tmp_path)])
    got = await manager.get_snippets(
        [SnippetRequest(f"{tmp_path}/bad"), SnippetRequest(f"{tmp_path}/bad", None, 0, 1)]
    )
    for item in got:
        assert isinstance(item, PlokeIoError)
        assert item.kind is ErrorKind.NotUtf8
    # Hashing does not care about the encoding.
    assert await manager.hash_files([f"{tmp_path}/bad"]) == [FileHash(b3(raw), len(raw))]


async def test_hash_mismatch_is_content_mismatch(
    utf8_root: Path, make_manager: ManagerFactory
) -> None:
    manager = make_manager(roots=[str(utf8_root)])
    path = f"{utf8_root}/multi.txt"
    wrong = "0" * 64
    actual = b3(DATA)
    got = await manager.get_snippets(
        [
            SnippetRequest(path, wrong),
            SnippetRequest(path, actual, 1, 3),
            SnippetRequest(path, wrong, 1, 3),
            SnippetRequest(path, "not even hex"),
            SnippetRequest(path, actual),
        ]
    )
    assert got[1] == Snippet("é", actual)
    assert got[4] == Snippet(TEXT, actual)
    for i, expected in ((0, wrong), (2, wrong), (3, "not even hex")):
        err = got[i]
        assert isinstance(err, PlokeIoError)
        assert err.kind is ErrorKind.ContentMismatch
        assert err.data == {"expected": expected, "actual": actual}
    [hashed] = await manager.hash_files([path])
    assert hashed == FileHash(actual, 11)


async def test_hash_mismatch_takes_precedence_over_range_and_encoding(
    utf8_root: Path, make_manager: ManagerFactory
) -> None:
    manager = make_manager(roots=[str(utf8_root)])
    got = await manager.get_snippets(
        [
            SnippetRequest(f"{utf8_root}/multi.txt", "f" * 64, 2, 3),
            SnippetRequest(f"{utf8_root}/bad.txt", "f" * 64),
        ]
    )
    assert [e.kind for e in got if isinstance(e, PlokeIoError)] == [ErrorKind.ContentMismatch] * 2


async def test_hash_is_blake3_as_b3sum_prints(
    utf8_root: Path, make_manager: ManagerFactory
) -> None:
    manager = make_manager(roots=[str(utf8_root)])
    got = await manager.hash_files([f"{utf8_root}/empty.txt"])
    # The published BLAKE3 digest of the empty input.
    assert got == [FileHash("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", 0)]
    [snippet] = await manager.get_snippets([SnippetRequest(f"{utf8_root}/empty.txt")])
    assert snippet == Snippet("", got[0].file_hash)  # type: ignore[union-attr]


async def test_mixed_batch_keeps_input_order(
    utf8_root: Path, tree: Tree, make_manager: ManagerFactory
) -> None:
    (utf8_root / "sub").mkdir()
    (utf8_root / "sub" / "s.txt").write_bytes(b"sub text\n")
    (utf8_root / "escape").symlink_to(tree.outside / "secret.txt")
    os.mkfifo(utf8_root / "fifo")
    manager = make_manager(roots=[str(utf8_root)], max_file_bytes=1000)
    m, a, s = f"{utf8_root}/multi.txt", f"{utf8_root}/ascii.txt", f"{utf8_root}/sub/s.txt"
    cases: list[tuple[SnippetRequest, Snippet | ErrorKind]] = [
        (SnippetRequest(m, None, 1, 3), Snippet("é", b3(DATA))),
        (SnippetRequest(a, None, 0, 5), Snippet("hello", b3(b"hello world\n"))),
        (SnippetRequest(m, None, 2, 3), ErrorKind.InvalidRange),
        (SnippetRequest(f"{utf8_root}/bad.txt"), ErrorKind.NotUtf8),
        (SnippetRequest(s), Snippet("sub text\n", b3(b"sub text\n"))),
        (SnippetRequest(f"{utf8_root}/missing"), ErrorKind.NotFound),
        (SnippetRequest(m, None, 6, 10), Snippet("😀", b3(DATA))),
        (SnippetRequest(f"{utf8_root}/../outside"), ErrorKind.OutsideRoots),
        (SnippetRequest(a, "0" * 64), ErrorKind.ContentMismatch),
        (SnippetRequest(m, None, 3, None), Snippet("€😀z", b3(DATA))),
        (SnippetRequest("relative/path"), ErrorKind.InvalidPath),
        (SnippetRequest(f"{utf8_root}/escape"), ErrorKind.OutsideRoots),
        (SnippetRequest(a, None, 6, None), Snippet("world\n", b3(b"hello world\n"))),
        (SnippetRequest(f"{utf8_root}/sub"), ErrorKind.NotAFile),
        (SnippetRequest(m, None, 5, 3), ErrorKind.InvalidRange),
        (SnippetRequest(f"{utf8_root}/fifo"), ErrorKind.NotAFile),
        (SnippetRequest(s, None, None, 3), Snippet("sub", b3(b"sub text\n"))),
        (SnippetRequest(m, None, 0, 12), ErrorKind.InvalidRange),
        (SnippetRequest(f"{utf8_root}/empty.txt"), Snippet("", b3(b""))),
        (SnippetRequest(m), Snippet(TEXT, b3(DATA))),
        (SnippetRequest(""), ErrorKind.InvalidPath),
    ]
    got = await manager.get_snippets([req for req, _ in cases])
    assert len(got) == len(cases)
    for i, ((req, want), item) in enumerate(zip(cases, got, strict=True)):
        if isinstance(want, Snippet):
            assert item == want, (i, req)
        else:
            assert isinstance(item, PlokeIoError), (i, req, item)
            assert item.kind is want, (i, req, item)


async def test_input_errors_pass_through(utf8_root: Path, make_manager: ManagerFactory) -> None:
    manager = make_manager(roots=[str(utf8_root)])
    given = PlokeIoError(ErrorKind.InvalidRange, "startByte must be an integer")
    got = await manager.get_snippets([given, SnippetRequest(f"{utf8_root}/ascii.txt", None, 0, 5)])
    assert got[0] is given
    assert got[1] == Snippet("hello", b3(b"hello world\n"))


# == regressions: bugs found by review, now fixed ==============================================


def test_nested_roots_dotdot_onto_the_outer_root(tmp_path: Path) -> None:
    outer = tmp_path / "A"
    (outer / "sub").mkdir(parents=True)
    (outer / "f.txt").write_bytes(b"outer\n")
    assert_read([outer, outer / "sub"], FOLLOW, f"{outer}/sub/../f.txt", b"outer\n")


@pytest.mark.parametrize("suffix", ["/", "/."])
def test_trailing_slash_after_a_regular_file(tree: Tree, suffix: str) -> None:
    with resolver([tree.root]) as res:
        err = read_err(res, tree.r("file.txt" + suffix))
    assert err.kind in (ErrorKind.NotFound, ErrorKind.NotAFile)


def test_trailing_slash_on_a_directory_does_not_depend_on_the_cache(tree: Tree) -> None:
    with resolver([tree.root]) as res:
        assert read_err(res, tree.r("sub/")).kind is ErrorKind.NotAFile
        assert read_ok(res, tree.r("sub/inner.txt")) == b"inner\n"
        assert read_err(res, tree.r("sub/")).kind is ErrorKind.NotAFile


@pytest.mark.parametrize(("start", "end"), [(-1, None), (-5, 11), (-3, -1)])
async def test_negative_offsets_are_invalid_range(
    utf8_root: Path, make_manager: ManagerFactory, start: int | None, end: int | None
) -> None:
    manager = make_manager(roots=[str(utf8_root)])
    for name in ("multi.txt", "ascii.txt"):
        [got] = await manager.get_snippets(
            [SnippetRequest(f"{utf8_root}/{name}", None, start, end)]
        )
        assert isinstance(got, PlokeIoError), got
        assert got.kind is ErrorKind.InvalidRange


def test_short_reads_do_not_truncate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The only simulated part: os.read returns at most 4 bytes per call, as it may.
    data = b"0123456789abcdef"
    (tmp_path / "f").write_bytes(data)
    real_read = os.read
    monkeypatch.setattr(read_mod.os, "read", lambda fd, n: real_read(fd, min(n, 4)))
    with resolver([tmp_path]) as res:
        got, _opened = read_mod.read_file_bytes(res, f"{tmp_path}/f", 1000)
    assert got == data


def test_client_dotdot_after_an_in_root_link_may_cross_roots(tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    (b / "b.txt").write_bytes(b"B\n")
    (a / "l").symlink_to("sub")  # target stays inside A
    with resolver([a, b], DENY_CROSS) as res:
        assert read_ok(res, f"{a}/sub/../../B/b.txt") == b"B\n"  # passes: no link
        assert read_ok(res, f"{a}/l/../../B/b.txt") == b"B\n"  # fails: OutsideRoots


@pytest.mark.parametrize("spelling", ["{base}//root/file.txt", "{base}/./root/file.txt"])
def test_equivalent_spellings_of_the_root_prefix(tree: Tree, spelling: str) -> None:
    assert_read([tree.root], DENY_CROSS, spelling.format(base=tree.base), b"hello\n")
