"""Benchmark: what running a round as a Kubeflow pipeline (kfp.local, one process per step) costs
over ``flywheel run`` (one process), per round.

    python bench/pipeline_overhead.py -c configs/smoke.yaml --seed seed/smoke
    python bench/pipeline_overhead.py -c configs/smoke.yaml                           # trains the smoke seed first

Both do the same work: round 0 (eval set, seed scores), one round, MLflow tracking (sqlite).
Stage seconds are measured in-process by the loop (prepare, the seven stages of timings.json,
the tracking call); orchestration overhead = wall time minus those stage seconds. For the
pipeline that is process start-up, imports (torch, transformers, MLflow) and model loads in
every step, kfp.local's bookkeeping and artifact copies. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/smoke.yaml")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seed", default=None, help="seed model directory (default: train the config's seed)")
    parser.add_argument("--shards", type=int, default=1, help="generate shards in the pipeline (default 1)")
    args = parser.parse_args()

    import torch

    from flywheel.console import quiet_libraries
    from flywheel.config import dump_config, load_config
    from flywheel.loop import run_loop
    from flywheel.tasks import load_task
    from flywheel.tracking import Tracker

    quiet_libraries()
    warnings.filterwarnings("ignore")
    config_path = Path(args.config).resolve()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as scratch:
        root = Path(scratch)
        seed = Path(args.seed).resolve() if args.seed else root / "seed"
        if not args.seed:
            from flywheel.seed_model import train_seed

            train_seed(load_config(config_path, [*args.overrides, f"seed.path={seed}"]), task=load_task("addition"))
        common = [*args.overrides, f"seed.path={seed}", "loop.rounds=1", "loop.progress=false"]
        loop_config = load_config(config_path, [*common, f"loop.out_dir={root / 'loop'}",
                                                f"tracking.uri=sqlite:///{root / 'loop.db'}"])
        pipeline_config = load_config(config_path, [*common, f"tracking.uri=sqlite:///{root / 'pipeline.db'}"])
        os.chdir(root)

        start = time.perf_counter()
        run_loop(loop_config, tracker=Tracker(loop_config.tracking))
        loop_wall = time.perf_counter() - start
        stages = json.loads((root / "loop" / "rounds" / "1" / "timings.json").read_text())
        tracking = json.loads((root / "loop" / "tracking" / "round-1.json").read_text())["seconds"]
        stage_seconds = sum(stages.values()) + tracking

        from kfp import local

        from flywheel.kubeflow.pipelines import make_flywheel

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"),
                   raise_on_error=True)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # kfp.local echoes every step's log
            make_flywheel(1, pipeline_config)(config_yaml=dump_config(pipeline_config),
                                              workspace=str(root / "workspaces"), shards=args.shards, dvc_remote="")
        pipeline_wall = time.perf_counter() - start

    # prepare (eval set + seed scores) is not in timings.json: estimate it as the loop's unexplained rest.
    loop_rest = loop_wall - stage_seconds
    print(f"config {args.config} {' '.join(args.overrides)}  torch threads {torch.get_num_threads()}  "
          f"cpus {os.cpu_count()}  pipeline shards {args.shards}  load average {os.getloadavg()[0]:.1f}")
    print(f"stage seconds (in-process, loop): {stage_seconds:.2f}  "
          + " ".join(f"{k}={v:.2f}" for k, v in {**stages, "track": tracking}.items()))
    print(f"{'':<28} {'wall s':>8} {'outside stages s':>17}")
    print(f"{'flywheel run (1 process)':<28} {loop_wall:>8.2f} {loop_rest:>17.2f}   (prepare + report + process)")
    print(f"{'kfp.local pipeline':<28} {pipeline_wall:>8.2f} {pipeline_wall - stage_seconds:>17.2f}   "
          f"(the same + a process, imports and model loads per step)")
    print(f"pipeline orchestration overhead per round over flywheel run: {pipeline_wall - loop_wall:.2f} s "
          f"({pipeline_wall / loop_wall:.1f}x the loop's wall time)")


if __name__ == "__main__":
    main()
