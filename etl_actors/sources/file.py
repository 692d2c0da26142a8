"""Files as a source: CSV, NDJSON / JSON and Parquet, on local disk or an object store.

Every file is a partition, keyed by its path relative to the source's folder. A file
is streamed in blocks, never loaded whole, except a JSON *array* file, which is parsed
whole (use NDJSON for large JSON data). The position after a batch is::

    {"rows": <rows of the file consumed so far, rejected rows included>, "done": <last batch?>}

and ``batch_id`` is ``f"{key}#{first_row}"``. A batch holds exactly ``batchSize`` rows
(the last one fewer), so batch boundaries depend only on the file, ``batchSize`` and
where the read started, and a resumed read yields the very batches a first read would
have (:mod:`~etl_actors.sources.batching` says why, block size changes included).
A file whose position says ``done`` is skipped by :meth:`FileSource.partitions`; an
empty file (zero bytes, blank, or a CSV header alone) yields one empty batch with
``done: true`` so that it, too, is skipped next run.

Each batch says how many bytes of its file it consumed (:attr:`FileBatch.bytes`, for
progress by bytes): those the reader had read when the batch was cut (it reads ahead a
block), the rest of the file with the last batch, so a file's batches add up to its
size exactly, as ``RunStarted.total_bytes`` counts it. A read resumed mid-file counts
from the start of the file (CSV and JSON reread the rows before the position to skip
them); a Parquet file's bytes all come with its last batch.

Malformed CSV rows do not fail the run (:mod:`~etl_actors.sources.csv_reader`): rows
with the wrong number of fields, values that are not text in the ``encoding`` and
values that do not convert to their column's type come back as
:class:`~etl_actors.batch.DeadLetter` s on ``SourceBatch.rejects``; the other rows load.

The pieces: :mod:`~etl_actors.sources.listing` finds the files,
:mod:`~etl_actors.sources.text` decodes them, one reader per format parses them and
:mod:`~etl_actors.sources.batching` turns their rows into batches.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Iterator, Mapping

import pyarrow as pa
import pyarrow.fs as pafs

from .. import objectstore
from ..batch import SourceBatch
from ..batch import is_done as _is_done
from ..errors import EtlError, SpecError, TerminalError, TransientError, first_line
from ..redaction import ConnectionUrl, redact_text, redact_url
from .base import Source
from .batching import Unreadable, file_batches
from .csv_reader import COLUMN_TYPES, CsvReader
from .json_reader import JsonReader
from .listing import (Root, Selection, filesystem, format_of, glob_regex, is_uri, lexical, split_glob,
                      split_query)
from .parquet_reader import ParquetReader
from .text import ON_DECODE_ERROR, codec_problem

__all__ = ["FileSource", "FileBatch", "format_of", "filesystem", "glob_regex", "split_glob", "COLUMN_TYPES", "FORMATS"]

FORMATS = ("csv", "json", "parquet")
ERROR_HANDLING = ("fail", "continue")
_READERS = {"csv": CsvReader, "json": JsonReader, "parquet": ParquetReader}
_TRANSIENT_ERRNOS = {errno.EIO, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EAGAIN,
                     errno.ESTALE, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED}
_CODEC_WORDS = ("inflate", "compress", "zlib", "zstd", "lz4", "bz2", "snappy", "brotli")


@dataclass(frozen=True)
class FileBatch(SourceBatch):
    """A file's batch and ``bytes``, how many bytes of the file it consumed."""

    bytes: int = 0


@dataclass(frozen=True)
class FileSource(Source):
    """Files under ``path`` (a file, a folder searched recursively, a glob, or an object
    store URI such as ``s3://bucket/prefix``, whose query may carry credentials),
    optionally filtered by ``pattern``.

    The seed's ``batch.source`` shape, ``{type: s3 | file, bucket, prefix, pattern,
    connection}``, names the same: ``type: s3`` reads ``prefix`` in ``bucket`` through
    ``connection`` (a store URL, see :mod:`etl_actors.objectstore`; without one
    pyarrow's defaults apply), ``type: file`` the folder ``bucket/prefix``.

    ``pattern`` without a '/' matches file names at any depth; with a '/' it matches the
    path relative to ``path``. Files whose names start with '.' or '_' are ignored. A
    local folder is walked following symlinks, each real folder and file once.

    Text is decoded as ``encoding`` (any Python codec; default utf-8). A CSV value
    that is not valid text makes its row a dead letter (``onDecodeError: fail``) or is
    loaded with U+FFFD for the bad bytes (``onDecodeError: replace``).

    A file that cannot be read at all (not its format, not text in its encoding,
    unreadable) makes :meth:`read` raise :class:`~etl_actors.errors.TerminalError`
    naming the file; with ``errorHandling: continue`` (``error_handling``) the runtime
    dead-letters that file as a whole and loads the others, with ``fail`` (the
    default) the run stops.
    """

    type: ClassVar[str] = "file"

    path: str
    format: str = "csv"
    pattern: str | None = None
    batch_size: int = 100_000
    delimiter: str = ","
    columns: tuple[tuple[str, str], ...] = ()
    encoding: str = "utf-8"
    on_decode_error: str = "fail"
    error_handling: str = "fail"

    def __post_init__(self):
        _check_choice("format", self.format, FORMATS)
        _check_choice("onDecodeError", self.on_decode_error, ON_DECODE_ERROR)
        _check_choice("errorHandling", self.error_handling, ERROR_HANDLING)
        if problem := codec_problem(self.encoding):
            raise SpecError("encoding", problem)
        for name, type_name in self.columns:
            _check_choice(f"columns.{name}", type_name, tuple(COLUMN_TYPES))

    @classmethod
    def from_spec(cls, section, ctx) -> "FileSource":
        kind = section.get("type", "file", types=str)
        path, pattern = _location(section, ctx, kind)
        guess = format_of(pattern or split_query(path)[0])
        fmt = section.get("format", guess, types=str, choices=FORMATS + ("ndjson", "jsonl"))
        if fmt is None:
            raise SpecError(section.at("format"), f"is required: cannot tell the format from {redact_url(path)!r}; "
                                                  f"expected one of {', '.join(FORMATS)}")
        tab = (pattern or split_query(path)[0]).lower().endswith(".tsv")
        source = cls(path=ConnectionUrl(path) if is_uri(path) else path,
                     format="json" if fmt in ("ndjson", "jsonl") else fmt, pattern=pattern,
                     batch_size=section.positive_int("batch_size", 100_000),
                     delimiter=section.get("delimiter", "\t" if tab else ",", types=str, check=_one_character),
                     columns=_columns(section),
                     encoding=section.get("encoding", "utf-8", types=str, check=codec_problem),
                     on_decode_error=section.get("on_decode_error", "fail", types=str, choices=ON_DECODE_ERROR),
                     error_handling=section.get("error_handling", "fail", types=str, choices=ERROR_HANDLING))
        section.done()
        return source

    # --- partitions --------------------------------------------------------------

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        """The matching files, sorted, without those whose position says ``done``.

        A partition is a file's path relative to the source's folder (its name, for a
        single-file source), so the watermark survives the data moving as a whole: a
        ``ray job submit --working-dir`` upload, a remounted volume.
        """
        return [k for k in self._keys() if not _is_done(watermark.get(k))]

    def files(self) -> list[str]:
        """Every file this source covers, sorted by path, as locations (an object
        store's without the URI's query)."""
        return [self.locate(key) for key in self._keys()]

    def _keys(self) -> list[str]:
        shown = redact_url(self.path)
        try:
            return self._root().keys(self._selection())
        except OSError as exc:
            transient = _transient(exc, remote=True) if is_uri(self.path) else not isinstance(exc, PermissionError)
            kind = TransientError if transient else TerminalError
            raise kind(f"cannot list {shown!r}: {_reason(exc)}", partition=shown) from None

    def _root(self) -> Root:
        """Where the files are; TerminalError when the path does not exist."""
        base, query = split_query(self.path)
        folder, glob = split_glob(base)
        fs, root, prefix = filesystem(folder + query)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            shown = redact_url(self.path)
            raise TerminalError(f"no such file or folder: {shown!r}", partition=shown)
        return Root(fs, root, prefix, single=info.type == pafs.FileType.File and glob is None)

    def _selection(self) -> Selection:
        glob = split_glob(split_query(self.path)[0])[1]
        return Selection(format=self.format, pattern=self.pattern, glob=glob)

    def locate(self, partition: str) -> str:
        """The file a partition key names (an object store's without the query)."""
        root = self._root()
        return root.prefix + root.path_of(partition)

    def would_read(self, location: str) -> bool:
        """Whether a file written at ``location`` (a path or URI) would be listed by
        this source: it is the source's one file, or it is below the source's folder,
        not hidden, and matches its glob, pattern or format. Judged from the names
        (local paths with symlinks resolved as far as they exist); neither the file
        nor the source's folder needs to exist."""
        base, glob = split_glob(split_query(self.path)[0])
        (scheme, root), (other, path) = lexical(base), lexical(location)
        if scheme != other:
            return False
        if path == root:
            return glob is None
        if not path.startswith(root.rstrip("/") + "/"):
            return False
        return self._selection().matches(path[len(root.rstrip("/")) + 1:])

    def estimate_bytes(self, partition: str) -> int | None:
        root = self._root()
        return root.fs.get_file_info(root.path_of(partition)).size

    def describe(self) -> dict:
        return {"type": self.type, "path": redact_url(self.path), "format": self.format, "pattern": self.pattern,
                "batchSize": self.batch_size, "encoding": self.encoding, "onDecodeError": self.on_decode_error,
                "errorHandling": self.error_handling}

    # --- reading -----------------------------------------------------------------

    def read(self, partition: str, position: Any | None) -> Iterator[SourceBatch]:
        """Yield the batches of one file after ``position["rows"]`` rows.

        Raises :class:`~etl_actors.errors.TerminalError` when the file cannot be read
        as its format and encoding, :class:`~etl_actors.errors.TransientError` when the
        storage failed in a way a retry may mend; both name the file (the partition key)
        in their message and carry it as ``partition``. No other error escapes.
        """
        if _is_done(position):
            return
        start = int(position.get("rows", 0)) if isinstance(position, Mapping) else 0
        try:
            root = self._root()
            path = root.path_of(partition)
            size, meter = root.fs.get_file_info(path).size, _Meter(root.fs)
            pieces = _READERS[self.format](self, meter, path, partition).pieces(start) if size else iter(())
            consumed = 0
            for batch in file_batches(pieces, partition, start, self.batch_size):
                through = size if _is_done(batch.position) else max(consumed, min(size, meter.read))
                yield FileBatch(**{f.name: getattr(batch, f.name) for f in fields(batch)}, bytes=through - consumed)
                consumed = through
        except Exception as exc:
            raise self._read_error(exc, partition) from None

    def schema(self) -> pa.Schema | None:
        """The Arrow schema of the batches of the source's first file (declared
        ``columns:`` included), read from one block (CSV, NDJSON), the footer (Parquet)
        or the whole of a JSON array file; None when there is no file or it cannot be
        read."""
        try:
            keys = self._keys()
            return self._reader(keys[0]).schema() if keys else None
        except Exception:
            return None

    def _reader(self, partition: str):
        root = self._root()
        return _READERS[self.format](self, root.fs, root.path_of(partition), partition)

    def _read_error(self, exc: Exception, partition: str) -> EtlError:
        """The error ``read`` raises for ``exc``, naming the file."""
        if isinstance(exc, EtlError) and getattr(exc, "partition", None) == partition:
            return exc
        if isinstance(exc, OSError) and _transient(exc, remote=is_uri(self.path)):
            return TransientError(f"cannot read {partition!r}: {_reason(exc)}", partition=partition)
        reason = str(exc) if isinstance(exc, Unreadable) else _reason(exc)
        return TerminalError(f"cannot read {partition!r} as {self.format}: {redact_text(reason)}", partition=partition)


def _transient(exc: OSError, remote: bool) -> bool:
    """Whether a retry may mend a storage error: a known transient errno (EIO, a reset
    connection, ...), or an object store's error without an errno that is not a
    decompression failure (pyarrow raises those, for corrupt data, without one too)
    and that the store says may pass (:func:`etl_actors.objectstore.is_transient`)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if exc.errno is None:
        return remote and not any(word in str(exc).lower() for word in _CODEC_WORDS) \
            and objectstore.is_transient(exc)
    return exc.errno in _TRANSIENT_ERRNOS


class _Meter:
    """A filesystem's reading side for one file's readers, counting :attr:`read`: the
    bytes of the file (before decompression) the stream opened last has read. A local
    file is read as a seekable file and counted by its position; passing every read
    through Python to count it copied the whole file once more (0.5 s of 6M CSV rows)."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs, self._file, self._read = fs, None, 0

    @property
    def read(self) -> int:
        if self._file is not None and not self._file.closed:
            self._read = self._file.tell()
        return self._read

    def open_input_stream(self, path: str, compression: str | None = "detect"):
        self._read = 0
        if isinstance(self.fs, pafs.LocalFileSystem):
            stream = self._file = self.fs.open_input_file(path)
        else:
            self._file = None
            stream = pa.TransformInputStream(self.fs.open_input_stream(path, compression=None), self._count)
        codec = _codec(path) if compression == "detect" else compression
        return pa.CompressedInputStream(stream, codec) if codec else stream

    def open_input_file(self, path: str):
        return self.fs.open_input_file(path)

    def _count(self, buffer):
        self._read += len(buffer)
        return buffer


def _codec(path: str) -> str | None:
    """The compression a file's name implies (as pyarrow's ``compression="detect"``)."""
    try:
        return pa.Codec.detect(path).name
    except (ValueError, TypeError):
        return None


def _reason(exc: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none), with
    any secret hidden."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not {exc.encoding} text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    return first_line(exc)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(key, f"{value!r} is not one of {', '.join(choices)}")


def _one_character(value: str) -> str | None:
    return None if len(value) == 1 else f"expected one character, got {value!r}"


def _columns(section) -> tuple[tuple[str, str], ...]:
    columns = section.get("columns", {}, types=dict)
    for name, type_name in columns.items():
        if not isinstance(type_name, str) or type_name not in COLUMN_TYPES:
            raise SpecError(f"{section.at('columns')}.{name}", f"{type_name!r} is not one of {', '.join(COLUMN_TYPES)}")
    return tuple((str(k), v) for k, v in columns.items())


def _location(section, ctx, kind: str) -> tuple[str, str | None]:
    pattern = section.get("pattern", None, types=str)
    if section.has("bucket") or (section.has("prefix") and not section.has("path")):
        return store_location(section, ctx, kind), pattern
    path = ctx.resolve_path(section.get("path", types=str))
    if section.has("connection"):
        raise SpecError(section.at("connection"), "applies to bucket and prefix (type: s3)")
    if path.startswith("s3://"):
        objectstore.check_location(path, section.at("path"))
    if pattern is not None and split_glob(split_query(path)[0])[1] is not None:
        raise SpecError(section.at("pattern"), "cannot be combined with a glob in path; use one of them")
    return path, pattern


def store_location(section, ctx, kind: str) -> str:
    """Where a ``bucket`` / ``prefix`` section points: with ``type: s3`` (or a bucket
    given as a URI) the location in the store, reached through ``connection`` when
    given (:func:`etl_actors.objectstore.location`); with ``type: file`` the local
    folder ``bucket/prefix``. Shared by the file source and the file sink."""
    if not section.has("bucket"):
        return ctx.resolve_path(section.get("prefix", types=str))
    bucket = section.get("bucket", types=str)
    prefix = section.get("prefix", "", types=str).strip("/")
    if kind != "s3" and "://" not in bucket:
        if section.has("connection"):
            raise SpecError(section.at("connection"), "applies to object stores (type: s3)")
        return ctx.resolve_path(os.path.join(bucket, prefix))
    if "://" in bucket and not bucket.startswith("s3://"):   # another store pyarrow knows, by its URI
        return f"{bucket.rstrip('/')}/{prefix}" if prefix else bucket
    connection = ctx.connection(section) if section.has("connection") else None
    try:
        where = objectstore.location(bucket.removeprefix("s3://"), prefix, connection)
    except ValueError as exc:
        raise SpecError(section.at("connection"), str(exc)) from None
    objectstore.check_location(where, section.at("connection" if connection else "bucket"))
    return where
