"""Unit tests of the configuration: fd-limit precedence and clamping, roots, symlink policy.

The environment is always passed explicitly (``env=``) and the soft RLIMIT_NOFILE through
``soft_nofile=``; ``os.environ`` is never touched.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from ploke_io_server.config import (
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_FD_LIMIT,
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    FD_LIMIT_ENV,
    FD_LIMIT_MAX,
    FD_LIMIT_MIN,
    Config,
    ConfigError,
    SymlinkPolicy,
    clamp_fd_limit,
    normalize_roots,
    resolve_fd_limit,
)


def soft(value: int | None) -> Callable[[], int | None]:
    """A ``soft_nofile`` callable returning ``value``."""
    return lambda: value


def never_called() -> int | None:
    raise AssertionError("the rlimit must not be consulted when a flag or env value is given")


def expected_from_real_rlimit() -> int:
    """What the rlimit rule gives for this process's real soft RLIMIT_NOFILE."""
    soft_limit, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY:
        return 100
    return max(4, min(100, soft_limit // 3))


# -- constants ------------------------------------------------------------------------------------


def test_constants_match_the_contract() -> None:
    assert FD_LIMIT_ENV == "PLOKE_IO_FD_LIMIT"
    assert (FD_LIMIT_MIN, FD_LIMIT_MAX) == (4, 1024)
    assert DEFAULT_FD_LIMIT == 50
    assert DEFAULT_MAX_FILE_BYTES == 64 * 1024 * 1024


# -- clamp_fd_limit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-100, 4),
        (-1, 4),
        (0, 4),
        (1, 4),
        (3, 4),
        (4, 4),
        (5, 5),
        (50, 50),
        (1023, 1023),
        (1024, 1024),
        (1025, 1024),
        (2000, 1024),
        (10**9, 1024),
    ],
)
def test_clamp_fd_limit(value: int, expected: int) -> None:
    assert clamp_fd_limit(value) == expected


# -- resolve_fd_limit: precedence -----------------------------------------------------------------


def test_flag_beats_env_and_rlimit() -> None:
    assert resolve_fd_limit(8, {FD_LIMIT_ENV: "16"}, never_called) == 8


def test_env_beats_rlimit() -> None:
    assert resolve_fd_limit(None, {FD_LIMIT_ENV: "16"}, never_called) == 16


def test_rlimit_rule_when_neither_flag_nor_env() -> None:
    assert resolve_fd_limit(None, {}, soft(90)) == 30


def test_fifty_when_the_rlimit_cannot_be_read() -> None:
    assert resolve_fd_limit(None, {}, soft(None)) == 50


def test_unrelated_env_variables_are_ignored() -> None:
    env = {"PLOKE_IO_FD": "7", "FD_LIMIT": "7", "ploke_io_fd_limit": "7"}
    assert resolve_fd_limit(None, env, soft(90)) == 30


def test_flag_given_with_unusable_env_still_wins() -> None:
    assert resolve_fd_limit(12, {FD_LIMIT_ENV: "abc"}, never_called) == 12


# -- resolve_fd_limit: clamping of flag and env ---------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "expected"),
    [(1, 4), (0, 4), (-3, 4), (4, 4), (64, 64), (1024, 1024), (1025, 1024), (5000, 1024)],
)
def test_flag_is_clamped(flag: int, expected: int) -> None:
    assert resolve_fd_limit(flag, {}, never_called) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0", 4),
        ("1", 4),
        ("3", 4),
        ("-1", 4),
        ("4", 4),
        ("5", 5),
        ("100", 100),
        ("1024", 1024),
        ("1025", 1024),
        ("2000", 1024),
        (" 12 ", 12),
        ("12\n", 12),
    ],
)
def test_env_is_clamped(raw: str, expected: int) -> None:
    assert resolve_fd_limit(None, {FD_LIMIT_ENV: raw}, never_called) == expected


@pytest.mark.parametrize("raw", ["abc", "1.5", "12abc", "0x10", "1e3", "ten", "--5"])
def test_non_integer_env_falls_back_to_the_rlimit_rule(raw: str) -> None:
    assert resolve_fd_limit(None, {FD_LIMIT_ENV: raw}, soft(90)) == 30
    assert resolve_fd_limit(None, {FD_LIMIT_ENV: raw}, soft(None)) == 50


@pytest.mark.parametrize("raw", ["", " ", "\t\n"])
def test_blank_env_is_treated_as_unset(raw: str) -> None:
    assert resolve_fd_limit(None, {FD_LIMIT_ENV: raw}, soft(90)) == 30
    assert resolve_fd_limit(None, {FD_LIMIT_ENV: raw}, soft(None)) == 50


def test_non_integer_env_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ploke_io_server.config"):
        assert resolve_fd_limit(None, {FD_LIMIT_ENV: "lots"}, soft(300)) == 100
    assert any(FD_LIMIT_ENV in r.getMessage() for r in caplog.records)


# -- resolve_fd_limit: the rlimit rule ------------------------------------------------------------


@pytest.mark.parametrize(
    ("soft_limit", "expected"),
    [
        (30, 10),  # min(100, 30 // 3) = 10
        (31, 10),
        (33, 11),
        (90, 30),
        (150, 50),
        (299, 99),
        (300, 100),
        (301, 100),
        (1024, 100),
        (65536, 100),
        (10**9, 100),  # what an unlimited soft limit is mapped to
        (2**62, 100),
        (15, 5),
        (12, 4),
        (11, 4),  # 11 // 3 = 3, clamped up to the minimum
        (6, 4),
        (0, 4),
    ],
)
def test_rlimit_rule(soft_limit: int, expected: int) -> None:
    assert resolve_fd_limit(None, {}, soft(soft_limit)) == expected


def test_soft_limit_none_gives_fifty() -> None:
    assert resolve_fd_limit(None, {}, soft(None)) == DEFAULT_FD_LIMIT == 50


def test_rlimit_callable_is_consulted_only_as_fallback() -> None:
    calls: list[int] = []

    def counting() -> int | None:
        calls.append(1)
        return 90

    assert resolve_fd_limit(None, {}, counting) == 30
    assert len(calls) == 1


def test_default_soft_nofile_reads_the_real_rlimit() -> None:
    assert resolve_fd_limit(None, {}) == expected_from_real_rlimit()


def test_default_soft_nofile_unlimited_gives_hundred(monkeypatch: pytest.MonkeyPatch) -> None:
    inf = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (inf, inf))
    assert resolve_fd_limit(None, {}) == 100


def test_default_soft_nofile_unreadable_gives_fifty(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_which: int) -> tuple[int, int]:
        raise OSError("no rlimit here")

    monkeypatch.setattr(resource, "getrlimit", broken)
    assert resolve_fd_limit(None, {}) == 50


def test_default_soft_nofile_small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (30, 4096))
    assert resolve_fd_limit(None, {}) == 10


# -- Config.from_sources: fd limit ----------------------------------------------------------------


def test_from_sources_env_sets_fd_limit(tmp_path: Path) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], env={FD_LIMIT_ENV: "7"})
    assert config.fd_limit == 7


def test_from_sources_flag_beats_env(tmp_path: Path) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], fd_limit=9, env={FD_LIMIT_ENV: "7"})
    assert config.fd_limit == 9


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (1, {}, 4),
        (4096, {}, 1024),
        (None, {FD_LIMIT_ENV: "0"}, 4),
        (None, {FD_LIMIT_ENV: "2000"}, 1024),
        (2, {FD_LIMIT_ENV: "2000"}, 4),
    ],
)
def test_from_sources_clamps(
    tmp_path: Path, flag: int | None, env: dict[str, str], expected: int
) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], fd_limit=flag, env=env)
    assert config.fd_limit == expected


def test_from_sources_without_flag_or_env_uses_the_rlimit(tmp_path: Path) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], env={})
    assert config.fd_limit == expected_from_real_rlimit()


def test_from_sources_bad_env_uses_the_rlimit(tmp_path: Path) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], env={FD_LIMIT_ENV: "many"})
    assert config.fd_limit == expected_from_real_rlimit()


# -- Config.from_sources: roots -------------------------------------------------------------------


def test_roots_default_to_the_given_cwd(tmp_path: Path) -> None:
    config = Config.from_sources(cwd=str(tmp_path), env={})
    assert config.roots == (str(tmp_path),)
    assert config.roots_from_cli is False


def test_roots_default_to_the_process_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config.from_sources(env={})
    assert config.roots == (str(tmp_path),)
    assert config.roots_from_cli is False


def test_given_roots_are_from_cli_and_win_over_cwd(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "cwd").mkdir()
    config = Config.from_sources(roots=[str(tmp_path / "a")], cwd=str(tmp_path / "cwd"), env={})
    assert config.roots == (str(tmp_path / "a"),)
    assert config.roots_from_cli is True


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Config.from_sources(roots=[str(tmp_path / "nope")], env={})


def test_missing_root_among_good_ones_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Config.from_sources(roots=[str(tmp_path), str(tmp_path / "nope")], env={})


def test_missing_default_cwd_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Config.from_sources(cwd=str(tmp_path / "gone"), env={})


def test_file_root_raises(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError):
        Config.from_sources(roots=[str(tmp_path / "f")], env={})


@pytest.mark.parametrize("bad", ["", "/tmp\x00evil"])
def test_malformed_root_raises(bad: str) -> None:
    with pytest.raises(ConfigError):
        Config.from_sources(roots=[bad], env={})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_duplicate_roots_removed_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    config = Config.from_sources(
        roots=[str(a), str(b), str(a), f"{a}/", f"{a}/.", f"{b}/../b", f"{a}//"], env={}
    )
    assert config.roots == (str(a), str(b))


def test_relative_roots_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    config = Config.from_sources(roots=["sub", "./other", "sub/deep/..", "."], env={})
    assert config.roots == (str(tmp_path / "sub"), str(tmp_path / "other"), str(tmp_path))
    assert all(os.path.isabs(r) for r in config.roots)
    assert config.roots_from_cli is True


def test_roots_are_normalised_but_symlinks_kept(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    config = Config.from_sources(roots=[f"{tmp_path}/alias/"], env={})
    # Normalised lexically; the configured spelling is kept (the path policy resolves it).
    assert config.roots == (str(tmp_path / "alias"),)


def test_normalize_roots_directly(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert normalize_roots([str(tmp_path / "a"), f"{tmp_path}/a/"]) == (str(tmp_path / "a"),)
    assert normalize_roots([]) == ()


# -- Config.from_sources: symlink policy ----------------------------------------------------------


def test_symlink_policy_default(tmp_path: Path) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], env={})
    assert config.symlink_policy is SymlinkPolicy.DENY_CROSS_ROOT
    assert config.symlink_policy_from_cli is False


@pytest.mark.parametrize(
    ("raw", "policy"),
    [
        ("denyCrossRoot", SymlinkPolicy.DENY_CROSS_ROOT),
        ("followWithinRoots", SymlinkPolicy.FOLLOW_WITHIN_ROOTS),
        ("deny", SymlinkPolicy.DENY),
    ],
)
def test_symlink_policy_from_flag(tmp_path: Path, raw: str, policy: SymlinkPolicy) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], symlink_policy=raw, env={})
    assert config.symlink_policy is policy
    assert config.symlink_policy_from_cli is True


@pytest.mark.parametrize(
    "raw", ["DenyCrossRoot", "denycrossroot", "follow", "none", "DENY", " deny", "deny_cross_root"]
)
def test_bad_symlink_policy_raises(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match="symlink policy"):
        Config.from_sources(roots=[str(tmp_path)], symlink_policy=raw, env={})


def test_symlink_policy_parse() -> None:
    for member in SymlinkPolicy:
        assert SymlinkPolicy.parse(member.value) is member
    with pytest.raises(ConfigError):
        SymlinkPolicy.parse("bogus")


# -- Config.from_sources: other knobs -------------------------------------------------------------


def test_other_defaults(tmp_path: Path) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], env={})
    assert config.max_file_bytes == DEFAULT_MAX_FILE_BYTES
    assert config.debounce_ms == DEFAULT_DEBOUNCE_MS
    assert config.max_batch_items == DEFAULT_MAX_BATCH_ITEMS
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert config.watch is False


def test_other_flags_are_taken(tmp_path: Path) -> None:
    config = Config.from_sources(
        roots=[str(tmp_path)],
        max_file_bytes=0,
        debounce_ms=0,
        watch=True,
        max_batch_items=1,
        max_message_bytes=1024,
        env={},
    )
    assert (config.max_file_bytes, config.debounce_ms, config.watch) == (0, 0, True)
    assert (config.max_batch_items, config.max_message_bytes) == (1, 1024)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_file_bytes": -1},
        {"debounce_ms": -1},
        {"max_batch_items": 0},
        {"max_message_bytes": 1023},
    ],
)
def test_bad_numbers_raise(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        Config.from_sources(roots=[str(tmp_path)], env={}, **kwargs)  # type: ignore[arg-type]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = Config.from_sources(roots=[str(tmp_path)], env={})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.fd_limit = 5  # type: ignore[misc]
