"""A CRM ``customers`` table to sync from, on SQLite or PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from etl_actors.db import engine_for

T0 = datetime(2026, 1, 1)
metadata = sa.MetaData()
customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text),
    sa.Column("age", sa.Integer),
    sa.Column("updated_at", sa.DateTime),
)


def create(url: str, n: int) -> None:
    engine = engine_for(url)
    metadata.drop_all(engine, tables=[customers])
    metadata.create_all(engine, tables=[customers])
    insert(url, range(1, n + 1), T0)


def insert(url: str, ids, at: datetime) -> None:
    rows = [{"id": i, "email": f"User{i}@Example.com", "age": 20 + i % 50,
             "updated_at": at + timedelta(seconds=k)} for k, i in enumerate(ids)]
    with engine_for(url).begin() as conn:
        conn.execute(customers.insert(), rows)


def update(url: str, ids, at: datetime) -> None:
    with engine_for(url).begin() as conn:
        for k, i in enumerate(ids):
            conn.execute(customers.update().where(customers.c.id == i)
                         .values(age=customers.c.age + 1, updated_at=at + timedelta(seconds=k)))


def source_rows(url: str) -> list[tuple]:
    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.select(customers.c.id, customers.c.email, customers.c.age)).all()
    return sorted((r.id, r.email.lower(), r.age) for r in rows)


def dest_rows(url: str, table: str = "customers_copy") -> list[tuple]:
    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.text(f'SELECT id, email, age FROM "{table}"')).all()
    return sorted((r.id, r.email, r.age) for r in rows)


def spec(name: str, src: str, dst: str, mode: str = "upsert", batch_size: int = 500, **runtime) -> dict:
    destination = {"type": "database", "connection": "dst", "table": "customers_copy", "mode": mode}
    if mode == "upsert":
        destination["keyFields"] = ["id"]
    return {
        "name": name,
        "connections": {"src": src, "dst": dst},
        "pipeline": {
            "source": {"type": "database", "connection": "src", "incremental": True,
                       "query": "SELECT id, email, age, updated_at FROM customers WHERE updated_at > ?",
                       "cursorField": "updated_at", "batchSize": batch_size},
            "transformations": [{"id": "normalize", "type": "map", "keep": True,
                                 "mappings": {"email": {"source": "email", "converter": "lowercase"}}}],
            "destination": destination,
            **runtime,
        },
    }
