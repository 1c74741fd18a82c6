"""Crash tests with real processes: a writer killed with SIGKILL at random moments, again and
again; every file must hold exactly an old or a new content, never anything else, and a
restart must leave no temp file behind."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from ploke_io_server import Config, IoManager
from ploke_io_server.engine.write import is_temp_name

from .helpers.crash_writer import FILES, content, generation

ROUNDS = 200


def temps(root: Path) -> list[str]:
    return [n for n in os.listdir(root) if is_temp_name(n)]


@pytest.mark.timeout(600)
async def test_sigkill_during_writes_never_tears_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for k in range(FILES):
        (root / f"f{k}.txt").write_bytes(content(k, 0))
    rng = random.Random(99)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    seen_temps = 0
    progress = []
    for rnd in range(ROUNDS):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.helpers.crash_writer", str(root), str(rnd),
            stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"ready\n", line
        await asyncio.sleep(rng.uniform(0, 0.08))
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        gens = []
        for k in range(FILES):
            data = (root / f"f{k}.txt").read_bytes()
            gen = generation(k, data)
            assert gen is not None, f"round {rnd}: f{k}.txt holds neither an old nor a new content"
            gens.append(gen)
        progress.append(sum(gens))
        seen_temps += len(temps(root))
    # The writer really wrote, and was really killed mid-way sometimes (a temp file left).
    assert progress[-1] > ROUNDS
    assert seen_temps > 0
    # A restart removes what the killed writers left.
    engine = IoManager(Config.from_sources(roots=[str(root)]))
    await engine.start()
    await engine.wait_started()
    await engine.aclose()
    assert temps(root) == []
