"""Billing: what runs used, folded into charges, from the event log alone.

Every run records what it used as ``UsageRecorded`` in its pipeline's stream (see
:mod:`etl_actors.usage`). Services
(``ServiceCreated``) carry a pricing model; requests (``ServiceRequested``,
``RequestStarted``, ``RequestFinished``) join a customer to a run. :class:`Billing`
folds the whole log, in global order, into the charges owed, and :func:`settle`
records each as ``PaymentCharged`` in a stream of its own (``charge:<charge id>``,
version 1): a charge is recorded once, however often and from however many processes
the projection replays.

Charging rules:

- A batch request (a service that is not a stream) is charged once, when it finished
  ``success`` and its run's final usage is in: :func:`~etl_actors.pricing.quote` of
  ``{bytes, records, enrichedRecords}``; charge id the request id, invoiced in the UTC
  month it finished. A failed request is not charged (the seed charges after
  delivering).
- A stream request is charged per UTC clock hour, ``quote`` of ``{hours: [that hour]}``
  (``minimumCharge`` per hour); charge id ``<request id>@2026-12-02T10:00Z``, invoiced
  in the hour's month. An hour is due once it is over and the run's usage covers it, or
  once the request finished (any status).
- A service without a valid ``pricing``, or a request without customer, is never
  charged; a scheduled request without one is charged to the service's customer.

A charge's time (``PaymentCharged.at``, ``createdAt``) is when it was incurred: the
request's finish, or the end of the hour (the finish, if earlier); so a replay, or a
settlement run late, gives the same bill. Money is Decimal: ``amount`` in the event is
exact; charges listed and invoice lines are rounded half up to cents, and an invoice's
total is the sum of its rounded lines.
"""
from __future__ import annotations

import copy
import json
import re
import time
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal

from . import events as ev
from .errors import ConcurrencyError, EtlError, SpecError, UsageError
from .eventlog import EventLog
from .pricing import GB, Pricing, cents, check_pricing, quote
from .projections import snapshots
from .usage import HOUR

NAME = "billing"               # the projection's snapshots: stream projection:billing
PAGE = 1000                    # events read from the log at a time
UNCLAIMED = 100                # finished runs of a service's pipeline kept for a request that names them late
CHARGE_PREFIX = "charge:"
FORMAT = 1                     # the shape of the state a snapshot keeps; one of another shape is not read
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


# --- the projection -------------------------------------------------------------------

class Billing:
    """The charges owed and recorded, folded from the whole log in global order (see
    the module docstring); ``position`` is the global position folded up to.

    The state a snapshot keeps (:meth:`to_state`) is only what the charges still owed
    need: the priced services, the requests not yet fully charged, and the usage of
    their runs (and of the last :data:`UNCLAIMED` finished runs of services' pipelines
    that no request named yet). The charges recorded are kept beside it, for
    :meth:`charges` and :meth:`invoice`: :func:`project` reads those from before a
    snapshot back from the ``charge:`` streams."""

    def __init__(self):
        self.position = 0
        self.services: dict[str, dict] = {}    # priced ones: {pricing, pipeline, customer, stream}
        self.requests: dict[str, dict] = {}    # chargeable, not fully charged: {service, customer, run, ...}
        self.runs: dict[str, dict] = {}        # "<pipeline>/<run id>" -> usage so far (see _new_run)
        self.unclaimed: list[str] = []         # finished runs no request named, oldest first
        self.recorded: list[ev.PaymentCharged] = []
        self._of_request: dict[str, list[ev.PaymentCharged]] = defaultdict(list)
        self._pricing: dict[str, Pricing] = {}

    # --- folding ----------------------------------------------------------------------

    def apply(self, recorded: ev.RecordedEvent) -> None:
        """Fold one event of the log (events after ``position`` only, in global order)."""
        handler = _HANDLERS.get(type(recorded.event))
        if handler is not None:
            handler(self, recorded.event)
        self.position = max(self.position, recorded.position)

    def catch_up(self, log: EventLog) -> int:
        """Fold the events appended after ``position``; return how many there were."""
        folded = 0
        while page := log.read_all(self.position, limit=PAGE):
            for recorded in page:
                self.apply(recorded)
            folded += len(page)
        return folded

    def _service_created(self, event: ev.ServiceCreated) -> None:
        spec = event.spec if isinstance(event.spec, dict) else {}
        pricing = spec.get("pricing")
        if isinstance(pricing, dict) and _valid(pricing):
            self.services[event.service_id] = {"pricing": pricing, "pipeline": spec.get("name", ""),
                                               "customer": event.customer_id,
                                               "stream": event.kind == "stream" or "stream" in spec}

    def _service_requested(self, event: ev.ServiceRequested) -> None:
        service = self.services.get(event.service_id)
        if service is None:
            return
        customer = event.customer_id or (service["customer"] if event.trigger == "schedule" else "")
        if customer:
            self.requests[event.request_id] = {"service": event.service_id, "customer": customer, "run": None,
                                               "status": None, "finishedAt": None}

    def _request_started(self, event: ev.RequestStarted) -> None:
        request = self.requests.get(event.request_id)
        if request is None:
            return
        key, earlier = _run_key(event.pipeline, event.run_id), request["run"]
        request["run"] = key
        run = self.runs.setdefault(key, _new_run())
        run["request"] = event.request_id
        if key in self.unclaimed:
            self.unclaimed.remove(key)
        if earlier not in (None, key):
            self._rerun(request, self.runs.pop(earlier, None), run)

    def _rerun(self, request: dict, earlier: dict | None, run: dict) -> None:
        """A request run again (its server stopped before it ended): a batch request is
        charged for the run that delivers it; a stream's clock hours not yet charged add
        up over its runs."""
        if earlier is None or not self._is_stream(request):
            return
        for start, (seconds, events) in earlier["hours"].items():
            had = run["hours"].get(start, (0.0, 0))
            run["hours"][start] = [round(min(had[0] + seconds, float(HOUR)), 3), had[1] + events]

    def _usage_recorded(self, event: ev.UsageRecorded) -> None:
        key = _run_key(event.pipeline, event.run_id)
        if key not in self.runs and event.pipeline not in self._service_pipelines():
            return
        run = self.runs.setdefault(key, _new_run())
        run["bytes"] += event.bytes
        run["records"] += event.records
        run["enriched"] += event.enriched
        for hour in event.hours:
            seconds, events = run["hours"].get(str(hour["start"]), (0.0, 0))
            run["hours"][str(hour["start"])] = [round(seconds + hour["seconds"], 3), events + hour["events"]]
        run["covered"] = max(run["covered"], event.at)
        if event.final:
            run["final"] = True
            if run["request"] is None:
                self._unclaimed(key)

    def _unclaimed(self, key: str) -> None:
        self.unclaimed.append(key)
        while len(self.unclaimed) > UNCLAIMED:
            self.runs.pop(self.unclaimed.pop(0), None)

    def _request_finished(self, event: ev.RequestFinished) -> None:
        request = self.requests.get(event.request_id)
        if request is not None:
            request["status"], request["finishedAt"] = event.status, event.at
            self._forget_if_done(event.request_id)

    def _payment_charged(self, event: ev.PaymentCharged) -> None:
        self._remember(event)
        request = self.requests.get(event.request_id)
        if request is None:
            return
        if not self._is_stream(request):
            self._forget(event.request_id)
            return
        hours = self.runs.get(request["run"], {}).get("hours", {})
        for start in [s for s in hours if _hour_charge_id(event.request_id, int(s)) == event.charge_id]:
            del hours[start]
        self._forget_if_done(event.request_id)

    def _remember(self, charge: ev.PaymentCharged) -> None:
        self.recorded.append(charge)
        self._of_request[charge.request_id].append(charge)

    def _forget_if_done(self, request_id: str) -> None:
        """Drop a finished request that owes nothing more: a failed batch request, one
        that never started, a stream whose every hour is charged."""
        request = self.requests[request_id]
        if request["status"] is None:
            return
        run = self.runs.get(request["run"]) if request["run"] else None
        if run is None or (self._is_stream(request) and not run["hours"]) or \
                (not self._is_stream(request) and request["status"] != "success"):
            self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        request = self.requests.pop(request_id)
        if request["run"]:
            self.runs.pop(request["run"], None)

    def _is_stream(self, request: dict) -> bool:
        return self.services[request["service"]]["stream"]

    def _service_pipelines(self) -> set[str]:
        return {service["pipeline"] for service in self.services.values()}

    # --- charges owed ---------------------------------------------------------------

    def due(self, now: float) -> list[ev.PaymentCharged]:
        """The charges owed at ``now`` and not yet recorded, oldest first."""
        owed: list[ev.PaymentCharged] = []
        for request_id, request in self.requests.items():
            run = self.runs.get(request["run"]) if request["run"] else None
            if run is None:
                continue
            if self._is_stream(request):
                owed += self._hours_due(request_id, request, run, now)
            elif request["status"] == "success" and run["final"]:
                usage = {"bytes": run["bytes"], "records": run["records"], "enrichedRecords": run["enriched"]}
                owed.append(self._charge(request_id, request_id, request, usage, request["finishedAt"]))
        return sorted(owed, key=lambda charge: (charge.at, charge.charge_id))

    def _hours_due(self, request_id: str, request: dict, run: dict, now: float) -> list[ev.PaymentCharged]:
        finished = request["status"] is not None
        owed = []
        for start in sorted(int(s) for s in run["hours"]):
            end = start + HOUR
            if not finished and not (now >= end and (run["final"] or run["covered"] >= end)):
                continue
            seconds, events = run["hours"][str(start)]
            usage = {"hours": [{"start": start, "seconds": min(seconds, float(HOUR)), "events": events}]}
            at = min(end, request["finishedAt"]) if finished else end
            owed.append(self._charge(_hour_charge_id(request_id, start), request_id, request, usage, at))
        return owed

    def _charge(self, charge_id: str, request_id: str, request: dict, usage: dict, at: float) -> ev.PaymentCharged:
        service_id = request["service"]
        pricing = self._priced(service_id)
        return ev.PaymentCharged(charge_id=charge_id, request_id=request_id, service_id=service_id,
                                 customer_id=request["customer"], amount=f"{quote(pricing, usage):f}",
                                 currency=pricing.currency, description=_describe(pricing, usage), usage=usage,
                                 period=_period(at), at=at)

    def _priced(self, service_id: str) -> Pricing:
        if service_id not in self._pricing:
            self._pricing[service_id] = check_pricing(self.services[service_id]["pricing"])
        return self._pricing[service_id]

    # --- charges recorded -----------------------------------------------------------

    def charges(self, customer: str | None = None, period: str | None = None) -> list[dict]:
        """The charges recorded (of ``customer``, invoiced in ``period`` YYYY-MM), oldest
        first: ``{chargeId, requestId, serviceId, customerId, amount, currency,
        description, createdAt}``, ``amount`` rounded half up to cents (``"0.50"``)."""
        return [_view(charge) for charge in self._select(customer, period)]

    def charge_of(self, request_id: str) -> dict | None:
        """``{"amount", "currency"}`` of the request's charges (their lines rounded to
        cents, then added), or None when it has none."""
        charges = self._of_request.get(request_id)
        if not charges:
            return None
        return {"amount": str(sum((_line(c) for c in charges), Decimal("0.00"))), "currency": charges[0].currency}

    def invoice(self, customer: str, period: str) -> dict:
        """The customer's invoice of ``period`` (YYYY-MM, UTC): ``{customerId, period,
        currency, lines: [{chargeId, requestId, serviceId, description, amount}], total}``,
        one line per charge rounded half up to cents, the total the sum of the lines."""
        charges = self._select(customer, check_period(period))
        currencies = sorted({c.currency for c in charges})
        if len(currencies) > 1:
            raise EtlError(f"the charges of customer {customer!r} in {period} are in {', '.join(currencies)}: "
                           "one invoice cannot total them")
        lines = [{"chargeId": c.charge_id, "requestId": c.request_id, "serviceId": c.service_id,
                  "description": c.description, "amount": str(_line(c))} for c in charges]
        total = sum((_line(c) for c in charges), Decimal("0.00"))
        return {"customerId": customer, "period": period, "currency": currencies[0] if currencies else "USD",
                "lines": lines, "total": str(total)}

    def _select(self, customer: str | None, period: str | None) -> list[ev.PaymentCharged]:
        chosen = [c for c in self.recorded if (customer is None or c.customer_id == customer)
                  and (period is None or c.period == period)]
        return sorted(chosen, key=lambda c: c.at)

    # --- snapshots ------------------------------------------------------------------

    def to_state(self) -> dict:
        """What a snapshot keeps (plain msgpack types); the charges recorded are not in
        it (see the class docstring)."""
        return copy.deepcopy({"format": FORMAT, "position": self.position, "services": self.services,
                              "requests": self.requests, "runs": self.runs, "unclaimed": self.unclaimed})

    @classmethod
    def from_state(cls, state: dict) -> "Billing":
        """The projection as :meth:`to_state` left it, without the charges recorded;
        ValueError for a state of another shape than this version writes."""
        if state.get("format") != FORMAT:
            raise ValueError(f"a billing snapshot of format {state.get('format')!r}, not {FORMAT}")
        billing = cls()
        state = copy.deepcopy(state)
        billing.position = state["position"]
        billing.services, billing.requests = state["services"], state["requests"]
        billing.runs, billing.unclaimed = state["runs"], state["unclaimed"]
        return billing

    def recall(self, log: EventLog) -> None:
        """Read back the charges recorded up to ``position`` (a projection restored
        from a snapshot has only the state owed)."""
        position = 0
        while page := log.read_all(position, limit=PAGE, stream_prefix=CHARGE_PREFIX):
            for recorded in page:
                if recorded.position <= self.position and isinstance(recorded.event, ev.PaymentCharged):
                    self._remember(recorded.event)
            position = page[-1].position
            if position > self.position:
                return


_HANDLERS = {ev.ServiceCreated: Billing._service_created, ev.ServiceRequested: Billing._service_requested,
             ev.RequestStarted: Billing._request_started, ev.UsageRecorded: Billing._usage_recorded,
             ev.RequestFinished: Billing._request_finished, ev.PaymentCharged: Billing._payment_charged}


def _valid(pricing: dict) -> bool:
    """Whether ``pricing`` validates: the service API refuses a service whose pricing
    does not, and one recorded otherwise is not charged."""
    try:
        check_pricing(pricing)
    except SpecError:
        return False
    return True


def _new_run() -> dict:
    return {"request": None, "bytes": 0, "records": 0, "enriched": 0, "hours": {}, "covered": 0.0, "final": False}


def _run_key(pipeline: str, run_id: str) -> str:
    return f"{pipeline}/{run_id}"


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=timezone.utc)


def _hour_charge_id(request_id: str, start: int) -> str:
    return f"{request_id}@{_utc(start):%Y-%m-%dT%H:%M}Z"


def _period(at: float) -> str:
    return f"{_utc(at):%Y-%m}"


def _iso(at: float) -> str:
    return f"{_utc(at):%Y-%m-%dT%H:%M:%S}Z"


def _line(charge: ev.PaymentCharged) -> Decimal:
    return cents(Decimal(charge.amount))


def _view(charge: ev.PaymentCharged) -> dict:
    return {"chargeId": charge.charge_id, "requestId": charge.request_id, "serviceId": charge.service_id,
            "customerId": charge.customer_id, "amount": str(_line(charge)), "currency": charge.currency,
            "description": charge.description, "createdAt": _iso(charge.at)}


def _describe(pricing: Pricing, usage: dict) -> str:
    """What a charge is for, as the seed writes it: ``ETL Pipeline - 0.42 GB processed``."""
    if "hours" in usage:
        return f"ETL Pipeline - stream hour {_utc(usage['hours'][0]['start']):%Y-%m-%d %H:%M} UTC"
    if pricing.model == "per-record":
        text = f"ETL Pipeline - {usage['records']:,} records"
    else:
        text = f"ETL Pipeline - {Decimal(usage['bytes']) / GB:.2f} GB processed"
    enriched = usage.get("enrichedRecords", 0)
    return text + (f" + {enriched:,} records enriched" if enriched and pricing.enrichment else "")


def check_period(period: str) -> str:
    """``period`` when it is a month as YYYY-MM, else :class:`UsageError`."""
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise UsageError(f"period: expected a month as YYYY-MM, got {period!r}", path="period")
    return period


# --- reading and settling -------------------------------------------------------------

def project(log: EventLog, save: bool = True) -> Billing:
    """The billing projection of ``log``: the latest ``billing`` snapshot (and the
    charges recorded before it), then the events after it. With ``save`` a new
    snapshot is stored when more than ``snapshots.EVERY`` events were folded since
    the one used, so the next reader replays little."""
    billing = _resumed(snapshots.latest(log, NAME)) or Billing()
    if billing.position:
        billing.recall(log)
    folded = billing.catch_up(log)
    if save and folded > snapshots.EVERY:
        snapshots.save(log, NAME, billing.position, billing.to_state())
    return billing


def _resumed(snapshot: ev.ProjectionSnapshot | None) -> Billing | None:
    if snapshot is None:
        return None
    try:
        return Billing.from_state(snapshot.state)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None     # written by another version: replay from the start


def settle(log: EventLog, now: float | None = None) -> list[ev.PaymentCharged]:
    """Record every charge owed at ``now`` (default: the clock), each in its stream
    ``charge:<charge id>`` at version 1; a charge another process recorded first is
    skipped. Returns the charges this call recorded. Safe to run anywhere, any number
    of times, at once."""
    owed = project(log).due(time.time() if now is None else now)
    recorded = []
    for charge in owed:
        try:
            log.append(CHARGE_PREFIX + charge.charge_id, [charge], expected_version=0)
        except ConcurrencyError:
            continue
        recorded.append(charge)
    return recorded


def bill_command(args) -> int:
    """``etl-actors bill [--customer C] [--period YYYY-MM] [--log URL] [--json]``: the
    charges recorded, one a line, then each customer's invoice total per month;
    ``--json`` prints ``{"charges": [...], "invoices": [...]}``. Only reads the log."""
    from .pipeline import resolve_log_url

    period = check_period(args.period) if args.period is not None else None
    billing = project(EventLog(resolve_log_url(args.log)), save=False)
    chosen = billing._select(args.customer, period)
    pairs = sorted({(c.customer_id, c.period) for c in chosen})
    if not pairs and args.customer is not None and period is not None:
        pairs = [(args.customer, period)]
    charges = [_view(c) for c in chosen]
    invoices = [billing.invoice(customer, month) for customer, month in pairs]
    if args.json:
        print(json.dumps({"charges": charges, "invoices": invoices}), flush=True)
        return 0
    print(_format(charges, invoices))
    return 0


def _format(charges: list[dict], invoices: list[dict]) -> str:
    if not charges and not invoices:
        return "no charges"
    rows = [(c["createdAt"], c["customerId"], c["requestId"], c["serviceId"], f"{c['amount']} {c['currency']}")
            for c in charges]
    widths = [max(len(row[i]) for row in rows) for i in range(5)] if rows else []
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + c["description"]
             for row, c in zip(rows, charges)]
    lines += [f"invoice {i['customerId']} {i['period']}: {len(i['lines'])} charge(s), total {i['total']} "
              f"{i['currency']}" for i in invoices]
    return "\n".join(lines)


__all__ = ["Billing", "bill_command", "check_period", "project", "settle"]
