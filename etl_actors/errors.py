"""One root error; each subclass tells the runtime whether a retry can help.

Errors carry their context (``pipeline``, ``step``, ``partition``, ``retry_after``) as
attributes. Messages say what was expected and what was got, and never a secret.
"""
from __future__ import annotations

from .redaction import redact_text


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    """Unpickle an error without calling its ``__init__`` (whose arguments differ
    from ``args``): the message and every attribute come back as they were."""
    error = cls.__new__(cls)
    BaseException.__init__(error, *args)
    error.__dict__.update(state)
    return error


def describe(value) -> str:
    """How a got-value reads in an error message: its repr, cut short, and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an error's message (its type's name when it has none), with
    every secret form hidden; ``with_type`` puts the type's name in front."""
    text = str(exc).strip()
    line = redact_text(text.splitlines()[0]) if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if with_type else line


class _Portable:
    """Errors that survive a pickle round trip (they cross Ray between actors)."""

    def __reduce__(self):
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class EtlError(_Portable, Exception):
    """The root of every error etl_actors raises on purpose."""

    retryable = False

    def __init__(self, message: str, **context):
        super().__init__(message)
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)


class TerminalError(EtlError):
    """Retrying will not help: bad configuration, bad data, a missing table."""


class TransientError(EtlError):
    """Retrying may help: a dropped connection, a timeout, a busy service."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None, **context):
        super().__init__(message, retry_after=retry_after, **context)


class UsageError(TerminalError):
    """A command or call was given something it cannot use (an event log URL of an
    unsupported kind, say): the CLI exits 2, as for an invalid spec."""


class RunInterrupted(_Portable, KeyboardInterrupt):
    """Ctrl-C during a run: the run was stopped after its batches in flight were
    committed, and ``summary`` is its (failed) run summary. A rerun resumes from there."""

    def __init__(self, summary: dict):
        super().__init__(summary.get("error", "interrupted"))
        self.summary = summary


class SpecError(TerminalError):
    """A pipeline spec is invalid. ``path`` names the offending key."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message, path=path)
        self.reason = message


class SpecErrors(SpecError):
    """Several spec errors found in one validation pass; ``errors`` lists them and
    ``path`` is the first one's."""

    def __init__(self, errors: list[SpecError]):
        super().__init__("", "\n".join(str(e) for e in errors))
        self.path, self.errors = errors[0].path, errors


class ConcurrencyError(EtlError):
    """An append found its stream at another version: another writer got there first."""

    def __init__(self, stream: str, expected: int, actual: int):
        super().__init__(
            f"stream {stream!r} is at version {actual}, expected {expected}",
            stream=stream, expected=expected, actual=actual,
        )


class StepFailed(TerminalError):
    """A required transformation step failed; ``step`` names it."""


class LeaseHeld(EtlError):
    """Another run of the pipeline holds its live lease: this run is refused.
    ``owner`` (host, pid, run id) and ``since`` say who and since when."""


class LeaseLost(ConcurrencyError):
    """This run's lease was taken over (it expired, or ``run --force``): its writes
    are fenced out and the run ends."""

    def __init__(self, pipeline: str, epoch: int, holder: str = ""):
        EtlError.__init__(self, f"pipeline {pipeline!r}: this run's lease (epoch {epoch}) was taken over"
                          + (f" by {holder}" if holder else "") + "; it stopped writing",
                          pipeline=pipeline, epoch=epoch, holder=holder)
