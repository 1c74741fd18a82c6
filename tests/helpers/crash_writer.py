"""Child process of the crash tests: writes generations of files through the engine forever.

File ``f<k>.txt`` at generation ``g`` holds exactly ``content(k, g)``; each write moves one
file (or, atomically, several) from its current generation to the next, through
``IoManager.write_snippets`` with the expected hash. The parent kills this process with
SIGKILL at random moments and checks that every file still holds some exact generation.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from ploke_io_server import Config, IoManager
from ploke_io_server.hashing import hash_bytes
from ploke_io_server.types import Edit

FILES = 6


def content(k: int, gen: int) -> bytes:
    return (f"file {k} generation {gen} ✓\n" * (1 + (gen * 7 + k) % 40)).encode()


def generation(k: int, data: bytes) -> int | None:
    """The generation whose exact content ``data`` is, or None (a torn or foreign file)."""
    try:
        first = data.split(b"\n", 1)[0].decode()
        gen = int(first.split()[3])
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return gen if content(k, gen) == data else None


async def main(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    engine = IoManager(Config.from_sources(roots=[str(root)]))
    await engine.start()
    await engine.wait_started()
    gens = {}
    for k in range(FILES):
        data = (root / f"f{k}.txt").read_bytes()
        gen = generation(k, data)
        assert gen is not None, f"f{k}.txt is torn at start"
        gens[k] = gen
    print("ready", flush=True)
    while True:
        batch = rng.sample(range(FILES), rng.randint(1, 3))
        edits = []
        for k in batch:
            old = content(k, gens[k])
            edits.append(
                Edit(str(root / f"f{k}.txt"), hash_bytes(old), 0, len(old),
                     content(k, gens[k] + 1).decode())
            )  # fmt: skip
        results = await engine.write_snippets(edits, atomic=len(batch) > 1 and rng.random() < 0.5)
        for k, r in zip(batch, results, strict=True):
            assert not isinstance(r, Exception), r
            gens[k] += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
