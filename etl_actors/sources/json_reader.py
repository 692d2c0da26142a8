"""The JSON reader of the file source: NDJSON streamed in blocks, or a JSON array
parsed whole (use NDJSON for large data).

There is no way to start pyarrow's JSON reader mid-file, so the rows before the
resume point are parsed and dropped. Text must be valid in the source's ``encoding``:
a file holding a byte that is not fails as a whole, naming the lines, unless
``onDecodeError: replace``.
"""
from __future__ import annotations

import json
from typing import Iterator

import pyarrow as pa
import pyarrow.json as pjson

from .batching import Rows, Unreadable, after, block_size, closing_reader, grown_block
from .text import head_problem, label, text_stream

HEAD_BYTES = 1 << 16


class JsonReader:
    """Reads one NDJSON or JSON array file for a :class:`~etl_actors.sources.file.FileSource`."""

    def __init__(self, source, fs, path: str, partition: str):
        self.source, self.fs, self.path = source, fs, path
        with self._stream() as stream:
            head = stream.read(HEAD_BYTES)
        self.blank = len(head) < HEAD_BYTES and not head.strip()
        self.array = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["
        self.block = block_size(head, source.batch_size)
        if problem := head_problem(head, source.encoding, len(head) < HEAD_BYTES):
            raise Unreadable(problem)

    def schema(self) -> pa.Schema | None:
        """The first block's schema (an array's whole), or None for a blank file."""
        if self.blank:
            return None
        if self.array:
            return self._array().schema
        while True:
            try:
                with self._stream() as stream, closing_reader(self._open(stream)) as reader:
                    return reader.schema
            except pa.ArrowInvalid as exc:
                self.block = grown_block(self.block, exc, 1)

    def pieces(self, start: int) -> Iterator[Rows]:
        """The file's rows from row ``start`` on; a row that straddles a block makes the
        reader reopen with a bigger block at the rows already handed on."""
        if self.blank:
            return
        if self.array:
            table = self._array()
            yield Rows(start, table.slice(start))
            return
        consumed = start
        while True:
            try:
                for piece in self._blocks(consumed):
                    consumed = piece.end
                    yield piece
                return
            except pa.ArrowInvalid as exc:
                self.block = grown_block(self.block, exc, consumed + 1)

    def _blocks(self, start: int) -> Iterator[Rows]:
        with self._stream() as stream, closing_reader(self._open(stream)) as reader:
            yield from after(self._checked(reader), start)

    def _checked(self, batches) -> Iterator[pa.RecordBatch]:
        """``batches``, each checked to hold valid UTF-8 (pyarrow's JSON parser passes
        invalid bytes through into string columns)."""
        seen = 0
        for batch in batches:
            try:
                batch.validate(full=True)
            except pa.ArrowInvalid:
                raise Unreadable(f"not {label(self.source.encoding)} text in lines {seen + 1}-{seen + batch.num_rows}"
                                 f" (set encoding, or onDecodeError: replace)") from None
            seen += batch.num_rows
            yield batch

    def _open(self, stream):
        return pjson.open_json(stream, read_options=pjson.ReadOptions(block_size=self.block, use_threads=False))

    def _array(self) -> pa.Table:
        with self._stream() as stream:
            data = stream.read()
        try:
            rows = json.loads(data.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise Unreadable(f"not {label(self.source.encoding)} text (byte 0x{data[exc.start]:02x} "
                             f"at offset {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise Unreadable(f"not JSON: {exc}") from None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise Unreadable("expected a JSON array of objects or NDJSON")
        return pa.Table.from_pylist(rows)

    def _stream(self):
        stream = self.fs.open_input_stream(self.path, compression="detect")
        return text_stream(stream, self.source.encoding, self.source.on_decode_error)
