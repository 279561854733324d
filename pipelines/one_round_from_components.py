"""One flywheel round built only from the component specs in ``components/``: what another team's pipeline
does to reuse flywheel's steps (``kfp.components.load_component_from_file``), with no import of flywheel.

flywheel's own pipelines (``flywheel``: N rounds; ``flywheel-round``: one round from the MLflow champion alias)
are defined in ``src/flywheel/kubeflow/pipelines.py`` and compiled to ``pipelines/compiled/`` by
``flywheel pipeline compile``, which also writes ``components/``. tests/test_components.py compiles this one.

    python pipelines/one_round_from_components.py out.yaml
"""

import json
import sys
from pathlib import Path

from kfp import compiler, dsl
from kfp.components import load_component_from_file

COMPONENTS = Path(__file__).resolve().parents[1] / "components"


def load(name: str):
    return load_component_from_file(str(COMPONENTS / f"{name}.yaml"))


@dsl.pipeline(name="flywheel-one-round-from-components",
              description="Seed evaluation and one round, from flywheel's reusable component specs.")
def one_round(config_yaml: str, workspace_root: str = "/models/runs", seed_uri: str = ""):
    # The typed knobs equal to compiled_knobs: none overrides config_yaml (every setting comes from it).
    knobs = dict(samples_per_prompt=0, temperature=0.0, min_vote_share=0.0, gate_alpha=0.0, gate_min_gain=0.0,
                 train_steps=0, learning_rate=0.0)
    preflight = load("preflight")(
        config_yaml=config_yaml, workspace_root=workspace_root, seed_uri=seed_uri, dvc_remote="",
        compiled_knobs=json.dumps(knobs, sort_keys=True),
        gpu_steps="prepare,generate,train,evaluate", **knobs)  # the specs' images: CUDA for the model steps
    config = preflight.outputs["Output"]
    prepared = load("prepare")(config_yaml=config, workspace_root=workspace_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    workspace, champion = prepared.outputs["Output"], prepared.outputs["champion"]
    common = dict(config_yaml=config, workspace=workspace, round_index=1)
    prompts = load("make_prompts")(**common, champion=champion)
    with dsl.ParallelFor([0], name="generate-shards") as shard:
        generated = load("generate")(run_config=preflight.outputs["run_config"], shard=shard, shards=1,
                                     prompts=prompts.outputs["prompts"], champion=champion)
    merged = load("merge_samples")(workspace=workspace, round_index=1, prompts=prompts.outputs["prompts"],
                                   shards=dsl.Collected(generated.outputs["samples"]))
    voted = load("vote")(**common, prompts=prompts.outputs["prompts"], samples=merged.outputs["samples"],
                         champion=champion)
    curated = load("curate")(**common, votes=voted.outputs["votes"], eval_set=prepared.outputs["eval_set"],
                             champion=champion)
    trained = load("train")(**common, train_set=curated.outputs["train_set"], champion=champion)
    evaluated = load("evaluate")(**common, eval_set=prepared.outputs["eval_set"], candidate=trained.outputs["candidate"],
                                 champion=champion)
    load("gate")(**common, candidate=trained.outputs["candidate"], champion=champion,
                 eval_metrics=evaluated.outputs["eval_metrics"])


if __name__ == "__main__":
    compiler.Compiler().compile(one_round, sys.argv[1] if len(sys.argv) > 1 else "one_round_from_components.yaml")
