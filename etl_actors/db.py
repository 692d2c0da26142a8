"""SQLAlchemy engines as users type their URLs.

``postgresql://user:pw@host/db`` uses the psycopg (3) driver; SQLite gets WAL and a
busy timeout so a reader never blocks the single writer for long.
"""
from __future__ import annotations

import os
import random
import sqlite3
import time
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from .errors import first_line
from .redaction import redact_url, split_userinfo

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> URL:
    """Parse ``url``, choosing psycopg 3 for a bare ``postgresql://``/``postgres://``.

    The userinfo ends at the last ``@``: a password with an unencoded ``@`` is read
    whole (SQLAlchemy alone would take its tail for the host)."""
    parts = split_userinfo(url) if isinstance(url, str) else None
    if parts is not None:
        head, user, password, rest = parts
        user = user.replace("@", "%40")
        url = head + user + ("" if password is None else ":" + password.replace("@", "%40")) + rest
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = os.path.dirname(os.path.abspath(parsed.database))
        os.makedirs(folder, exist_ok=True)
    return parsed


def redact(url: str | URL) -> str:
    """The URL with its password and secret parameters hidden, for messages and logs."""
    try:
        return redact_url(normalize_url(str(url) if isinstance(url, URL) else url).render_as_string(hide_password=True))
    except Exception:  # noqa: BLE001 - unparseable: still never shown with its secrets
        return redact_url(str(url))


def db_reason(exc: BaseException) -> str:
    """The database's own message, first line: no statement, no parameters, no URL."""
    return first_line(exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc)


def _on_sqlite_connect(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _use_wal(cursor) -> None:
    """Switch the file to WAL (once; a file already in WAL is left as it is). When
    processes open a new file at the same moment, SQLite refuses all but one switch at
    once with "database is locked", without waiting (each holds what the other needs),
    so the switch is tried again, within the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


@lru_cache(maxsize=64)
def _engine(url: str, pid: int) -> sa.Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


def engine_for(url: str) -> sa.Engine:
    """One pooled engine per URL and process (engines must not cross a fork)."""
    return _engine(url, os.getpid())


def is_postgres(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"
