"""The champion alias moves by compare-and-swap, against a real MLflow server (2 workers) on 127.0.0.1:
two rounds that started from the same champion promote at once, exactly one alias move happens, the
other round ends ``stale`` with nothing moved."""

import shutil
import threading
from pathlib import Path

import pytest

from flywheel import io
from flywheel.config import load_config
from flywheel.model_registry import CHAMPION_ALIAS, DECLINED, PROMOTED, STALE, promotion_record
from flywheel.tracking import Tracker
from tests.conftest import mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` with two workers, so two requests really are handled at the same time."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), workers=2) as uri:
        yield uri


def _tracker(uri: str, model: str) -> Tracker:
    return Tracker(load_config(None, [f"tracking.uri={uri}", f"tracking.registered_model={model}"]).tracking)


def _versions(tracker: Tracker, n: int) -> list[str]:
    """A registered model with ``n`` versions (empty sources: promotion never reads them); v1 is champion."""
    tracker.registry.ensure()
    name = tracker.config.registered_model
    versions = [tracker.client.create_model_version(name, "s3://unused/model").version for _ in range(n)]
    tracker.client.set_registered_model_alias(name, CHAMPION_ALIAS, versions[0])
    return versions


def _race(calls) -> list:
    """Run the calls in threads released together by a barrier; their results in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.mark.parametrize("trial", range(3))
def test_two_promotions_from_one_champion_move_the_alias_once(server, trial):
    tracker = _tracker(server, f"race-{trial}")
    champion, first, second = _versions(tracker, 3)
    others = [_tracker(server, f"race-{trial}") for _ in range(2)]  # one client each, like two pods
    results = _race([lambda: others[0].registry.promote(first, started_from=champion, claim="loop-a:round-1"),
                     lambda: others[1].registry.promote(second, started_from=champion, claim="loop-b:round-4")])
    outcomes = sorted(outcome for outcome, _ in results)
    assert outcomes == [PROMOTED, STALE]
    winner = first if results[0][0] == PROMOTED else second
    assert tracker.registry.champion_version() == winner
    assert all(holder == winner for _, holder in results)
    # One record, out of the user's sight: no registered model besides the real one, no visible experiment.
    assert [m.name for m in tracker.client.search_registered_models(f"name LIKE 'race-{trial}%'")] == [
        f"race-{trial}"]
    from mlflow.entities import ViewType

    records = tracker.client.search_experiments(ViewType.ALL, filter_string=f"name LIKE '%:race-{trial}:%'")
    assert [(r.name, r.lifecycle_stage) for r in records] == [(promotion_record(f"race-{trial}", champion),
                                                              "deleted")]
    assert records[0].tags["to_version"] == winner


def test_a_round_from_a_champion_that_was_replaced_is_stale_and_moves_nothing(server):
    tracker = _tracker(server, "replaced")
    seed, newer, late = _versions(tracker, 3)
    assert tracker.registry.promote(newer, started_from=seed, claim="loop-a:round-1") == (PROMOTED, newer)
    # A round that started from the seed before that promotion finishes later: stale.
    assert tracker.registry.promote(late, started_from=seed, claim="loop-b:round-1") == (STALE, newer)
    # A lineage with no registered champion never moves the alias either.
    assert tracker.registry.promote(late, started_from=None, claim="loop-c:round-1") == (STALE, newer)
    assert tracker.registry.champion_version() == newer


def test_a_round_killed_between_its_record_and_the_alias_move_finishes_its_own_claim(server):
    tracker = _tracker(server, "killed")
    seed, candidate, retried = _versions(tracker, 3)
    record = tracker.client.create_experiment(promotion_record("killed", seed),
                                              tags={"flywheel.claim": "loop-a:round-2", "to_version": candidate})
    tracker.client.delete_experiment(record)
    # Someone else's round from the same seed cannot use that record (the alias is on its way to `candidate`) ...
    assert tracker.registry.promote(retried, started_from=seed, claim="loop-b:round-1") == (STALE, candidate)
    # ... the round that wrote it, re-run (its candidate registered again as a new version), completes it.
    assert tracker.registry.promote(retried, started_from=seed, claim="loop-a:round-2") == (PROMOTED, retried)
    assert tracker.registry.champion_version() == retried
    assert tracker.client.get_experiment(record).tags["to_version"] == retried
    assert tracker.client.get_experiment(record).lifecycle_stage == "deleted"


def _round_dir(root: Path, seed: Path, promote: bool) -> Path:
    """What ``log_round`` reads of a round: the candidate model and the gate's decision."""
    shutil.copytree(seed, root / "candidate")
    io.write_json(root / "decision.json", {"promote": promote, "reason": "test", "delta": 0.1, "p_value": 0.01})
    return root


def test_two_tracked_rounds_from_one_champion_one_promoted_one_stale(server, tiny_seed, tmp_path):
    """What two overlapping scheduled rounds do: both started from the alias holder, both gates promote;
    ``log_round`` registers both candidates, moves the alias once and records the other round as stale."""
    config = load_config(None, [f"tracking.uri={server}", "tracking.registered_model=scheduled",
                                "tracking.experiment=promotion"])
    trackers = [Tracker(config.tracking) for _ in range(3)]
    parent = trackers[0].start_loop(config, loop_key="kfp:/models/scheduled/a")
    seed_version = trackers[0].registry.register_seed(parent, tiny_seed)
    assert trackers[0].registry.champion_version() == seed_version
    parents = [parent, trackers[1].start_loop(config, loop_key="kfp:/models/scheduled/b")]
    rounds = [_round_dir(tmp_path / name, tiny_seed, promote=True) for name in ("a", "b")]
    results = _race([lambda i=i: trackers[i].log_round(parents[i], 5, rounds[i], config, f"md5-{i}",
                                                        started_from=seed_version) for i in range(2)])
    assert sorted(r["promotion"] for r in results) == [PROMOTED, STALE]
    winner = next(r for r in results if r["promotion"] == PROMOTED)
    stale = next(r for r in results if r["promotion"] == STALE)
    client = trackers[2].client
    assert trackers[2].registry.champion_version() == winner["model_version"]
    assert stale["champion_version"] == winner["model_version"] and stale["started_from"] == seed_version
    assert client.get_model_version("scheduled", stale["model_version"]).tags["promotion"] == STALE
    assert client.get_model_version("scheduled", winner["model_version"]).tags["promotion"] == PROMOTED
    stale_run = client.get_run(stale["run_id"])
    assert stale_run.data.tags["flywheel.promotion"] == STALE
    assert f"names v{winner['model_version']}, not v{seed_version}" in stale_run.data.tags["flywheel.stale"]


def test_a_loop_never_replaces_a_champion_it_did_not_compete_against(server, tiny_seed, tmp_path):
    """The N-round pipeline and ``flywheel run`` start from their own seed: on a registry whose alias names
    another model, their promoted rounds are stale and the production champion stays."""
    config = load_config(None, [f"tracking.uri={server}", "tracking.registered_model=production",
                                "tracking.experiment=promotion"])
    tracker = Tracker(config.tracking)
    production = _versions(tracker, 1)[0]
    parent = tracker.start_loop(config, loop_key="kfp:/models/runs/experiment")
    seed_version = tracker.registry.register_seed(parent, tiny_seed)  # registered, but the alias already has a holder
    assert tracker.registry.champion_version() == production
    result = tracker.log_round(parent, 1, _round_dir(tmp_path / "r1", tiny_seed, promote=True), config, "md5")
    assert (result["promotion"], result["started_from"], result["champion_version"]) == (STALE, seed_version,
                                                                                          production)
    declined = tracker.log_round(parent, 2, _round_dir(tmp_path / "r2", tiny_seed, promote=False), config, "md5")
    assert declined["promotion"] == DECLINED
    # Round 2's lineage is round 1's candidate: its gate promoted it for this loop, if not for the registry.
    assert tracker.lineage_version(parent, 2) == result["model_version"]
    assert tracker.registry.champion_version() == production


def test_a_round_logged_again_keeps_the_finished_run_and_replaces_a_partial_one(server, tiny_seed, tmp_path):
    """`dvc repro` after a change logs a finished round again: the earlier run and its version stay (marked
    superseded) and the loop's lineage follows the new one. A partial run (a kill while tracking), or one of
    the same data (a kill just after tracking, then a resume), is replaced."""
    config = load_config(None, [f"tracking.uri={server}", "tracking.registered_model=relogged",
                                "tracking.experiment=promotion"])
    tracker = Tracker(config.tracking)
    parent = tracker.start_loop(config, loop_key="dvc:/relogged")
    tracker.registry.register_seed(parent, tiny_seed)
    first = tracker.log_round(parent, 1, _round_dir(tmp_path / "a", tiny_seed, promote=True), config, "md5-a")
    again = tracker.log_round(parent, 1, _round_dir(tmp_path / "b", tiny_seed, promote=True), config, "md5-b")
    client = tracker.client
    kept = client.get_run(first["run_id"])
    assert kept.info.status == "FINISHED" and kept.data.tags["flywheel.superseded_by"] == again["run_id"]
    assert client.get_model_version("relogged", first["model_version"]).run_id == first["run_id"]
    assert tracker.lineage_version(parent, 2) == again["model_version"]
    resumed = tracker.log_round(parent, 1, _round_dir(tmp_path / "b2", tiny_seed, promote=True), config, "md5-b")
    assert client.get_run(again["run_id"]).info.lifecycle_stage == "deleted"
    assert tracker.lineage_version(parent, 2) == resumed["model_version"]
    partial = client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent, "flywheel.round": "2"})
    logged = tracker.log_round(parent, 2, _round_dir(tmp_path / "c", tiny_seed, promote=False), config, "md5-c")
    assert client.get_run(partial.info.run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(logged["run_id"]).info.status == "FINISHED"
