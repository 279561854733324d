"""curate.select (Middo): the champion's loss drops what it already knows, its hidden states' clusters keep
a spread; counted like every curate drop, the same on the columnar and the row path, placed on a GPU."""

import json
import shutil

import numpy as np
import pytest

from flywheel import io, schemas
from flywheel.config import CurateConfig, load_config
from flywheel.stages.curate.select import kmeans, select


def test_loss_drops_the_share_the_champion_finds_easiest():
    loss = np.array([0.5, 0.1, 0.9, 0.1, 2.0, 0.3, 1.1, 0.7, 0.05, 0.4])
    chosen = select(loss, None, CurateConfig(select="loss", select_known_share=0.3), round_index=1)
    assert np.flatnonzero(~chosen.keep).tolist() == [1, 3, 8]  # 0.05, then the two 0.1s
    assert chosen.drops == {"select:known": 3}
    assert select(loss, None, CurateConfig(select="loss", select_known_share=0.0), round_index=1).keep.all()


def test_diversity_trims_a_crowded_cluster_by_its_easiest_rows():
    rng = np.random.default_rng(0)
    crowded = rng.normal([1.0, 0.0], 0.01, size=(8, 2))
    sparse = rng.normal([0.0, 1.0], 0.01, size=(2, 2))
    points = np.vstack([crowded, sparse])
    loss = np.arange(10, dtype=float)  # row i's loss is i: the crowded cluster's easiest are rows 0, 1, 2
    chosen = select(loss, points, CurateConfig(select="diversity", select_clusters=2, select_cluster_cap=1.0),
                    round_index=1)
    assert len(set(chosen.cluster[:8].tolist())) == 1 and chosen.cluster[8] == chosen.cluster[9] != chosen.cluster[0]
    assert np.flatnonzero(~chosen.keep).tolist() == [0, 1, 2]  # cap ceil(10 / 2) = 5: keeps its 5 hardest
    assert chosen.drops == {"select:redundant": 3}


def test_kmeans_is_deterministic_per_seed_and_never_more_clusters_than_points():
    points = np.random.default_rng(1).normal(size=(50, 4))
    assert (kmeans(points, 5, seed=3) == kmeans(points, 5, seed=3)).all()
    assert set(kmeans(points[:3], 8, seed=0).tolist()) <= {0, 1, 2}


def _round(tmp_path, tiny_seed):
    """One round of the smoke loop up to its vote, from the tiny seed (real prompts, samples and votes)."""
    from flywheel.layout import RoundLayout, RunLayout
    from flywheel.loop import prepare, round_stages
    from flywheel.tasks import load_task

    root = tmp_path / "run"
    config = load_config("configs/smoke.yaml", [f"seed.path={tiny_seed}", f"loop.out_dir={root}",
                                                "loop.progress=false", "curate.min_vote_share=0"])
    task = load_task("addition")
    prepare(config, root, task=task)
    for stage in round_stages(config, root, 1, task=task)[:3]:  # prompts, generate, vote
        stage.run()
    return config, task, RoundLayout(root, 1), RunLayout(root).eval_set


def test_select_in_curate_counts_its_drops_the_same_on_both_paths(tmp_path, tiny_seed, monkeypatch):
    from pathlib import Path

    from flywheel.stages.curate import run_curate
    from reference_rows import run_curate_rows

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    config, task, this, eval_path = _round(tmp_path, tiny_seed)
    curate_config = CurateConfig(**{**config.curate.__dict__, "select": "loss+diversity", "select_known_share": 0.25,
                                    "select_clusters": 3, "select_cluster_cap": 1.0})
    reports = []
    for name, curate in (("rows", run_curate_rows), ("columns", run_curate)):
        here = tmp_path / name
        shutil.copytree(this.dir, here)
        reports.append(curate(here, curate_config, task=task, eval_path=eval_path, round_index=1, previous_pool=None,
                              audit_path=here / "audit.parquet", model_dir=this.previous().champion, device="cpu"))
        assert json.loads((here / "curation.json").read_text()) == reports[-1]
    assert reports[0] == reports[1]
    drops = reports[0]["drops"]
    assert drops.get("select:known", 0) > 0
    plain = run_curate(tmp_path / "rows", config.curate, task=task, eval_path=eval_path, round_index=1,
                       previous_pool=None)
    selected = drops["select:known"] + drops.get("select:redundant", 0)
    assert reports[0]["samples_kept"] == plain["samples_kept"] - selected
    kept = io.read_rows(tmp_path / "columns" / "curated.parquet", schemas.CURATED)
    assert len(kept) == reports[1]["samples_kept"]


def test_select_without_a_champion_is_a_one_line_error():
    from flywheel.errors import InputError
    from flywheel.stages.curate.select import run_select

    with pytest.raises(InputError, match="curate.select=loss scores rows with the champion"):
        run_select(["1+1="], ["2"], CurateConfig(select="loss"), task=None, model_dir=None, device="cpu",
                   round_index=1)


def test_select_puts_curate_on_the_gpu_in_kubeflow():
    """(The Argo door: tests/test_argo.py's variants.)"""
    from flywheel.errors import InputError
    from flywheel.infra import cluster_config
    from flywheel.kubeflow.preflight import Placement, check_placement

    plain = cluster_config("configs/default.yaml")
    chosen = cluster_config("configs/default.yaml", ["curate.select=loss"])
    assert not Placement.of(plain).on_gpu("curate") and Placement.of(chosen).on_gpu("curate")
    with pytest.raises(InputError, match="curate.select=loss and curate.step_rollouts=0 and loop.device=cuda, but this "
                                         "pipeline was compiled with its curate step"):
        check_placement(chosen, Placement.of(plain))
