"""Typed params and results of every ``ploke/*`` method, and the cattrs converter for them.

Params are structured by hand-written hooks registered on the converter: they are lenient per
item (an item whose fields have the wrong JSON type becomes that item's error, never the
batch's) and strict at the top level (a :class:`ParamsError` naming the field, which the shell
answers with -32602). Unknown fields are ignored everywhere. Results are unstructured by
hand-written hooks too: they are the hot path of a 10,000-snippet response.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _escape
from typing import Any, TypeVar

import attrs
import cattrs
from lsprotocol.converters import get_converter

from .. import fastjson, methods
from ..errors import ErrorKind, PlokeIoError
from ..types import (
    REMOVED,
    UNCHANGED,
    Created,
    Edit,
    EditResult,
    FileHash,
    NewFile,
    Scanned,
    ScanRequest,
    ScanStatus,
    Snippet,
    SnippetRequest,
)

__all__ = [
    "STRUCTURE_PARAMS",
    "CreateFilesParams",
    "CreateFilesResult",
    "EscapeMemo",
    "GetSnippetsParams",
    "GetSnippetsResult",
    "HashFilesParams",
    "HashFilesResult",
    "InitOptions",
    "ParamsError",
    "ScanChangesParams",
    "ScanChangesResult",
    "StatusParams",
    "StatusResult",
    "WatcherStatus",
    "WriteSnippetsParams",
    "WriteSnippetsResult",
    "batch_size",
    "encode_response",
    "error_to_json",
    "make_converter",
    "parse_init_options",
]

MsgId = int | str
ProgressToken = int | str


class ParamsError(ValueError):
    """Malformed params of a whole request: answered with -32602 naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# -- params --------------------------------------------------------------------------------------


@attrs.frozen
class GetSnippetsParams:
    snippets: list[SnippetRequest | PlokeIoError]
    work_done_token: ProgressToken | None = None


@attrs.frozen
class HashFilesParams:
    paths: list[str | PlokeIoError]
    work_done_token: ProgressToken | None = None


@attrs.frozen
class ScanChangesParams:
    files: list[tuple[str, str] | PlokeIoError]
    work_done_token: ProgressToken | None = None


@attrs.frozen
class StatusParams:
    pass


@attrs.frozen
class WriteSnippetsParams:
    edits: list[Edit | PlokeIoError]
    origin: str | None = None
    atomic: bool = False
    dry_run: bool = False
    work_done_token: ProgressToken | None = None


@attrs.frozen
class CreateFilesParams:
    files: list[NewFile | PlokeIoError]
    origin: str | None = None
    work_done_token: ProgressToken | None = None


@attrs.frozen
class InitOptions:
    """``initializationOptions`` of ``initialize`` (unknown keys ignored)."""

    auth_token: str | None = None
    symlink_policy: str | None = None
    watch: bool = False


def _object(value: Any, field: str) -> dict[str, Any]:
    # No params at all: absent, null, or, as top-level params, [] or [null] (by-position
    # params holding nothing: what vscode-jsonrpc sends for an undefined parameter).
    if value is None or (field == "params" and value in ([], [None])):
        return {}
    if not isinstance(value, dict):
        raise ParamsError(field, f"expected an object, got {_json_type(value)}")
    return value


def _array(obj: dict[str, Any], field: str) -> list[Any]:
    value = obj.get(field)
    if not isinstance(value, list):
        raise ParamsError(field, f"expected an array, got {_json_type(value)}")
    return value


def _token(obj: dict[str, Any]) -> ProgressToken | None:
    token = obj.get("workDoneToken")
    if token is None or (isinstance(token, int | str) and not isinstance(token, bool)):
        return token
    raise ParamsError("workDoneToken", f"expected an integer or string, got {_json_type(token)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _offset(item: dict[str, Any], field: str) -> int | None:
    value = item.get(field)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        got = value if type(value) is int else _json_type(value)
        raise PlokeIoError(
            ErrorKind.InvalidRange, f"{field} must be a non-negative integer, got {got}"
        )
    return value


def _path_of(item: dict[str, Any], field: str = "filePath") -> str:
    value = item.get(field)
    if type(value) is not str:
        raise PlokeIoError(
            ErrorKind.InvalidPath, f"{field} must be a string, got {_json_type(value)}"
        )
    return value


def _snippet_item(item: Any) -> SnippetRequest | PlokeIoError:
    # Fast path (one per snippet of a batch): every field of the expected type.
    if type(item) is dict:
        path = item.get("filePath")
        want = item.get("fileHash")
        start = item.get("startByte")
        end = item.get("endByte")
        if (
            type(path) is str
            and (want is None or type(want) is str)
            and (start is None or (type(start) is int and start >= 0))
            and (end is None or (type(end) is int and end >= 0))
        ):
            return SnippetRequest(path, want, start, end)
    return _snippet_item_error(item)


def _snippet_item_error(item: Any) -> PlokeIoError:
    """The precise error of an item that failed the fast path."""
    if type(item) is not dict:
        return PlokeIoError(
            ErrorKind.InvalidPath, f"snippet must be an object, got {_json_type(item)}"
        )
    try:
        _path_of(item)
        want = item.get("fileHash")
        if want is not None and type(want) is not str:
            raise PlokeIoError(
                ErrorKind.InvalidPath, f"fileHash must be a string, got {_json_type(want)}"
            )
        _offset(item, "startByte")
        _offset(item, "endByte")
    except PlokeIoError as err:
        return err
    raise AssertionError("unreachable: the item passed every check")


def _path_item(item: Any) -> str | PlokeIoError:
    if type(item) is str:
        return item
    return PlokeIoError(ErrorKind.InvalidPath, f"path must be a string, got {_json_type(item)}")


def structure_get_snippets(value: Any, _t: Any = None) -> GetSnippetsParams:
    obj = _object(value, "params")
    items = _array(obj, "snippets")
    return GetSnippetsParams([_snippet_item(x) for x in items], _token(obj))


def structure_hash_files(value: Any, _t: Any = None) -> HashFilesParams:
    obj = _object(value, "params")
    items = _array(obj, "paths")
    return HashFilesParams([_path_item(x) for x in items], _token(obj))


def _scan_item(item: Any) -> ScanRequest | PlokeIoError:
    return _item(item, "file", lambda d: ScanRequest(_path_of(d), _string(d, "fileHash")))


def structure_scan_changes(value: Any, _t: Any = None) -> ScanChangesParams:
    obj = _object(value, "params")
    items = _array(obj, "files")
    # Runs once per file of scans of 100,000: the well-formed item is a plain tuple, made
    # inline; anything else gets its message from _scan_item.
    out: list[tuple[str, str] | PlokeIoError] = []
    add = out.append
    for item in items:
        if type(item) is dict:
            path = item.get("filePath")
            want = item.get("fileHash")
            if type(path) is str and type(want) is str:
                add((path, want))
                continue
        add(_scan_item(item))
    return ScanChangesParams(out, _token(obj))


def structure_status(value: Any, _t: Any = None) -> StatusParams:
    _object(value, "params")
    return StatusParams()


def _required_offset(item: dict[str, Any], field: str) -> int:
    value = _offset(item, field)
    if value is None:
        raise PlokeIoError(ErrorKind.InvalidRange, f"{field} is required")
    return value


def _string(item: dict[str, Any], field: str) -> str:
    value = item.get(field)
    if type(value) is not str:
        raise PlokeIoError(
            ErrorKind.InvalidPath, f"{field} must be a string, got {_json_type(value)}"
        )
    return value


def _flag(item: dict[str, Any], field: str) -> bool:
    value = item.get(field, False)
    if value is None:
        return False
    if type(value) is not bool:
        raise PlokeIoError(
            ErrorKind.InvalidPath, f"{field} must be a boolean, got {_json_type(value)}"
        )
    return value


_T = TypeVar("_T")


def _item(item: Any, noun: str, build: Callable[[dict[str, Any]], _T]) -> _T | PlokeIoError:
    """One batch item: an object whose fields ``build`` checks; any problem is its error."""
    if type(item) is not dict:
        return PlokeIoError(
            ErrorKind.InvalidPath, f"{noun} must be an object, got {_json_type(item)}"
        )
    try:
        return build(item)
    except PlokeIoError as err:
        return err


def _edit_item(item: Any) -> Edit | PlokeIoError:
    return _item(
        item,
        "edit",
        lambda d: Edit(
            _path_of(d),
            _string(d, "expectedHash"),
            _required_offset(d, "startByte"),
            _required_offset(d, "endByte"),
            _string(d, "replacement"),
        ),
    )


def _new_file_item(item: Any) -> NewFile | PlokeIoError:
    return _item(
        item,
        "file",
        lambda d: NewFile(
            _path_of(d), _string(d, "content"), _flag(d, "createParents"), _flag(d, "overwrite")
        ),
    )


def _top_flag(obj: dict[str, Any], field: str) -> bool:
    value = obj.get(field, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ParamsError(field, f"expected a boolean, got {_json_type(value)}")
    return value


def _origin(obj: dict[str, Any]) -> str | None:
    value = obj.get("origin")
    if value is None or isinstance(value, str):
        return value
    raise ParamsError("origin", f"expected a string, got {_json_type(value)}")


def structure_write_snippets(value: Any, _t: Any = None) -> WriteSnippetsParams:
    obj = _object(value, "params")
    items = _array(obj, "edits")
    return WriteSnippetsParams(
        [_edit_item(x) for x in items],
        _origin(obj),
        _top_flag(obj, "atomic"),
        _top_flag(obj, "dryRun"),
        _token(obj),
    )


def structure_create_files(value: Any, _t: Any = None) -> CreateFilesParams:
    obj = _object(value, "params")
    items = _array(obj, "files")
    return CreateFilesParams([_new_file_item(x) for x in items], _origin(obj), _token(obj))


def batch_size(params: Any) -> tuple[str, int] | None:
    """(field, number of items) of a batch request's params, None for other params."""
    if isinstance(params, GetSnippetsParams):
        return "snippets", len(params.snippets)
    if isinstance(params, HashFilesParams):
        return "paths", len(params.paths)
    if isinstance(params, ScanChangesParams):
        return "files", len(params.files)
    if isinstance(params, WriteSnippetsParams):
        return "edits", len(params.edits)
    if isinstance(params, CreateFilesParams):
        return "files", len(params.files)
    return None


def parse_init_options(value: Any) -> InitOptions:
    """Structure ``initializationOptions``; ParamsError names the offending field."""
    prefix = "initializationOptions"
    obj = _object(value, prefix)
    token = obj.get("authToken")
    if token is not None and not isinstance(token, str):
        raise ParamsError(f"{prefix}.authToken", f"expected a string, got {_json_type(token)}")
    policy = obj.get("symlinkPolicy")
    if policy is not None and not isinstance(policy, str):
        raise ParamsError(f"{prefix}.symlinkPolicy", f"expected a string, got {_json_type(policy)}")
    watch = obj.get("watch", False)
    if watch is None:
        watch = False
    if not isinstance(watch, bool):
        raise ParamsError(f"{prefix}.watch", f"expected a boolean, got {_json_type(watch)}")
    return InitOptions(auth_token=token, symlink_policy=policy, watch=watch)


# method -> the function that structures its params (ParamsError for the whole request)
STRUCTURE_PARAMS: dict[str, Callable[[Any], Any]] = {
    methods.GET_SNIPPETS: structure_get_snippets,
    methods.HASH_FILES: structure_hash_files,
    methods.SCAN_CHANGES: structure_scan_changes,
    methods.STATUS: structure_status,
    methods.WRITE_SNIPPETS: structure_write_snippets,
    methods.CREATE_FILES: structure_create_files,
}


# -- results -------------------------------------------------------------------------------------


@attrs.frozen
class GetSnippetsResult:
    results: list[Snippet | PlokeIoError]


@attrs.frozen
class HashFilesResult:
    results: list[FileHash | PlokeIoError]


@attrs.frozen
class ScanChangesResult:
    results: list[Scanned | PlokeIoError]


@attrs.frozen
class WriteSnippetsResult:
    results: list[EditResult | PlokeIoError]


@attrs.frozen
class CreateFilesResult:
    results: list[Created | PlokeIoError]


@attrs.frozen
class WatcherStatus:
    enabled: bool
    debounce_ms: int


@attrs.frozen
class StatusResult:
    version: str
    roots: list[str]
    symlink_policy: str
    fd_limit: int
    max_file_bytes: int
    watcher: WatcherStatus
    counters: dict[str, Any]


def error_to_json(err: PlokeIoError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": err.kind.value, "kind": err.kind.name, "message": err.message}
    if err.data is not None:
        out["data"] = err.data
    return out


def _snippet_json(r: Snippet | PlokeIoError) -> dict[str, Any]:
    if type(r) is Snippet:
        return {"ok": True, "text": r.text, "fileHash": r.file_hash}
    assert isinstance(r, PlokeIoError)
    return {"ok": False, "error": error_to_json(r)}


def _hash_json(r: FileHash | PlokeIoError) -> dict[str, Any]:
    if type(r) is FileHash:
        return {"ok": True, "fileHash": r.file_hash, "size": r.size}
    assert isinstance(r, PlokeIoError)
    return {"ok": False, "error": error_to_json(r)}


def _scan_json(r: Scanned | PlokeIoError) -> dict[str, Any]:
    if type(r) is Scanned:
        if r.new_hash is None:
            return {"status": r.status.value}
        return {"status": r.status.value, "newHash": r.new_hash}
    assert isinstance(r, PlokeIoError)
    return {"status": "error", "error": error_to_json(r)}


_UNCHANGED_JSON = b'{"status":"unchanged"}'
_REMOVED_JSON = b'{"status":"removed"}'


def _scan_fragment(r: Scanned | PlokeIoError, _memo: EscapeMemo) -> bytes:
    if r is UNCHANGED:
        return _UNCHANGED_JSON
    if r is REMOVED:
        return _REMOVED_JSON
    if type(r) is Scanned and r.status is ScanStatus.MODIFIED and r.new_hash is not None:
        return b'{"status":"modified","newHash":"%s"}' % r.new_hash.encode()
    return fastjson.dumps(_scan_json(r))


def _edit_json(r: EditResult | PlokeIoError) -> dict[str, Any]:
    if type(r) is EditResult:
        out: dict[str, Any] = {
            "ok": True,
            "filePath": r.file_path,
            "oldHash": r.old_hash,
            "newHash": r.new_hash,
            "newStartByte": r.new_start_byte,
            "newEndByte": r.new_end_byte,
        }
        if r.diff is not None:
            out["diff"] = r.diff
        return out
    assert isinstance(r, PlokeIoError)
    return {"ok": False, "error": error_to_json(r)}


def _created_json(r: Created | PlokeIoError) -> dict[str, Any]:
    if type(r) is Created:
        return {"ok": True, "filePath": r.file_path, "fileHash": r.file_hash}
    assert isinstance(r, PlokeIoError)
    return {"ok": False, "error": error_to_json(r)}


def _unstructure_snippets(result: GetSnippetsResult) -> dict[str, Any]:
    return {"results": [_snippet_json(r) for r in result.results]}


def _unstructure_hashes(result: HashFilesResult) -> dict[str, Any]:
    return {"results": [_hash_json(r) for r in result.results]}


class EscapeMemo:
    """The JSON string form of whole-file texts, keyed by the file's BLAKE3 digest.

    Escaping a large text is most of what a whole-file read costs the server; agents read the
    same files again and again. The key is the hash of the content itself, so an entry is
    never stale. Only texts of at least ``min_bytes`` are kept, within ``budget`` bytes (LRU).
    Used from the event loop thread only.
    """

    def __init__(self, budget: int, min_bytes: int = 4096) -> None:
        self._entries: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.budget = budget
        self.min_bytes = min_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0

    def escaped(self, snippet: Snippet) -> bytes:
        c = snippet.content
        if not snippet.whole or len(c) < self.min_bytes or self.budget <= 0:
            return _escape(c if type(c) is str else c.decode("utf-8")).encode()  # type: ignore[union-attr]
        key = snippet.file_hash
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        out = _escape(c if type(c) is str else c.decode("utf-8")).encode()  # type: ignore[union-attr]
        if len(out) <= self.budget // 4:
            self._entries[key] = out
            self.size += len(out)
            while self.size > self.budget:
                _key, old = self._entries.popitem(last=False)
                self.size -= len(old)
        return out


def _snippet_fragment(r: Snippet | PlokeIoError, memo: EscapeMemo) -> bytes:
    if type(r) is Snippet:
        return b"".join(
            (
                b'{"ok":true,"text":',
                memo.escaped(r),
                b',"fileHash":"',
                r.file_hash.encode(),
                b'"}',
            )
        )
    return fastjson.dumps(_snippet_json(r))


def _hash_fragment(r: FileHash | PlokeIoError, memo: EscapeMemo) -> bytes:
    if type(r) is FileHash:
        return b'{"ok":true,"fileHash":"%s","size":%d}' % (r.file_hash.encode(), r.size)
    return fastjson.dumps(_hash_json(r))


def _json_fragment(to_json: Callable[[Any], dict[str, Any]]) -> Callable[[Any, EscapeMemo], bytes]:
    return lambda r, _memo: fastjson.dumps(to_json(r))


# Results whose ``results`` list is encoded in chunks (and released as it goes).
_CHUNKED: dict[type[Any], Callable[[Any, EscapeMemo], bytes]] = {
    GetSnippetsResult: _snippet_fragment,
    HashFilesResult: _hash_fragment,
    ScanChangesResult: _scan_fragment,
    WriteSnippetsResult: _json_fragment(_edit_json),
    CreateFilesResult: _json_fragment(_created_json),
}
_CHUNK_ITEMS = 256


def encode_response(msg_id: MsgId, result: Any, memo: EscapeMemo) -> list[bytes] | None:
    """Encode a batch response as chunks of bytes, or None if ``result`` is not a batch.

    Items are turned into JSON a few hundred at a time, snippets, hashes and scan results by
    templates around the C string escaper (2x faster than building dicts for ``json.dumps``;
    whole-file texts go through ``memo``), the others (edits, created files, item errors) as
    dicts by orjson (0.5 µs an edit result against 6 µs with ``json``), and dropped from the
    result list as soon as they are encoded, so a
    large response never exists as Python objects, one huge string and one huge bytes object
    at once. ASCII-escaped output is kept:
    measured here, the C encoder is faster with ``ensure_ascii=True`` and the body only ~5%
    larger on a corpus with multi-byte text (see docs/performance.md). Hashes are lowercase
    hex made by the engine, so they need no escaping.
    """
    fragment = _CHUNKED.get(type(result))
    if fragment is None:
        return None
    items: list[Any] = result.results
    chunks = [b'{"jsonrpc":"2.0","id":' + fastjson.dumps(msg_id) + b',"result":{"results":[']
    n = len(items)
    for start in range(0, n, _CHUNK_ITEMS):
        end = min(n, start + _CHUNK_ITEMS)
        text = b",".join([fragment(r, memo) for r in items[start:end]])
        chunks.append(text if start == 0 else b"," + text)
        items[start:end] = [None] * (end - start)
    chunks.append(b"]}}")
    return chunks


def _unstructure_status(s: StatusResult) -> dict[str, Any]:
    return {
        "version": s.version,
        "roots": s.roots,
        "symlinkPolicy": s.symlink_policy,
        "fdLimit": s.fd_limit,
        "maxFileBytes": s.max_file_bytes,
        "watcher": {"enabled": s.watcher.enabled, "debounceMs": s.watcher.debounce_ms},
        "counters": s.counters,
    }


def make_converter() -> cattrs.Converter:
    """lsprotocol's converter plus the hooks of every ``ploke/*`` shape.

    pygls's own default adds hooks that turn untyped params into namedtuples; we leave them
    out: every method we serve is typed, and unknown ones are answered -32601 unread.
    """
    converter = get_converter()
    converter.register_structure_hook(GetSnippetsParams, structure_get_snippets)
    converter.register_structure_hook(HashFilesParams, structure_hash_files)
    converter.register_structure_hook(StatusParams, structure_status)
    converter.register_structure_hook(ScanChangesParams, structure_scan_changes)
    converter.register_structure_hook(WriteSnippetsParams, structure_write_snippets)
    converter.register_structure_hook(CreateFilesParams, structure_create_files)
    converter.register_unstructure_hook(GetSnippetsResult, _unstructure_snippets)
    converter.register_unstructure_hook(HashFilesResult, _unstructure_hashes)
    converter.register_unstructure_hook(StatusResult, _unstructure_status)
    converter.register_unstructure_hook(
        ScanChangesResult, lambda r: {"results": [_scan_json(x) for x in r.results]}
    )
    converter.register_unstructure_hook(
        WriteSnippetsResult, lambda r: {"results": [_edit_json(x) for x in r.results]}
    )
    converter.register_unstructure_hook(
        CreateFilesResult, lambda r: {"results": [_created_json(x) for x in r.results]}
    )
    return converter
