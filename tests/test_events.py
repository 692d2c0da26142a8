"""The event codec: msgpack round trips, upcasting, unknown types, size limits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import msgpack
import pytest

from etl_actors import events
from etl_actors.events import (BatchLoaded, Event, RunFailed, UnknownEvent, decode, encode,
                               upcaster)


@dataclass(frozen=True)
class ShipmentPriced(Event):
    """Test-only event at schema 3: ``cents`` (schema 2 had ``amount``; 1 had no currency)."""
    schema: ClassVar[int] = 3
    shipment: str
    cents: int
    currency: str


@upcaster("ShipmentPriced", 1)
def _add_currency(payload: dict) -> dict:
    return {**payload, "currency": "EUR"}


@upcaster("ShipmentPriced", 2)
def _amount_to_cents(payload: dict) -> dict:
    rest = {key: value for key, value in payload.items() if key != "amount"}
    return {**rest, "cents": round(payload["amount"] * 100)}


@dataclass(frozen=True)
class ParcelLost(Event):
    """Test-only event at schema 2 with no upcaster from schema 1."""
    schema: ClassVar[int] = 2
    parcel: str


def packed(payload: dict) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def test_encode_decode_round_trips_an_event_with_nested_values():
    loaded = BatchLoaded(run_id="r1", batch_id="b1", partition="kafka:orders",
                         position={"0": 41, "1": 17}, rows=1000, bytes=2**20, duplicate=True)
    type_name, schema, data = encode(loaded)
    assert (type_name, schema) == ("BatchLoaded", 1)
    assert decode(type_name, schema, data) == loaded


def test_tuples_come_back_as_lists():
    loaded = BatchLoaded(run_id="r1", batch_id="b1", partition="p", position=("2024-01-01", 7), rows=1)
    assert decode(*encode(loaded)).position == ["2024-01-01", 7]


def test_old_payloads_are_upcast_through_every_schema():
    old = packed({"at": 5.0, "shipment": "s-1", "amount": 12.5})
    assert decode("ShipmentPriced", 1, old) == ShipmentPriced(shipment="s-1", cents=1250, currency="EUR", at=5.0)
    newer = packed({"at": 6.0, "shipment": "s-2", "amount": 3.0, "currency": "USD"})
    assert decode("ShipmentPriced", 2, newer).currency == "USD"


def test_missing_upcaster_names_the_type_and_schema():
    with pytest.raises(LookupError, match="ParcelLost from schema 1 to 2"):
        decode("ParcelLost", 1, packed({"parcel": "p"}))


def test_unknown_type_keeps_its_payload_and_time():
    decoded = decode("CargoTeleported", 4, packed({"at": 7.5, "cargo": "c-1"}))
    assert decoded == UnknownEvent(name="CargoTeleported", payload={"at": 7.5, "cargo": "c-1"}, at=7.5)


def test_fields_dropped_from_a_class_are_ignored_and_defaults_fill_new_ones():
    payload = packed({"at": 1.0, "run_id": "r1", "error": "boom", "retired_field": 3})
    assert decode("RunFailed", 1, payload) == RunFailed(run_id="r1", error="boom", metrics={}, at=1.0)


def test_oversized_payload_is_refused(monkeypatch):
    monkeypatch.setattr(events, "MAX_PAYLOAD_BYTES", 100)
    with pytest.raises(ValueError, match="RunFailed payload is .* bytes, more than 100"):
        encode(RunFailed(run_id="r1", error="x" * 200))
