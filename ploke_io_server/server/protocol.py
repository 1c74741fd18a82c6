"""pygls classes of the shell: a protocol that knows the ``ploke/*`` types, a server per client."""

from __future__ import annotations

from typing import Any

from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from .. import __version__
from .models import REQUEST_TYPES, make_converter

__all__ = ["PlokeLanguageServer", "PlokeProtocol"]


class PlokeProtocol(LanguageServerProtocol):
    """LSP protocol whose ``ploke/*`` params are structured by our typed models."""

    def get_message_type(self, method: str) -> type[Any] | None:
        entry = REQUEST_TYPES.get(method)
        if entry is not None:
            return entry[0]
        result: type[Any] | None = super().get_message_type(method)
        return result


class PlokeLanguageServer(LanguageServer):
    """One per connection: its own protocol and lifecycle; the engine is shared."""

    def __init__(self) -> None:
        super().__init__(
            name="ploke-io-server",
            version=__version__,
            protocol_cls=PlokeProtocol,
            converter_factory=make_converter,
            max_workers=1,
        )
