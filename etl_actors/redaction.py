"""Secrets out of everything that leaves the process: one place that knows their forms.

A secret can ride in a URL's userinfo (``postgresql://etl:pw@host/db``, also with an
unencoded ``@`` in the password: the userinfo ends at the *last* ``@``), in a query
parameter (``?password=``, ``sslpassword``, ``passfile``, ``token``, ``api_key``,
``secret_key``, ``access_key``, ``sas``, ``sig`` ...), in a libpq keyword string
(``host=db password=pw``) or in a header (``Authorization``, ``X-API-Key``).

- :func:`redact_url` hides them in one URL; :func:`redact_headers` in a header mapping.
- :func:`redact_text` hides them in free text (an error message, a log line): every
  URL in it, ``password=`` words, header lines, and every secret this process was
  told about with :func:`remember` (so a driver echoing a password in an error, or
  the tail of a password it misparsed, is caught by its value).
- :class:`ConnectionUrl` is a URL string that remembers its secrets wherever it is
  unpickled (a Ray actor) and never shows them in ``repr``.

Everything that writes an event, a dead letter, a log line or a CLI message passes
its text through :func:`redact_text`.
"""
from __future__ import annotations

import base64
import re
import threading
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

MASK = "***"
MIN_SECRET = 4          # shorter values are not scrubbed by value (they would mangle text)

# Names of query parameters, keywords and headers whose values are secrets.
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|private[-_]?key|credential|auth|"
    r"signature|^sig$|^sas$|^key$|session[-_]?key|cookie", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_QUERY_PAIR = re.compile(r"([?&;])([^=&;#\s]+)=([^&;#\s]*)")
_KEYWORD = re.compile(r"(?<![\w.\-])(password|passwd|pwd|sslpassword|passfile|secret|client_secret|secret_key|"
                      r"access_key|api_key|apikey|token|access_token|sas|sig)(\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s,;&'\"]+)",
                      re.IGNORECASE)
_HEADER_LINE = re.compile(r"(?i)\b(authorization|proxy-authorization|x-api-key|x-auth-token|api-key|cookie)"
                          r"(\s*[:=]\s*)(?:(bearer|basic|token|digest)\s+)?([^\s,;'\"]+)")

_known: set[str] = set()
_known_lock = threading.Lock()
_pattern: re.Pattern | None = None


def is_secret_name(name: str) -> bool:
    """Whether a parameter, keyword or header called ``name`` carries a secret."""
    return bool(_SECRET_NAME.search(name))


def split_userinfo(url: str) -> tuple[str, str | None, str | None, str] | None:
    """``(scheme://, user, password, rest)`` of a URL with userinfo, else None.

    The userinfo ends at the *last* ``@`` (as browsers read URLs), so a password with
    an unencoded ``@`` is read whole; an ``@`` that follows a '/', '?' or '#' in the
    user part belongs to a path or query, not to userinfo. A URL written without its
    scheme (``user:pw@host/path``, a mistake a spec error quotes) is read the same way
    when the part before the ``@`` holds a ':' and no space.
    """
    match = _SCHEME.match(url)
    if match is None:
        at = url.rfind("@")
        if at < 0 or ":" not in url[:at] or any(c.isspace() for c in url[:at]):
            return None
        head, body = "", url
    else:
        head, body = match.group(0), url[match.end():]
    at = body.rfind("@")
    if at < 0:
        return None
    user, sep, password = body[:at].partition(":")
    if any(c in user for c in "/?#"):
        return None
    return head, user, (password if sep else None), body[at:]


def redact_url(url: Any) -> str:
    """``url`` with its password and secret query values shown as ``***``."""
    text = str(url)
    parts = split_userinfo(text)
    if parts is not None:
        head, user, password, rest = parts
        text = head + user + (":" + MASK if password is not None else "") + rest
    return _QUERY_PAIR.sub(_query_value, text) if _SCHEME.match(text) else text


def _query_value(match: re.Match) -> str:
    sep, name, value = match.groups()
    return f"{sep}{name}={MASK if value and is_secret_name(unquote(name)) else value}"


def secrets_of(url: Any) -> set[str]:
    """The secret values a URL carries (as written and percent-decoded)."""
    text, found = str(url), set()
    parts = split_userinfo(text)
    if parts is not None and parts[2]:
        found.add(parts[2])
        # an HTTP client sends userinfo as ``Authorization: Basic base64(user:password)``
        # and a server may echo it back
        credentials = f"{unquote(parts[1] or '')}:{unquote(parts[2])}".encode("utf-8", "replace")
        found.add(base64.b64encode(credentials).decode())
    for _, name, value in _QUERY_PAIR.findall(text):
        if value and is_secret_name(unquote(name)):
            found.add(value)
    for match in _KEYWORD.finditer(text):
        found.add(match.group(3).strip("'\""))
    return {variant for value in found for variant in (value, unquote(value)) if variant}


def remember_url(url: Any) -> None:
    """Scrub the secrets ``url`` carries from all text this process redacts from now on."""
    remember(*secrets_of(url))


def remember(*secrets: Any) -> None:
    """Scrub these secret values from all text this process redacts from now on."""
    new = {str(v) for v in secrets if v is not None}
    new = {v for v in new if len(v) >= MIN_SECRET and v != MASK}
    global _pattern
    with _known_lock:
        if new - _known:
            _known.update(new)
            _pattern = re.compile("|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True)))


def redact_text(text: Any) -> str:
    """``text`` with every secret form hidden; see the module docstring."""
    if text is None:
        return text
    text = str(text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    text = _KEYWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _HEADER_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)}{(m.group(3) + ' ') if m.group(3) else ''}{MASK}",
                            text)


def redact_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``headers`` with the values of secret-carrying headers as ``***``."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name: (MASK if is_secret_name(str(name)) else value) for name, value in items}


def redact_values(value: Any) -> Any:
    """Every string inside ``value`` (dicts, lists) passed through :func:`redact_text`."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_values(v) for v in value)
    return value


class ConnectionUrl(str):
    """A connection URL (or any location that may carry a secret): a plain ``str`` to
    every library, that remembers its secrets in whichever process unpickles it, and
    shows them as ``***`` in ``repr``."""

    def __new__(cls, url: str):
        remember_url(url)
        return super().__new__(cls, url)

    def __repr__(self) -> str:
        return repr(redact_url(str(self)))

    def __reduce__(self):
        return ConnectionUrl, (str(self),)
