"""Pricing as a pure function: the seed's pricing examples to the cent, the tier
boundaries, the minimum charge, prorated hours and per-hour overage, Decimal
exactness, and spec errors that name their path."""
import glob
import json
import pickle
from pathlib import Path
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from etl_actors.errors import SpecError, UsageError
from etl_actors.pricing import GB, Pricing, Tier, cents, check_pricing, quote
from etl_actors.spec import Section
from etl_actors.specfile import load_file, load_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MB = 1024 ** 2
INF = float("inf")

# The seed's pricing shapes, as written there (JS Infinity read as a float).
CUSTOMER_SYNC = {"model": "per-gb", "rate": 1.0, "minimumCharge": 0.1, "additionalCosts": {"enrichment": 0.5}}
STREAM = {"model": "per-hour", "rate": 2.0, "includes": 1000000, "overage": 0.001}
VALIDATOR = {"model": "per-record", "rate": 0.001, "minimumCharge": 0.1}
BATCH = {"model": "per-gb", "rate": 0.5, "minimumCharge": 0.1}
TIERED_GB = {"model": "per-gb", "rate": 1.0, "minimumCharge": 0.1, "tiers": [
    {"min": 0, "max": 10, "rate": 1.0}, {"min": 10, "max": 100, "rate": 0.75},
    {"min": 100, "max": 1000, "rate": 0.5}, {"min": 1000, "max": INF, "rate": 0.25}]}
VOLUME_RECORDS = {"model": "per-record", "rate": 0.001, "minimumCharge": 0.1, "volume": [
    {"min": 0, "max": 10000, "rate": 0.001}, {"min": 10001, "max": 100000, "rate": 0.0005},
    {"min": 100001, "max": INF, "rate": 0.0001}]}
SYNC_PLAIN, LOG_AGGREGATION, WAREHOUSE = ({"model": "per-gb", "rate": 1.0}, {"model": "per-hour", "rate": 3.0},
                                          {"model": "per-gb", "rate": 0.5})
SEED = [CUSTOMER_SYNC, STREAM, VALIDATOR, BATCH, TIERED_GB, VOLUME_RECORDS, SYNC_PLAIN, LOG_AGGREGATION, WAREHOUSE]


def hour(h: int, seconds=3600, events=0) -> dict:
    return {"start": f"2024-05-01T{h:02d}:00:00Z", "seconds": seconds, "events": events}


# --- the seed's examples ------------------------------------------------------------

@pytest.mark.parametrize("usage, expected", [
    ({"bytes": 5 * GB, "enrichedRecords": 3000}, "6.5"),    # 5 GB * 1.0 = 5.0; 3000 / 1000 * 0.5 = 1.5
    ({"bytes": 50 * MB, "enrichedRecords": 2000}, "1.1"),   # 50/1024 GB = 0.048828125 < 0.1 -> 0.1; + 2 * 0.5 = 1.1
    ({"bytes": 0}, "0.1"),                                  # nothing processed: the minimum charge
    ({"bytes": 0, "enrichedRecords": 500}, "0.35"),         # minimum 0.1, then 0.5 * 0.5 = 0.25 on top
])
def test_customer_sync_charges_per_gb_with_minimum_then_enrichment_on_top(usage, expected):
    assert quote(CUSTOMER_SYNC, usage) == D(expected)


def test_seed_charge_is_max_of_gb_times_rate_and_minimum():
    # the seed: Math.max(gbProcessed * rate, minimumCharge), gbProcessed = bytes / (1024 * 1024 * 1024)
    assert quote(CUSTOMER_SYNC, {"bytes": 1536 * MB}) == D("1.5")      # 1.5 GB * 1.0
    assert quote(CUSTOMER_SYNC, {"bytes": 100 * MB}) == D("0.1")       # 0.09765625 GB -> the minimum


def test_stream_per_hour_charges_time_and_each_hours_overage_alone():
    hours = [hour(13, 3600, 1_200_000),   # 2.0 + (1.2M - 1M) * 0.001 = 202
             hour(14, 3600, 800_000),     # 2.0; its 200k unused events do not offset hour 13
             hour(15, 1800, 1_500_000)]   # 1800/3600 * 2.0 = 1.0 + 500k * 0.001 = 501
    assert quote(STREAM, {"hours": hours}) == D("705")    # 202 + 2 + 501; summed across hours it would be 505


@pytest.mark.parametrize("records, expected", [
    (50, "0.1"),        # 50 * 0.001 = 0.05 < minimum 0.1
    (100, "0.1"),       # 100 * 0.001 = 0.1, exactly the minimum
    (5000, "5"),        # 5000 * 0.001
])
def test_validator_charges_per_record_with_minimum(records, expected):
    assert quote(VALIDATOR, {"records": records}) == D(expected)


def test_batch_processor_charges_half_per_gb():
    assert quote(BATCH, {"bytes": 3 * GB}) == D("1.5")       # 3 * 0.5
    assert quote(BATCH, {"bytes": 100 * MB}) == D("0.1")     # 0.09765625 * 0.5 = 0.048828125 -> minimum


@pytest.mark.parametrize("gb, expected", [
    (D("0.05"), "0.1"),     # 0.05 * 1.0 < minimum
    (5, "5"),               # all in the first tier
    (10, "10"),             # exactly on the first bound: 10 * 1.0, nothing in the second tier
    (11, "10.75"),          # 10 * 1.0 + 1 * 0.75
    (150, "102.5"),         # 10 * 1.0 + 90 * 0.75 + 50 * 0.5 = 10 + 67.5 + 25
    (2000, "777.5"),        # 10 + 67.5 + 900 * 0.5 + 1000 * 0.25 = 10 + 67.5 + 450 + 250
])
def test_graduated_gb_tiers_price_each_gb_at_its_tiers_rate(gb, expected):
    assert quote(TIERED_GB, {"bytes": int(D(gb) * GB)}) == D(expected)


@pytest.mark.parametrize("records, expected", [
    (50, "0.1"),             # 50 * 0.001 = 0.05 -> minimum
    (10000, "10"),           # on the first tier's max: all 10000 at 0.001
    (10001, "5.0005"),       # the second tier's min: all 10001 at 0.0005
    (100000, "50"),          # 100000 * 0.0005
    (100001, "10.0001"),     # 100001 * 0.0001
])
def test_volume_record_tiers_price_all_records_at_the_totals_tier(records, expected):
    assert quote(VOLUME_RECORDS, {"records": records}) == D(expected)


def test_volume_pricing_is_not_monotone_as_the_seed_defines_it():
    assert quote(VOLUME_RECORDS, {"records": 10001}) < quote(VOLUME_RECORDS, {"records": 10000})


def test_real_world_examples_without_minimum_charge_nothing_for_nothing():
    assert quote(SYNC_PLAIN, {"bytes": 0}) == 0
    assert quote(SYNC_PLAIN, {"bytes": 2 * GB}) == D("2")
    assert quote(WAREHOUSE, {"bytes": 7 * GB}) == D("3.5")
    # 2.5 hours of log aggregation at 3.0; no includes/overage, so events cost nothing
    assert quote(LOG_AGGREGATION, {"hours": [hour(1, events=10**9), hour(2), hour(3, 1800)]}) == D("7.5")


# --- edges --------------------------------------------------------------------------

def test_a_partial_hour_is_prorated_by_the_second():
    assert quote(STREAM, {"hours": [hour(9, 1)]}) * 3600 == D(2)          # one second = 2.0 / 3600
    assert cents(quote(STREAM, {"hours": [hour(9, 45 * 60 + 1)]})) == D("1.50")   # 2701 s = 1.50055... -> 1.50
    assert quote(STREAM, {"hours": [hour(9, 90)]}) == D("0.05")           # 90 / 3600 * 2.0


def test_entries_in_one_clock_hour_share_its_allowance():
    split = [{"start": "2024-05-01T13:00:00Z", "seconds": 600, "events": 700_000},
             {"start": "2024-05-01T13:40:00+00:00", "seconds": 1200, "events": 700_000}]
    # one clock hour: 1800 s -> 1.0; 1.4M events -> 400k over -> 400
    assert quote(STREAM, {"hours": split}) == D("401")
    epoch = datetime(2024, 5, 1, 13, tzinfo=timezone.utc).timestamp()
    same = [{"start": epoch + 5, "seconds": 600, "events": 700_000},
            {"start": datetime(2024, 5, 1, 13, 40), "seconds": 1200, "events": 700_000}]
    assert quote(STREAM, {"hours": same}) == D("401")


def test_events_within_includes_cost_nothing_and_one_over_costs_the_overage():
    assert quote(STREAM, {"hours": [hour(0, 0, 1_000_000)]}) == 0
    assert quote(STREAM, {"hours": [hour(0, 0, 1_000_001)]}) == D("0.001")


def test_decimal_exactness_gives_exact_cents():
    tenth = {"model": "per-gb", "rate": 0.1, "additionalCosts": {"enrichment": 0.2}}
    assert quote(tenth, {"bytes": 3 * GB}) == D("0.3")                          # 0.1 * 3, not 0.30000000000000004
    assert quote(tenth, {"bytes": GB, "enrichedRecords": 1000}) == D("0.3")     # 0.1 + 0.2
    assert quote({"model": "per-record", "rate": 0.0001}, {"records": 3}) == D("0.0003")
    assert cents(quote(VALIDATOR, {"records": 1005})) == D("1.01")             # 1.005 half up, not 1.00


@pytest.mark.parametrize("amount, expected", [
    (D("0.005"), "0.01"), (D("0.125"), "0.13"), (2.675, "2.68"), ("1.004999", "1.00"), (7, "7.00"),
    (D("0.3333333333333333333333333333333333333"), "0.33"),
])
def test_cents_round_half_up_to_two_places(amount, expected):
    assert str(cents(amount)) == expected


def test_infinity_is_read_from_yaml_json_text_and_null():
    from_yaml = load_text("min: 0\ntiers: [{min: 0, max: .inf, rate: 0.5}]\n", "p.yaml")["tiers"]
    from_json = json.loads('[{"min": 0, "max": Infinity, "rate": 0.5}]')
    from_js = json.loads('[{"min": 0, "max": null, "rate": 0.5}]')          # JSON.stringify(Infinity) is null
    for tiers in (from_yaml, from_json, from_js, [{"min": 0, "max": "Infinity", "rate": 0.5}],
                  [{"min": 0, "max": "inf", "rate": 0.5}], [{"min": 0, "rate": 0.5}]):
        pricing = check_pricing({"model": "per-gb", "tiers": tiers})
        assert pricing.tiers == (Tier(D(0), D("Infinity"), D("0.5")),)
        assert quote(pricing, {"bytes": 4 * GB}) == D(2)


def test_pricing_is_frozen_picklable_and_quotes_like_its_mapping():
    pricing = check_pricing(TIERED_GB)
    assert pickle.loads(pickle.dumps(pricing)) == pricing
    assert quote(pricing, {"bytes": 150 * GB}) == quote(TIERED_GB, {"bytes": 150 * GB}) == D("102.5")
    assert pricing.describe()["tiers"][3] == {"min": "1000", "max": "Infinity", "rate": "0.25"}
    assert check_pricing(CUSTOMER_SYNC).describe()["additionalCosts"] == {"enrichment": "0.5"}
    with pytest.raises(AttributeError):
        pricing.rate = D(2)


def test_snake_case_keys_and_numeric_text_are_accepted():
    pricing = check_pricing({"model": "per-gb", "rate": "0.25", "minimum_charge": "1",
                             "additional_costs": {"enrichment": 0.5}, "currency": "EUR"})
    assert (pricing.rate, pricing.minimum_charge, pricing.enrichment, pricing.currency) == (
        D("0.25"), D(1), D("0.5"), "EUR")
    assert quote(pricing, {"bytes": GB, "enriched_records": 2000}) == D(2)     # max(0.25, 1) + 1


def test_every_pricing_in_examples_and_the_seed_is_accepted():
    found = [load_file(path)["pricing"] for path in sorted(glob.glob(str(EXAMPLES / "*.yaml")))
             if "pricing" in load_file(path)]
    assert found, "examples/*.yaml hold pricing sections"
    for section in found + SEED:
        assert isinstance(check_pricing(section), Pricing)


# --- spec errors name their paths ---------------------------------------------------

def _tiers(*bounds, key="tiers"):
    return {"model": "per-gb", key: [{"min": lo, "max": hi, "rate": 1} for lo, hi in bounds]}


@pytest.mark.parametrize("section, path, words", [
    ({"model": "per-minute", "rate": 1}, "pricing.model", "not one of per-gb, per-record, per-hour"),
    ({"rate": 1}, "pricing.model", "required"),
    ({"model": "per-gb"}, "pricing.rate", "required when no tiers"),
    ({"model": "per-hour"}, "pricing.rate", "required"),
    ({"model": "per-gb", "rate": -1}, "pricing.rate", "negative"),
    ({"model": "per-gb", "rate": "cheap"}, "pricing.rate", "expected a number"),
    ({"model": "per-gb", "rate": True}, "pricing.rate", "expected a number"),
    ({"model": "per-gb", "rate": INF}, "pricing.rate", "finite"),
    ({"model": "per-gb", "rate": float("nan")}, "pricing.rate", "expected a number"),
    ({"model": "per-gb", "rate": "1e999999999"}, "pricing.rate", "1e18"),
    ({"model": "per-gb", "rate": 1, "minimumCharge": -0.1}, "pricing.minimumCharge", "negative"),
    ({**STREAM, "overage": -0.001}, "pricing.overage", "negative"),
    ({**STREAM, "includes": -1}, "pricing.includes", "negative"),
    ({**STREAM, "includes": 1.5}, "pricing.includes", "integer"),
    ({"model": "per-gb", "rate": 1, "includes": 10}, "pricing.includes", "per-hour pricing, not per-gb"),
    ({**STREAM, "tiers": []}, "pricing.tiers", "per-gb and per-record pricing, not per-hour"),
    ({"model": "per-gb", "rate": 1, "minimumCharg": 0.1}, "pricing.minimumCharg", "did you mean 'minimumCharge'"),
    ({"model": "per-gb", "rate": 1, "additionalCosts": {"storage": 1}}, "pricing.additionalCosts.storage", "unknown"),
    ({"model": "per-gb", "rate": 1, "currency": "dollars"}, "pricing.currency", "currency code"),
    (_tiers((0, 10), (5, INF)), "pricing.tiers[1].min", "overlaps tier [0]"),
    (_tiers((10, 100), (0, 10), (100, INF)), "pricing.tiers[0].min", "must start at 0"),
    (_tiers((0, 100), (200, 300), (100, INF)), "pricing.tiers[2].min", "sorted"),
    (_tiers((0, 10), (10, 10), (10, INF)), "pricing.tiers[1].max", "more than min"),
    (_tiers((0, 10), (10, 100)), "pricing.tiers[1].max", "open-ended"),
    (_tiers((0, INF), (10, INF)), "pricing.tiers[1].min", "overlaps"),
    (_tiers((0, 10), (10, INF), key="volume") | {"tiers": []}, "pricing.volume", "not both"),
    ({"model": "per-gb", "tiers": []}, "pricing.tiers", "at least one tier"),
    ({"model": "per-gb", "tiers": [{"min": 0, "rate": 1}, {"min": 5, "rate": 1}]}, "pricing.tiers[0].max", "required"),
    ({"model": "per-gb", "tiers": [{"min": 0, "rate": 1, "price": 2}]}, "pricing.tiers[0].price", "unknown"),
    ({"model": "per-gb", "tiers": [{"min": 0, "rate": -1}]}, "pricing.tiers[0].rate", "negative"),
])
def test_spec_errors_name_their_path(section, path, words):
    with pytest.raises(SpecError) as caught:
        check_pricing(section)
    assert caught.value.path == path and words in str(caught.value)


def test_errors_inside_a_service_spec_carry_its_path():
    with pytest.raises(SpecError) as caught:
        check_pricing(Section({"model": "per-gb", "tiers": [{"min": 0, "max": 5, "rate": 1}, {"min": 4, "rate": 1}]},
                              "services[0].pricing"))
    assert caught.value.path == "services[0].pricing.tiers[1].min"


@pytest.mark.parametrize("usage, path", [
    ({"byte": 10}, "usage.byte"),
    ({"bytes": -1}, "usage.bytes"),
    ({"records": 1.5}, "usage.records"),
    ({"hours": [{"seconds": 10}]}, "usage.hours[0]"),
    ({"hours": [hour(1, 3601)]}, "usage.hours[0].seconds"),
    ({"hours": [{"start": "yesterday", "seconds": 1}]}, "usage.hours[0].start"),
])
def test_usage_errors_name_their_key(usage, path):
    with pytest.raises(UsageError) as caught:
        quote(STREAM, usage)
    assert caught.value.path == path


# --- properties ---------------------------------------------------------------------

rates = st.decimals(min_value=0, max_value=10, places=4)


@st.composite
def graduated(draw, key="tiers", model="per-gb"):
    """Tiers with whole-number bounds from 0, gaps allowed, the last open-ended."""
    count = draw(st.integers(1, 5))
    bounds, low = [], 0
    for _ in range(count):
        high = low + draw(st.integers(1, 50))
        bounds.append((low, high))
        low = high + draw(st.integers(0, 3))            # 0: contiguous; more: a gap
    tiers = [{"min": lo, "max": hi, "rate": draw(rates)} for lo, hi in bounds]
    tiers[-1]["max"] = INF
    return {"model": model, key: tiers, "minimumCharge": draw(st.decimals(min_value=0, max_value=5, places=2))}


def unit_by_unit(pricing: dict, units: int) -> D:
    """The oracle: unit k (from k to k+1) at the rate of the tier with the greatest min <= k."""
    tiers = pricing["tiers"]
    return sum((next(t for t in reversed(tiers) if t["min"] <= k)["rate"] for k in range(units)), D(0))


@settings(max_examples=150, deadline=None)
@given(graduated(), st.integers(0, 300))
def test_graduated_quote_is_the_sum_over_tiers(pricing, gb):
    expected = max(unit_by_unit(pricing, gb), pricing["minimumCharge"])
    assert quote(pricing, {"bytes": gb * GB}) == expected


@settings(max_examples=150, deadline=None)
@given(graduated(), st.integers(0, 300 * GB), st.integers(0, 50 * GB))
def test_graduated_gb_quote_is_monotone_and_never_below_minimum(pricing, low, more):
    smaller, larger = quote(pricing, {"bytes": low}), quote(pricing, {"bytes": low + more})
    assert pricing["minimumCharge"] <= smaller <= larger


@settings(max_examples=100, deadline=None)
@given(graduated(model="per-record"), st.integers(0, 10_000), st.integers(0, 1_000))
def test_graduated_record_quote_is_monotone(pricing, low, more):
    assert quote(pricing, {"records": low}) <= quote(pricing, {"records": low + more})


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(SEED) | graduated(key="volume", model="per-record"),
       st.integers(0, 10 * GB), st.integers(0, 10**6), st.integers(0, 10**5),
       st.lists(st.tuples(st.integers(0, 3600), st.integers(0, 3 * 10**6)), max_size=4))
def test_no_quote_is_below_the_minimum_charge(pricing, size, records, enriched, hours):
    usage = {"bytes": size, "records": records, "enrichedRecords": enriched,
             "hours": [hour(h, s, e) for h, (s, e) in enumerate(hours)]}
    assert quote(pricing, usage) >= D(str(pricing.get("minimumCharge", 0)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3600), st.integers(0, 3 * 10**6)), min_size=1, max_size=6))
def test_per_hour_charge_is_the_sum_of_each_clock_hour_alone(hours):
    whole = quote(STREAM, {"hours": [hour(h, s, e) for h, (s, e) in enumerate(hours)]})
    alone = sum(quote(STREAM, {"hours": [hour(h, s, e)]}) for h, (s, e) in enumerate(hours))
    assert abs(whole - alone) < D("1e-20")      # seconds / 3600 never terminates; sum() adds in 28 digits


def test_a_spec_with_bad_pricing_is_refused_naming_the_path(tmp_path):
    from etl_actors.spec import parse

    with pytest.raises(SpecError) as caught:
        parse({"name": "p", "pricing": {"model": "per-gb", "tiers": [{"min": 10, "max": 100, "rate": 0.75},
                                                                      {"min": 0, "max": 10, "rate": 1.0}]},
               "pipeline": {"source": {"type": "file", "path": str(tmp_path), "format": "csv"},
                            "destination": {"type": "file", "path": str(tmp_path / "out")}}})
    assert str(caught.value).startswith("pricing.tiers")
