"""Tables cross the object store as Arrow IPC (compact for slices, lossless); literals
become Arrow values without pyarrow's Python conversion (which imports pandas)."""
import pickle
import subprocess
import sys

import pyarrow as pa
from hypothesis import given, strategies as st

from etl_actors.expressions.compiler import arrow_array
from etl_actors.runtime.arrow_ipc import table_from_ipc, table_to_ipc


def test_a_slice_ships_its_rows_not_its_parents_buffers():
    parent = pa.table({"s": [f"value {i}" for i in range(100_000)], "i": list(range(100_000)),
                       "nested": [{"a": i, "tags": ["x"] * (i % 3)} for i in range(100_000)]})
    piece = parent.slice(50_000, 1_000)
    shipped = table_to_ipc(piece)
    assert shipped.size < parent.nbytes / 20
    assert table_from_ipc(shipped).equals(piece)
    pickled = []
    pickle.dumps(piece, protocol=5, buffer_callback=pickled.append)    # what plain pickling ships
    assert sum(memoryview(b).nbytes for b in pickled) > parent.nbytes / 2


KINDS = [st.text(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.booleans()]


@given(st.one_of(*[st.lists(st.one_of(st.none(), kind), max_size=20) for kind in KINDS]))
def test_literals_become_the_arrays_pyarrow_would_build(values):
    built = arrow_array(values)
    expected = pa.array(values)
    assert built.type == expected.type and built.equals(expected)


def test_parsing_a_spec_with_expressions_does_not_import_pandas(tmp_path):
    (tmp_path / "in.csv").write_text("id,mode,qty,price\n1,AIR,3,2.5\n")
    (tmp_path / "spec.yaml").write_text(f"""
name: literals
pipeline:
  source: {{type: file, path: {tmp_path / 'in.csv'}}}
  transformations:
    - {{id: kept, type: filter, condition: "mode in ('AIR', 'RAIL') and qty < 45 and price is not null"}}
    - {{id: net, type: map, keep: true, mappings: {{net: {{expression: "price * (1 - 0.5) + qty"}}}}}}
  destination: {{type: file, path: {tmp_path / 'out'}}}
""")
    code = ("import sys; from etl_actors.pipeline import Pipeline; "
            f"Pipeline.from_file({str(tmp_path / 'spec.yaml')!r}); print('pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
