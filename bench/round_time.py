"""Benchmark: wall-clock seconds per stage of one round, and the share spent outside model compute.

    python bench/round_time.py                       # configs/default.yaml with the shipped seed
    python bench/round_time.py -c configs/smoke.yaml # after `flywheel seed -c configs/smoke.yaml`
    python bench/round_time.py -s generate.samples_per_prompt=4

Model compute = the generate, train and evaluate stages (model loading included);
outside = prompts, vote, curate, gate and MLflow tracking (IO, voting, curation,
bookkeeping). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

MODEL_STAGES = ("generate", "train", "evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/default.yaml")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import torch

    from flywheel.cli import _quiet_libraries
    from flywheel.config import load_config
    from flywheel.layout import RoundLayout
    from flywheel.loop import prepare, run_round
    from flywheel.tasks import load_task
    from flywheel.tracking import Tracker
    from flywheel.versioning import digest

    _quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as scratch:
        root = Path(scratch)
        config = load_config(args.config, [*args.overrides, f"loop.out_dir={root}", "loop.progress=false",
                                           f"tracking.uri=sqlite:///{root / 'mlflow.db'}"])
        task = load_task(config.task, config.code)
        start = time.perf_counter()
        eval_path = prepare(config, root, task=task)
        prepare_seconds = time.perf_counter() - start
        tracker = Tracker(config.tracking)
        parent = tracker.start_loop(config, loop_key="bench")
        tracker.register_seed(parent, RoundLayout(root, 0).champion)
        run_round(config, root, 1, task=task, eval_path=eval_path)
        one = RoundLayout(root, 1)
        seconds = json.loads(one.timings.read_text())
        start = time.perf_counter()
        data_digest = digest(one.dir)
        seconds["digest"] = time.perf_counter() - start
        start = time.perf_counter()
        tracker.log_round(parent, 1, one.dir, config, data_digest)
        seconds["track"] = time.perf_counter() - start

    total = sum(seconds.values())
    model = sum(seconds[s] for s in MODEL_STAGES)
    print(f"config {args.config} {' '.join(args.overrides)}  torch threads {torch.get_num_threads()}")
    print(f"prompts/round {config.prompts.per_round + config.prompts.replay_per_round}, "
          f"K={config.generate.samples_per_prompt}, train steps {config.train.steps}, "
          f"eval prompts {config.evaluate.per_bucket * (config.evaluate.max_bucket - config.evaluate.min_bucket + 1)}")
    print(f"{'stage':<10} {'seconds':>8} {'share':>6}")
    order = ("prompts", "generate", "vote", "curate", "train", "evaluate", "gate", "digest", "track")
    for name in order:
        value = seconds[name]
        print(f"{name:<10} {value:>8.2f} {value / total:>6.1%}")
    print(f"{'round':<10} {total:>8.2f}")
    print(f"model compute (generate+train+evaluate): {model:.2f} s; outside model compute: {total - model:.2f} s "
          f"({(total - model) / total:.1%} of the round)")
    print(f"(prepare, once per loop: eval set + seed scores: {prepare_seconds:.2f} s)")


if __name__ == "__main__":
    main()
