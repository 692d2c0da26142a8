from datetime import datetime, timedelta

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_actors.db import engine_for
from etl_actors.errors import SpecError
from etl_actors.sources.database import DatabaseSource
from etl_actors.spec import Section, SpecContext

from .kit import SourceContract, ids, read_all

T0 = datetime(2024, 1, 1, 0, 0, 0)
META = sa.MetaData()
CUSTOMERS = sa.Table("customers", META, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("name", sa.Text), sa.Column("note", sa.Text),
                     sa.Column("updated_at", sa.DateTime, nullable=False))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/src.db"
    return request.getfixturevalue("pg_schema")


def fill(url, ids_, at=lambda i: T0 + timedelta(seconds=i), **values):
    engine = engine_for(url)
    META.create_all(engine)
    rows = [{"id": i, "name": f"n{i}", "note": None, "updated_at": at(i), **values} for i in ids_]
    if rows:
        with engine.begin() as conn:
            conn.execute(CUSTOMERS.insert(), rows)


def final_position(batches):
    return batches[-1].position


class TestIncrementalContract(SourceContract):
    @pytest.fixture
    def source(self, db_url):
        fill(db_url, range(self.expected))
        return DatabaseSource(url=db_url, table="customers", incremental=True, batch_size=150)

    @pytest.fixture
    def empty_source(self, db_url):
        fill(db_url, [])
        return DatabaseSource(url=db_url, table="customers", incremental=True)


def test_incremental_read_extracts_exactly_updated_and_inserted_rows(db_url):
    fill(db_url, range(3000))
    source = DatabaseSource(url=db_url, query="SELECT * FROM customers WHERE updated_at > ?",
                            incremental=True, batch_size=400)
    position = final_position(read_all(source))
    with engine_for(db_url).begin() as conn:
        conn.execute(CUSTOMERS.update().where(CUSTOMERS.c.id % 3 == 0, CUSTOMERS.c.id < 3000)
                     .values(name="changed", updated_at=T0 + timedelta(days=1)))
    fill(db_url, range(3000, 3500), at=lambda i: T0 + timedelta(days=2, seconds=i))
    batches = read_all(source, {"query": position})
    changed = [i for i in range(3000) if i % 3 == 0]
    assert ids(batches) == changed + list(range(3000, 3500)) and len(changed) == 1000
    assert {b.table.schema for b in batches} == {batches[0].table.schema}


def test_ties_across_a_batch_boundary_lose_nothing(db_url):
    fill(db_url, range(100), at=lambda i: T0 + timedelta(seconds=i // 25))  # 4 values, 25 rows each
    source = DatabaseSource(url=db_url, table="customers", incremental=True, batch_size=10)
    batches = read_all(source)
    for k, stopped in enumerate(batches):
        resumed = read_all(source, {"query": stopped.position})
        assert set(ids(batches[:k + 1] + resumed)) == set(range(100)), f"after batch {k}"
    assert len(read_all(source, {"query": batches[-1].position})) == 0


def test_lookback_rereads_rows_committed_late(db_url):
    fill(db_url, range(10), at=lambda i: T0 + timedelta(minutes=i))
    plain = DatabaseSource(url=db_url, table="customers", incremental=True)
    position = final_position(read_all(plain))
    fill(db_url, [99], at=lambda i: T0 + timedelta(minutes=8, seconds=30))  # late: behind the watermark
    assert ids(read_all(plain, {"query": position})) == []
    behind = DatabaseSource(url=db_url, table="customers", incremental=True, lookback="2m")
    assert ids(read_all(behind, {"query": position})) == [8, 9, 99]


def test_numeric_lookback_on_an_integer_cursor(db_url):
    fill(db_url, range(10))
    source = DatabaseSource(url=db_url, table="customers", incremental=True, cursor_field="id", lookback=3)
    assert ids(read_all(source, {"query": {"cursor": 5}})) == [3, 4, 5, 6, 7, 8, 9]


def test_initial_watermark_starts_the_first_run(db_url):
    fill(db_url, range(10))
    source = DatabaseSource(url=db_url, table="customers", incremental=True, cursor_field="id", initial_watermark=6)
    assert ids(read_all(source)) == [7, 8, 9]


def test_full_read_rereads_everything_with_no_position(db_url):
    fill(db_url, range(50))
    source = DatabaseSource(url=db_url, query="SELECT id, name FROM customers WHERE name <> '?'", batch_size=20)
    batches = read_all(source)
    assert ids(batches) == list(range(50)) and {b.position for b in batches} == {None}


def test_column_null_in_the_first_batch_keeps_one_schema(db_url):
    fill(db_url, range(10))
    with engine_for(db_url).begin() as conn:
        conn.execute(CUSTOMERS.update().where(CUSTOMERS.c.id >= 5).values(note="later"))
    batches = read_all(DatabaseSource(url=db_url, table="customers", incremental=True, batch_size=5))
    assert [b.table.column("note").to_pylist() for b in batches] == [[None] * 5, ["later"] * 5]
    assert batches[0].table.schema == batches[1].table.schema


def test_batch_id_changes_when_the_rows_change(db_url):
    fill(db_url, range(5))
    source = DatabaseSource(url=db_url, table="customers", incremental=True)
    before = read_all(source)[0].batch_id
    with engine_for(db_url).begin() as conn:
        conn.execute(CUSTOMERS.update().where(CUSTOMERS.c.id == 2).values(name="other"))
    assert read_all(source)[0].batch_id != before
    assert read_all(source)[0].batch_id == read_all(source)[0].batch_id


def test_spec_errors_name_the_key():
    ctx = SpecContext(connections={"crm": "sqlite:///crm.db"})
    with pytest.raises(SpecError, match=r"pipeline.source.query: expected one of query or table, got both"):
        DatabaseSource.from_spec(Section({"connection": "crm", "query": "SELECT 1", "table": "t"}, "pipeline.source"), ctx)
    with pytest.raises(SpecError, match=r"pipeline.source.lookback: expected a number or a duration"):
        DatabaseSource.from_spec(Section({"connection": "crm", "table": "t", "lookback": "soon"}, "pipeline.source"), ctx)


def test_describe_hides_the_password():
    source = DatabaseSource(url="postgresql://etl:s3cret@db/x", table="t")
    assert "s3cret" not in str(source.describe()) and "s3cret" not in repr(source)


def test_view_watermark_shows_the_cursor_in_iso_form(db_url):
    fill(db_url, range(3), at=lambda i: datetime(2026, 6, 1, 1, 8, 17 + i))
    source = DatabaseSource(url=db_url, table="customers", incremental=True)
    assert source.view_watermark({"query": read_all(source)[-1].position}) == "2026-06-01T01:08:19"


def test_literal_watermark_parameter_in_the_query(db_url):
    fill(db_url, range(10))
    source = DatabaseSource(url=db_url, query="SELECT id, updated_at FROM customers WHERE id > :watermark",
                            incremental=True, cursor_field="id", initial_watermark=7)
    assert ids(read_all(source)) == [8, 9]
