"""What the Kafka source and sink share: where the brokers are, how to log in, and a
synchronous facade over aiokafka.

A :class:`KafkaConnection` is a frozen description (it pickles to an actor, where it
remembers its password again so that it is redacted there too). Connections come from
a spec's ``bootstrapServers`` (``"h1:9092,h2:9092"`` or a list) or ``connection`` (a
name from ``connections:`` or a URL)::

    kafka://h1:9092,h2:9092                     plaintext
    kafka://user:${KAFKA_PASSWORD}@h1:9092      SASL PLAIN over plaintext
    kafkas://user:pw@h1:9093?mechanism=SCRAM-SHA-512   SASL over TLS (kafkas:// alone: TLS)

aiokafka is asyncio-only; extractors and loaders are plain synchronous classes. A
:class:`LoopThread` runs one event loop on a daemon thread and blocks the caller for
each coroutine's result, so a consumer's fetcher keeps prefetching while the caller
decodes the previous batch.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Iterable
from urllib.parse import parse_qs, unquote

from .errors import EtlError, SpecError, TerminalError, TransientError, describe, first_line
from .redaction import redact_url, remember, split_userinfo
from .spec import substitute_env

DEFAULT_PORT = 9092
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SCHEMES = {"kafka://": False, "kafkas://": True}    # scheme -> TLS


@dataclass(frozen=True)
class KafkaConnection:
    """The brokers to bootstrap from and the credentials to log in with."""

    bootstrap: tuple[str, ...]
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"

    def __post_init__(self):
        remember(self.password)
        if not self.bootstrap:
            raise SpecError("bootstrapServers", "expected at least one host:port, got none")

    def __reduce__(self):
        return KafkaConnection, (self.bootstrap, self.username, self.password, self.security_protocol,
                                 self.sasl_mechanism)

    @classmethod
    def from_spec(cls, section, ctx, default: "KafkaConnection | None" = None) -> "KafkaConnection":
        """From ``bootstrapServers`` or ``connection`` in ``section``; ``default`` when it
        has neither (else a SpecError naming the path)."""
        servers, named = section.has("bootstrap_servers"), section.has("connection")
        if servers and named:
            raise SpecError(section.at("connection"), "expected one of bootstrapServers or connection, got both")
        if named:
            return cls.from_url(ctx.connection(section), section.at("connection"))
        if servers:
            value = section.get("bootstrap_servers", types=(str, list))
            return cls(bootstrap=_hosts(value, section.at("bootstrap_servers")))
        if default is not None:
            return default
        raise SpecError(section.at("bootstrap_servers"), "is required (or connection)")

    @classmethod
    def from_url(cls, url: str, path: str = "connection") -> "KafkaConnection":
        """From ``kafka://[user:password@]host:port[,host:port][?mechanism=...]``."""
        scheme = next((s for s in _SCHEMES if url.startswith(s)), None)
        if scheme is None:
            raise SpecError(path, f"expected a kafka:// or kafkas:// URL, got {redact_url(url)!r}")
        parts = split_userinfo(url)
        user, password, rest = (unquote(parts[1]), unquote(parts[2] or ""), parts[3][1:]) if parts \
            else (None, None, url[len(scheme):])
        remember(password)
        hosts, _, query = rest.partition("?")
        mechanism = parse_qs(query).get("mechanism", ["PLAIN"])[-1].upper()
        if mechanism not in MECHANISMS:
            raise SpecError(path, f"mechanism {mechanism!r} is not one of {', '.join(MECHANISMS)}")
        tls = _SCHEMES[scheme]
        protocol = ("SASL_" if user else "") + ("SSL" if tls else "PLAINTEXT")
        return cls(bootstrap=_hosts(hosts.split("/")[0], path), username=user, password=password,
                   security_protocol=protocol, sasl_mechanism=mechanism)

    @property
    def servers(self) -> str:
        return ",".join(self.bootstrap)

    def client_kwargs(self) -> dict:
        """Keyword arguments for AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaClient."""
        kwargs: dict[str, Any] = {"bootstrap_servers": list(self.bootstrap),
                                  "security_protocol": self.security_protocol}
        if self.username is not None:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password or "")
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context()
        return kwargs

    def describe(self) -> dict:
        return {"bootstrapServers": self.servers, "sasl": self.username is not None}


def _hosts(value: str | list, path: str) -> tuple[str, ...]:
    """``"h1:9092, h2"`` or a list of them as ``("h1:9092", "h2:9092")``."""
    items = value.split(",") if isinstance(value, str) else value
    hosts = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise SpecError(f"{path}[{i}]", f"expected a string, got {describe(item)}")
        host = substitute_env(item, path).strip()
        if host:
            hosts.append(host if _has_port(host) else f"{host}:{DEFAULT_PORT}")
    if not hosts:
        raise SpecError(path, f"expected host:port[,host:port], got {describe(value)}")
    return tuple(hosts)


def _has_port(host: str) -> bool:
    head, sep, port = host.rpartition(":")
    return bool(sep) and port.isdigit() and not head.endswith(":")   # not a bare IPv6 address


# --- errors ----------------------------------------------------------------------------

def kafka_error(exc: BaseException, connection: KafkaConnection, doing: str, **context) -> EtlError:
    """An aiokafka (or socket, or timeout) error as the error the runtime acts on: one
    line, no secret; transient when the client says a retry can help."""
    if isinstance(exc, EtlError):
        return exc
    transient = isinstance(exc, (OSError, TimeoutError)) or getattr(exc, "retriable", False) \
        or type(exc).__name__ == "KafkaTimeoutError"
    kind = TransientError if transient else TerminalError
    text = first_line(exc)
    text = text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"
    return kind(f"kafka at {connection.servers}: cannot {doing}: {text}", **context)


# --- the event loop ---------------------------------------------------------------------

class LoopThread:
    """An asyncio loop on a daemon thread; run(coro, timeout=None) blocks for its result.

    >>> loop = LoopThread()
    >>> loop.run(asyncio.sleep(0, result=42))
    42
    >>> loop.close()
    """

    def __init__(self, name: str = "etl-kafka"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable, timeout: float | None = None) -> Any:
        """The coroutine's result; TimeoutError (and the coroutine cancelled) after ``timeout`` s."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def close(self) -> None:
        """Stop the loop and its thread (tasks still pending are cancelled)."""
        if self.loop.is_closed():
            return
        self.run(_cancel_others(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> "LoopThread":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def stop_quietly(clients: Iterable) -> None:
    """Stop aiokafka clients, ignoring their errors (they are being discarded)."""
    for client in clients:
        try:
            await asyncio.wait_for(client.stop() if hasattr(client, "stop") else client.close(), 10)
        except BaseException:  # noqa: BLE001 - closing a client that already failed (or was cancelled)
            pass
