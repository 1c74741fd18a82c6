"""Path policy: which paths may be touched, and a race-free way to open them.

Every path goes through a :class:`Resolver`, which walks it one component at a time from a
directory file descriptor of its root, opening each directory with ``O_NOFOLLOW`` and the
final file with ``O_NOFOLLOW`` relative to its parent's descriptor. The containment check and
the open are therefore the same operation: a symlink or directory swapped in during the walk
is seen as a symlink (and judged by the policy), never followed blindly. Symlinks are followed
by reading them and continuing the walk, under the :class:`~ploke_io_server.config.SymlinkPolicy`.

``..`` is taken physically inside a root; at the top of a root it continues lexically from the
root's canonical parent and is only allowed to come back into a root (``/r/../r/a`` is fine,
``/r/../etc`` is OutsideRoots).

Where Linux has ``openat2`` (5.6+), a path's directories, when they are plain names, are opened
in one call with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``: the kernel does the same walk, one
component at a time, and fails at the first symlink; that path, or any other failure, goes
through the component-by-component walk, which applies the policy and words the error.

A Resolver caches directory descriptors for one batch (keyed by the physical component path
under the root, which is only ever reached without following a symlink), so a batch of files in
the same directories costs one ``openat`` per file. Messages name paths relative to the root
as the client spelled them, never a resolved path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import attrs

from .config import SymlinkPolicy
from .errors import ErrorKind, PlokeIoError, from_os_error

__all__ = [
    "MAX_SYMLINK_HOPS",
    "Located",
    "OpenedFile",
    "PathPolicy",
    "Resolver",
    "Root",
    "RootCache",
    "check_path_string",
]

MAX_SYMLINK_HOPS = 40
_DIR_CACHE_MAX = 512
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_DIR_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _O_CLOEXEC
_BENEATH_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
"""A file's directory opened by ``openat2``: for reading, not O_PATH, so that a write can
fsync the directory through it (write.fsync_dir) instead of opening it again. A directory
that cannot be read fails, and the component walk (O_PATH) takes over: its fsync would fail
either way."""

T = TypeVar("T")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every Linux architecture (5.6+)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


def _load_openat2() -> Callable[[int, str], int] | None:
    """``openat2(dir_fd, path, _DIR_FLAGS, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``: a whole
    directory path opened in one system call, failing (ELOOP) wherever a symlink is met, or
    None where the system call is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    how = _OpenHow(
        _BENEATH_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
    )
    how_ref = ctypes.byref(how)
    size = ctypes.c_size_t(ctypes.sizeof(how))
    nr = ctypes.c_long(_SYS_OPENAT2)

    def openat2(dir_fd: int, path: str) -> int:
        fd: int = syscall(nr, ctypes.c_int(dir_fd), os.fsencode(path), how_ref, size)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return fd

    top = os.open("/", _DIR_FLAGS)
    try:  # ENOSYS (old kernel), EPERM (seccomp filters that predate it)
        os.close(openat2(top, "."))
    except OSError:
        return None
    finally:
        os.close(top)
    return openat2


_openat2 = _load_openat2()


@attrs.frozen
class Root:
    """An allowed root: ``path`` as configured (absolute, normalised) and its ``real`` path."""

    path: str
    real: str

    @classmethod
    def of(cls, path: str) -> Root:
        path = os.path.normpath(os.path.abspath(path))
        return cls(path=path, real=os.path.realpath(path))

    def spellings(self) -> tuple[str, ...]:
        return (self.path,) if self.path == self.real else (self.path, self.real)


def _under(path: str, prefix: str) -> str | None:
    """The rest of ``path`` below ``prefix`` ('' for the prefix itself), or None."""
    if path == prefix:
        return ""
    if prefix == "/":
        return path[1:]
    if path.startswith(prefix) and path[len(prefix)] == "/":
        return path[len(prefix) + 1 :]
    return None


@functools.lru_cache(maxsize=64)
def _prefix_table(roots: tuple[Root, ...]) -> tuple[tuple[str, int], ...]:
    """Every spelling of every root as ``prefix + "/"``, longest (deepest) first."""
    table = [
        (prefix.rstrip("/") + "/", i) for i, root in enumerate(roots) for prefix in root.spellings()
    ]
    return tuple(sorted(table, key=lambda item: -len(item[0])))


def check_path_string(path: object) -> str:
    """Reject what is not an absolute path string (InvalidPath) before any lookup."""
    if not isinstance(path, str):
        raise PlokeIoError(ErrorKind.InvalidPath, "filePath must be a string")
    if not path:
        raise PlokeIoError(ErrorKind.InvalidPath, "filePath is empty")
    if "\x00" in path:
        raise PlokeIoError(ErrorKind.InvalidPath, "filePath contains a NUL byte")
    if not path.startswith("/"):
        raise PlokeIoError(ErrorKind.InvalidPath, f"{path!r} is not an absolute path")
    return path


@attrs.frozen
class PathPolicy:
    """Roots plus symlink policy: the rules of one session."""

    roots: tuple[Root, ...]
    symlink_policy: SymlinkPolicy = SymlinkPolicy.DENY_CROSS_ROOT

    @classmethod
    def of(cls, roots: Iterable[str], symlink_policy: SymlinkPolicy) -> PathPolicy:
        return cls(roots=tuple(Root.of(r) for r in roots), symlink_policy=symlink_policy)

    def root_paths(self) -> list[str]:
        return [r.path for r in self.roots]

    def match(self, path: str) -> tuple[int, str] | None:
        """The (root index, rest) of the deepest root containing ``path`` lexically."""
        for prefix, index in _prefix_table(self.roots):
            if path.startswith(prefix):
                return index, path[len(prefix) :]
            if path == prefix[:-1]:
                return index, ""
        return None

    def root_at(self, path: str) -> int | None:
        """The index of the root whose path (either spelling) is exactly ``path``."""
        for i, root in enumerate(self.roots):
            if path in root.spellings():
                return i
        return None

    def contains_dir(self, directory: str) -> bool:
        """True if the directory (after resolving symlinks) lies inside one of the roots."""
        real = os.path.realpath(directory)
        return any(_under(real, r.real) is not None for r in self.roots)

    def narrow(self, requested: Sequence[str]) -> tuple[PathPolicy, list[str]]:
        """Keep the requested roots that lie inside this policy's roots; report the others."""
        kept: list[Root] = []
        rejected: list[str] = []
        for raw in requested:
            root = Root.of(raw)
            if os.path.isdir(root.real) and self.contains_dir(root.real):
                if root not in kept:
                    kept.append(root)
            else:
                rejected.append(raw)
        if not kept:
            return self, rejected
        return attrs.evolve(self, roots=tuple(kept)), rejected


@attrs.define(slots=True)
class Located:
    """Where a file is (or is to be): its directory's descriptor, owned by the caller, and
    its name there. ``st`` is the file's lstat, None if it does not exist."""

    dir_fd: int
    name: str
    shown: str
    st: os.stat_result | None


@attrs.define(slots=True)
class OpenedFile:
    """A regular file opened for reading; the caller closes ``fd``."""

    fd: int
    size: int
    shown: str
    st: os.stat_result


class _FollowLink(Exception):
    """Raised by a final-component operation when it met a symlink."""


class RootCache:
    """Open descriptors of root directories, shared by the batches of one engine.

    Opening a root safely walks its canonical path from ``/`` (one ``openat`` per component);
    a cached descriptor is reused while an ``lstat`` of the root's path still names the same
    directory (device and inode). A root that was replaced is opened again; the old
    descriptor is kept open until :meth:`close`, since a batch may still be using it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: dict[str, tuple[int, int, int]] = {}
        self._retired: list[int] = []

    def fd_for(self, real: str, shown: str) -> int:
        try:
            st = os.stat(real, follow_symlinks=False)
        except OSError:
            st = None
        cached = self._fds.get(real)
        if cached is not None and st is not None and (st.st_dev, st.st_ino) == cached[1:]:
            return cached[0]
        fd = _open_root(real, shown)
        fst = os.fstat(fd)
        with self._lock:
            old = self._fds.get(real)
            self._fds[real] = (fd, fst.st_dev, fst.st_ino)
            if old is not None:
                self._retired.append(old[0])
        return fd

    def close(self) -> None:
        with self._lock:
            fds = [v[0] for v in self._fds.values()] + self._retired
            self._fds.clear()
            self._retired.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class Resolver:
    """Resolves and opens paths for one batch under a :class:`PathPolicy`.

    Thread-safe: the executor's workers share it. Close it only when they are done.
    """

    def __init__(self, policy: PathPolicy, roots: RootCache | None = None) -> None:
        self.policy = policy
        self._shared_roots = roots
        self._root_fds: dict[int, int] = {}
        self._owned_roots: list[int] = []
        self._dirs: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fds = list(self._dirs.values()) + self._owned_roots
            self._dirs.clear()
            self._root_fds.clear()
            self._owned_roots = []
        for fd in fds:
            os.close(fd)

    # -- public operations -------------------------------------------------------------------

    def open_read(self, path: str) -> OpenedFile:
        """Open a regular file for reading (O_NOFOLLOW, non-blocking for FIFOs)."""
        return self.walk(path, _open_regular)

    def stat(self, path: str) -> os.stat_result:
        """The stat of a regular file (symlinks followed under the policy), without opening it."""
        return self.walk(path, _stat_regular)

    def locate(self, path: str, *, follow_last: bool = True) -> Located:
        """Resolve ``path`` to its directory (a descriptor the caller closes) and name.

        The last component may be missing (a file to create). If present it must be a regular
        file; a symlink there is followed under the policy, or, with ``follow_last=False``,
        reported as it is (``st`` is its lstat: a create must not go through it).
        """
        return self.walk(path, _locate if follow_last else _locate_nofollow)

    def directory(self, path: str, *, create: bool = False) -> int:
        """A descriptor (the caller closes it) of the directory ``path``, made if ``create``
        and missing (with its missing parents, each made relative to its verified parent)."""

        def final(dir_fd: int, name: str, shown: str) -> int:
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise _FollowLink from None
                    raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a directory") from None
                if exc.errno == errno.ENOENT and create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=dir_fd)
                        _fsync_dir_fd(dir_fd)  # the new entry is durable in its parent
                    return final(dir_fd, name, shown)
                raise from_os_error(exc, shown) from None

        matched = self.policy.match(path) if isinstance(path, str) else None
        if matched is not None and not matched[1]:  # a root itself
            return _dup(self._root_fd(matched[0], "."), ".")
        try:
            return self.walk(path, final)
        except PlokeIoError as err:
            parent = os.path.dirname(path.rstrip("/"))
            if not create or err.kind is not ErrorKind.NotFound or parent == path:
                raise
        os.close(self.directory(parent, create=True))
        return self.walk(path, final)

    def shown(self, path: str) -> str:
        """The root-relative spelling of ``path`` used in messages."""
        m = self.policy.match(path) if isinstance(path, str) else None
        return (m[1] or ".") if m else path

    # -- the walk ------------------------------------------------------------------------------

    def walk(self, path: str, final: Callable[[int, str, str], T]) -> T:
        """Resolve ``path`` under the policy and apply ``final(dir_fd, name, shown)``.

        ``final`` raises :class:`_FollowLink` when the last component is a symlink; the walk
        then follows it (if the policy allows) and calls ``final`` again on the target.
        Any OS error on the way (EMFILE, EIO, ENOSPC of a ``mkdir``...) is an item error.
        """
        check_path_string(path)
        try:
            return self._walk(path, final)
        except OSError as exc:
            raise from_os_error(exc, self.shown(path)) from None

    def _walk(self, path: str, final: Callable[[int, str, str], T]) -> T:
        if "//" in path or "/./" in path or path.endswith("/."):
            # POSIX: repeated slashes and "." components change nothing; fold them so the root
            # prefix matches however the client spelled it. ".." is left to the walk.
            parts = [c for c in path.split("/") if c and c != "."]
            tail = "/" if path.endswith(("/", "/.")) and parts else ""
            path = "/" + "/".join(parts) + tail
        matched = self.policy.match(path)
        if matched is None:
            raise PlokeIoError(ErrorKind.OutsideRoots, f"{path!r} is not under any allowed root")
        root, rest = matched
        shown = rest or "."
        # Fast path: a plain path whose parent directory this batch has already opened.
        if rest and "/." not in rest and rest[0] != "." and rest[-1] != "/":
            cut = rest.rfind("/")
            if cut < 0:
                fd: int | None = self._root_fd(root, shown)
            else:
                fd = self._dirs.get((root, rest[:cut]))
                if fd is None and _openat2 is not None:
                    fd = self._open_beneath(root, rest[:cut], shown)
            if fd is not None:
                try:
                    return final(fd, rest[cut + 1 :], shown)
                except _FollowLink:
                    pass
        return self._slow_walk(root, rest, shown, final)

    def _slow_walk(
        self, root: int, rest: str, shown: str, final: Callable[[int, str, str], T]
    ) -> T:
        policy = self.policy.symlink_policy
        queue: deque[str] = deque(c for c in rest.split("/") if c and c != ".")
        # A trailing "/" (or "/.") names a directory: the last component must be one.
        want_dir = rest.endswith(("/", "/.")) or rest == "."
        names: list[str] = []  # physical components below the root
        fds: list[int] = []  # the descriptor of each component in ``names``
        owned: list[int] = []  # descriptors this walk opened and could not cache
        outside: list[str] | None = None  # lexical position while above every root
        link_root = root  # the root of the symlink whose target is being walked
        from_link = 0  # how many queued components came from symlink targets
        hops = 0
        try:
            while queue:
                comp = queue.popleft()
                in_link = from_link > 0
                if in_link:
                    from_link -= 1
                if outside is None and comp != "..":
                    parent = fds[-1] if fds else self._root_fd(root, shown)
                    if queue or want_dir:
                        names.append(comp)
                        cached = self._dirs.get((root, "/".join(names)))
                        if cached is not None:
                            fds.append(cached)
                            continue
                        child = self._open_dir(parent, comp, shown)
                        if child is not None:
                            fds.append(self._remember(root, names, child, owned))
                            continue
                        names.pop()
                        target = self._read_link(parent, comp, shown, policy)
                    else:
                        try:
                            return final(parent, comp, shown)
                        except _FollowLink:
                            target = self._read_link(parent, comp, shown, policy)
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise PlokeIoError(
                            ErrorKind.Io, f"{shown}: too many levels of symbolic links"
                        )
                    link_root = root
                    if target.startswith("/"):
                        m = self._match_target(target, link_root, policy)
                        if m is None:
                            elsewhere = self.policy.match(target) is not None
                            raise _outside(
                                shown,
                                "symlink target is in another root (symlinkPolicy denyCrossRoot)"
                                if elsewhere
                                else "symlink target is outside the allowed roots",
                            )
                        root, names, fds = m[0], [], []
                        target = m[1]
                    parts = [c for c in target.split("/") if c and c != "."]
                    queue.extendleft(reversed(parts))
                    from_link += len(parts)
                    continue
                # ".." and everything above the roots: physical inside a root, lexical outside.
                if outside is None:
                    if names:
                        names.pop()
                        fds.pop()
                        continue
                    outside = self.policy.roots[root].real.split("/")[1:-1]
                elif comp == "..":
                    if outside:
                        outside.pop()
                else:
                    outside.append(comp)
                again = self.policy.root_at("/" + "/".join(outside))
                if again is not None:
                    if in_link and again != link_root and policy is SymlinkPolicy.DENY_CROSS_ROOT:
                        raise _outside(shown, "symlink target leaves its root")
                    root, names, fds, outside = again, [], [], None
            if outside is not None:
                why = "symlink target leaves the roots" if hops else "path leaves the roots"
                raise _outside(shown, why)
            raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a regular file (a directory)")
        finally:
            for fd in owned:
                os.close(fd)

    # -- helpers -------------------------------------------------------------------------------

    def _match_target(
        self, target: str, link_root: int, policy: SymlinkPolicy
    ) -> tuple[int, str] | None:
        """Where an absolute symlink target lands: its own root, or (policy) any root."""
        if policy is SymlinkPolicy.DENY_CROSS_ROOT:
            for prefix in self.policy.roots[link_root].spellings():
                rest = _under(target, prefix)
                if rest is not None:
                    return link_root, rest
            return None
        return self.policy.match(target)

    def _root_fd(self, root: int, shown: str) -> int:
        fd = self._root_fds.get(root)
        if fd is not None:
            return fd
        real = self.policy.roots[root].real
        if self._shared_roots is not None:
            fd = self._shared_roots.fd_for(real, shown)
            self._root_fds[root] = fd  # owned by the cache: not closed by this Resolver
            return fd
        fd = _open_root(real, shown)
        with self._lock:
            if self._closed:
                os.close(fd)
                raise PlokeIoError(ErrorKind.Io, f"{shown}: operation cancelled")
            existing = self._root_fds.setdefault(root, fd)
            if existing == fd:
                self._owned_roots.append(fd)
        if existing != fd:
            os.close(fd)
        return existing

    def _open_beneath(self, root: int, dir_path: str, shown: str) -> int | None:
        """The directory ``dir_path`` (plain components under the root) opened in one
        ``openat2`` that refuses any symlink on the way, and cached for the batch; None when
        that fails for any reason (a symlink, a missing directory...): the component-by-
        component walk then does the work, the policy and the error message."""
        assert _openat2 is not None
        try:
            fd = _openat2(self._root_fd(root, shown), dir_path)
        except OSError:
            return None
        cached = self._cache_dir((root, dir_path), fd)
        if cached is None:
            os.close(fd)
        return cached

    def _remember(self, root: int, names: list[str], fd: int, owned: list[int]) -> int:
        """Cache a directory descriptor for the batch; returns the descriptor to use."""
        cached = self._cache_dir((root, "/".join(names)), fd)
        if cached is not None:
            return cached
        owned.append(fd)
        return fd

    def _cache_dir(self, key: tuple[int, str], fd: int) -> int | None:
        """Keep ``fd`` as the batch's descriptor of ``key``, or close it for the one another
        worker cached first; returns the descriptor to use, None if it cannot be cached (the
        Resolver is closed, or the cache is full): ``fd`` is then the caller's to close."""
        with self._lock:
            if self._closed:
                return None
            existing = self._dirs.get(key)
            if existing is not None:
                os.close(fd)
                return existing
            if len(self._dirs) >= _DIR_CACHE_MAX:
                return None
            self._dirs[key] = fd
            return fd

    @staticmethod
    def _open_dir(parent: int, name: str, shown: str) -> int | None:
        """Open a directory component; None if it is a symlink."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                try:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except OSError as exc2:
                    raise from_os_error(exc2, shown) from None
                if stat.S_ISLNK(st.st_mode):
                    return None
                raise PlokeIoError(
                    ErrorKind.NotFound, f"{shown}: {name!r} is not a directory"
                ) from None
            raise from_os_error(exc, shown) from None

    @staticmethod
    def _read_link(parent: int, name: str, shown: str, policy: SymlinkPolicy) -> str:
        if policy is SymlinkPolicy.DENY:
            raise _outside(shown, "path goes through a symlink (symlinkPolicy deny)")
        try:
            return os.readlink(name, dir_fd=parent)
        except OSError as exc:
            raise from_os_error(exc, shown) from None


def _open_root(real: str, shown: str) -> int:
    """Open a root by its canonical path, refusing any symlink on the way.

    ``real`` was symlink-free when the root was configured; a symlink there now means the root
    (or a parent) was replaced, and following it would move the whole root elsewhere.
    """
    fd = os.open("/", _DIR_FLAGS)
    try:
        for comp in real.split("/"):
            if not comp:
                continue
            try:
                child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise PlokeIoError(
                        ErrorKind.OutsideRoots,
                        f"{shown}: the root directory was replaced by a symlink or a file",
                    ) from None
                raise from_os_error(exc, shown or ".") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _locate(dir_fd: int, name: str, shown: str) -> Located:
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise from_os_error(exc, shown) from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise _FollowLink
        if not stat.S_ISREG(st.st_mode):
            raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a regular file")
    return Located(_dup(dir_fd, shown), name, shown, st)


def _fsync_dir_fd(dir_fd: int) -> None:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dup(fd: int, shown: str) -> int:
    try:
        return os.dup(fd)
    except OSError as exc:  # EMFILE: too many open files
        raise from_os_error(exc, shown) from None


def _locate_nofollow(dir_fd: int, name: str, shown: str) -> Located:
    try:
        return _locate(dir_fd, name, shown)
    except _FollowLink:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return Located(_dup(dir_fd, shown), name, shown, st)


def _stat_regular(dir_fd: int, name: str, shown: str) -> os.stat_result:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise from_os_error(exc, shown) from None
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISLNK(st.st_mode):
            raise _FollowLink
        raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a regular file")
    return st


def _open_regular(dir_fd: int, name: str, shown: str) -> OpenedFile:
    """Open ``name`` in ``dir_fd`` for reading if it is a regular file (never following a link)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _FollowLink from None
        if exc.errno == errno.ENXIO:  # a socket
            raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a regular file") from None
        raise from_os_error(exc, shown) from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise from_os_error(exc, shown) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PlokeIoError(ErrorKind.NotAFile, f"{shown}: not a regular file")
    return OpenedFile(fd, st.st_size, shown, st)


def _outside(shown: str, why: str) -> PlokeIoError:
    return PlokeIoError(ErrorKind.OutsideRoots, f"{shown}: {why}")
