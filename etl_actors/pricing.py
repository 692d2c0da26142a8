"""Pricing: what one charge costs, as a pure function of a pricing model and a usage.

The models are the seed's (``pricing:`` of a spec or of ``$.Service.create``)::

    pricing: {model: per-gb, rate: 1.0, minimumCharge: 0.1, additionalCosts: {enrichment: 0.5}}
    pricing: {model: per-gb, tiers: [{min: 0, max: 10, rate: 1.0}, {min: 10, max: .inf, rate: 0.75}]}
    pricing: {model: per-record, rate: 0.001, volume: [{min: 0, max: 10000, rate: 0.001}, ...]}
    pricing: {model: per-hour, rate: 2.0, includes: 1000000, overage: 0.001}

- ``per-gb``: ``rate`` per GB of ``usage["bytes"]`` (1 GB = 1024**3 bytes, fractions
  charged exactly); ``per-record``: ``rate`` per record of ``usage["records"]``.
  Either takes tiers, bounded in GB or in records:

  - ``tiers`` are *graduated*: each unit is priced at the rate of the tier it falls in
    (the seed's "the first 10 GB at 1.0, the next 90 at 0.75, ...");
  - ``volume`` tiers price *all* units at the rate of the tier the total falls in.

  One rule says which tier a quantity ``q`` falls in: the tier with the greatest
  ``min <= q``. So a bound shared by two tiers belongs to the upper one (10 GB is in
  ``{min: 10, max: 100}``), and a gap belongs to the lower one: with the seed's
  volume tiers ``0-10000, 10001-100000`` a total of 10000 records is in the first
  tier and 10001 in the second (10000.5 records cannot happen). The first tier starts
  at 0 and the last is open-ended (``max`` Infinity, YAML ``.inf``, JSON
  ``Infinity``, the string ``"Infinity"`` or ``"inf"``, ``null`` as JavaScript's
  ``JSON.stringify(Infinity)`` writes it, or no ``max``), so every quantity has a
  rate. With tiers ``rate`` may still be given (the seed writes the headline rate
  beside them); the tiers decide the charge.
- ``per-hour``: ``rate`` per hour of running time, prorated by the second, over
  ``usage["hours"]``: one ``{"start", "seconds", "events"}`` per clock hour (UTC;
  ``start`` a datetime, epoch seconds or ISO-8601 text; entries within one clock hour
  are added up). ``includes`` events of each clock hour are free and each event past
  them costs ``overage``: one hour's excess never borrows another hour's allowance.
- ``minimumCharge`` applies per charge, that is per :func:`quote` (a request; for a
  stream, whatever period the caller quotes, e.g. one clock hour), to the model's
  charge: the seed's ``Math.max(gbProcessed * rate, minimumCharge)``. Additional
  costs are added on top of that: ``additionalCosts: {enrichment: 0.5}`` is 0.5 per
  1000 of ``usage["enrichedRecords"]``, prorated.
- ``currency`` (default ``USD``) names what the amounts are in; the seed has none.

Money is :class:`~decimal.Decimal` end to end: spec numbers become ``Decimal(str(x))``
(``0.1`` is one tenth, never a binary fraction), and :func:`quote` is exact except
that running time in hours (``seconds / 3600``) is carried to 100 significant digits.
:func:`quote` returns the unrounded amount; :func:`cents` rounds an invoice line half
up to cents.

>>> quote({"model": "per-gb", "rate": 0.5, "minimumCharge": 0.1}, {"bytes": 3 * GB})
Decimal('1.5')
>>> cents(quote({"model": "per-record", "rate": 0.001, "minimumCharge": 0.1}, {"records": 42}))
Decimal('0.10')
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import (ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, DivisionByZero, InvalidOperation, Overflow,
                     localcontext)
from typing import Any, Mapping

from .errors import SpecError, UsageError, describe as describe_value
from .spec import REQUIRED, Section

GB = 1024 ** 3
MODELS = ("per-gb", "per-record", "per-hour")
INFINITY = Decimal("Infinity")
ZERO = Decimal(0)
CENT = Decimal("0.01")
_EXACT = Context(prec=100, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
_INFINITY_WORDS = {".inf", "+.inf"}       # YAML's spelling; Decimal reads inf and Infinity itself
_MODEL_KEYS = {"tiers": ("per-gb", "per-record"), "volume": ("per-gb", "per-record"),
               "includes": ("per-hour",), "overage": ("per-hour",)}
_LARGEST = 18                             # spec numbers are 0 or between 1e-18 and 1e18
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_USAGE_KEYS = {"bytes": "bytes", "records": "records", "enrichedRecords": "enriched_records",
               "enriched_records": "enriched_records", "hours": "hours"}


# --- the description ------------------------------------------------------------------

@dataclass(frozen=True)
class Tier:
    """Quantities (GB or records) from ``min`` up to the next tier's ``min`` (the last
    tier: up to ``max``, Infinity) are in this tier, priced at ``rate``."""

    min: Decimal
    max: Decimal
    rate: Decimal


@dataclass(frozen=True)
class Pricing:
    """A validated pricing model; frozen and picklable. Build it with
    :func:`check_pricing` (or :meth:`from_spec`), which names the path of any error.

    ``tiers`` hold either graduated tiers (``volume`` False: spec key ``tiers``) or
    volume tiers (``volume`` True: spec key ``volume``); ``enrichment`` is the cost per
    1000 enriched records (``additionalCosts.enrichment``)."""

    model: str
    rate: Decimal | None = None
    minimum_charge: Decimal = ZERO
    tiers: tuple[Tier, ...] = ()
    volume: bool = False
    includes: int = 0
    overage: Decimal = ZERO
    enrichment: Decimal = ZERO
    currency: str = "USD"

    @classmethod
    def from_spec(cls, section: Section, ctx: Any = None) -> "Pricing":
        """From a ``pricing:`` section; errors name their path (``pricing.tiers[1].min``)."""
        model = section.get("model", types=str, choices=MODELS)
        _refuse_keys_of_other_models(section, model)
        tiers, volume = _tiers_of(section)
        rate = _number(section, "rate", None)
        if rate is None and not tiers:
            when = "" if model == "per-hour" else " when no tiers are given"
            raise SpecError(section.at("rate"), f"is required{when}")
        hourly = model == "per-hour"
        pricing = cls(model=model, rate=rate, minimum_charge=_number(section, "minimum_charge", ZERO),
                      tiers=tiers, volume=volume, includes=_count(section, "includes") if hourly else 0,
                      overage=_number(section, "overage", ZERO) if hourly else ZERO,
                      enrichment=_additional_costs(section), currency=_currency(section))
        section.done()
        return pricing

    def describe(self) -> dict[str, Any]:
        """The pricing as the spec writes it, with amounts as decimal strings."""
        out: dict[str, Any] = {"model": self.model, "currency": self.currency,
                               "minimumCharge": str(self.minimum_charge)}
        if self.rate is not None:
            out["rate"] = str(self.rate)
        if self.tiers:
            out["volume" if self.volume else "tiers"] = [
                {"min": str(t.min), "max": str(t.max), "rate": str(t.rate)} for t in self.tiers]
        if self.model == "per-hour":
            out.update(includes=self.includes, overage=str(self.overage))
        if self.enrichment:
            out["additionalCosts"] = {"enrichment": str(self.enrichment)}
        return out


def check_pricing(section: Section | Mapping[str, Any]) -> Pricing:
    """Validate a ``pricing:`` section (a :class:`Section`, or a mapping read at path
    ``pricing``) and return its :class:`Pricing`; raises :class:`SpecError` naming
    the offending key."""
    return Pricing.from_spec(section if isinstance(section, Section) else Section(section, "pricing"))


def _number(section: Section, name: str, default: Any = REQUIRED, *, infinite: bool = False) -> Any:
    value = section.get(name, default)
    return value if value is default else _decimal(value, section.at(name), infinite=infinite)


def _decimal(value: Any, path: str, *, infinite: bool = False) -> Decimal:
    """A spec number as a non-negative Decimal: ``Decimal(str(x))`` for floats, so
    ``0.1`` is one tenth; numeric text too. Infinity only when ``infinite``."""
    if isinstance(value, str) and value.strip().lower() in _INFINITY_WORDS:
        value = INFINITY
    number = None
    if isinstance(value, (int, float, str, Decimal)) and not isinstance(value, bool):
        try:
            number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
        except InvalidOperation:
            pass
    if number is None or number.is_nan():
        raise SpecError(path, f"expected a number, got {describe_value(value)}")
    if number < 0:
        raise SpecError(path, f"must not be negative, got {value}")
    if number.is_infinite() and not infinite:
        raise SpecError(path, f"expected a finite number, got {value}")
    if number.is_finite() and number and not -_LARGEST <= number.adjusted() < _LARGEST:
        raise SpecError(path, f"expected 0 or a number from 1e-{_LARGEST} to 1e{_LARGEST}, got {value}")
    return number


def _count(section: Section, name: str) -> int:
    return section.get(name, 0, types=int, check=lambda v: None if v >= 0 else f"must not be negative, got {v}")


def _currency(section: Section) -> str:
    return section.get("currency", "USD", types=str,
                       check=lambda v: None if _CURRENCY.match(v) else
                       f"expected a currency code such as USD, got {v!r}")


def _additional_costs(section: Section) -> Decimal:
    costs = section.section("additional_costs", None)
    if costs is None:
        return ZERO
    enrichment = _number(costs, "enrichment", ZERO)
    costs.done()
    return enrichment


def _refuse_keys_of_other_models(section: Section, model: str) -> None:
    for key, owners in _MODEL_KEYS.items():
        if model not in owners and section.has(key):
            raise SpecError(section.at(key), f"applies to {' and '.join(owners)} pricing, not {model}")


def _tiers_of(section: Section) -> tuple[tuple[Tier, ...], bool]:
    if section.has("tiers") and section.has("volume"):
        raise SpecError(section.at("volume"),
                        "give tiers (graduated) or volume (all units at one tier's rate), not both")
    for name, volume in (("tiers", False), ("volume", True)):
        if section.has(name) and section.get(name, None) is not None:
            return _tiers(section, name), volume
    return (), False


def _tiers(section: Section, name: str) -> tuple[Tier, ...]:
    items = section.sections(name)
    if not items:
        raise SpecError(section.at(name), "expected at least one tier")
    tiers: list[Tier] = []
    for i, item in enumerate(items):
        tier = _tier(item, last=i == len(items) - 1)
        if not tiers and tier.min != 0:
            raise SpecError(item.at("min"),
                            f"the first tier must start at 0 so every quantity has a rate, got {tier.min}")
        if tiers:
            _check_follows(tiers[-1], tier, item, i)
        tiers.append(tier)
    return tuple(tiers)


def _tier(item: Section, last: bool) -> Tier:
    low = _number(item, "min")
    high = _number(item, "max", INFINITY if last else REQUIRED, infinite=True)
    rate = _number(item, "rate")
    item.done()
    if high <= low:
        raise SpecError(item.at("max"), f"must be more than min ({low}), got {high}")
    if last and high.is_finite():
        raise SpecError(item.at("max"), f"the last tier must be open-ended (Infinity, .inf, null or no max) "
                                        f"so every quantity has a rate, got {high}")
    return Tier(low, high, rate)


def _check_follows(previous: Tier, tier: Tier, item: Section, i: int) -> None:
    if tier.min < previous.min:
        raise SpecError(item.at("min"), f"tiers must be sorted by min: {tier.min} comes after "
                                        f"tier [{i - 1}] starting at {previous.min}")
    if tier.min < previous.max:
        raise SpecError(item.at("min"), f"overlaps tier [{i - 1}] ({previous.min} to {previous.max}): "
                                        f"a tier starts at or after the previous tier's max")


# --- usage ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Usage:
    bytes: int = 0
    records: int = 0
    enriched_records: int = 0
    hours: tuple[tuple[Decimal, int], ...] = ()     # (seconds, events) per clock hour


def _read_usage(usage: Mapping[str, Any]) -> _Usage:
    if not isinstance(usage, Mapping):
        raise UsageError(f"usage: expected a mapping, got {describe_value(usage)}", path="usage")
    fields: dict[str, Any] = {}
    for key, value in usage.items():
        if key not in _USAGE_KEYS:
            raise UsageError(f"usage.{key}: unknown key (expected bytes, records, enrichedRecords, hours)",
                             path=f"usage.{key}")
        name = _USAGE_KEYS[key]
        fields[name] = _clock_hours(value) if name == "hours" else _whole(value, f"usage.{key}")
    return _Usage(**fields)


def _whole(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{path}: expected a whole number of 0 or more, got {describe_value(value)}", path=path)
    return value


def _clock_hours(hours: Any) -> tuple[tuple[Decimal, int], ...]:
    if not isinstance(hours, (list, tuple)):
        raise UsageError(f"usage.hours: expected a list, got {describe_value(hours)}", path="usage.hours")
    merged: dict[int, tuple[Decimal, int]] = {}
    for i, hour in enumerate(hours):
        path = f"usage.hours[{i}]"
        if not isinstance(hour, Mapping) or "start" not in hour or set(hour) - {"start", "seconds", "events"}:
            raise UsageError(f"{path}: expected {{start, seconds, events}}, got {describe_value(hour)}", path=path)
        seconds = _seconds(hour.get("seconds", 0), f"{path}.seconds")
        events = _whole(hour.get("events", 0), f"{path}.events")
        before = merged.get(key := _hour_of(hour["start"], f"{path}.start"), (ZERO, 0))
        merged[key] = (before[0] + seconds, before[1] + events)
    return tuple(merged[key] for key in sorted(merged))


def _seconds(value: Any, path: str) -> Decimal:
    ok = isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
    seconds = Decimal(str(value)) if ok else None
    if seconds is None or not seconds.is_finite() or not 0 <= seconds <= 3600:
        raise UsageError(f"{path}: expected 0 to 3600 seconds of one clock hour, got {describe_value(value)}",
                         path=path)
    return seconds


def _hour_of(start: Any, path: str) -> int:
    """The clock hour (UTC) ``start`` falls in, as hours since the epoch; a naive
    datetime or ISO text without an offset is read as UTC."""
    try:
        if isinstance(start, str):
            start = datetime.fromisoformat(start)
        if isinstance(start, datetime):
            start = (start if start.tzinfo else start.replace(tzinfo=timezone.utc)).timestamp()
        if isinstance(start, (int, float)) and not isinstance(start, bool):
            return int(start // 3600)
    except (ValueError, OverflowError):
        pass
    raise UsageError(f"{path}: expected a datetime, epoch seconds or ISO-8601 text, got {describe_value(start)}",
                     path=path)


# --- quoting --------------------------------------------------------------------------

def quote(pricing: Pricing | Mapping[str, Any], usage: Mapping[str, Any]) -> Decimal:
    """What one charge costs: the model's charge, at least ``minimumCharge``, plus the
    additional costs; unrounded (see :func:`cents`). ``pricing`` is a :class:`Pricing`
    or a ``pricing:`` mapping (validated first: :class:`SpecError`); ``usage`` holds
    ``bytes``, ``records``, ``enrichedRecords`` (whole numbers, default 0) and
    ``hours`` (``[{"start", "seconds", "events"}]``); anything else in it is a
    :class:`UsageError`."""
    pricing = pricing if isinstance(pricing, Pricing) else check_pricing(pricing)
    used = _read_usage(usage)
    with localcontext(_EXACT):
        charge = max(_CHARGES[pricing.model](pricing, used), pricing.minimum_charge)
        return charge + pricing.enrichment * used.enriched_records / 1000


def _per_gb(pricing: Pricing, used: _Usage) -> Decimal:
    return _units(pricing, Decimal(used.bytes) / GB)


def _per_record(pricing: Pricing, used: _Usage) -> Decimal:
    return _units(pricing, Decimal(used.records))


def _per_hour(pricing: Pricing, used: _Usage) -> Decimal:
    seconds = sum((s for s, _ in used.hours), ZERO)
    excess = sum(max(events - pricing.includes, 0) for _, events in used.hours)
    return pricing.rate * seconds / 3600 + pricing.overage * excess


_CHARGES = {"per-gb": _per_gb, "per-record": _per_record, "per-hour": _per_hour}


def _units(pricing: Pricing, quantity: Decimal) -> Decimal:
    if not pricing.tiers:
        return pricing.rate * quantity
    if pricing.volume:
        return quantity * _tier_of(pricing.tiers, quantity).rate
    return sum((tier.rate * _overlap(quantity, tier.min, upper) for tier, upper in _spans(pricing.tiers)), ZERO)


def _tier_of(tiers: tuple[Tier, ...], quantity: Decimal) -> Tier:
    """The tier ``quantity`` falls in: the one with the greatest ``min <= quantity``."""
    return [tier for tier in tiers if tier.min <= quantity][-1]


def _spans(tiers: tuple[Tier, ...]):
    """Each tier with where it ends: the next tier's min (a gap is the lower tier's)."""
    return zip(tiers, [tier.min for tier in tiers[1:]] + [tiers[-1].max])


def _overlap(quantity: Decimal, low: Decimal, high: Decimal) -> Decimal:
    return max(min(quantity, high) - low, ZERO)


def cents(amount: Decimal | int | str | float) -> Decimal:
    """``amount`` rounded half up (ties away from zero) to cents, for an invoice line:
    ``cents(Decimal("0.125")) == Decimal("0.13")``. A float is read as ``str(x)``."""
    amount = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    with localcontext(_EXACT):
        return amount.quantize(CENT, rounding=ROUND_HALF_UP)
