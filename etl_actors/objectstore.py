"""S3-compatible object stores: connections, filesystems, and which of their errors a
retry can mend.

A ``batch:`` source or destination of ``type: s3`` names its store with a
``connection`` (a name in ``connections:`` or a URL, e.g. ``${S3_URL}``)::

    s3://ACCESS_KEY:SECRET_KEY@HOST:PORT?scheme=http&region=us-east-1
    http://ACCESS_KEY:SECRET_KEY@127.0.0.1:9000?region=us-east-1     (the scheme from the URL)
    s3://?region=eu-west-1                                         (AWS, default credentials)

- the userinfo is the access key id and the secret key, percent-encoded (``/`` as
  ``%2F``, ``+`` as ``%2B``, ``@`` as ``%40``); without it pyarrow's default chain
  applies (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance
  role);
- ``HOST:PORT`` is the endpoint of an S3-compatible store (MinIO, Ceph, R2, moto);
  without it, AWS itself or ``AWS_ENDPOINT_URL``;
- the query may hold ``region``, ``scheme`` (``http`` | ``https``), ``session_token``,
  ``tls_ca_file_path``, ``allow_bucket_creation`` (a destination's missing bucket is
  made, rather than failing the run), and the store client's own retries and timeouts:
  ``max_attempts`` (requests per call before its error reaches the runtime, which
  retries with backoff; default 3), ``connect_timeout`` and ``request_timeout``
  (seconds).

Sources and sinks hold a *location*: the bucket and prefix as an ``s3://`` URI with
the connection folded into its query (:func:`location`)::

    s3://raw-data/daily-exports?access_key=...&secret_key=...&endpoint_override=127.0.0.1:9000&scheme=http

Both keys sit in parameters whose names mark them secret, so
:func:`~etl_actors.redaction.redact_url` shows them as ``***`` and a
:class:`~etl_actors.redaction.ConnectionUrl` holding the location remembers both
wherever it is unpickled. :func:`filesystem` opens a location; credentials written as
userinfo (``s3://KEY:SECRET@bucket/prefix``) are read too.
"""
from __future__ import annotations

import functools
import os
import re
from urllib.parse import parse_qsl, quote, unquote

import pyarrow.fs as pafs

from .errors import SpecError
from .redaction import ConnectionUrl, split_userinfo

CONNECTION_SCHEMES = ("s3", "http", "https")
_CREDENTIALS = ("access_key", "secret_key", "session_token")
_PASSED = ("region", "scheme", "endpoint_override", "tls_ca_file_path")
_FLAGS = ("allow_bucket_creation", "allow_bucket_deletion")
_NUMBERS = ("max_attempts", "connect_timeout", "request_timeout")
OPTIONS = _CREDENTIALS + _PASSED + _FLAGS + _NUMBERS
_CONNECTION_OPTIONS = tuple(o for o in OPTIONS if o not in ("access_key", "secret_key", "endpoint_override"))
_AWS_CODE = re.compile(r"AWS Error ([A-Z_]+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_MISSING = re.compile(r"Bucket '[^']*' not found|does not exist")
# Codes of AWS errors a retry may mend; every other code is terminal (credentials,
# a missing bucket, a bad request), except UNKNOWN, judged by its HTTP status.
_TRANSIENT_CODES = {"NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "THROTTLING", "INTERNAL_FAILURE",
                    "REQUEST_TIMEOUT", "REQUEST_LIMIT_EXCEEDED", "THROTTLING_EXCEPTION", "INTERNAL_ERROR"}


def location(bucket: str, prefix: str, connection: str | None = None) -> str:
    """The location of ``prefix`` in ``bucket`` through ``connection`` (see the module
    docstring); raises ValueError when the connection is not an S3 one."""
    base = f"s3://{bucket.strip('/')}" + (f"/{prefix.strip('/')}" if prefix.strip("/") else "")
    if connection is None:
        return base
    query = "&".join(f"{name}={quote(value, safe=':')}" for name, value in connection_options(connection))
    return ConnectionUrl(f"{base}?{query}" if query else base)


def connection_options(connection: str) -> list[tuple[str, str]]:
    """A connection URL as location query options, credentials first; raises
    ValueError naming what is wrong (never the secret)."""
    scheme, separator, rest = connection.partition("://")
    if scheme not in CONNECTION_SCHEMES or not separator:
        raise ValueError(f"expected an S3 connection such as s3://KEY:SECRET@host:port?region=..., "
                         f"got a {scheme or 'scheme-less'} URL")
    options: list[tuple[str, str]] = []
    parts = split_userinfo(connection)
    if parts is not None:
        _, user, password, rest = parts
        rest = rest[1:]
        options += [("access_key", unquote(user or "")), ("secret_key", unquote(password or ""))]
    host, _, query = rest.partition("?")
    host = host.rstrip("/")
    if "/" in host:
        raise ValueError("a connection names the store (host:port), not a bucket or a folder: give those as "
                         "bucket and prefix")
    if host:
        options.append(("endpoint_override", host))
    if scheme != "s3":
        options.append(("scheme", scheme))
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _CONNECTION_OPTIONS:
            raise ValueError(f"unknown option {name!r} in the connection; expected one of "
                             f"{', '.join(_CONNECTION_OPTIONS)}")
        options.append((name, value))
    return options


def check_location(location: str, path: str) -> None:
    """Raise SpecError at ``path`` when an ``s3://`` location has no bucket or an option
    :func:`filesystem` would refuse (judged without touching the store)."""
    try:
        _parsed(location)
    except ValueError as exc:
        raise SpecError(path, str(exc)) from None


def filesystem(location: str) -> tuple[pafs.S3FileSystem, str]:
    """(the store's filesystem, ``bucket/prefix``) of an ``s3://`` location. One
    filesystem per location and process (its client holds the connection pool)."""
    return _filesystem(str(location))


@functools.lru_cache(maxsize=16)
def _filesystem(location: str) -> tuple[pafs.S3FileSystem, str]:
    path, options = _parsed(location)
    kwargs = {name: options[name] for name in (*_CREDENTIALS, *_PASSED) if options.get(name)}
    kwargs.update({name: options[name].lower() in ("1", "true", "yes") for name in _FLAGS if name in options})
    kwargs.update({name: float(options[name]) for name in ("connect_timeout", "request_timeout") if name in options})
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=int(options.get("max_attempts", 3)))
    if "endpoint_override" not in kwargs:
        kwargs = {**_endpoint_from_env(), **kwargs}
    if "region" not in kwargs and "endpoint_override" not in kwargs:
        kwargs["region"] = pafs.resolve_s3_region(path.split("/", 1)[0])   # as pyarrow's from_uri does
    return pafs.S3FileSystem(**kwargs), path


def _parsed(location: str) -> tuple[str, dict[str, str]]:
    """(``bucket/prefix``, options) of a location; ValueError when it cannot be used."""
    head, _, query = str(location).partition("?")
    options: dict[str, str] = {}
    parts = split_userinfo(head)
    if parts is not None:
        _, user, password, rest = parts
        head = "s3://" + rest[1:]
        options.update(access_key=unquote(user or ""), secret_key=unquote(password or ""))
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in OPTIONS:
            raise ValueError(f"unknown option {name!r} in an s3:// location; expected one of {', '.join(OPTIONS)}")
        options[name] = value
    for name in _NUMBERS:
        if name in options and not _positive(options[name]):
            raise ValueError(f"{name}: expected a positive number, got {options[name]!r}")
    path = head.split("://", 1)[1].strip("/")
    if not path:
        raise ValueError("an s3:// location needs a bucket")
    return path, options


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _endpoint_from_env() -> dict[str, str]:
    """The endpoint ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` names, as options
    (pyarrow's ``from_uri`` reads them; its S3FileSystem constructor does not)."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return {}
    scheme, separator, host = url.partition("://")
    return {"scheme": scheme, "endpoint_override": host.rstrip("/")} if separator else {"endpoint_override": url}


def is_transient(exc: OSError) -> bool:
    """Whether a retry may mend an object store's error: a dropped or refused
    connection, a timeout, throttling, a 5xx; not bad credentials, a missing bucket
    or key (pyarrow's "Bucket 'x' not found" too), or any other 4xx (408 and 429
    excepted). An error that names no AWS code
    and no HTTP status (a reset connection, say) counts as transient."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    text = str(exc)
    if _MISSING.search(text):
        return False
    code = _AWS_CODE.search(text)
    if code is not None and code.group(1) != "UNKNOWN":
        return code.group(1) in _TRANSIENT_CODES
    status = _HTTP_STATUS.search(text)
    if status is not None:
        number = int(status.group(1))
        return number >= 500 or number in (408, 429)
    return True
