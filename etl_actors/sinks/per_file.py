"""One output file per input file: the seed's ``batch:`` destination.

Guarantee: each input file of the source becomes exactly one output, holding the rows
of all its batches once, in file order, whatever crashes happen on the way (kill -9 of
any process included):

- Each batch is written as its own *part*, a Parquet file named by the batch's first
  row, in ``<prefix>/_parts/<input>/<run id>/``; a batch written again replaces its
  part (idempotent by batch id).
- When every batch of an input is loaded the runtime calls
  :meth:`PerFileWriter.complete_partition`: the parts are streamed in row order into
  the output (one part in memory at a time, one row group per part), under a temporary
  name that is then moved over ``<prefix>/<input>``, so the output appears whole or
  not at all; ``<run id>.combined`` then notes it is written, and the parts are
  deleted. Only after that does the runtime commit the input's ``done`` position.
- The runtime commits no other position of such an input, so a run that ended before
  the commit (a crash, a failed run) leaves the input to be read again from its first
  row: every part is written again, in the new run's own folder, and the output is
  assembled again. A batch starting at row 0 deletes what earlier runs left of that
  input's parts (so the parts of an input that failed halfway stay until it is read
  again). An input whose ``done`` was committed is not read again.

The output is named after the input's path below the source's folder (for files
directly under the source's prefix, as in the seed, its file name:
``daily-exports/sales-2026-12-01.csv`` -> ``processed/sales-2026-12-01.csv``), with
the sink's ``extension`` in place of the input's when given. Its schema is the parts'
schemas folded by the rule of :mod:`etl_actors.sinks.schema`: a column that first
appears in a later part is added (earlier rows hold nulls), a type change fails the
input naming the column.

On S3 the move is a server-side copy (``CopyObject``), which is limited to 5 GB per
output.
"""
from __future__ import annotations

import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..batch import LoadResult
from ..errors import SpecError, TerminalError
from ..redaction import redact_url
from ..sources.file import filesystem
from ..sources.listing import is_uri, lexical, split_glob, split_query
from .base import SinkWriter
from .file import Encoder, storage_error
from .schema import conform, evolved

PARTS = "_parts"
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def output_name(partition: str, extension: str | None) -> str:
    """The output's path below the sink's prefix for an input's partition key."""
    if extension is None:
        return partition
    stem = partition
    for suffix in _COMPRESSED:
        stem = stem.removesuffix(suffix)
    return posixpath.splitext(stem)[0] + extension


def split_batch_id(batch_id: str) -> tuple[str, int]:
    """``(partition, first row)`` of a file source's batch id ``<partition>#<row>``."""
    partition, sep, row = batch_id.rpartition("#")
    if not sep or not row.isdigit():
        raise TerminalError(f"one output per input file takes the batches of a file source (ids 'file#row'), "
                            f"got batch {batch_id!r}: an aggregate's result, or dead letters sent again, cannot be "
                            "written per input file", batch_id=batch_id)
    return partition, int(row)


def check_spec(source, steps, destination, path: str) -> None:
    """Raise SpecError at ``path`` (the spec's destination) when a pipeline cannot write
    one output per input file: after an aggregate (its rows belong to no input file),
    beside a destination that commits only at the end of the run (``mode: replace``:
    no input's batches are ever all committed before that), or into the source's own
    folder (each output would take the name of an input where the source reads).
    Parts that failed to build (None) are passed over."""
    sinks = [s for s in (destination if isinstance(destination, tuple) else (destination,)) if s is not None]
    per_file = [s for s in sinks if s.completes_partitions]
    if not per_file:
        return
    if any(step is not None and step.blocking for step in steps):
        raise SpecError(path, "one output per input file cannot follow an aggregate step (its rows belong to no "
                              "input file); give the destination a path: to write the aggregate as files")
    if any(s.commits_at_finish for s in sinks):
        raise SpecError(path, "one output per input file cannot be written beside a destination that commits only "
                              "at the end of the run (mode: replace)")
    if source is not None and any(_inside(s.path, getattr(source, "path", None)) for s in per_file):
        raise SpecError(path, "writes one output per input file, named as the input, into the folder the source "
                              "reads: give the destination another bucket or prefix")


def _inside(location: str, source_path: str | None) -> bool:
    """Whether ``location`` is the source's folder or below it (judged by name)."""
    if source_path is None:
        return False
    (scheme, folder), (other, root) = lexical(location), lexical(split_glob(split_query(source_path)[0])[0])
    return scheme == other and (folder == root or folder.startswith(root.rstrip("/") + "/"))


class PerFileWriter(SinkWriter):
    """An open per-file :class:`~etl_actors.sinks.file.FileSink`; see the module
    docstring for what it guarantees."""

    def __init__(self, sink):
        self.sink = sink
        self.fs, self.root, _ = filesystem(sink.path)
        self.remote = is_uri(sink.path)
        self.shown = redact_url(sink.path)
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise storage_error(exc, f"cannot open {self.shown!r}", self.remote) from None

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        """Write the batch as its input's part (replacing it when written again)."""
        partition, first = split_batch_id(batch_id)
        try:
            if first == 0:
                self._forget(partition, keep=self.run_id)
            self._put(f"{self._run_folder(partition)}/{first:020d}.parquet", _parquet(table))
        except OSError as exc:
            raise storage_error(exc, f"cannot write batch {batch_id!r} to {self.shown!r}", self.remote,
                                batch_id=batch_id) from None
        return LoadResult(loaded=table.num_rows)

    def complete_partition(self, partition: str) -> None:
        """Assemble the input's output from this run's parts, then delete the parts;
        called again (a retry, a loader restarted) it finishes what is left."""
        marker = f"{self._parts_folder(partition)}/{self.run_id}.combined"
        try:
            if not self._exists(marker):
                parts = self._files(self._run_folder(partition))
                if not parts and self._exists(self._output(partition)):
                    return   # assembled and cleaned up by an earlier call of this run
                if not parts:
                    raise TerminalError(f"no part of {partition!r} to assemble in {self.shown!r}",
                                        partition=partition)
                self._assemble(partition, parts)
                self._put(marker, b"")
            self._forget(partition, keep=f"{self.run_id}.combined")
            self.fs.delete_file(marker)
            self.fs.delete_dir(self._parts_folder(partition))
        except OSError as exc:
            raise storage_error(exc, f"cannot write the output of {partition!r} to {self.shown!r}", self.remote,
                                partition=partition) from None

    # --- assembling ---------------------------------------------------------------

    def _assemble(self, partition: str, parts: list[str]) -> None:
        where = f"the output of {partition!r} in {self.shown!r}"
        schema = pa.schema([])
        for part in parts:
            with self.fs.open_input_file(part) as handle:
                schema = evolved(schema, pq.read_schema(handle), _batch_of(partition, part), where)
        temp = f"{self._parts_folder(partition)}/{self.run_id}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(temp) as stream:
            encoder = Encoder(self.sink, stream, schema)
            for part in parts:
                with self.fs.open_input_file(part) as handle:
                    encoder.write(conform(pq.read_table(handle), schema, _batch_of(partition, part), where))
            encoder.close()
        final = self._output(partition)
        self._make_parent(final)
        self.fs.move(temp, final)

    # --- places -------------------------------------------------------------------

    def _output(self, partition: str) -> str:
        return f"{self.root}/{output_name(partition, self.sink.extension)}"

    def _parts_folder(self, partition: str) -> str:
        return f"{self.root}/{PARTS}/{partition}"

    def _run_folder(self, partition: str) -> str:
        return f"{self._parts_folder(partition)}/{self.run_id}"

    def _files(self, folder: str) -> list[str]:
        """The parts in ``folder``, sorted by name, so by first row (a temporary file a
        crash left is not one)."""
        entries = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        return sorted(e.path for e in entries if e.type == pafs.FileType.File and e.base_name.endswith(".parquet")
                      and not e.base_name.startswith("."))

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def _forget(self, partition: str, keep: str) -> None:
        """Delete what is in the input's parts folder but the entry named ``keep``."""
        folder = self._parts_folder(partition)
        for entry in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            if entry.base_name == keep:
                continue
            if entry.type == pafs.FileType.Directory:
                self.fs.delete_dir(entry.path)
            else:
                self.fs.delete_file(entry.path)

    def _put(self, path: str, data: bytes | pa.Buffer) -> None:
        """Write a whole file at once: on S3 one PUT (the object appears whole or not at
        all), on disk through a temporary name renamed over ``path``."""
        if self.remote:
            with self.fs.open_output_stream(path) as stream:
                stream.write(data)
            return
        self._make_parent(path)
        temp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(temp) as stream:
            stream.write(data)
        self.fs.move(temp, path)

    def _make_parent(self, path: str) -> None:
        if not self.remote:   # an object store has no folders to make
            self.fs.create_dir(posixpath.dirname(path), recursive=True)


def _parquet(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue()


def _batch_of(partition: str, part: str) -> str:
    """The id of the batch a part holds (for error messages)."""
    return f"{partition}#{int(posixpath.basename(part).split('.')[0])}"
