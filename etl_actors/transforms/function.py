"""``type: function``: a user's Python callable, named by import path.

    - {id: enrich, type: function, handler: "examples.enrich:add_region"}                # a table at a time
    - {id: fix, type: function, handler: "examples.enrich:fix_record", mode: record}    # the slow path

``mode: table`` (the default) calls ``handler(pa.Table) -> pa.Table`` once per batch;
returning anything else is a TerminalError naming the step. ``mode: record`` calls
``handler(dict) -> dict | None`` once per row, the documented slow path: ``None``
drops the row (it counts as filtered), and a row whose call raises becomes a dead
letter whose reason is the exception's class and message.

The handler is imported when the spec is read, so ``validate`` reports a missing
module or attribute at ``...handler``. Importing runs the module's top-level code:
name only modules you trust.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import pyarrow as pa

from ..batch import DeadLetter, StepResult, jsonable
from ..errors import EtlError, SpecError, StepFailed, TerminalError
from .base import Transform, common_step_fields

_HANDLER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$", re.ASCII)


@dataclass(frozen=True)
class FunctionStep(Transform):
    """Applies the callable at ``handler`` (``"module.path:name"``) to each batch or row."""

    id: str
    handler: str
    mode: str = "table"
    required: bool = True

    type: ClassVar[str] = "function"
    pooled: ClassVar[bool] = True       # user code may be heavy: spread over the transformer pool

    @classmethod
    def from_spec(cls, section, ctx) -> "FunctionStep":
        common = common_step_fields(section)
        handler = section.get("handler", types=str, check=_handler_problem)
        mode = section.get("mode", "table", types=str, choices=("table", "record"))
        section.done()
        try:
            resolve(handler)
        except LookupError as exc:
            raise SpecError(section.at("handler"), str(exc)) from None
        return cls(handler=handler, mode=mode, **common)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_fn"}

    def open(self) -> None:
        """Import the handler in the worker."""
        self._callable()

    def apply(self, table: pa.Table) -> StepResult:
        return self._per_record(table) if self.mode == "record" else self._per_table(table)

    def _callable(self) -> Callable:
        fn = self.__dict__.get("_fn")
        if fn is None:
            try:
                fn = resolve(self.handler)
            except LookupError as exc:
                raise TerminalError(f"step {self.id!r}: {exc}", step=self.id) from None
            object.__setattr__(self, "_fn", fn)
        return fn

    def _per_table(self, table: pa.Table) -> StepResult:
        result = self._call(table)
        if isinstance(result, pa.RecordBatch):
            result = pa.Table.from_batches([result])
        if not isinstance(result, pa.Table):
            raise TerminalError(f"step {self.id!r}: handler {self.handler} returned {type(result).__name__}, "
                                "expected a pyarrow.Table", step=self.id)
        return StepResult(result)

    def _call(self, table: pa.Table) -> Any:
        try:
            return self._callable()(table)
        except EtlError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code; the step fails with its reason
            raise StepFailed(f"step {self.id!r}: handler {self.handler} raised {type(exc).__name__}: {exc}",
                             step=self.id) from exc

    def _per_record(self, table: pa.Table) -> StepResult:
        fn, kept, rejects = self._callable(), [], []
        for row in table.to_pylist():
            try:
                out = fn(dict(row))
            except Exception as exc:  # noqa: BLE001 - a failing record is a dead letter
                rejects.append(DeadLetter(f"{type(exc).__name__}: {exc}", jsonable(row)))
                continue
            if out is not None and not isinstance(out, dict):
                raise TerminalError(f"step {self.id!r}: handler {self.handler} returned {type(out).__name__}, "
                                    "expected a dict or None", step=self.id)
            if out is not None:
                kept.append(out)
        return StepResult(_records_table(kept, table.schema), tuple(rejects))


def _handler_problem(value: str) -> str | None:
    if _HANDLER.match(value):
        return None
    return f"expected 'module.path:callable' (dotted names, a colon, a name), got {value!r}"


def resolve(handler: str) -> Callable:
    """The callable at ``"module.path:name"``; LookupError says what is missing."""
    module_name, _, attr = handler.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LookupError(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise LookupError(f"importing module {module_name!r} raised {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise LookupError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise LookupError(f"{handler} is not callable (it is {type(fn).__name__})")
    return fn


def _records_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """The handler's rows as a table (columns: every key seen, in order), keeping the
    input's column types where the values still fit them."""
    if not rows:
        return schema.empty_table()
    names = list(dict.fromkeys(key for row in rows for key in row))
    out = pa.table({name: pa.array([row.get(name) for row in rows]) for name in names})
    for i, name in enumerate(names):
        want = schema.field(name).type if name in schema.names else None
        if want is not None and out.schema.field(i).type != want:
            try:
                out = out.set_column(i, name, out[name].cast(want))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pass
    return out
