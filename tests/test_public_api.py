"""The declared public surface imports, and the engine works as a plain library."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import ploke_io_server
from ploke_io_server import Config, IoManager, PlokeIoError, SnippetRequest


@pytest.mark.parametrize("module", ["ploke_io_server", "ploke_io_server.client"])
def test_every_declared_name_imports(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


async def test_engine_as_a_library(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("print('héllo')\n", encoding="utf-8")
    engine = IoManager(Config.from_sources(roots=[str(tmp_path)]))
    try:
        [snippet, missing] = await engine.get_snippets(
            [
                SnippetRequest(str(tmp_path / "a.py"), start_byte=7, end_byte=13),
                SnippetRequest(str(tmp_path / "b.py")),
            ]
        )
        assert not isinstance(snippet, PlokeIoError)
        assert snippet.text == "héllo"
        assert isinstance(missing, PlokeIoError)
        assert missing.kind is ploke_io_server.ErrorKind.NotFound
        assert missing.code == -33003
    finally:
        await engine.aclose()
