"""Specs that attack the parser: whatever a spec file holds, loading and validating it
gives a pipeline or a SpecError that says where, never another exception, within a
bounded time (hypothesis ``deadline``) and a bounded amount of memory (tracemalloc).

Inputs are built from grammar pieces (scalars that YAML reads in surprising ways,
tags, anchors on any node and aliases to them, merge keys, duplicate keys), alias
bombs and deep nesting, raw and mutated bytes (invalid UTF-8 among them), and random
values placed into an otherwise valid spec. The CLI is checked end to end for the
attacks of the issue: exit 2, the path in the message, no traceback, in seconds.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import tracemalloc

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etl_actors.errors import SpecError
from etl_actors.spec import PipelineSpec, parse, parse_file

MEMORY_LIMIT = 64 * 2 ** 20
FUZZ = settings(max_examples=150, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TRICKY_SCALARS = ["on", "yes", "off", "no", "null", "~", "true", "1", "-0", "0x1F", "0o17", "1_000", "1:20",
                  "1e999", "-.inf", ".nan", "99999999999999999999999999", "2024-01-01", "2024-13-45",
                  "2024-01-01T25:00:00", "'quoted'", '"esc\\u0000aped"', "''", "'<<'", "!!int x", "!!float x",
                  "!!bool maybe", "!!timestamp nope", "!!binary aGk=", "!!binary ???", "!!str 5", "!!null x",
                  "!!python/object:os.system", "!foo bar", "!!set {a, b}", "!!omap [a: 1]", "|", "-", "?", "%x",
                  "@x", "`x`", "${NOPE}", "amount > 0", "é", "ｎａｍｅ", "\t", "#c"]
KEYS = st.sampled_from(["name", "pipeline", "source", "type", "path", "on", "yes", "1", "null", "''", "<<", "~",
                        "condition", "mappings", "a", "a"])
SCALARS = st.one_of(st.sampled_from(TRICKY_SCALARS), st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
                    st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(str))


@st.composite
def flow_yaml(draw) -> str:
    """A block mapping of flow-style values: scalars, lists and mappings (keys may
    repeat), anchors on any node (registered before their content, so an alias may
    point inside its own anchor) and aliases to them, merge keys."""
    anchors: list[str] = []

    def node(depth: int) -> str:
        anchor = ""
        if draw(st.integers(0, 3)) == 0:
            anchor = f"&a{len(anchors)} "
            anchors.append(f"a{len(anchors)}")
        kind = draw(st.integers(0, 9 if depth < 6 else 3))
        if kind == 3 and anchors:
            return "*" + draw(st.sampled_from(anchors))
        if kind <= 3:
            return anchor + draw(SCALARS)
        if kind <= 6:
            return anchor + "[" + ", ".join(node(depth + 1) for _ in range(draw(st.integers(0, 4)))) + "]"
        pairs = [f"{draw(KEYS)}: {node(depth + 1)}" for _ in range(draw(st.integers(0, 4)))]
        if anchors and draw(st.booleans()):
            pairs.append(f"<<: *{draw(st.sampled_from(anchors))}")
        return anchor + "{" + ", ".join(pairs) + "}"

    return "".join(f"{draw(KEYS)}: {node(1)}\n" for _ in range(draw(st.integers(1, 5))))


def alias_bomb(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested(opening: str, closing: str, levels: int) -> str:
    return "x: " + opening * levels + "1" + closing * levels + "\n"


ATTACKS = st.one_of(
    st.builds(alias_bomb, st.integers(1, 14), st.integers(1, 14)),
    st.builds(nested, st.sampled_from(["[", "{a: ", "[{b: "]), st.sampled_from(["]", "}", "}]"]),
              st.integers(1, 2000)),
    st.integers(1, 400).map(lambda n: "x:\n" + "".join(" " * i + "- \n" for i in range(n))),
)

BASE = {"name": "fuzz", "pipeline": {
    "source": {"type": "file", "path": "in", "format": "csv"},
    "transformations": [{"id": "keep", "type": "filter", "condition": "amount > 0"},
                        {"id": "m", "type": "map", "mappings": {"id": "id", "twice": {"expression": "amount * 2"}}}],
    "destination": {"type": "file", "path": "out", "format": "parquet"}}}
PLACES = [("name",), ("version",), ("metadata",), ("connections",), ("schedule",), ("runtime",),
          ("runtime", "parallelism"), ("runtime", "leaseTimeout"), ("runtime", "numCpus"), ("pipeline",),
          ("pipeline", "extra"), ("pipeline", "source"), ("pipeline", "source", "type"),
          ("pipeline", "source", "path"), ("pipeline", "source", "format"), ("pipeline", "source", "columns"),
          ("pipeline", "source", "batchSize"), ("pipeline", "source", "pattern"), ("pipeline", "transformations"),
          ("pipeline", "transformations", 0), ("pipeline", "transformations", 0, "condition"),
          ("pipeline", "transformations", 0, "id"), ("pipeline", "transformations", 1, "mappings"),
          ("pipeline", "transformations", 1, "mappings", "twice"),
          ("pipeline", "transformations", 1, "mappings", "twice", "expression"),
          ("pipeline", "transformations", 1, "mappings", "twice", "converter"),
          ("pipeline", "destination", "format"), ("pipeline", "destination", "mode"),
          ("pipeline", "destination", "path"), ("pipeline", "destination", "type")]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70), st.floats(), TEXT,
                   st.sampled_from(["file", "csv", "parquet", "filter", "map", "aggregate", "insert", "upsert",
                                    "amount > 0", "null == null", "- - amount", "round(amount, 99999999999)",
                                    "ｎａｍｅ", "status > 5", "id", "30s", "sum", "${NOPE}", "in", "out", "in/x",
                                    "lowercase", "*", "", " "]))
VALUES = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(st.one_of(TEXT, st.sampled_from(["type", "id", "condition", "path",
                                                                         "mappings", "expression"])),
                                        kids, max_size=3), max_leaves=8)


def place(data: dict, where: tuple, value) -> dict:
    data = copy.deepcopy(data)
    node = data
    for key in where[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[where[-1]] = value
    return data


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a CSV input, so the source has a schema and the steps are tried."""
    root = tmp_path_factory.mktemp("fuzz_spec")
    (root / "in").mkdir()
    (root / "in" / "a.csv").write_text("id,status,amount\n1,active,5\n2,gone,7\n")
    return root


def outcome(call, origin: str) -> str:
    """``"spec"`` or ``"refused"``: a SpecError must say where (a path, or the file and
    line), and the call must stay under the memory limit; any other error fails."""
    tracemalloc.start()
    try:
        assert isinstance(call(), PipelineSpec)
        result = "spec"
    except SpecError as exc:
        assert str(exc).strip() and (exc.path or origin in str(exc)), repr(exc)
        result = "refused"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{peak:,} bytes"
    return result


def validate_bytes(workdir, raw: bytes) -> str:
    path = workdir / "spec.yaml"
    path.write_bytes(raw)
    return outcome(lambda: parse_file(str(path)), str(path))


@FUZZ
@given(text=st.one_of(flow_yaml(), ATTACKS))
def test_grammar_built_yaml_gives_a_spec_or_a_spec_error(workdir, figures, text):
    validate_bytes(workdir, text.encode())
    figures["inputs fuzzed: spec loader"] = 1


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300),
                     st.tuples(st.just(yaml.safe_dump(BASE).encode()),
                               st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=3)),
                                        min_size=1, max_size=4))
                     .map(lambda t: _mutated(*t))))
def test_random_and_mutated_bytes_give_a_spec_or_a_spec_error(workdir, figures, raw):
    validate_bytes(workdir, raw)
    figures["inputs fuzzed: spec loader"] = 1


def _mutated(raw: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for at, piece in edits:
        at %= len(raw)
        raw = raw[:at] + piece + raw[at + len(piece) // 2:]
    return raw


@FUZZ
@given(where=st.sampled_from(PLACES), value=VALUES, as_json=st.booleans())
@example(where=("pipeline", "source", "columns"), value={"amount": []}, as_json=False)  # found: a TypeError
def test_random_values_in_a_valid_spec_give_a_spec_or_a_spec_error(workdir, figures, where, value, as_json):
    data = place(BASE, where, value)
    text = yaml.safe_dump(data, allow_unicode=True, default_flow_style=as_json)
    validate_bytes(workdir, text.encode())
    outcome(lambda: parse(data, base_dir=str(workdir)), "<dict>")
    figures["inputs fuzzed: spec loader"] = 2


def test_the_base_spec_of_the_fuzzer_is_valid(workdir):
    assert validate_bytes(workdir, yaml.safe_dump(BASE).encode()) == "spec"


# --- the attacks of the issue, through the CLI -------------------------------------------

VALID_STEPS = ("pipeline:\n  source: {type: file, path: in, format: csv}\n"
               "  destination: {type: file, path: out, format: parquet}\n")


@pytest.mark.parametrize("raw, where", [
    (alias_bomb(9, 9).encode(), "a5: expands past 100,000 values through YAML aliases (anchors & and *)"),
    (b"name: a\nname: b\n" + VALID_STEPS.encode(), "name: duplicate key at line 2"),
    (b"name: caf\xe9\n" + VALID_STEPS.encode(), "not UTF-8 text: byte 0xe9 at offset 9"),
    (("name: deep\n" + VALID_STEPS + "  transformations:\n    - {type: filter, condition: '" + "- " * 325
      + "amount'}\n").encode(), "pipeline.transformations[0].condition: expression '- - -"),
    (b"name: big\nid: 99999999999999999999999999\n" + VALID_STEPS.encode()
     + b"  transformations: [{type: filter, condition: 'amount in (1, 99999999999999999999999999)'}]\n",
     "pipeline.transformations[0].condition: the integer 99999999999999999999999999 does not fit in 64 bits"),
])
def test_validate_refuses_the_attacks_with_exit_2_and_the_path(tmp_path, raw, where):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(raw)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "etl_actors", "validate", str(spec)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert time.monotonic() - started < 10
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("etl-actors: invalid spec: ") and where in done.stderr
