"""Event-time windows: the pure core, without Ray or Kafka.

The extractor side calls :func:`pre_aggregate` on each batch of a partition and sends
``partials[s]`` to window actor ``s``; each window actor keeps a :class:`WindowState`,
adds partials and, as the global watermark moves, emits the windows it passed.

    spec = WindowSpec.from_spec(section, ctx)
    out = pre_aggregate(batch, spec, max_seen, floor_ms=state.emitted_watermark, now_ms=now)
    state.add(out.partials[0])
    rows = state.advance(watermark)          # a table per emission; flush() at the end
"""
from .assign import Assigned, pre_aggregate
from .spec import WindowSpec, parse_ms
from .state import WindowState, result_schema

__all__ = ["Assigned", "WindowSpec", "WindowState", "parse_ms", "pre_aggregate", "result_schema"]
