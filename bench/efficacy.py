"""Benchmark: which part of the recipe does the work, and how much a result moves with the seed.

    python bench/efficacy.py                                   # every arm, 3 seeds, configs/default.yaml (hours)
    python bench/efficacy.py --smoke                           # the smoke arm set on configs/smoke.yaml (seconds)
    python bench/efficacy.py --arms default,oracle --seeds 0,1,2 -s loop.rounds=2 -s prompts.per_round=1000
    python bench/efficacy.py --committee-seed runs/committee-seed  # adds the committee arm (3 seed members)
    python bench/efficacy.py --weak-seed seed/weak                 # adds weak_to_strong (configs/weak-to-strong.yaml)
    python bench/efficacy.py --reuse ...                           # keeps finished runs of the same config in --out,
                                                                   # continues unfinished ones
    python bench/efficacy.py --jobs 6 ...                          # 6 runs at a time, each its own process
    python bench/efficacy.py --collect ...                         # the table of --out's runs as they stand
    python bench/efficacy.py -c configs/gpu-scale.yaml --arms default,oracle --jobs 6   # on a GPU (docs/experiments.md)

Every arm starts from the same seed model and, for a given seed, the same prompts; it runs the same rounds
with the same budget and differs from the default only by the overrides listed in ARMS. A seed s sets
``prompts.seed`` (which prompts each round offers) and ``train.seed`` (the training draws); seed 0 is the
config as written. Each (arm, seed) is one ``flywheel run --no-track`` in this process, into
``--out/<arm>/seed<s>``. Prints one table, mean and spread (sample standard deviation, n-1) across seeds:
accuracy per digit length after the last gate, lengths won (seed model under 10%, at least 80% after the
rounds), frontier, reach, the precision of the vote's labels and of the rows it trained on, the yield
(prompts kept / offered; means over rounds) and the wall time of a run; then the mean accuracy per digit
after each round. ``--json`` writes every run's figures.

Methods: ``middo_select`` (curate.select), ``ttsi`` (prompts.similar_per_uncertain), ``process_rewards``
(curate.step_rollouts), ``step_beam`` (generate.search: step values guide sampling) and ``weak_to_strong``
(round 0's champion is the ``--weak-seed`` model; candidates are fine-tuned from the config's seed, the
larger student; its table gives the performance gap recovered, PGR = (student - weak) / (ceiling - weak)
per digit length, with ``oracle`` as the ceiling: the same student trained on true labels). The ``Mtok``
column is every token the run generated (samples or the step search's rollouts, TT-SI's probe and written
prompts, process rewards' rollouts), in millions: what a method costs beside plain sampling.

Controls: ``frozen`` (nothing is ever promoted: the seed model throughout), ``oracle``
(``vote.method=reference``: true labels in place of the vote) and ``noise10``/``noise30`` (true labels, 10%
or 30% of them replaced by the commonest wrong sample answer; ``vote.label_noise``) and ``more_prompts`` (500
more new prompts a round, drawn as usual: what TT-SI's added prompts do beyond their number). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arm:
    overrides: tuple[str, ...]
    what: str
    needs: str = ""  # an option the arm cannot run without (its name), or ""


ARMS: dict[str, Arm] = {
    "default": Arm((), "the recipe as configured"),
    "no_vote_filter": Arm(("curate.min_vote_share=0",), "every majority is a label, however thin"),
    "length_filter_only": Arm(("generate.views=1", "curate.min_vote_share=0", "curate.format_filter=true"),
                              "one question per prompt, no vote-share filter: only the answer-length check"),
    "vote_filter_no_views": Arm(("generate.views=1",), "the vote filter, every sample on the prompt as written"),
    "views_no_filter": Arm(("curate.min_vote_share=0", "curate.format_filter=false"),
                           "views alone: every majority over the views, no vote-share or length filter"),
    "middo_select": Arm(("curate.select=loss+diversity",),
                        "Middo: the champion drops the 30% of rows it finds easiest, then trims crowded clusters"),
    "committee": Arm(("seed.path={committee_seed}",), "a committee of seed models votes together",
                     needs="committee_seed"),
    "ttsi": Arm(("prompts.similar_per_uncertain=2", "prompts.uncertain_below=0.75", "prompts.probe_samples=4",
                 "prompts.max_uncertain=500"),
                "TT-SI: 2 new prompts (same lengths and carries) per prompt the champion's probe is unsure of"),
    "process_rewards": Arm(("curate.step_rollouts=4", "curate.min_step_score=0.5"),
                           "process rewards: drop rows whose weakest digit's rollouts mostly miss the voted sum"),
    # The beam needs one question per prompt: vote_filter_no_views is its baseline.
    "step_beam": Arm(("generate.views=1", "generate.search=step_beam", "generate.search_rollouts=2"),
                     "step-guided search: each digit kept by how many of its 2 rollouts reach the rollouts' majority"),
    "weak_to_strong": Arm(("seed.path={weak_seed}", "train.student={seed_path}"),
                          "a weaker seed votes; the default's seed is the student it trains", needs="weak_seed"),
    # The rounds run as usual, but no candidate can gain 1.5 accuracy: the seed model generates, votes and
    # is measured in every round (its labels' precision and yield are the baseline of the others').
    "frozen": Arm(("gate.min_gain=1.5",), "control: candidates trained, never promoted: the seed all along"),
    # With true labels a prompt's "vote share" is the share of its samples that are right: no filter on it,
    # every sample that matches its label is kept (ReST-EM with a verifier).
    "oracle": Arm(("vote.method=reference", "curate.min_vote_share=0"),
                  "control: true labels in place of the vote (supervised)"),
    "noise10": Arm(("vote.method=reference", "vote.label_noise=0.1", "vote.label_noise_seed={seed}",
                    "curate.min_vote_share=0"),
                   "control: true labels, 10% of them made wrong"),
    "noise30": Arm(("vote.method=reference", "vote.label_noise=0.3", "vote.label_noise_seed={seed}",
                    "curate.min_vote_share=0"),
                   "control: true labels, 30% of them made wrong"),
    # TT-SI adds prompts at the new length (252-910 a round at the full budget); this control adds about as
    # many, drawn as usual rather than shaped after the ones the champion is unsure of, so the two separate
    # "more prompts" from "those prompts".
    "more_prompts": Arm(("prompts.per_round={per_round_plus_500}",),
                        "control for ttsi: 500 more new prompts a round, none chosen by the champion"),
}
SMOKE_ARMS = ("default", "no_vote_filter", "frozen", "oracle", "noise30")


@dataclass
class RunFigures:
    """What one (arm, seed) run measured, from its report.json."""

    arm: str
    seed: int
    seconds: float
    accuracy_by_round: list[dict[str, float]]  # per digit length, after each gate (round 0: the seed model)
    lengths_won: list[str]
    frontier: int
    reach: int
    vote_precision: float | None  # of the vote's labels (every prompt with one), mean over rounds
    label_precision: float | None  # of the rows it trained on, mean over rounds
    label_yield: float | None  # prompts kept / prompts offered, mean over rounds
    promotions: int = 0
    tokens: int | None = None  # generated: samples, TT-SI's probe and written prompts, process rewards' rollouts


def generated_tokens(root: Path, rounds: int) -> int | None:
    """Every token a run generated: its rounds' samples, TT-SI's probe and written prompts, process rewards'
    rollouts (the seed's and the candidates' evaluations aside: every arm spends the same on them)."""
    from flywheel import io, schemas
    from flywheel.layout import RoundLayout

    total = 0
    for index in range(1, rounds + 1):
        this = RoundLayout(root, index)
        if not this.samples.is_file():  # a run copied without its data files: no figure rather than a low one
            return None
        # A searched sample cost its search_tokens (its rollouts), a drawn one n_tokens.
        total += schemas.generated_tokens(io.read_table(this.samples, schemas.SAMPLES,
                                                        columns=["n_tokens", "search_tokens"]))
        ttsi = io.read_json(this.prompts_summary).get("ttsi") if this.prompts_summary.is_file() else None
        if ttsi:
            total += ttsi["probe_tokens"] + ttsi["written_tokens"]
        curation = io.read_json(this.curation) if this.curation.is_file() else {}
        total += (curation.get("process_rewards") or {}).get("rollout_tokens", 0)
    return total


def figures_of(report: dict, arm: str, seed: int, seconds: float) -> RunFigures:
    rounds, summary = report["rounds"], report["summary"]
    won = [b for b in summary["buckets_lifted_from_below_10_to_80"] if b.isdigit()]  # digit lengths, in order
    precisions = [p for p in (r["curation"].get("kept_label_precision") for r in rounds[1:]) if p is not None]
    votes = [p for p in (r["vote"].get("pseudo_label_precision") for r in rounds[1:]) if p is not None]
    yields = [r["curation"]["prompts_kept"] / r["curation"]["prompts_in"] for r in rounds[1:]
              if r["curation"].get("prompts_in")]
    return RunFigures(arm=arm, seed=seed, seconds=seconds,
                      accuracy_by_round=[r["champion_after"]["buckets"] for r in rounds],
                      lengths_won=won, frontier=summary["final_frontier"], reach=summary["final_reach"],
                      vote_precision=statistics.fmean(votes) if votes else None,
                      label_precision=statistics.fmean(precisions) if precisions else None,
                      label_yield=statistics.fmean(yields) if yields else None,
                      promotions=summary["promotions"])


def arm_config(config_path: str, arm: Arm, seed: int, common: list[str], root: Path, *, committee_seed: str = "",
               weak_seed: str = ""):
    """The config of one (arm, seed) run: the arm's overrides over ``common``, seed s shifting ``prompts.seed``
    and ``train.seed``, its rounds written under ``root``."""
    from flywheel.config import load_config

    base = load_config(config_path, common)
    overrides = [*common, f"prompts.seed={base.prompts.seed + seed}", f"train.seed={base.train.seed + seed}",
                 *(o.format(committee_seed=committee_seed, weak_seed=weak_seed, seed=seed,
                            seed_path=base.seed.path, per_round_plus_500=base.prompts.per_round + 500)
                   for o in arm.overrides),
                 f"loop.out_dir={root}", "loop.progress=false"]
    return load_config(config_path, overrides)


def run_dir(out: Path, arm_name: str, seed: int) -> Path:
    return out / arm_name / f"seed{seed}"


def same_run(root: Path, config) -> bool:
    """Whether ``root`` holds a run made with exactly this config (its rounds too) and the same outside inputs
    (the seed model's contents, the user's data files): a seed retrained at the same path is another run."""
    from flywheel.config import dump_config
    from flywheel.run_state import changed_inputs, outside_inputs, read_run_config

    made_with = read_run_config(root)
    return (made_with is not None and dump_config(made_with) == dump_config(config)
            and not changed_inputs(root, outside_inputs(config)))


def figures_in(root: Path) -> RunFigures | None:
    """The figures.json a finished run wrote, or None."""
    from flywheel import io

    done = root / "figures.json"
    return RunFigures(**io.read_json(done)) if done.is_file() else None


def run_arm(config_path: str, arm_name: str, arm: Arm, seed: int, common: list[str], out: Path, *,
            committee_seed: str = "", weak_seed: str = "", reuse: bool = False) -> RunFigures:
    """One ``flywheel run --no-track`` of an arm at a seed, in this process. ``reuse``: a finished run in its
    directory made with the same config and seed is read instead (its figures.json), and an unfinished one
    continues from its last finished stage, so a long or time-limited benchmark resumes (a resumed run's
    seconds are those after resuming); without it the run starts over."""
    from flywheel import io
    from flywheel.loop import run_loop

    root = run_dir(out, arm_name, seed)
    config = arm_config(config_path, arm, seed, common, root, committee_seed=committee_seed, weak_seed=weak_seed)
    same = reuse and same_run(root, config)
    if same and (figures := figures_in(root)) is not None:
        return figures
    (root / "figures.json").unlink(missing_ok=True)  # never left beside a run it does not describe
    start = time.perf_counter()
    report = run_loop(config, tracker=None, mode="resume" if same else "restart")
    figures = figures_of(report, arm_name, seed, time.perf_counter() - start)
    figures.tokens = generated_tokens(root, config.loop.rounds)
    io.write_json(root / "figures.json", figures.__dict__)
    return figures


def run_in_parallel(jobs: list[tuple[str, int]], args, config_path: str, common: list[str]) -> None:
    """Each (arm, seed) as its own ``python bench/efficacy.py`` process, ``args.jobs`` at a time, each with
    an equal share of the cores (a GPU's small models leave it idle between kernels: several runs share it).
    A run writes its figures.json; the caller reads them back."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def one(job: tuple[str, int]) -> tuple[str, int, int]:
        name, seed = job
        command = [sys.executable, __file__, "-c", config_path, "--arms", name, "--seeds", str(seed),
                   "--out", args.out, *(f"--set={o}" for o in common),
                   *([f"--committee-seed={args.committee_seed}"] if args.committee_seed else []),
                   *([f"--weak-seed={args.weak_seed}"] if args.weak_seed else []), *(["--reuse"] if args.reuse else [])]
        return name, seed, subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode

    with ThreadPoolExecutor(args.jobs) as pool:
        failed = [(name, seed) for name, seed, code in pool.map(one, jobs) if code != 0]
    if failed:
        sys.exit(f"efficacy: {len(failed)} run(s) failed: "
                 + ", ".join(f"{name} seed {seed}" for name, seed in failed) + " (their errors are above)")


def collect(jobs: list[tuple[str, int]], config_path: str, common: list[str], out: Path, *,
            committee_seed: str = "", weak_seed: str = "") -> list[RunFigures]:
    """The runs in ``out`` as they stand, finished or not, each cut at the last round every one of them finished
    (so the table compares the same rounds); a run not started, or made with another config, is left out."""
    from flywheel.layout import RoundLayout
    from flywheel.report import build_report

    found = []
    for name, seed in jobs:
        root = run_dir(out, name, seed)
        config = arm_config(config_path, ARMS[name], seed, common, root, committee_seed=committee_seed,
                            weak_seed=weak_seed)
        if not (RoundLayout(root, 0).dir.is_dir() and same_run(root, config)):
            print(f"{name} seed {seed}: not started with this config and seed", file=sys.stderr)
            continue
        summary = build_report(root, config)["summary"]
        if "final_frontier" not in summary:  # the seed model's evaluation (round 0) has not finished
            print(f"{name} seed {seed}: not evaluated yet", file=sys.stderr)
            continue
        found.append((name, seed, root, config, summary["rounds"]))
    last = min((rounds for *_, rounds in found), default=0)
    runs = []
    for name, seed, root, config, rounds in found:
        report = build_report(root, config, last_round=last)
        # Stage seconds of the rounds kept (a run's wall time less its set-up and the seed's evaluation).
        seconds = sum(sum((r["timings"] or {}).values()) for r in report["rounds"][1:])
        figures = figures_of(report, name, seed, seconds)
        figures.tokens = generated_tokens(root, last)
        print(f"{name} seed {seed}: {rounds} of {config.loop.rounds} rounds finished", file=sys.stderr)
        runs.append(figures)
    print(f"collected after round {last}, the last every run finished; s/run: the stage seconds of those rounds",
          file=sys.stderr)
    return runs


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return format(mean, fmt) if len(values) < 2 else f"{format(mean, fmt)}±{format(statistics.stdev(values), fmt)}"


def table(runs: list[RunFigures], digits: list[str]) -> str:
    """One row per arm: mean±sd across its seeds."""
    arms = list(dict.fromkeys(r.arm for r in runs))
    head = (f"{'arm':<21}{'seeds':>5} " + " ".join(f"{d + ' dig':>9}" for d in digits)
            + f" {'won':>7} {'frontier':>8} {'reach':>7} {'vote prec':>11} {'train prec':>11} {'yield':>10}"
            + f" {'Mtok':>10} {'s/run':>8}")
    lines = [head]
    for arm in arms:
        mine = [r for r in runs if r.arm == arm]
        accuracy = [_spread([100 * r.accuracy_by_round[-1].get(d, 0.0) for r in mine], ".0f") for d in digits]
        lines.append(
            f"{arm:<21}{len(mine):>5} " + " ".join(f"{a:>9}" for a in accuracy)
            + f" {_spread([len(r.lengths_won) for r in mine], '.1f'):>7}"
            + f" {_spread([r.frontier for r in mine], '.1f'):>8} {_spread([r.reach for r in mine], '.1f'):>7}"
            + f" {_spread([r.vote_precision for r in mine if r.vote_precision is not None], '.3f'):>11}"
            + f" {_spread([r.label_precision for r in mine if r.label_precision is not None], '.3f'):>11}"
            + f" {_spread([r.label_yield for r in mine if r.label_yield is not None], '.2f'):>10}"
            + f" {_spread([r.tokens / 1e6 for r in mine if r.tokens is not None], '.2f'):>10}"
            + f" {_spread([r.seconds for r in mine], '.0f'):>8}")
    return "\n".join(lines)


def gap_recovered(runs: list[RunFigures], digits: list[str], *, weak: str = "weak_to_strong",
                  ceiling: str = "oracle") -> str:
    """Burns et al.'s performance gap recovered per digit length and round, from mean accuracies:
    (student - weak) / (ceiling - weak); weak: the weak seed (round 0 of the weak-to-strong runs), student: the
    champion of the weak-to-strong runs after the round, ceiling: the ``ceiling`` arm's after the same round (the
    student trained on true labels). After round 1 it is weak-to-strong proper; once a student is promoted, later
    rounds add its own self-training. No ratio where the ceiling is under 5 points above the weak seed."""
    students = [r for r in runs if r.arm == weak]
    ceilings = [r for r in runs if r.arm == ceiling]
    if not students or not ceilings:
        return ""
    lines = [f"performance gap recovered ({weak} vs its weak seed, {ceiling} as the ceiling)",
             f"{'round':>5} {'digits':>6} {'weak':>6} {'student':>8} {'ceiling':>8} {'PGR':>6}"]
    rounds = min(len(r.accuracy_by_round) for r in students + ceilings)
    for index in range(1, rounds):
        for d in digits:
            weak_accuracy = statistics.fmean(100 * r.accuracy_by_round[0].get(d, 0.0) for r in students)
            student = statistics.fmean(100 * r.accuracy_by_round[index].get(d, 0.0) for r in students)
            top = statistics.fmean(100 * r.accuracy_by_round[index].get(d, 0.0) for r in ceilings)
            pgr = f"{(student - weak_accuracy) / (top - weak_accuracy):.2f}" if top - weak_accuracy >= 5 else "-"
            lines.append(f"{index:>5} {d:>6} {weak_accuracy:>6.0f} {student:>8.0f} {top:>8.0f} {pgr:>6}")
    return "\n".join(lines)


def rounds_table(runs: list[RunFigures], digits: list[str]) -> str:
    """Mean accuracy (%) per digit length after each round, per arm (round 0: the seed model)."""
    lines = [f"{'arm':<21}{'round':>6} " + " ".join(f"{d:>5}" for d in digits)]
    for arm in dict.fromkeys(r.arm for r in runs):
        mine = [r for r in runs if r.arm == arm]
        for index in range(max(len(r.accuracy_by_round) for r in mine)):
            present = [r.accuracy_by_round[index] for r in mine if index < len(r.accuracy_by_round)]
            lines.append(f"{arm:<21}{index:>6} " + " ".join(
                f"{statistics.fmean(100 * b.get(d, 0.0) for b in present):>5.0f}" for d in digits))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[RunFigures]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=None, help="default: configs/default.yaml (--smoke: smoke.yaml)")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[],
                        help="an override for every arm, e.g. loop.rounds=2")
    parser.add_argument("--arms", default=None, help=f"comma-separated, of: {', '.join(ARMS)} (default: all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--smoke", action="store_true",
                        help=f"configs/smoke.yaml, one round, arms {', '.join(SMOKE_ARMS)} (make test runs it)")
    parser.add_argument("--committee-seed", default="", help="a seed directory with several members (committee arm)")
    parser.add_argument("--weak-seed", default="", help="a seed smaller than the config's (weak_to_strong arm: "
                        "flywheel seed -c configs/weak-to-strong.yaml)")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs in --out made with the same config "
                        "and seed model, and continue unfinished ones")
    parser.add_argument("--digits", default=None, help="digit lengths to show, e.g. 6,7,8 (default: all evaluated)")
    parser.add_argument("--out", default="runs/efficacy", help="where the runs go (each arm/seed{s})")
    parser.add_argument("--json", default="", help="also write every run's figures to this file")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each its own process with a share of the cores (on a GPU: several)")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: the table of the runs in --out as they stand, unfinished ones included, "
                             "at the last round every run finished")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    from flywheel.console import quiet_libraries

    quiet_libraries()
    config = args.config or str(ROOT / "configs" / ("smoke.yaml" if args.smoke else "default.yaml"))
    common = (["loop.rounds=1"] if args.smoke else []) + args.overrides
    names = args.arms.split(",") if args.arms else list(SMOKE_ARMS if args.smoke else ARMS)
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        parser.error(f"unknown arm {unknown[0]!r}; arms: {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs, skipped = [], []
    for name in names:
        arm = ARMS[name]
        if arm.needs and not getattr(args, arm.needs):
            skipped.append(f"{name} (needs --{arm.needs.replace('_', '-')})")
            continue
        jobs += [(name, seed) for seed in seeds]
    out = Path(args.out)
    if args.collect:
        runs = collect(jobs, config, common, out, committee_seed=args.committee_seed, weak_seed=args.weak_seed)
    else:
        parallel = args.jobs > 1 and len(jobs) > 1
        if parallel:
            run_in_parallel(jobs, args, config, common)
        runs = []
        for name, seed in jobs:
            if parallel:  # each run wrote its figures.json, and printed its line itself
                root = run_dir(out, name, seed)
                made = arm_config(config, ARMS[name], seed, common, root, committee_seed=args.committee_seed,
                                  weak_seed=args.weak_seed)
                figures = figures_in(root) if same_run(root, made) else None
                if figures is None:
                    sys.exit(f"efficacy: {root}: the run left no figures.json of this config")
            else:
                figures = run_arm(config, name, ARMS[name], seed, common, out, committee_seed=args.committee_seed,
                                  weak_seed=args.weak_seed, reuse=args.reuse)
                print(f"{name} seed {seed}: {figures.seconds:.0f} s, frontier {figures.frontier}, "
                      f"reach {figures.reach}, won {','.join(figures.lengths_won) or '-'}", file=sys.stderr, flush=True)
            runs.append(figures)
    if not runs:
        sys.exit("efficacy: no runs to show")
    digits = args.digits.split(",") if args.digits else sorted(
        {d for r in runs for d in r.accuracy_by_round[0] if d.isdigit()}, key=int)
    print(f"config {config} {' '.join(common)}; seeds {args.seeds}; mean±sd across seeds; accuracy (%) after the "
          f"last gate")
    print(table(runs, digits))
    print()
    print(rounds_table(runs, digits))
    gap = gap_recovered(runs, digits)
    if gap:
        print()
        print(gap)
    for name in skipped:
        print(f"not run: {name}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    return runs


if __name__ == "__main__":
    main()
