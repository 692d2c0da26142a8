import orjson
import pytest

from etl_actors.sources.json_messages import decode_json


def test_a_clean_poll_decodes_in_one_pass():
    values = [orjson.dumps({"userId": i, "value": 4.5, "type": "click"}) for i in range(1000)]
    table, kept, rejects = decode_json(values)
    assert (table.num_rows, kept, rejects) == (1000, None, [])
    assert table.column("userId").to_pylist() == list(range(1000))


@pytest.mark.parametrize("odd", [b"", b"   ", b'{"id": 1}{"id": 2}', b'{"id": 1} {"id": 2}', None, b"null"])
def test_values_that_are_not_one_object_are_rejected_alone(odd):
    table, kept, rejects = decode_json([b'{"id": 0}', odd, b'  {"id": 2}  '])
    assert table.column("id").to_pylist() == [0, 2] and kept.tolist() == [0, 2]
    assert [i for i, _ in rejects] == [1]


def test_a_message_pyarrow_cannot_decode_is_rejected_alone():
    table, kept, rejects = decode_json([b'{"id": 0}', b'{"id": 1, "id": 2}', b'{"id": 3}'])
    assert table.column("id").to_pylist() == [0, 3] and rejects == [(1, "cannot decode: Column(/id) was specified twice")]


def test_many_type_conflicts_still_keep_every_row_that_fits_the_first_type():
    values = [orjson.dumps({"id": i, "v": {"w": [str(i) if i % 2 == 0 else i]}}) for i in range(10_000)]
    table, kept, rejects = decode_json(values)
    assert table.column("id").to_pylist() == kept.tolist() == list(range(0, 10_000, 2))
    assert [i for i, _ in rejects] == list(range(1, 10_000, 2))
    assert rejects[0][1] == "does not match the types of the poll's earlier messages: v.w[] is number, earlier string"


def test_a_pretty_printed_object_decodes_like_the_others():
    table, kept, rejects = decode_json([b'{"id": 0}', b'{\n  "id": 1,\n  "tags": ["a"]\n}'])
    assert table.to_pylist() == [{"id": 0, "tags": None}, {"id": 1, "tags": ["a"]}] and rejects == []


def test_types_are_inferred_over_the_whole_poll():
    table, _, _ = decode_json([b'{"v": 1, "at": "2024-05-01T12:00:00"}', b'{"v": 2.5, "at": null}'])
    assert str(table.schema) == "v: double\nat: timestamp[s]"
