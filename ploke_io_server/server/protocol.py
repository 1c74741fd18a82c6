"""pygls classes of the shell: a protocol that knows the ``ploke/*`` types, a server per client."""

from __future__ import annotations

import enum
import json
import logging
from typing import Any

import cattrs
from lsprotocol.types import TextDocumentSyncKind
from pygls.lsp.server import LanguageServer
from pygls.protocol import JsonRPCResponseMessage, LanguageServerProtocol

from .. import __version__
from .framing import FrameWriter
from .models import EscapeMemo, encode_response, make_converter

__all__ = ["PlokeLanguageServer", "PlokeProtocol"]

log = logging.getLogger(__name__)


class PlokeProtocol(LanguageServerProtocol):
    """LSP protocol that encodes ``ploke/*`` results with our typed models.

    It chooses the encoder: pygls 2.1 has no public hook for it, so ``_send_data`` is
    overridden (pygls is pinned to 2.1.x; tests/test_e2e_read.py checks the wire format).
    Batch results are encoded in chunks and handed to the connection's FrameWriter, which
    writes them with flow control.
    """

    def __init__(self, server: Any, converter: cattrs.Converter) -> None:
        super().__init__(server, converter)
        self.ploke_converter = converter
        self.frame_writer: FrameWriter | None = None
        self.escape_memo = EscapeMemo(0)
        """Shared by every connection of the process; set by the Connection."""

    def _default(self, obj: Any) -> Any:
        if hasattr(obj, "__attrs_attrs__"):
            return self.ploke_converter.unstructure(obj)
        if isinstance(obj, enum.Enum):
            return obj.value
        return obj.__dict__

    def send_result(self, msg_id: Any, result: Any) -> None:
        """Answer request ``msg_id`` with ``result`` (the path of every ``ploke/*`` answer):
        a batch result straight to its encoder, anything else through :meth:`_send_data`."""
        writer = self.frame_writer
        if writer is None:
            return
        try:
            chunks = encode_response(msg_id, result, self.escape_memo)
        except Exception:
            self._cannot_encode(writer, msg_id)
            return
        if chunks is None:
            self._send_data(JsonRPCResponseMessage(id=msg_id, result=result, jsonrpc="2.0"))
        else:
            writer.send(chunks)

    def _send_data(self, data: Any) -> None:
        writer = self.frame_writer
        if not data or writer is None:
            return
        try:
            chunks = None
            if isinstance(data, JsonRPCResponseMessage):
                chunks = encode_response(data.id, data.result, self.escape_memo)
            if chunks is None:
                chunks = [json.dumps(data, default=self._default).encode()]
        except Exception:
            if not hasattr(data, "method"):
                self._cannot_encode(writer, getattr(data, "id", None))
            else:
                log.exception("cannot encode an outgoing message")
            return
        writer.send(chunks)

    @staticmethod
    def _cannot_encode(writer: FrameWriter, msg_id: Any) -> None:
        """Log the exception being handled; answer ``msg_id`` (if any) with -32603."""
        log.exception("cannot encode an outgoing message")
        if msg_id is not None:
            error = {"code": -32603, "message": "internal error: cannot encode the result"}
            writer.send([json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": error}).encode()])


class PlokeLanguageServer(LanguageServer):
    """One per connection: its own protocol and lifecycle; the engine is shared."""

    protocol: PlokeProtocol

    def __init__(self) -> None:
        super().__init__(
            name="ploke-io-server",
            version=__version__,
            # No text document sync: this server reads files from disk, not editor buffers.
            text_document_sync_kind=TextDocumentSyncKind.None_,
            protocol_cls=PlokeProtocol,
            converter_factory=make_converter,
            max_workers=1,
        )
