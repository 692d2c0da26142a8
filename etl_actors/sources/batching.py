"""From a file reader's blocks to batches with positions.

Readers yield :class:`Rows`: runs of consecutive rows of the file, numbered from 0 (the
first row after a CSV header), the good ones as a table and the rejected ones as dead
letters. :func:`file_batches` regroups them into batches of exactly ``batch_size`` rows
(the last one shorter), so batch ``k`` of a read starting at row ``s`` covers rows
``s + k * batch_size`` up to the next boundary whatever the readers' blocks were.

Why a resumed read yields the very batches a first read did after that point: every
committed position is a boundary of the read that produced it (``s + k * batch_size``,
or the end of the file), so a read resumed there lays out its boundaries on the same
grid. A reader that has to reopen mid-file (a row that straddles its block, a
conversion error that switches it to casting) reopens at the rows it has already
handed on, which changes where its *blocks* fall but not where batches do.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa

from ..batch import DeadLetter, SourceBatch

MAX_BLOCK = 1 << 30


class Unreadable(Exception):
    """A file cannot be read as its format or encoding; the message says why (without
    naming the file: the source adds its partition key)."""


@dataclass(frozen=True)
class Rows:
    """The rows of a file from row ``first`` on: the good ones in ``table`` (in file
    order) and the rejected ones as ``(row, dead letter)`` pairs sorted by row."""

    first: int
    table: pa.Table
    rejects: tuple[tuple[int, DeadLetter], ...] = ()

    @property
    def end(self) -> int:
        """The row after the last one."""
        return self.first + self.table.num_rows + len(self.rejects)

    def split(self, at: int) -> tuple["Rows", "Rows"]:
        """(the rows before row ``at``, the rows from it); ``first <= at <= end``."""
        before = tuple(r for r in self.rejects if r[0] < at)
        good = at - self.first - len(before)
        return (Rows(self.first, self.table.slice(0, good), before),
                Rows(at, self.table.slice(good), self.rejects[len(before):]))


def rebatch(pieces: Iterable[Rows], start: int, size: int) -> Iterator[tuple[Rows, bool]]:
    """Contiguous ``pieces`` starting at row ``start``, regrouped into runs of ``size``
    rows on the grid ``start + k * size`` (the last run holds what is left), each with
    whether it is the last. A run is handed on once it is whole: only one that ends
    where a piece ends waits for the next piece with rows, to say whether it is the
    last (not for the next run)."""
    pieces = iter(p for p in pieces if p.end > p.first)
    pending, boundary = [], start + size
    piece = next(pieces, None)
    while piece is not None:
        following = _UNREAD
        while piece.end >= boundary:
            if piece.end == boundary and (following := next(pieces, None)) is None:
                break                          # the last run, whole: handed on below
            head, piece = piece.split(boundary)
            yield _joined(pending + [head]), False
            pending, boundary = [], boundary + size
        if piece.end > piece.first:
            pending.append(piece)
        piece = next(pieces, None) if following is _UNREAD else following
    if pending:
        yield _joined(pending), True


_UNREAD = object()


def _joined(pieces: list[Rows]) -> Rows:
    if len(pieces) == 1:
        return pieces[0]
    table = pa.concat_tables([p.table for p in pieces])
    return Rows(pieces[0].first, table, tuple(r for p in pieces for r in p.rejects))


def file_batches(pieces: Iterable[Rows], partition: str, start: int, size: int) -> Iterator[SourceBatch]:
    """The batches of one file read from row ``start``: ids ``partition#first_row``, the
    last one says ``done``, and a file with nothing left still yields one empty, done
    batch so that it is skipped next run."""
    empty = True
    for run, last in rebatch(pieces, start, size):
        empty = False
        yield _batch(run, partition, done=last)
    if empty:
        yield _batch(Rows(start, pa.table({})), partition, done=True)


def _batch(run: Rows, partition: str, done: bool) -> SourceBatch:
    return SourceBatch(table=run.table, batch_id=f"{partition}#{run.first}", partition=partition,
                       position={"rows": run.end, "done": done}, rejects=tuple(r for _, r in run.rejects))


@contextmanager
def closing_reader(reader) -> Iterator:
    """An Arrow streaming reader closed on leaving, however it is left: one dropped
    with its read-ahead still running can abort the interpreter at exit."""
    try:
        yield reader
    finally:
        reader.close()


def after(batches: Iterable[pa.RecordBatch], start: int, seen: int = 0) -> Iterator[Rows]:
    """Rows of ``batches`` (whose first row is row ``seen``) from row ``start`` on."""
    for batch in batches:
        skip = max(0, start - seen)
        if skip < batch.num_rows:
            yield Rows(seen + skip, pa.Table.from_batches([batch.slice(skip)]))
        seen += batch.num_rows


def block_size(head: bytes, batch_size: int) -> int:
    """Bytes per block so a block holds about ``batch_size`` rows, judged from the head."""
    lines = head.split(b"\n")[:-1] or [head]
    widest = max(len(line) for line in lines) + 1
    average = sum(len(line) + 1 for line in lines) / len(lines)
    return int(min(max(average * batch_size, 16 * widest, 1024), 256 * 2**20))


def grown_block(block: int, exc: Exception, line: int) -> int:
    """The block size to reopen with after ``exc``: twice ``block`` when a row
    straddled block boundaries, up to 1 GiB (beyond it the file is
    :class:`Unreadable`, naming ``line``); any other error is raised again."""
    if "straddl" not in str(exc):
        raise exc
    if block >= MAX_BLOCK:
        raise Unreadable(f"the row near line {line} is larger than {MAX_BLOCK >> 20} MiB") from None
    return min(block * 2, MAX_BLOCK)
