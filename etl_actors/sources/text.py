"""Text encodings for the file source.

Readers parse UTF-8. A UTF-8 file read with ``onDecodeError: fail`` is handed to
pyarrow as it is (a leading BOM is skipped by pyarrow); any other ``encoding``, and
``onDecodeError: replace``, go through :func:`text_stream`, which transcodes to UTF-8.
When failing, bytes the codec cannot decode are passed through unchanged (Python's
``surrogateescape``), so they reach the reader as invalid UTF-8 and the CSV reader
can reject just the rows holding them; with ``replace`` they become U+FFFD.
"""
from __future__ import annotations

import codecs

import pyarrow as pa

ON_DECODE_ERROR = ("fail", "replace")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def codec_problem(encoding: str) -> str | None:
    """Why ``encoding`` cannot decode files (an unknown name, a str-to-str codec such
    as rot13), or None."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        return f"unknown encoding {encoding!r}; expected a Python codec name such as utf-8, latin-1, utf-16"
    if not getattr(info, "_is_text_encoding", True):
        return f"{encoding!r} is not a text encoding; expected one such as utf-8, latin-1, utf-16"
    return None


def is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def label(encoding: str) -> str:
    """The encoding as messages name it (``UTF-8`` rather than ``utf_8``)."""
    return "UTF-8" if is_utf8(encoding) else encoding


def text_stream(stream, encoding: str, on_error: str):
    """``stream`` as UTF-8: itself when it already is and failing is wanted, else
    transcoded (see the module docstring for undecodable bytes)."""
    if is_utf8(encoding) and on_error == "fail":
        return stream
    return pa.TransformInputStream(stream, _Transcoder(encoding, on_error))


class _Transcoder:
    """Bytes in ``encoding`` to UTF-8, chunk by chunk (pyarrow calls it with an empty
    buffer at the end)."""

    def __init__(self, encoding: str, on_error: str):
        errors = "replace" if on_error == "replace" else "surrogateescape"
        self.decoder = codecs.getincrementaldecoder(encoding)(errors)

    def __call__(self, buffer) -> bytes:
        final = len(buffer) == 0
        return self.decoder.decode(buffer, final).encode("utf-8", "surrogateescape")


def head_problem(head: bytes, encoding: str, whole: bool) -> str | None:
    """Why the first line of a file's UTF-8 ``head`` shows it is not text in
    ``encoding`` (an undecodable byte, a NUL byte: UTF-16 read as something else), or
    None. ``whole``: the head is the entire file (else its last character may be cut)."""
    line = head.split(b"\n", 1)[0]
    complete = whole or b"\n" in head
    hint = "; set encoding: utf-16?" if head.startswith(_UTF16_BOMS) or b"\x00" in line else ""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(line, complete)
    except UnicodeDecodeError as exc:
        return f"not {label(encoding)} text (byte 0x{line[exc.start]:02x} at offset {exc.start}){hint}"
    nul = line.find(b"\x00")
    if nul >= 0:
        return f"not {label(encoding)} text (NUL byte at offset {nul}){hint}"
    return None


def bad_byte(value: bytes) -> int | None:
    """The first byte of ``value`` that is not valid UTF-8, or None."""
    try:
        value.decode("utf-8")
        return None
    except UnicodeDecodeError as exc:
        return value[exc.start]


def readable(value):
    """A raw value as text for a dead letter: bytes that are not UTF-8 as ``\\xff``."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
