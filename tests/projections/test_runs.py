"""The run-history and watermark projections are pure folds over events."""
from etl_actors import events as ev
from etl_actors.projections import progress, runs, watermarks


def a_run(run_id="r1"):
    return [
        ev.RunStarted(pipeline="p", run_id=run_id, epoch=1, watermark={}, partitions=["a"], total_bytes=1000, at=100.0),
        ev.BatchExtracted(run_id=run_id, batch_id="a#0", partition="a", rows=98, bytes=600, rejected=2, at=100.5),
        ev.BatchTransformed(run_id=run_id, batch_id="a#0", rows_in=98, rows_out=90, rejected=3, filtered=5,
                            steps=[{"id": "m", "recordsIn": 98, "recordsOut": 95, "durationMs": 4.0, "success": True},
                                   {"id": "f", "recordsIn": 95, "recordsOut": 90, "durationMs": 1.0, "success": True}],
                            at=101.0),
        ev.BatchLoaded(run_id=run_id, batch_id="a#0", partition="a", position={"rows": 100, "done": True},
                       rows=89, failed=1, bytes=500, at=101.5),
        ev.WatermarkCommitted(run_id=run_id, partition="a", position={"rows": 100, "done": True}, at=102.0),
        ev.RunSucceeded(run_id=run_id, metrics={}, at=103.0),
    ]


def test_a_run_summary_closes_its_accounts():
    run = runs.summary(runs.project(a_run()).last("p"))
    assert (run["recordsExtracted"], run["recordsLoaded"], run["recordsRejected"], run["recordsFiltered"]) == \
        (100, 89, 6, 5)
    assert run["recordsExtracted"] == run["recordsLoaded"] + run["recordsRejected"] + run["recordsFiltered"]
    assert (run["durationMs"], run["throughput"], run["errorRate"]) == (2000.0, 50.0, 0.06)
    assert run["steps"][1] == {"id": "f", "recordsIn": 95, "recordsOut": 90, "durationMs": 1.0, "success": True}


def test_a_replay_from_the_stored_log_gives_the_figures_folded_live(tmp_path):
    from etl_actors.eventlog import EventLog

    events = a_run("r1") + a_run("r2")
    live = runs.Runs()
    for event in events:                          # as the supervisor folds them, one at a time
        live = runs.evolve(live, event)
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    log.append("pipeline:p", events, expected_version=0)
    replayed = runs.project(log.read("pipeline:p"))  # as a restarted supervisor or `status` folds them
    assert [runs.summary(r) for r in replayed.of("p")] == [runs.summary(r) for r in live.of("p")]
    assert [r.run_id for r in replayed.of("p")] == ["r1", "r2"]
    assert runs.summary(replayed.by_id["r2"])["recordsLoaded"] == 89


def test_watermarks_move_only_on_commits_and_a_reset_empties_them():
    events = a_run()
    assert watermarks.project(events[:4]) == {}
    assert watermarks.project(events) == {"a": {"rows": 100, "done": True}}
    assert watermarks.project(events + [ev.WatermarkReset(pipeline="p")]) == {}


def test_a_run_failed_while_running_shows_its_error():
    events = a_run()[:3] + [ev.RunFailed(run_id="r1", error="step 'f' failed: boom", at=101.2)]
    run = runs.summary(runs.project(events).last())
    assert (run["status"], run["error"], run["watermark"]) == ("failed", "step 'f' failed: boom", {})


def test_progress_reports_percent_of_known_bytes():
    state = progress.Progress()
    for event in a_run()[:2]:
        state = progress.evolve(state, event)
    assert (state.phase, state.records_in, state.percent) == ("extract", 100, 60.0)
