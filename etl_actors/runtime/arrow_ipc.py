"""How stage workers ship tables through Ray's object store: in Arrow's IPC format.

Ray's own reducer for ``pyarrow.Table`` works around ARROW-10739 (a sliced array
pickles its parent's whole buffers, still so in pyarrow 26) by rebuilding every column
buffer by buffer in Python: 16 ms for a 50,000-row, 17-column batch, against 1.6 ms
for one IPC stream, which writes slices compactly too, and is read back without a copy
from the object store. It is lossless for every Arrow type (Ray's reducer falls back
to IPC itself for the types it cannot rebuild).
"""
from __future__ import annotations

import sys

import pyarrow as pa


def table_to_ipc(table: pa.Table) -> pa.Buffer:
    """``table`` as one IPC stream, written into a buffer of its exact size (measured
    first without copying: a growing buffer would copy it again as it grows)."""
    size = pa.MockOutputStream()
    _write(size, table)
    buffer = pa.allocate_buffer(size.size())
    _write(pa.FixedSizeBufferWriter(buffer), table)
    return buffer


def _write(sink, table: pa.Table) -> None:
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def table_from_ipc(buffer) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(buffer)) as reader:
        return reader.read_all()


def ship_tables_as_ipc() -> None:
    """Have this process's Ray worker serialize tables with :func:`table_to_ipc` (the
    deserializer travels with them); nothing outside Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.util.register_serializer(pa.Table, serializer=table_to_ipc, deserializer=table_from_ipc)
