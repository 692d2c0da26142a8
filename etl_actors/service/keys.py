"""API keys of the service: created once, stored as a hash, revoked by prefix.

A key reads ``eak_<key id>_<secret>``: the key id (10 lowercase letters and digits) is
its public prefix, the secret 32 random bytes. Only the SHA-256 digest of the whole key
is kept, as :class:`~etl_actors.events.ApiKeyCreated` in stream ``key:<key id>``;
:class:`~etl_actors.events.ApiKeyRevoked` ends it. The plain key is shown once, by
:func:`create_key`, and never again: not by :func:`list_keys`, not in any event.

>>> state = project([ev.ApiKeyCreated("k1k1k1k1k1", digest("eak_k1k1k1k1k1_s3cret"), "admin", at=1.0)])
>>> authenticate(state, "eak_k1k1k1k1k1_s3cret").role, authenticate(state, "eak_k1k1k1k1k1_guess")
('admin', None)
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Iterable

from .. import events as ev
from ..errors import ConcurrencyError, UsageError

PREFIX = "eak_"
STREAM_PREFIX = "key:"
ROLES = ("admin", "customer")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 10
_SECRET_BYTES = 32
_NO_DIGEST = hashlib.sha256(b"").hexdigest()   # compared against when the key id is unknown


@dataclass(frozen=True)
class KeyRecord:
    """A key as the log knows it: never the key itself."""

    key_id: str
    digest: str
    role: str
    customer_id: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: an admin, or one customer."""

    key_id: str
    role: str
    customer_id: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def key_stream(key_id: str) -> str:
    return f"{STREAM_PREFIX}{key_id}"


def digest(key: str) -> str:
    """The SHA-256 hex digest of a whole key: what the log keeps."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()   # a header may hold anything


def evolve(state: dict[str, KeyRecord], event: ev.Event | ev.RecordedEvent) -> dict[str, KeyRecord]:
    """Keys by key id, after ``event`` (other events leave ``state`` as it is)."""
    event = getattr(event, "event", event)
    if isinstance(event, ev.ApiKeyCreated):
        record = KeyRecord(event.key_id, event.digest, event.role, event.customer_id, event.at)
        return {**state, event.key_id: record}
    if isinstance(event, ev.ApiKeyRevoked) and event.key_id in state:
        return {**state, event.key_id: replace(state[event.key_id], revoked_at=event.at)}
    return state


def project(events: Iterable[ev.Event | ev.RecordedEvent]) -> dict[str, KeyRecord]:
    state: dict[str, KeyRecord] = {}
    for event in events:
        state = evolve(state, event)
    return state


def authenticate(keys: dict[str, KeyRecord], bearer: str | None) -> Principal | None:
    """The principal of ``bearer`` (a whole key), or None when it is not a live key.
    Digests are compared in constant time, also when the key id is unknown."""
    key_id = _key_id(bearer or "")
    record = keys.get(key_id) if key_id else None
    expected = record.digest if record is not None else _NO_DIGEST
    matches = hmac.compare_digest(digest(bearer or ""), expected)
    if record is None or not matches or record.revoked_at is not None:
        return None
    return Principal(record.key_id, record.role, record.customer_id)


def _key_id(key: str) -> str | None:
    if not key.startswith(PREFIX):
        return None
    key_id, sep, _ = key[len(PREFIX):].partition("_")
    return key_id if sep and len(key_id) == _ID_LENGTH else None


# --- commands -------------------------------------------------------------------------

def create_key(log, role: str, customer_id: str = "") -> str:
    """Record a new key and return it: the only time it is seen whole. A customer key
    needs ``customer_id``; an admin key has none."""
    if role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if (role == "customer") != bool(customer_id):
        raise UsageError("a customer key needs a customer id; an admin key has none")
    while True:
        key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
        try:
            log.append(key_stream(key_id), [ev.ApiKeyCreated(key_id, digest(key), role, customer_id)], 0)
            return key
        except ConcurrencyError:   # that id was taken: draw another
            continue


def list_keys(log) -> list[dict]:
    """Every key, oldest first, as ``{keyId, role, customerId, createdAt, revokedAt}``
    (no digest, no key)."""
    state = project(log.read_all(stream_prefix=STREAM_PREFIX))
    return [_view(record) for record in sorted(state.values(), key=lambda r: (r.created_at, r.key_id))]


def revoke_key(log, prefix: str) -> str:
    """Revoke the one key whose id starts with ``prefix`` (``eak_`` may lead it);
    return its id. An unknown or ambiguous prefix is a UsageError; revoking a revoked
    key again changes nothing."""
    prefix = prefix[len(PREFIX):] if prefix.startswith(PREFIX) else prefix
    state = project(log.read_all(stream_prefix=STREAM_PREFIX))
    found = sorted(key_id for key_id in state if prefix and key_id.startswith(prefix.split("_")[0]))
    if not found:
        raise UsageError(f"no key starts with {prefix[:_ID_LENGTH]!r}")
    if len(found) > 1:
        raise UsageError(f"{prefix!r} is the prefix of {len(found)} keys ({', '.join(found)}): give more of it")
    key_id = found[0]
    if state[key_id].revoked_at is None:
        stream = key_stream(key_id)
        log.append(stream, [ev.ApiKeyRevoked(key_id)], log.version(stream))
    return key_id


def _view(record: KeyRecord) -> dict:
    return {"keyId": record.key_id, "role": record.role, "customerId": record.customer_id,
            "createdAt": _iso(record.created_at),
            "revokedAt": _iso(record.revoked_at) if record.revoked_at is not None else None}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


def keys_command(args) -> int:
    """``etl-actors keys create (--admin | --customer ID) | list [--json] | revoke PREFIX``."""
    from ..eventlog import EventLog
    from ..pipeline import resolve_log_url

    log = EventLog(resolve_log_url(args.log))
    if args.keys_action == "create":
        role, customer = ("admin", "") if args.admin else ("customer", args.customer)
        key = create_key(log, role, customer)
        who = "an admin key" if args.admin else f"a key of customer {customer!r}"
        print(f"etl-actors: created {who}. It is shown this once (only its hash is kept); "
              "send it as 'Authorization: Bearer <key>'.", file=sys.stderr, flush=True)
        print(key, flush=True)
    elif args.keys_action == "list":
        _print_keys(list_keys(log), args.json)
    else:
        key_id = revoke_key(log, args.prefix)
        print(f"etl-actors: key {key_id} is revoked", file=sys.stderr, flush=True)
    return 0


def _print_keys(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    table = [("PREFIX", "ROLE", "CUSTOMER", "CREATED", "REVOKED")]
    table += [(PREFIX + row["keyId"], row["role"], row["customerId"] or "-", row["createdAt"],
               row["revokedAt"] or "-") for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
