"""Deterministic generated source corpora for the benchmarks.

``make_corpus(dest, files=700)`` writes Rust/Python-like files of varied sizes with multi-byte
text (accents, CJK, emoji) in comments and strings, in nested directories, and returns their
paths. Same seed, same bytes, on every machine.
"""

from __future__ import annotations

import os
import random

__all__ = ["list_files", "make_corpus"]

_WORDS = [
    "let",
    "mut",
    "fn",
    "impl",
    "struct",
    "enum",
    "match",
    "self",
    "return",
    "async",
    "await",
    "value",
    "index",
    "buffer",
    "result",
    "snippet",
    "hash",
    "offset",
    "range",
    "cache",
    "node",
]
_MULTI = [
    "naïve café",
    "Größe",
    "日本語のコメント",
    "中文注释",
    "한국어",
    "émoji 🚀✨",
    "Ωμέγα",
    "Привет",
    "🦀 crab",
    "ĉu ĝi funkcias?",
    "„quoted“",
    "→ arrow ←",
]


def _line(rng: random.Random, indent: int) -> str:
    pad = "    " * indent
    kind = rng.random()
    if kind < 0.15:
        return f"{pad}// {rng.choice(_MULTI)} {' '.join(rng.choices(_WORDS, k=rng.randint(2, 8)))}"
    if kind < 0.25:
        return f'{pad}let s = "{rng.choice(_MULTI)}";'
    words = " ".join(rng.choices(_WORDS, k=rng.randint(3, 12)))
    return f"{pad}{words};"


def _file_text(rng: random.Random) -> str:
    # Log-uniform-ish sizes: many small files, some large ones (~200 B .. ~60 KB).
    target = int(200 * (300 ** rng.random()))
    lines: list[str] = []
    size = 0
    depth = 0
    while size < target:
        if rng.random() < 0.1:
            lines.append("    " * depth + "fn item() {")
            depth = min(depth + 1, 4)
        elif depth and rng.random() < 0.1:
            depth -= 1
            lines.append("    " * depth + "}")
        else:
            lines.append(_line(rng, depth))
        size += len(lines[-1].encode()) + 1
    return "\n".join(lines) + "\n"


def make_corpus(dest: str, files: int = 700, seed: int = 7) -> list[str]:
    """Write ``files`` source files under ``dest`` (created); return their absolute paths."""
    rng = random.Random(seed)
    paths: list[str] = []
    for i in range(files):
        sub = os.path.join(dest, f"crate{i % 7}", "src", f"mod{i % 23}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"file{i}.rs")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_file_text(rng))
        paths.append(os.path.abspath(path))
    return paths


def list_files(root: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every regular file under ``root`` (optionally by suffix), skipping dot-directories."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "node_modules")
        for name in sorted(filenames):
            if suffixes and not name.endswith(suffixes):
                continue
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(os.path.abspath(full))
    return out
