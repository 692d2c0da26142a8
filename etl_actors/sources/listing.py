"""Finding a file source's files: formats by name, globs, and walking folders.

A local folder is walked following symlinks, but each real folder and each real file
is visited once, so a link back up the tree (``sub/up -> ..``) neither loops nor reads
a file twice. Object stores (``s3://``) are listed with pyarrow's ``FileSelector``.
Names starting with '.' or '_' are hidden, at any depth.
"""
from __future__ import annotations

import functools
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from typing import Iterator

import pyarrow.fs as pafs

from .. import objectstore

_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".ndjson": "json", ".jsonl": "json",
               ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_GLOB_CHARS = re.compile(r"[*?\[]")


def format_of(path: str) -> str | None:
    """The format a file name implies (``.ndjson``/``.jsonl`` are json), or None."""
    name = path.lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return _EXTENSIONS.get(posixpath.splitext(name)[1])


@functools.lru_cache(maxsize=64)
def glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex over '/'-separated paths: ``*`` and ``?`` stay within one
    folder, ``**`` crosses folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?"); i += 3
        elif pattern.startswith("**", i):
            out.append(".*"); i += 2
        elif pattern[i] == "*":
            out.append("[^/]*"); i += 1
        elif pattern[i] == "?":
            out.append("[^/]"); i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]"); i = end + 1
        else:
            out.append(re.escape(pattern[i])); i += 1
    return re.compile("".join(out) + r"\Z")


def split_glob(path: str) -> tuple[str, str | None]:
    """``data/2024/*.csv`` -> (``data/2024``, ``*.csv``); a path without glob characters
    -> (path, None). A URI's query (``?access_key=...``) is not a glob: split it off
    with :func:`split_query` first."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS.search(part):
            return "/".join(parts[:i]) or "/", "/".join(parts[i:])
    return path, None


def split_query(location: str) -> tuple[str, str]:
    """``s3://b/p?region=x`` -> (``s3://b/p``, ``?region=x``); local paths have no query."""
    if not is_uri(location):
        return location, ""
    head, sep, query = location.partition("?")
    return head, sep + query


def is_uri(location: str) -> bool:
    """Whether ``location`` names an object store rather than the local disk."""
    return "://" in location and not location.startswith("file://")


def filesystem(location: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, prefix that turns such a path back into a key).
    ``s3://`` locations are opened by :func:`etl_actors.objectstore.filesystem`."""
    if location.startswith("s3://"):
        fs, path = objectstore.filesystem(location)
        return fs, path, "s3://"
    if is_uri(location):
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path, location.split("://", 1)[0] + "://"
    if location.startswith("file://"):
        location = location[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(location), ""


def hidden(relative: str) -> bool:
    """Whether a relative path has a part starting with '.' or '_'."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


@dataclass(frozen=True)
class Selection:
    """Which files below a root a source reads: not hidden, and matching ``glob`` if
    given, else ``pattern`` (file names at any depth without a '/', else the path
    relative to the root), else the extensions of ``format``."""

    format: str
    pattern: str | None = None
    glob: str | None = None

    def matches(self, relative: str) -> bool:
        if hidden(relative):
            return False
        wanted = self.glob or self.pattern
        if wanted is None:
            return format_of(relative) == self.format
        by_name = self.glob is None and "/" not in wanted
        return glob_regex(wanted).match(posixpath.basename(relative) if by_name else relative) is not None

    def max_depth(self) -> int | None:
        """How many folder levels can hold a match (None: any)."""
        if self.glob is None or "**" in self.glob:
            return None
        return self.glob.count("/") + 1


@dataclass(frozen=True)
class Root:
    """Where a file source's files live: ``fs``, the folder (or one file) ``path`` in
    it, the ``prefix`` (``s3://`` or '') that turns such a path into a location, and
    whether ``path`` is a single file."""

    fs: pafs.FileSystem
    path: str
    prefix: str
    single: bool

    def path_of(self, key: str) -> str:
        """The path in ``fs`` of the file a partition key names."""
        return self.path if self.single else f"{self.path.rstrip('/')}/{key}"

    def keys(self, selection: Selection) -> list[str]:
        """The selected files' paths relative to the root (the base name for a single
        file), sorted."""
        if self.single:
            return [posixpath.basename(self.path)]
        if self.prefix:
            found = _listed(self.fs, self.path)
        else:
            found = walk(self.path, selection.max_depth())
        return sorted(relative for relative in found if selection.matches(relative))


def _listed(fs: pafs.FileSystem, root: str) -> Iterator[str]:
    """Relative paths of the files below ``root`` in an object store."""
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if entry.type == pafs.FileType.File:
            yield entry.path[len(root):].lstrip("/")


def walk(root: str, max_depth: int | None = None) -> Iterator[str]:
    """Relative paths of the files below the local folder ``root``, depth first in
    path order (component by component).

    Symlinks are followed, but each real folder is entered once and each real file
    yielded once (identified by ``(st_dev, st_ino)``): the first path in that order
    wins, so a link back up the tree never loops. Hidden names ('.', '_') are not
    entered; broken or looping links are skipped; an unreadable folder raises
    ``PermissionError`` naming it. ``max_depth`` limits how many levels are read.
    """
    seen = {_identity(os.stat(root))}
    files: set[tuple[int, int]] = set()
    stack = [(relative, info) for relative, info in reversed(_entries(root, ""))]
    while stack:
        relative, info = stack.pop()
        identity = _identity(info)
        if stat.S_ISREG(info.st_mode) and identity not in files:
            files.add(identity)
            yield relative
        elif stat.S_ISDIR(info.st_mode) and identity not in seen and _within(relative, max_depth):
            seen.add(identity)
            stack.extend(reversed(_entries(os.path.join(root, relative), relative)))


def _entries(folder: str, relative: str) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat following links) of a folder's visible entries, by name."""
    out = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith((".", "_")):
                continue
            try:
                info = entry.stat()
            except OSError:
                continue    # a broken link, or a link to itself
            out.append((f"{relative}/{entry.name}" if relative else entry.name, info))
    return out


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _within(relative: str, max_depth: int | None) -> bool:
    """Whether the files inside folder ``relative`` are at most ``max_depth`` deep."""
    return max_depth is None or relative.count("/") + 2 <= max_depth


def lexical(location: str) -> tuple[str, str]:
    """(scheme prefix, normalised path) of a location, without touching any store:
    local paths absolute with symlinks resolved, URIs without their query."""
    location = split_query(location)[0]
    if is_uri(location):
        scheme, rest = location.split("://", 1)
        return scheme + "://", posixpath.normpath("/" + rest).lstrip("/")
    if location.startswith("file://"):
        location = location[len("file://"):]
    return "", os.path.realpath(os.path.abspath(os.path.expanduser(location)))
