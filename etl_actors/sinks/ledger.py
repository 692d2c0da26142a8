"""The ledger of a database sink: the batches it wrote, kept in the same database.

One row ``(pipeline, target, batch_id, rows, loaded_at)`` per batch in the table
``etl_batches``, written in the transaction that writes the batch's rows, so a batch
id found here was written exactly once. ``target`` is the table written to, so two
sinks of one pipeline in one database keep separate ledgers.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Iterable

import sqlalchemy as sa

LEDGER = "etl_batches"


def ledger_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(LEDGER, metadata,
                    sa.Column("pipeline", sa.String(200), primary_key=True),
                    sa.Column("target", sa.String(200), primary_key=True),
                    sa.Column("batch_id", sa.Text, primary_key=True),
                    sa.Column("rows", sa.BigInteger, nullable=False),
                    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
                    extend_existing=True)


@dataclass(frozen=True)
class Ledger:
    """The ledger rows of ``pipeline`` writing ``target``, in database ``schema``.
    Every method runs on the caller's connection, inside the caller's transaction."""

    pipeline: str
    target: str
    schema: str | None = None

    @cached_property
    def table(self) -> sa.Table:
        return ledger_table(sa.MetaData(schema=self.schema))

    def create(self, conn) -> None:
        """Create the ledger table unless it exists (another loader may be creating it)."""
        create_unless_exists(conn, self.table)

    def recorded(self, conn, batch_id: str) -> int | None:
        """The rows written for ``batch_id``, None if it was not written."""
        query = sa.select(self.table.c.rows).where(*self._key(), self.table.c.batch_id == batch_id)
        return conn.execute(query).scalar()

    def record(self, conn, batch_id: str, rows: int) -> None:
        conn.execute(self.table.insert().values(pipeline=self.pipeline, target=self.target, batch_id=batch_id,
                                                rows=rows, loaded_at=datetime.now(timezone.utc)))

    def forget(self, conn, batch_ids: Iterable[str]) -> None:
        conn.execute(self.table.delete().where(*self._key(), self.table.c.batch_id.in_(list(batch_ids))))

    def _key(self) -> list:
        return [self.table.c.pipeline == self.pipeline, self.table.c.target == self.target]


def create_unless_exists(conn, table: sa.Table) -> None:
    """Create ``table`` unless it exists; another loader creating it at the same moment
    is not an error."""
    try:
        with conn.begin_nested():
            table.create(conn, checkfirst=True)
    except sa.exc.DBAPIError:
        if not sa.inspect(conn).has_table(table.name, schema=table.schema):
            raise  # not a race with another loader creating it
