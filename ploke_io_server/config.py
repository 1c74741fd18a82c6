"""Engine configuration as data: one frozen :class:`Config`, built in one place.

Precedence for every knob is CLI flag > environment > default. The concurrency limit follows
ploke-io: ``--fd-limit`` or ``PLOKE_IO_FD_LIMIT`` (both clamped to 4..=1024), else
``min(100, soft RLIMIT_NOFILE // 3)``, else 50 when the limit cannot be read.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import attrs

__all__ = [
    "DEFAULT_AUTH_TIMEOUT_S",
    "DEFAULT_DEBOUNCE_MS",
    "DEFAULT_FD_LIMIT",
    "DEFAULT_JSON_CACHE_BYTES",
    "DEFAULT_MAX_BATCH_ITEMS",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_RACY_MARGIN_MS",
    "DEFAULT_STAT_CACHE_BYTES",
    "DEFAULT_STAT_CACHE_ENTRIES",
    "FD_LIMIT_ENV",
    "FD_LIMIT_MAX",
    "FD_LIMIT_MIN",
    "Config",
    "ConfigError",
    "SymlinkPolicy",
    "clamp_fd_limit",
    "normalize_roots",
    "resolve_fd_limit",
]

log = logging.getLogger(__name__)

FD_LIMIT_ENV = "PLOKE_IO_FD_LIMIT"
FD_LIMIT_MIN = 4
FD_LIMIT_MAX = 1024
DEFAULT_FD_LIMIT = 50
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_DEBOUNCE_MS = 250
DEFAULT_MAX_BATCH_ITEMS = 100_000
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_AUTH_TIMEOUT_S = 30.0
DEFAULT_JSON_CACHE_BYTES = 32 * 1024 * 1024
DEFAULT_STAT_CACHE_ENTRIES = 262_144
DEFAULT_STAT_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_RACY_MARGIN_MS = 2000


class ConfigError(ValueError):
    """A configuration value that cannot be used (bad root, bad number)."""


class SymlinkPolicy(enum.Enum):
    """How symlinks met while resolving a path are treated."""

    DENY_CROSS_ROOT = "denyCrossRoot"
    """Follow a symlink only if its target stays inside the same root (default)."""
    FOLLOW_WITHIN_ROOTS = "followWithinRoots"
    """Follow a symlink if its target is inside any root."""
    DENY = "deny"
    """Never follow a symlink: a path through one is OutsideRoots."""

    @classmethod
    def parse(cls, value: str) -> SymlinkPolicy:
        for member in cls:
            if member.value == value:
                return member
        choices = ", ".join(m.value for m in cls)
        raise ConfigError(f"unknown symlink policy {value!r} (expected one of: {choices})")


def clamp_fd_limit(value: int) -> int:
    return max(FD_LIMIT_MIN, min(FD_LIMIT_MAX, value))


def _soft_nofile() -> int | None:
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return 10**9
    return int(soft) if soft >= 0 else None


def resolve_fd_limit(
    flag: int | None,
    env: Mapping[str, str],
    soft_nofile: Callable[[], int | None] = _soft_nofile,
) -> int:
    """Apply the fd-limit precedence: flag > env (clamped) > min(100, soft/3) > 50."""
    if flag is not None:
        return clamp_fd_limit(flag)
    raw = env.get(FD_LIMIT_ENV)
    if raw is not None and raw.strip():
        try:
            return clamp_fd_limit(int(raw.strip()))
        except ValueError:
            log.warning("ignoring %s=%r: not an integer", FD_LIMIT_ENV, raw)
    soft = soft_nofile()
    if soft is None:
        return DEFAULT_FD_LIMIT
    return clamp_fd_limit(min(100, soft // 3))


def normalize_roots(roots: Sequence[str], cwd: str | None = None) -> tuple[str, ...]:
    """Absolute, normalised, existing directories in the given order, without duplicates
    (two spellings of one directory, e.g. through a symlink, count as one: the first wins).
    Relative roots are taken from ``cwd`` (default: the process's working directory)."""
    out: list[str] = []
    seen: set[str] = set()
    base = cwd or os.getcwd()
    for raw in roots:
        if not raw or "\x00" in raw:
            raise ConfigError(f"invalid root {raw!r}")
        path = os.path.normpath(os.path.join(base, raw))
        if not os.path.isdir(path):
            raise ConfigError(f"root {raw!r} is not an existing directory")
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)
    return tuple(out)


@attrs.frozen
class Config:
    """Everything the engine needs to know; build it with :meth:`from_sources`."""

    roots: tuple[str, ...]
    symlink_policy: SymlinkPolicy = SymlinkPolicy.DENY_CROSS_ROOT
    fd_limit: int = DEFAULT_FD_LIMIT
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    debounce_ms: int = DEFAULT_DEBOUNCE_MS
    watch: bool = False
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    auth_timeout_s: float = DEFAULT_AUTH_TIMEOUT_S
    """Time a TCP client has, from connecting, to send a valid initialize (token auth)."""
    json_cache_bytes: int = DEFAULT_JSON_CACHE_BYTES
    """Budget of the memo of whole-file texts in JSON form, keyed by content hash (0: off)."""
    stat_cache_entries: int = DEFAULT_STAT_CACHE_ENTRIES
    """Most entries of the stat cache (0: off)."""
    stat_cache_bytes: int = DEFAULT_STAT_CACHE_BYTES
    """Memory budget of the stat cache (estimated per entry); the smaller bound wins."""
    racy_margin_ms: int = DEFAULT_RACY_MARGIN_MS
    """A file changed less than this before it was hashed is not put in the stat cache."""
    trust_watcher: bool = True
    """While the watcher runs, scans confirm files it heard nothing about without a stat."""
    roots_from_cli: bool = True
    """False when the roots are the current-directory default, which a client may replace."""
    symlink_policy_from_cli: bool = False
    """True when the operator chose the policy: it is then a ceiling a client may only tighten."""

    @classmethod
    def from_sources(
        cls,
        *,
        roots: Sequence[str] = (),
        symlink_policy: str | None = None,
        fd_limit: int | None = None,
        max_file_bytes: int | None = None,
        debounce_ms: int | None = None,
        watch: bool = False,
        max_batch_items: int | None = None,
        max_message_bytes: int | None = None,
        auth_timeout_s: float | None = None,
        json_cache_bytes: int | None = None,
        stat_cache_entries: int | None = None,
        stat_cache_bytes: int | None = None,
        racy_margin_ms: int | None = None,
        trust_watcher: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Config:
        """Build a Config from CLI values (None = not given) and the environment."""
        env = os.environ if env is None else env
        given = list(roots)
        normalized = normalize_roots(given or [cwd or os.getcwd()], cwd)
        if max_file_bytes is not None and max_file_bytes < 0:
            raise ConfigError("--max-file-bytes must not be negative")
        if debounce_ms is not None and debounce_ms < 0:
            raise ConfigError("--debounce-ms must not be negative")
        if max_batch_items is not None and max_batch_items < 1:
            raise ConfigError("--max-batch-items must be at least 1")
        if json_cache_bytes is not None and json_cache_bytes < 0:
            raise ConfigError("--json-cache-bytes must not be negative")
        if stat_cache_entries is not None and stat_cache_entries < 0:
            raise ConfigError("--stat-cache-entries must not be negative")
        if stat_cache_bytes is not None and stat_cache_bytes < 0:
            raise ConfigError("--stat-cache-bytes must not be negative")
        if racy_margin_ms is not None and racy_margin_ms < 0:
            raise ConfigError("--racy-margin-ms must not be negative")
        if auth_timeout_s is not None and auth_timeout_s <= 0:
            raise ConfigError("--auth-timeout must be positive")
        if max_message_bytes is not None and max_message_bytes < 1024:
            raise ConfigError("--max-message-bytes must be at least 1024")
        return cls(
            roots=normalized,
            symlink_policy=SymlinkPolicy.parse(symlink_policy)
            if symlink_policy
            else SymlinkPolicy.DENY_CROSS_ROOT,
            fd_limit=resolve_fd_limit(fd_limit, env),
            max_file_bytes=DEFAULT_MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes,
            debounce_ms=DEFAULT_DEBOUNCE_MS if debounce_ms is None else debounce_ms,
            watch=watch,
            max_batch_items=max_batch_items or DEFAULT_MAX_BATCH_ITEMS,
            max_message_bytes=max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
            auth_timeout_s=auth_timeout_s or DEFAULT_AUTH_TIMEOUT_S,
            json_cache_bytes=DEFAULT_JSON_CACHE_BYTES
            if json_cache_bytes is None
            else json_cache_bytes,
            stat_cache_entries=DEFAULT_STAT_CACHE_ENTRIES
            if stat_cache_entries is None
            else stat_cache_entries,
            stat_cache_bytes=DEFAULT_STAT_CACHE_BYTES
            if stat_cache_bytes is None
            else stat_cache_bytes,
            racy_margin_ms=DEFAULT_RACY_MARGIN_MS if racy_margin_ms is None else racy_margin_ms,
            trust_watcher=trust_watcher,
            roots_from_cli=bool(given),
            symlink_policy_from_cli=bool(symlink_policy),
        )
