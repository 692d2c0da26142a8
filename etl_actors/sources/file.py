"""Files as a source: CSV, NDJSON / JSON and Parquet, on local disk or an object store.

Every file is a partition, keyed by its path (``s3://bucket/key`` for object stores).
A file is streamed in batches, never loaded whole, except a JSON *array* file, which is
parsed whole (use NDJSON for large JSON data). The position after a batch is::

    {"rows": <rows of the file consumed so far, rejected rows included>, "done": <last batch?>}

and ``batch_id`` is ``f"{path}#{first_row}"``. Batch boundaries depend only on the file
and ``batchSize``, so a resumed read yields the very batches a first read would have.
A file whose position says ``done`` is skipped by :meth:`FileSource.partitions`; an empty
file yields one empty batch with ``done: true`` so that it, too, is skipped next run.

Malformed CSV rows do not fail the run: rows with the wrong number of fields and values
that do not convert to their column's type (declared in ``columns:`` or inferred from
the file's first block) come back as :class:`~etl_actors.batch.DeadLetter` s on
``SourceBatch.rejects``; the other rows load.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.json as pjson
import pyarrow.parquet as pq

from ..batch import DeadLetter, SourceBatch, jsonable
from ..batch import is_done as _is_done
from ..errors import SpecError, TerminalError, TransientError
from .base import Source

FORMATS = ("csv", "json", "parquet")
_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".ndjson": "json", ".jsonl": "json",
               ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
COLUMN_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "timestamp": pa.timestamp("us"), "date": pa.date32()}
_GLOB_CHARS = re.compile(r"[*?\[]")


@functools.cache
def _null_words() -> pa.Array:
    """The CSV reader's null spellings (built on first use: pa.array at import time
    would load pandas into every worker)."""
    return pa.array(pcsv.ConvertOptions().null_values, pa.string())


def format_of(path: str) -> str | None:
    """The format a file name implies (``.ndjson``/``.jsonl`` are json), or None."""
    name = path.lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return _EXTENSIONS.get(posixpath.splitext(name)[1])


def glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex over '/'-separated paths: ``*`` and ``?`` stay within one
    folder, ``**`` crosses folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?"); i += 3
        elif pattern.startswith("**", i):
            out.append(".*"); i += 2
        elif pattern[i] == "*":
            out.append("[^/]*"); i += 1
        elif pattern[i] == "?":
            out.append("[^/]"); i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]"); i = end + 1
        else:
            out.append(re.escape(pattern[i])); i += 1
    return re.compile("".join(out) + r"\Z")


def split_glob(path: str) -> tuple[str, str | None]:
    """``data/2024/*.csv`` -> (``data/2024``, ``*.csv``); a path without glob characters
    -> (path, None)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS.search(part):
            return "/".join(parts[:i]) or "/", "/".join(parts[i:])
    return path, None


def filesystem(location: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, prefix that turns such a path back into a key)."""
    if "://" in location and not location.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path, location.split("://", 1)[0] + "://"
    if location.startswith("file://"):
        location = location[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(location), ""


@dataclass(frozen=True)
class FileSource(Source):
    """Files under ``path`` (a file, a folder searched recursively, a glob, or an object
    store URI such as ``s3://bucket/prefix``), optionally filtered by ``pattern``.

    ``pattern`` without a '/' matches file names at any depth; with a '/' it matches the
    path relative to ``path``. Files whose names start with '.' or '_' are ignored.
    """

    type: ClassVar[str] = "file"

    path: str
    format: str = "csv"
    pattern: str | None = None
    batch_size: int = 100_000
    delimiter: str = ","
    columns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.format not in FORMATS:
            raise SpecError("format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        for name, type_name in self.columns:
            if type_name not in COLUMN_TYPES:
                raise SpecError(f"columns.{name}", f"{type_name!r} is not one of {', '.join(COLUMN_TYPES)}")

    @classmethod
    def from_spec(cls, section, ctx) -> "FileSource":
        kind = section.get("type", "file", types=str)
        path, pattern = _location(section, ctx, kind)
        guess = format_of(pattern or path)
        fmt = section.get("format", guess, types=str, choices=FORMATS + ("ndjson", "jsonl"))
        if fmt is None:
            raise SpecError(section.at("format"), f"is required: cannot tell the format from {path!r}; "
                                                  f"expected one of {', '.join(FORMATS)}")
        tab = (pattern or path).lower().endswith(".tsv")
        source = cls(path=path, format="json" if fmt in ("ndjson", "jsonl") else fmt, pattern=pattern,
                     batch_size=section.positive_int("batch_size", 100_000),
                     delimiter=section.get("delimiter", "\t" if tab else ",", types=str,
                                           check=lambda v: None if len(v) == 1 else f"expected one character, got {v!r}"),
                     columns=_columns(section))
        section.done()
        return source

    # --- partitions --------------------------------------------------------------

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        """The matching files, sorted, without those whose position says ``done``.

        A partition is a file's path relative to the source's folder (its name, for a
        single-file source), so the watermark survives the data moving as a whole: a
        ``ray job submit --working-dir`` upload, a remounted volume.
        """
        keys = [self._key(f) for f in self.files()]
        return [k for k in keys if not _is_done(watermark.get(k))]

    def files(self) -> list[str]:
        """Every file this source covers, sorted by path."""
        fs, root, prefix, glob, single = self._root()
        if single:
            return [prefix + root]
        pattern = glob or self.pattern
        regex = glob_regex(pattern) if pattern else None
        by_name = pattern is not None and glob is None and "/" not in pattern
        found = []
        for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            relative = entry.path[len(root):].lstrip("/")
            if entry.type != pafs.FileType.File or _hidden(relative):
                continue
            if regex is None and format_of(entry.path) != self.format:
                continue
            if regex is not None and not regex.match(entry.base_name if by_name else relative):
                continue
            found.append(prefix + entry.path)
        return sorted(found)

    def _root(self) -> tuple[pafs.FileSystem, str, str, str | None, bool]:
        """(filesystem, root path in it, key prefix, glob, whether the root is one file)."""
        base, glob = split_glob(self.path)
        fs, root, prefix = filesystem(base)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise TerminalError(f"no such file or folder: {self.path!r}", partition=self.path)
        return fs, root, prefix, glob, info.type == pafs.FileType.File and glob is None

    def _key(self, location: str) -> str:
        _, root, prefix, _, single = self._root()
        return posixpath.basename(root) if single else location[len(prefix + root):].lstrip("/")

    def locate(self, partition: str) -> str:
        """The file a partition key names."""
        _, root, prefix, _, single = self._root()
        return prefix + root if single else f"{prefix}{root.rstrip('/')}/{partition}"

    def estimate_bytes(self, partition: str) -> int | None:
        fs, path, _ = filesystem(self.locate(partition))
        return fs.get_file_info(path).size

    def describe(self) -> dict:
        return {"type": self.type, "path": self.path, "format": self.format, "pattern": self.pattern,
                "batchSize": self.batch_size}

    # --- reading -----------------------------------------------------------------

    def read(self, partition: str, position: Any | None) -> Iterator[SourceBatch]:
        """Yield the batches of one file after ``position["rows"]`` rows."""
        if _is_done(position):
            return
        start = int(position.get("rows", 0)) if isinstance(position, Mapping) else 0
        fs, path, _ = filesystem(self.locate(partition))
        try:
            chunks = self._chunks(fs, path, partition, start)
            yield from _with_positions(chunks, partition, start)
        except (pa.ArrowInvalid, FileNotFoundError) as exc:
            raise TerminalError(f"cannot read {partition!r} as {self.format}: {_first_line(exc)}",
                                partition=partition) from None
        except OSError as exc:
            raise TransientError(f"cannot read {partition!r}: {_first_line(exc)}", partition=partition) from None

    def _chunks(self, fs, path: str, partition: str, start: int) -> Iterator[tuple[pa.Table, int, tuple]]:
        """(table, rows consumed, rejects) per batch, starting after ``start`` rows."""
        if fs.get_file_info(path).size == 0:
            return iter(())
        if self.format == "parquet":
            return _parquet_chunks(fs, path, start, self.batch_size)
        if self.format == "json":
            return _json_chunks(fs, path, start, self.batch_size)
        return _CsvReader(self, fs, path, partition).chunks(start)


def _columns(section) -> tuple[tuple[str, str], ...]:
    columns = section.get("columns", {}, types=dict)
    for name, type_name in columns.items():
        if type_name not in COLUMN_TYPES:
            raise SpecError(f"{section.at('columns')}.{name}", f"{type_name!r} is not one of {', '.join(COLUMN_TYPES)}")
    return tuple((str(k), v) for k, v in columns.items())


def _location(section, ctx, kind: str) -> tuple[str, str | None]:
    pattern = section.get("pattern", None, types=str)
    if section.has("bucket"):
        bucket = section.get("bucket", types=str)
        prefix = section.get("prefix", "", types=str).strip("/")
        if kind == "s3" or "://" in bucket:
            root = bucket if "://" in bucket else f"s3://{bucket}"
            return (f"{root}/{prefix}" if prefix else root), pattern
        return ctx.resolve_path(os.path.join(bucket, prefix)), pattern
    if section.has("prefix") and not section.has("path"):
        return ctx.resolve_path(section.get("prefix", types=str)), pattern
    path = ctx.resolve_path(section.get("path", types=str))
    if pattern is not None and split_glob(path)[1] is not None:
        raise SpecError(section.at("pattern"), "cannot be combined with a glob in path; use one of them")
    return path, pattern


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _with_positions(chunks, partition: str, start: int) -> Iterator[SourceBatch]:
    """Turn chunks into batches; the last one says ``done`` (one lookahead), and a file
    with nothing left still yields one empty, done batch."""
    rows, pending = start, None
    for chunk in chunks:
        if chunk[1] == 0:
            continue
        if pending is not None:
            yield _batch(pending, partition, rows, done=False)
            rows += pending[1]
        pending = chunk
    if pending is None:
        pending = (pa.table({}), 0, ())
    yield _batch(pending, partition, rows, done=True)


def _batch(chunk, partition: str, first_row: int, done: bool) -> SourceBatch:
    table, consumed, rejects = chunk
    return SourceBatch(table=table, batch_id=f"{partition}#{first_row}", partition=partition,
                       position={"rows": first_row + consumed, "done": done}, rejects=tuple(rejects))


# --- parquet ---------------------------------------------------------------------

def _parquet_chunks(fs, path: str, start: int, batch_size: int):
    """Row group by row group, skipping whole groups before ``start``."""
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        first = 0
        for group in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if first + size <= start:
                first += size
                continue
            yield from _after(parquet.iter_batches(batch_size=batch_size, row_groups=[group]), start, first)
            first += size


# --- json --------------------------------------------------------------------------

def _json_chunks(fs, path: str, start: int, batch_size: int):
    """NDJSON streamed in blocks (rows before ``start`` are parsed and dropped, so
    boundaries match a first read); a JSON array is parsed whole."""
    with fs.open_input_stream(path, compression="detect") as stream:
        head = stream.read(4096)
    if head.lstrip()[:1] == b"[":
        yield from _json_array_chunks(fs, path, start, batch_size)
        return
    block = _block_size(head, batch_size)
    with fs.open_input_stream(path, compression="detect") as stream:
        reader = pjson.open_json(stream, read_options=pjson.ReadOptions(block_size=block, use_threads=False))
        yield from _after(reader, start)


def _after(batches, start: int, seen: int = 0):
    """Chunks of ``batches`` (whose first row is row ``seen``) from row ``start`` on."""
    for batch in batches:
        skip = max(0, start - seen)
        seen += batch.num_rows
        if skip < batch.num_rows:
            table = pa.Table.from_batches([batch.slice(skip)])
            yield table, table.num_rows, ()


def _json_array_chunks(fs, path: str, start: int, batch_size: int):
    with fs.open_input_stream(path, compression="detect") as stream:
        rows = json.loads(stream.read())
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise TerminalError(f"{path!r}: expected a JSON array of objects or NDJSON", partition=path)
    table = pa.Table.from_pylist(rows)
    for offset in range(start, table.num_rows, batch_size):
        chunk = table.slice(offset, batch_size)
        yield chunk, chunk.num_rows, ()


def _block_size(head: bytes, batch_size: int) -> int:
    """Bytes per block so a block holds about ``batch_size`` rows, judged from the head."""
    lines = head.split(b"\n")[:-1] or [head]
    widest = max(len(line) for line in lines) + 1
    average = sum(len(line) + 1 for line in lines) / len(lines)
    return int(min(max(average * batch_size, 16 * widest, 1024), 256 * 2**20))


# --- csv ---------------------------------------------------------------------------

class _CsvReader:
    """Streams one CSV file with a typed parse; after a conversion error it reopens at
    the current row reading strings, and casts column by column, rejecting the rows
    that do not convert. Every batch has the schema of the file's first block."""

    def __init__(self, source: FileSource, fs, path: str, partition: str):
        self.source, self.fs, self.path, self.partition = source, fs, path, partition
        self.invalid: dict[int, DeadLetter] = {}
        self.skip = 0
        with fs.open_input_stream(path, compression="detect") as stream:
            self.block = _block_size(stream.read(1 << 20), source.batch_size)

    def chunks(self, start: int):
        schema = self._schema()
        consumed, typed = start, True
        while True:
            try:
                for table, used, rejects in self._typed(schema, consumed, typed):
                    consumed += used
                    yield table, used, rejects
                break
            except pa.ArrowInvalid as exc:
                if not typed or "conversion error" not in str(exc):
                    raise
                typed = False
        if self.invalid:
            yield schema.empty_table(), len(self.invalid), tuple(self.invalid.pop(i) for i in sorted(self.invalid))

    def _typed(self, schema: pa.Schema, start: int, typed: bool):
        """Chunks from row ``start``: parsed as ``schema``, or as strings then cast."""
        strings = pa.schema([(f.name, pa.string()) for f in schema])
        for batch in self._open(schema if typed else strings, start):
            table, rejects = pa.Table.from_batches([batch]), []
            if not typed:
                table, rejects = _cast_rows(table, schema)
                rejects = [DeadLetter(r.reason, {**r.record, "_file": self.partition}) for r in rejects]
            used, bad = self._consume_invalid(start, table.num_rows + len(rejects))
            start += used
            yield table, used, tuple(rejects) + bad

    def _schema(self) -> pa.Schema:
        declared = {name: COLUMN_TYPES[t] for name, t in self.source.columns}
        with self.fs.open_input_stream(self.path, compression="detect") as stream:
            reader = pcsv.open_csv(stream, read_options=self._read_options(0),
                                   parse_options=self._parse_options(lambda row: "skip"),
                                   convert_options=pcsv.ConvertOptions(column_types=declared))
            schema = reader.schema
        return pa.schema([(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in schema])

    def _open(self, schema: pa.Schema, skip: int):
        self.skip = skip
        with self.fs.open_input_stream(self.path, compression="detect") as stream:
            yield from pcsv.open_csv(stream, read_options=self._read_options(skip),
                                     parse_options=self._parse_options(self._on_invalid),
                                     convert_options=pcsv.ConvertOptions(
                                         column_types=schema, strings_can_be_null=False))

    def _read_options(self, skip: int) -> pcsv.ReadOptions:
        return pcsv.ReadOptions(block_size=self.block, use_threads=False, skip_rows_after_names=skip)

    def _parse_options(self, handler) -> pcsv.ParseOptions:
        return pcsv.ParseOptions(delimiter=self.source.delimiter, invalid_row_handler=handler)

    def _on_invalid(self, row) -> str:
        # Single-threaded parsing numbers rows from 1 at the header, across skips.
        index = row.number - 2 if row.number is not None else -1
        if 0 <= index < self.skip:
            return "skip"
        reason = f"row has {row.actual_columns} fields, expected {row.expected_columns}"
        self.invalid[index] = DeadLetter(reason, {"_row": row.text, "_file": self.partition,
                                                  "_line": row.number})
        return "skip"

    def _consume_invalid(self, first: int, good: int) -> tuple[int, tuple[DeadLetter, ...]]:
        """Rows consumed by a batch of ``good`` parsed rows starting at row ``first``,
        counting the skipped invalid rows that fall inside it (the parser reads ahead,
        so they are placed by row number)."""
        end, bad = first + good, []
        for index in sorted(self.invalid):
            if index >= end:
                break
            bad.append(self.invalid.pop(index))
            end += 1
        return end - first, tuple(bad)


def _cast_rows(table: pa.Table, schema: pa.Schema) -> tuple[pa.Table, list[DeadLetter]]:
    """Cast a table of strings to ``schema``; rows with a value that does not convert
    come back as dead letters with the reason, the others as the typed table."""
    reasons: dict[int, str] = {}
    columns = []
    for field_ in schema:
        column = table[field_.name].combine_chunks()
        if not pa.types.is_string(field_.type):
            column = pc.if_else(pc.is_in(column, value_set=_null_words()), pa.scalar(None, pa.string()), column)
            for i in _bad_rows(column, field_.type):
                reasons.setdefault(i, f"{field_.name}: cannot convert {column[i].as_py()!r} to {field_.type}")
        columns.append(column)
    bad = pa.array(sorted(reasons), pa.int64())
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=bad))
    typed = pa.table([pc.cast(c.filter(keep), f.type) for c, f in zip(columns, schema)], schema=schema)
    rejects = [DeadLetter(reasons[i], jsonable(row)) for i, row in zip(bad.to_pylist(), table.take(bad).to_pylist())]
    return typed, rejects


def _bad_rows(column: pa.Array, type_: pa.DataType, offset: int = 0) -> list[int]:
    """Indices of values that do not cast to ``type_``: whole-column casts, bisecting
    only the parts that fail."""
    try:
        pc.cast(column, type_, safe=True)
        return []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(column) == 1:
            return [offset]
    half = len(column) // 2
    return _bad_rows(column.slice(0, half), type_, offset) + _bad_rows(column.slice(half), type_, offset + half)
