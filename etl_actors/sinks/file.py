"""Files as a sink: one Parquet, CSV or NDJSON file per batch, in a folder or an
object store (``s3://bucket/prefix``); or, as the ``batch:`` destination of the seed,
one output file per input file (:mod:`etl_actors.sinks.per_file`).

Guarantee: no duplicates for replays of the same batch id. Each batch goes to a file
named after its id (``part-<sha1(batch_id)[:20]>.parquet``), written to a temporary
name in the same folder and then renamed over the final name, so a replayed batch
replaces its own file. A crash leaves at most a temporary ``.part-*.tmp`` file, which
the next :meth:`FileSink.open` removes (readers, including the file source, ignore
names starting with '.').

Schema: one per dataset folder, across runs and whichever batch lands first. It is
kept in ``_common_metadata`` (a Parquet footer, whatever the format; readers ignore
names starting with '_'), which gains a batch's new columns (nullable) before the
first file that holds them is written; every file is the batch conformed to it: its
columns in dataset order (the CSV header and NDJSON keys too), missing ones as nulls,
each cast to the dataset's type. A column whose type changes fails the batch with a
TerminalError naming the column, the batch and both types. A file never holds a
column in another type than the dataset's, but files written before a column was
added lack it: read Parquet with the dataset schema, e.g.
``ds.dataset(path, schema=pq.read_schema(f"{path}/_common_metadata"))``. The rule is
stated in :mod:`etl_actors.sinks.schema`.

Parquet: the sink's compression, and a dictionary for each column whose values repeat
(see :class:`Dictionaries`), as DuckDB's writer does: smaller files, written faster.

NDJSON holds strict JSON: NaN and the infinities are written as ``null``.
"""
from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import objectstore
from ..batch import LoadResult, jsonable
from ..errors import EtlError, SpecError, TerminalError, TransientError, first_line
from ..redaction import ConnectionUrl, redact_url
from ..sources.file import filesystem, store_location
from ..sources.listing import is_uri
from .base import Sink, SinkWriter
from .schema import conform, evolved

FORMATS = ("parquet", "csv", "ndjson")
COMPRESSIONS = ("snappy", "gzip", "zstd", "brotli", "lz4", "none")
_EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "ndjson": ".ndjson"}
SCHEMA_FILE = "_common_metadata"
REPEATING = 0.25        # a column with at most this share of distinct values is dictionary-encoded
JUDGED_ROWS = 1_000     # a batch needs this many rows for its columns to be judged by it


def file_name(batch_id: str, format: str, table: pa.Table | None = None) -> str:
    """The file a batch is written to: the same id, the same name. A stream's window
    results are rolled per window range: ``windows-<first start>-<last end>-<id hash>``
    (epoch ms), so the files list in event-time order."""
    digest = hashlib.sha1(batch_id.encode()).hexdigest()[:20]
    if table is not None and table.num_rows and {"windowStart", "windowEnd"} <= set(table.column_names):
        start, end = pc.min(table["windowStart"]).as_py(), pc.max(table["windowEnd"]).as_py()
        if isinstance(start, int) and isinstance(end, int):
            return f"windows-{start}-{end}-{digest[:12]}{_EXTENSIONS[format]}"
    return f"part-{digest}{_EXTENSIONS[format]}"


@dataclass(frozen=True)
class FileSink(Sink):
    """Batches as files under ``path`` (a local folder or an object store URI), or with
    ``per_file`` one output per input file.

    The seed's ``batch.destination`` shape, ``{type: s3 | file, bucket, prefix, format,
    compression, connection, extension}``, names the same place (as the file source's
    ``bucket`` / ``prefix`` / ``connection`` do) and, in a ``batch:`` spec, writes one
    output per input file: ``prefix`` + the input's name (its path below the source's
    prefix), in ``format`` whatever the input's was; ``extension`` (``.parquet``, say)
    replaces the input's extension, which is kept by default. The guarantee is stated
    in :mod:`etl_actors.sinks.per_file`.
    """

    type: ClassVar[str] = "file"

    path: str
    format: str = "parquet"
    compression: str = "snappy"
    per_file: bool = False
    extension: str | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise SpecError("format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        if self.compression not in COMPRESSIONS:
            raise SpecError("compression", f"{self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if self.extension is not None and (problem := _extension_problem(self.extension, self.per_file)):
            raise SpecError("extension", problem)

    @classmethod
    def from_spec(cls, section, ctx) -> "FileSink":
        kind = section.get("type", "file", types=str)
        per_file = section.path.startswith("batch.") and section.has("bucket")
        if section.has("bucket") or section.has("prefix"):
            path = store_location(section, ctx, kind)
        else:
            path = ctx.resolve_path(section.get("path", types=str))
            if path.startswith("s3://"):
                objectstore.check_location(path, section.at("path"))
        fmt = section.get("format", "parquet", types=str, choices=FORMATS + ("json", "jsonl"))
        sink = cls(path=ConnectionUrl(path) if is_uri(path) else path,
                   format="ndjson" if fmt in ("json", "jsonl") else fmt,
                   compression=section.get("compression", "snappy", types=str, choices=COMPRESSIONS),
                   per_file=per_file,
                   extension=section.get("extension", None, types=str,
                                         check=lambda v: _extension_problem(v, per_file)))
        section.done()
        return sink

    @property
    def completes_partitions(self) -> bool:
        return self.per_file

    def open(self, pipeline: str) -> SinkWriter:
        if self.per_file:
            from .per_file import PerFileWriter

            return PerFileWriter(self)
        return FileWriter(self)

    def writes_files_in(self) -> str:
        return self.path

    def describe(self) -> dict:
        described = {"type": self.type, "path": redact_url(self.path), "format": self.format,
                     "compression": self.compression}
        if self.per_file:
            described.update(perFile=True, extension=self.extension)
        return described


def _extension_problem(extension: str, per_file: bool) -> str | None:
    if not per_file:
        return "applies to one output per input file (a batch: destination with bucket and prefix)"
    if not extension.startswith(".") or "/" in extension or len(extension) < 2:
        return f"expected a file name suffix such as '.parquet', got {extension!r}"
    return None


def storage_error(exc: OSError, message: str, remote: bool, **context) -> EtlError:
    """The error a file sink raises for a storage failure: transient when a retry may
    mend it (see :func:`etl_actors.objectstore.is_transient`; on local disk anything
    but a refused permission or a wrong kind of path), else terminal."""
    if remote:
        transient = objectstore.is_transient(exc)
    else:
        transient = not isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError))
    kind = TransientError if transient else TerminalError
    return kind(f"{message}: {first_line(exc)}", **context)


class FileWriter(SinkWriter):
    """An open :class:`FileSink`: the folder exists, stale temporary files are gone and
    ``schema`` is the dataset's (empty for a new dataset)."""

    def __init__(self, sink: FileSink):
        self.sink = sink
        self.fs, self.root, _ = filesystem(sink.path)
        try:
            self.fs.create_dir(self.root, recursive=True)
            self._remove_temporaries()
            self.schema = self._stored_schema()
        except OSError as exc:
            raise storage_error(exc, f"cannot open {redact_url(sink.path)!r}", is_uri(sink.path)) from None
        self.dictionaries = Dictionaries()

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        """Write the batch, conformed to the dataset schema, to its own file (replacing
        it if the batch is replayed); a type change raises TerminalError."""
        table = conform(table, self._schema_for(table.schema, batch_id), batch_id, self._where)
        if table.num_columns == 0:
            return LoadResult(loaded=0)  # only columns without values, and a dataset without columns
        final = f"{self.root}/{file_name(batch_id, self.sink.format, table)}"
        temp = f"{self.root}/.part-{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open_output_stream(temp) as stream:
                encoder = Encoder(self.sink, stream, table.schema, self.dictionaries.columns(table))
                encoder.write(table)
                encoder.close()
            self.fs.move(temp, final)
        except OSError as exc:
            self._discard(temp)
            raise storage_error(exc, f"cannot write batch {batch_id!r} to {redact_url(self.sink.path)!r}",
                                is_uri(self.sink.path), batch_id=batch_id) from None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
            self._discard(temp)
            raise TerminalError(f"cannot write batch {batch_id!r} as {self.sink.format}: {exc}",
                                batch_id=batch_id) from None
        return LoadResult(loaded=table.num_rows)

    # --- the dataset schema ----------------------------------------------------------

    def _schema_for(self, batch: pa.Schema, batch_id: str) -> pa.Schema:
        """The dataset schema with the batch's new columns, stored before it is used;
        another writer's columns stored meanwhile are kept."""
        if evolved(self.schema, batch, batch_id, self._where) is self.schema:
            return self.schema
        try:
            schema = evolved(self._stored_schema(), batch, batch_id, self._where)
            self._store_schema(schema)
        except OSError as exc:
            raise storage_error(exc, f"cannot write the schema of {redact_url(self.sink.path)!r}",
                                is_uri(self.sink.path), batch_id=batch_id) from None
        self.schema = schema
        return schema

    def _stored_schema(self) -> pa.Schema:
        path = f"{self.root}/{SCHEMA_FILE}"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return pa.schema([])
        try:
            with self.fs.open_input_file(path) as stream:
                return pq.read_schema(stream).remove_metadata()
        except pa.ArrowInvalid as exc:
            raise TerminalError(f"cannot read the dataset schema {path!r}: {exc}") from None

    def _store_schema(self, schema: pa.Schema) -> None:
        """Atomically: a temporary file renamed over ``_common_metadata``."""
        temp = f"{self.root}/.part-{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open_output_stream(temp) as stream:
                pq.write_metadata(schema, stream)
            self.fs.move(temp, f"{self.root}/{SCHEMA_FILE}")
        except OSError:
            self._discard(temp)
            raise

    @property
    def _where(self) -> str:
        return f"the dataset at {redact_url(self.sink.path)!r}"

    # --- files -------------------------------------------------------------------------

    def _remove_temporaries(self) -> None:
        for entry in self.fs.get_file_info(pafs.FileSelector(self.root)):
            if entry.base_name.startswith(".part-") and entry.base_name.endswith(".tmp"):
                self._discard(entry.path)

    def _discard(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except OSError:
            pass


class Encoder:
    """Tables of one schema into one file of the sink's format, as a stream: Parquet
    (one row group per table, the sink's compression, a dictionary for the columns
    ``dictionary`` names, by default the text ones), CSV (one header) or NDJSON."""

    def __init__(self, sink: FileSink, stream, schema: pa.Schema, dictionary: list[str] | None = None):
        self.format, self.stream, self.writer = sink.format, stream, None
        if sink.format == "parquet":
            compression = None if sink.compression == "none" else sink.compression
            if dictionary is None:
                dictionary = [f.name for f in schema if _is_text(f.type)]
            self.writer = pq.ParquetWriter(stream, schema, compression=compression, use_dictionary=dictionary)
        elif sink.format == "csv":
            self.writer = pcsv.CSVWriter(stream, csv_ready(schema.empty_table()).schema)

    def write(self, table: pa.Table) -> None:
        if self.format == "parquet":
            self.writer.write_table(table)
        elif self.format == "csv":
            self.writer.write_table(csv_ready(table))
        else:
            buffer = io.StringIO()
            for row in table.to_pylist():  # jsonable makes NaN and the infinities None
                buffer.write(json.dumps(jsonable(row), ensure_ascii=False, allow_nan=False) + "\n")
            self.stream.write(buffer.getvalue().encode())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def csv_ready(table: pa.Table) -> pa.Table:
    """CSV holds flat text: struct fields become dotted columns (``contact.email``), and
    lists and maps become JSON text."""
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_map(f.type) \
                or pa.types.is_fixed_size_list(f.type):
            text = [None if v is None else json.dumps(jsonable(v), ensure_ascii=False)
                    for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table


class Dictionaries:
    """Which columns a Parquet writer gives a dictionary: those whose values repeat, at
    most :data:`REPEATING` of a batch's values distinct (a status, a quantity, a date of
    a few years, a key of a small table), judged once per column on the first batch of
    at least :data:`JUDGED_ROWS` rows that has it. Writing a dictionary and indices is
    cheaper than writing, and compressing, the values themselves; trying one for a
    column of mostly distinct values (an id, a price, a timestamp) and falling back
    costs more than the plain write. Until a column is judged, text is given one.
    Nested columns are written plainly."""

    def __init__(self):
        self.repeats: dict[str, bool] = {}

    def columns(self, table: pa.Table) -> list[str]:
        if table.num_rows >= JUDGED_ROWS:
            for f in table.schema:
                if f.name not in self.repeats:
                    self.repeats[f.name] = _repeats(table.column(f.name), f.type)
        return [f.name for f in table.schema if self.repeats.get(f.name, _is_text(f.type))]


def _repeats(column: pa.ChunkedArray, type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        return True
    if pa.types.is_nested(type_) or pa.types.is_boolean(type_) or pa.types.is_null(type_):
        return False
    try:
        distinct = pc.count_distinct(column, mode="all").as_py()
    except pa.ArrowNotImplementedError:     # a type without a hash kernel
        return False
    return distinct <= REPEATING * len(column)


def _is_text(type_: pa.DataType) -> bool:
    return (pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_binary(type_)
            or pa.types.is_dictionary(type_))
