"""Every error etl_actors raises survives a pickle round trip (they cross Ray between
actors and the driver) with its message, its context and its class."""
import inspect
import pickle

import pytest

from etl_actors import errors
from etl_actors.runtime.supervisor import ChildLost

SAMPLES = {
    errors.EtlError: lambda: errors.EtlError("boom", pipeline="p", step="s"),
    errors.TerminalError: lambda: errors.TerminalError("bad data", partition="a.csv"),
    errors.TransientError: lambda: errors.TransientError("busy", retry_after=2.5, pipeline="p"),
    errors.UsageError: lambda: errors.UsageError("'mysql' is not supported"),
    errors.SpecError: lambda: errors.SpecError("pipeline.source.path", "is required"),
    errors.SpecErrors: lambda: errors.SpecErrors([errors.SpecError("a", "x"), errors.SpecError("b", "y")]),
    errors.ConcurrencyError: lambda: errors.ConcurrencyError("pipeline:p", 3, 5),
    errors.StepFailed: lambda: errors.StepFailed("step 'f' failed", step="f"),
    errors.LeaseHeld: lambda: errors.LeaseHeld("pipeline 'p' is already running", owner="run r1 on h:1",
                                               since="2026-12-01T00:00:00Z"),
    errors.LeaseLost: lambda: errors.LeaseLost("p", 4, "run r2 on h:2"),
    errors.RunInterrupted: lambda: errors.RunInterrupted({"status": "failed", "error": "interrupted (Ctrl-C)"}),
    ChildLost: lambda: ChildLost("loader#0", "ActorDiedError"),
}


def error_classes() -> set[type]:
    found = {cls for _, cls in inspect.getmembers(errors, inspect.isclass)
             if issubclass(cls, BaseException) and cls.__module__ == errors.__name__}
    return found | {ChildLost}


def test_every_error_class_has_a_sample():
    assert error_classes() == set(SAMPLES)


@pytest.mark.parametrize("cls", sorted(SAMPLES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_an_error_round_trips_through_pickle(cls):
    original = SAMPLES[cls]()
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls and str(copy) == str(original) and copy.args == original.args
    assert {k: v for k, v in vars(copy).items() if k != "errors"} == \
        {k: v for k, v in vars(original).items() if k != "errors"}
    if isinstance(original, errors.SpecErrors):
        assert [str(e) for e in copy.errors] == [str(e) for e in original.errors]
