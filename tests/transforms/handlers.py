"""Importable example handlers for the function step's tests."""
import pyarrow as pa
import pyarrow.compute as pc


def double_amount(table: pa.Table) -> pa.Table:
    """Table mode: the amount column doubled."""
    index = table.schema.get_field_index("amount")
    return table.set_column(index, "amount", pc.multiply(table["amount"], 2))


def not_a_table(table: pa.Table) -> list:
    return table.to_pylist()


def add_region(record: dict) -> dict | None:
    """Record mode: drops test rows, fails on a missing country, adds a region."""
    if record["name"].startswith("test"):
        return None
    return {**record, "region": {"fr": "eu", "us": "am"}[record["country"]]}


NOT_CALLABLE = 42
