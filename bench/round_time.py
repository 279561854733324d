"""Benchmark: wall-clock seconds per stage of one round, and the share spent outside model compute.

    python bench/round_time.py                       # configs/default.yaml with the shipped seed
    python bench/round_time.py -c configs/smoke.yaml # after `flywheel seed -c configs/smoke.yaml`
    python bench/round_time.py -s generate.samples_per_prompt=4
    python bench/round_time.py --sizes 3000,12000      # how each stage grows with the round's prompts (make bench)

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


def one_round(config_path: str, overrides: list[str]) -> tuple[dict, object, float, int]:
    """(seconds per stage, the config, prepare's seconds, tokens generated) of one round from the seed."""
    from flywheel.config import load_config
    from flywheel.layout import RoundLayout
    from flywheel.loop import prepare, run_round
    from flywheel.tasks import load_task
    from flywheel.tracking import Tracker
    from flywheel.versioning import digest

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as scratch:
        root = Path(scratch)
        config = load_config(config_path, [*overrides, f"loop.out_dir={root}", "loop.progress=false",
                                           f"tracking.uri=sqlite:///{root / 'mlflow.db'}"])
        task = load_task(config.task, config.code)
        start = time.perf_counter()
        prepare(config, root, task=task)
        prepare_seconds = time.perf_counter() - start
        tracker = Tracker(config.tracking)
        parent = tracker.start_loop(config, loop_key="bench")
        tracker.registry.register_seed(parent, RoundLayout(root, 0).champion)
        run_round(config, root, 1, task=task)
        one = RoundLayout(root, 1)
        seconds = json.loads(one.timings.read_text())
        start = time.perf_counter()
        data_digest = digest(one.dir)
        seconds["digest"] = time.perf_counter() - start
        start = time.perf_counter()
        tracker.log_round(parent, 1, one.dir, config, data_digest)
        seconds["track"] = time.perf_counter() - start
        import pyarrow.parquet as pq

        tokens = int(pq.read_table(one.samples, columns=["n_tokens"]).column(0).to_numpy().sum())
    return seconds, config, prepare_seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/default.yaml")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--sizes", default="",
                        help="prompts.per_round values to compare, e.g. 3000,12000: a column per size, and how much "
                             "each stage grew (default: one round as configured)")
    args = parser.parse_args()

    import torch

    from flywheel.console import quiet_libraries

    quiet_libraries()
    sizes = [int(n) for n in args.sizes.split(",") if n] or [None]
    runs = [one_round(args.config, [*args.overrides, *([f"prompts.per_round={n}"] if n else [])]) for n in sizes]
    order = ("prompts", "generate", "vote", "curate", "train", "evaluate", "gate", "digest", "track")
    print(f"config {args.config} {' '.join(args.overrides)}  torch threads {torch.get_num_threads()}")
    for seconds, config, prepare_seconds, tokens in runs:
        total = sum(seconds.values())
        model = sum(seconds[s] for s in MODEL_STAGES)
        print(f"prompts/round {config.prompts.per_round + config.prompts.replay_per_round}, "
              f"K={config.generate.samples_per_prompt}, train steps {config.train.steps}, eval prompts "
              f"{config.evaluate.per_bucket * (config.evaluate.max_bucket - config.evaluate.min_bucket + 1)}: "
              f"round {total:.2f} s, outside model compute {total - model:.2f} s ({(total - model) / total:.1%}), "
              f"generate {tokens / seconds['generate']:,.0f} tokens/s ({tokens:,} tokens); prepare (once per loop) "
              f"{prepare_seconds:.2f} s")
    header = "".join(f"{'s @' + str(n or runs[0][1].prompts.per_round):>12}" for n in sizes)
    print(f"{'stage':<10}{header}" + (f"{'growth':>9}" if len(runs) > 1 else f"{'share':>8}"))
    for name in order:
        values = [run[0][name] for run in runs]
        tail = (f"{values[-1] / values[0]:>8.1f}x" if values[0] > 0 else f"{'':>9}") if len(runs) > 1 else \
            f"{values[0] / sum(runs[0][0].values()):>8.1%}"
        print(f"{name:<10}" + "".join(f"{v:>12.2f}" for v in values) + tail)
    totals = [sum(run[0].values()) for run in runs]
    print(f"{'round':<10}" + "".join(f"{t:>12.2f}" for t in totals)
          + (f"{totals[-1] / totals[0]:>8.1f}x" if len(runs) > 1 else ""))


if __name__ == "__main__":
    main()
