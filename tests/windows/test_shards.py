"""Keys are spread over window actors by a hash that every process agrees on."""
import subprocess
import sys

import numpy as np
import pyarrow as pa

from etl_actors.windows import pre_aggregate
from etl_actors.windows.groups import shards

from .timeline import T0, spec

KEYS = pa.table({"u": pa.array([1, 2, 3, 1000, None], pa.int64()), "s": ["a", "b", "user-1", "", None]})


def test_shards_are_pinned_values_so_a_change_of_hash_is_noticed():
    # window state is restored per shard: another hash would send keys to actors
    # that do not hold their open windows
    assert shards(KEYS, ("u",), 4).tolist() == [2, 0, 3, 3, 0]
    assert shards(KEYS, ("s",), 4).tolist() == [2, 1, 2, 3, 0]
    assert shards(KEYS, ("u", "s"), 7).tolist() == [6, 3, 1, 3, 2]


def test_another_process_with_another_hash_seed_agrees():
    code = ("import pyarrow as pa; from etl_actors.windows.groups import shards; "
            "print(shards(pa.table({'s': ['a', 'b', 'user-1', '', None]}), ('s',), 4).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == "[2, 1, 2, 3, 0]"


def test_a_key_hashes_alike_whatever_its_integer_type_or_a_whole_float():
    for column in (pa.array([1, 2, 3], pa.int8()), pa.array([1, 2, 3], pa.uint32()), pa.array([1.0, 2.0, 3.0])):
        assert shards(pa.table({"u": column}), ("u",), 4).tolist() == [2, 0, 3]


def test_each_window_and_key_lands_in_one_shard_only():
    rng = np.random.default_rng(3)
    table = pa.table({"t": T0 + rng.integers(0, 120_000, 500), "k": rng.choice(list("abcdefgh"), 500),
                      "v": rng.integers(0, 5, 500)})
    out = pre_aggregate(table, spec(parallelism=3, max_out_of_orderness_ms=120_000), None, None, 0)
    seen = [{(r["windowStart"], r["k"]) for r in p.to_pylist()} for p in out.partials]
    assert all(len(part) > 0 for part in seen)
    assert sum(len(part) for part in seen) == len(set().union(*seen))
    assert sum(sum(p.column("count(*)").to_pylist()) for p in out.partials) == out.counted == 500
