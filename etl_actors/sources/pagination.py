"""How the api source walks an endpoint's pages (``pagination: {type: ...}``, default ``page``).

- ``page``: ``pageParam`` (page), ``sizeParam`` (per_page), ``size`` (100),
  ``hasMorePath`` (has_more; when the answer has no such field, a full page means more)
- ``offset``: ``offsetParam`` (offset), ``limitParam`` (limit), ``size`` (100),
  ``totalPath`` (total); stops at a short page or once ``offset`` reaches the total
- ``cursor``: ``cursorParam`` (cursor), ``nextCursorPath`` (next_cursor, dotted as in
  ``meta.next``), optional ``sizeParam`` + ``size``; stops when there is no next cursor
- ``link``: follows the ``Link: <url>; rel="next"`` header; optional ``sizeParam`` + ``size``
  for the first request

A strategy is a frozen description with three pure methods: ``first()`` is the key of
a sync's first page, ``params(key)`` the query that asks for the page ``key`` names,
and ``following(key, body, records, links)`` the next page's key, or None after the
last page. Keys are JSON values (numbers, text), so a position that holds one resumes
the same page in any process.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping
from urllib.parse import urljoin

from ..errors import SpecError
from ..spec import Section, camel

PAGINATIONS = ("page", "offset", "cursor", "link")


@dataclass(frozen=True)
class PagePagination:
    """``?page=n&per_page=size`` from page 1; go on while ``has_more``."""

    page_param: str = "page"
    size_param: str = "per_page"
    size: int = 100
    has_more_path: str = "has_more"

    def first(self) -> Any:
        return 1

    def params(self, key: Any) -> dict:
        return {self.page_param: key, self.size_param: self.size}

    def following(self, key: Any, body: Any, records: list, links: dict) -> Any:
        more = dig(body, self.has_more_path)
        more = len(records) >= self.size if more is None else bool(more)
        return key + 1 if more else None


@dataclass(frozen=True)
class OffsetPagination:
    """``?offset=n&limit=size`` from 0; stop at a short page or at the total."""

    offset_param: str = "offset"
    limit_param: str = "limit"
    size: int = 100
    total_path: str | None = "total"

    def first(self) -> Any:
        return 0

    def params(self, key: Any) -> dict:
        return {self.offset_param: key, self.limit_param: self.size}

    def following(self, key: Any, body: Any, records: list, links: dict) -> Any:
        following = key + len(records)
        total = dig(body, self.total_path) if self.total_path else None
        if len(records) < self.size or (isinstance(total, int) and following >= total):
            return None
        return following


@dataclass(frozen=True)
class CursorPagination:
    """``?cursor=<the previous page's next cursor>``; stop when there is none."""

    cursor_param: str = "cursor"
    next_cursor_path: str = "next_cursor"
    size_param: str | None = None
    size: int | None = None

    def first(self) -> Any:
        return None

    def params(self, key: Any) -> dict:
        sized = {self.size_param: self.size} if self.size_param and self.size else {}
        return {**sized, **({self.cursor_param: key} if key is not None else {})}

    def following(self, key: Any, body: Any, records: list, links: dict) -> Any:
        cursor = dig(body, self.next_cursor_path)
        if cursor in (None, "") or cursor == key:
            return None
        return cursor if isinstance(cursor, (str, int)) else json.dumps(cursor)


@dataclass(frozen=True)
class LinkPagination:
    """Follow the ``Link: <url>; rel="next"`` header (RFC 8288)."""

    size_param: str | None = None
    size: int | None = None

    def first(self) -> Any:
        return None

    def params(self, key: Any) -> dict:
        return {self.size_param: self.size} if key is None and self.size_param and self.size else {}

    def following(self, key: Any, body: Any, records: list, links: dict) -> Any:
        return links.get("next")


_KIND = {PagePagination: "page", OffsetPagination: "offset", CursorPagination: "cursor", LinkPagination: "link"}


def pagination_from_spec(section) -> Any:
    """The strategy described by ``pagination``: a type name or a mapping."""
    raw = section.get("pagination", None, types=(str, dict))
    if raw is None:
        return PagePagination()
    if isinstance(raw, str) and raw not in PAGINATIONS:
        raise SpecError(section.at("pagination"), f"{raw!r} is not one of {', '.join(PAGINATIONS)}")
    pag = Section({"type": raw} if isinstance(raw, str) else raw, section.at("pagination"))
    built = _BUILDERS[pag.get("type", "page", types=str, choices=PAGINATIONS)](pag)
    pag.done()
    return built


def _name(pag, key: str, default: str | None) -> str | None:
    return pag.get(key, default, types=str, check=lambda v: None if v.strip() else "is empty")


_BUILDERS = {
    "page": lambda p: PagePagination(_name(p, "page_param", "page"), _name(p, "size_param", "per_page"),
                                     p.positive_int("size", 100), _name(p, "has_more_path", "has_more")),
    "offset": lambda p: OffsetPagination(_name(p, "offset_param", "offset"), _name(p, "limit_param", "limit"),
                                         p.positive_int("size", 100), _name(p, "total_path", "total")),
    "cursor": lambda p: CursorPagination(_name(p, "cursor_param", "cursor"),
                                         _name(p, "next_cursor_path", "next_cursor"),
                                         _name(p, "size_param", None), p.positive_int("size", None)),
    "link": lambda p: LinkPagination(_name(p, "size_param", None), p.positive_int("size", None)),
}


def describe_pagination(pagination: Any) -> dict:
    """``{"type": ..., <its settings in camelCase>}``."""
    return {"type": _KIND[type(pagination)], **{camel(k): v for k, v in asdict(pagination).items()}}


def dig(body: Any, path: str | None) -> Any:
    """The value at a dotted ``path`` (``data.items``) in a JSON body, or None."""
    if not path or path in (".", "$"):
        return body
    value = body
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def links(response, base: str) -> dict[str, str]:
    """``{rel: absolute url}`` from the answer's ``Link`` headers."""
    found = {}
    for header in response.headers.getall("Link", []) if hasattr(response.headers, "getall") else []:
        for part in header.split(","):
            target, _, attrs = part.partition(";")
            target = target.strip()
            if not (target.startswith("<") and target.endswith(">")):
                continue
            for attr in attrs.split(";"):
                name, _, value = attr.strip().partition("=")
                if name.strip().lower() == "rel":
                    for rel in value.strip().strip('"').split():
                        found.setdefault(rel.lower(), urljoin(base, target[1:-1]))
    return found
