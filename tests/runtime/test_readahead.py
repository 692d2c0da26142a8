"""An extractor reads ahead on a thread of its own: the supervisor sees the same
batches in the same order, an error in its turn, and a stopped read releases its file."""
import threading

import pytest

from etl_actors.errors import TransientError
from etl_actors.runtime.readahead import ReadAhead


def test_items_come_in_order_then_the_error_in_its_turn_and_nothing_after():
    def items():
        yield from range(5)
        raise TransientError("the store answered 503")

    ahead = ReadAhead(items(), depth=2)
    assert [ahead.next() for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(TransientError, match="503"):
        ahead.next()
    with pytest.raises(TransientError):     # asked again, the same answer: never a hang
        ahead.next()


def test_an_exhausted_reader_keeps_answering_none():
    ahead = ReadAhead(iter([1]), depth=1)
    assert (ahead.next(), ahead.next(), ahead.next()) == (1, None, None)


def test_it_reads_at_most_depth_items_ahead_and_stop_closes_the_iterator():
    produced, closed = [], threading.Event()

    def items():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    ahead = ReadAhead(items(), depth=2)
    assert ahead.next() == 0
    threading.Event().wait(0.3)
    assert len(produced) <= 4          # one handed over, two queued, one waiting to be
    ahead.stop()
    assert closed.wait(5)              # the generator's finally ran: its file is closed
