"""``flywheel``: one subcommand per stage, plus ``seed``, ``run`` (the whole loop) and ``config``.

Every subcommand reads files and writes files; ``dvc.yaml`` calls them. Bad input
(a malformed file, a missing field, an unknown config key) prints one line and
exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flywheel.console import quiet_libraries, setup_logging
from flywheel.errors import InputError, Terminated

EXAMPLES = """\
examples:
  flywheel run                                  the default loop (seed must exist: make seed)
  flywheel run -c configs/default.yaml -s loop.rounds=5 -s curate.min_vote_share=0.8
  flywheel run -c configs/default.yaml --resume   continue an interrupted run (--restart: start over)
  flywheel status runs/default                  which rounds finished, their decisions, where it stopped
  flywheel seed -c configs/default.yaml         train the seed committee (labels, short problems)
  flywheel generate --round 1 --prompts data/rounds/1/prompts.parquet \\
      --model data/rounds/0/champion --out data/rounds/1/samples.parquet
  flywheel config                               every config key with its default and help
  flywheel pipeline compile                     Kubeflow pipelines -> pipelines/compiled/*.yaml
  flywheel pipeline upload --host http://localhost:8080   create/update the pipelines for the KFP UI
  flywheel pipeline run --host http://localhost:8080 -c configs/default.yaml
  flywheel pipeline schedule --host http://localhost:8080 --cron "0 3 * * *"
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="YAML config (default: built-in defaults = configs/default.yaml)")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, repeatable: -s train.steps=200 -s gate.alpha=0.01")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more on stderr: -v adds each stage's details, -vv the libraries' own logs")
    parser.add_argument("-q", "--quiet", action="count", default=0,
                        help="less on stderr: no stage headings (warnings and errors only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flywheel", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Self-improving data flywheel: each round the champion answers unlabeled prompts K times, "
                    "votes, keeps what it trusts, is fine-tuned on it, and the candidate replaces it only if "
                    "it wins the gate.")
    from flywheel import __version__
    from flywheel.tool_commands import add_tool_parsers

    parser.add_argument("--version", action="version", version=f"flywheel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p)
        return p

    # Each command's flags stand beside its function below; the tools and the cluster doors add their own.
    for add_command in (_add_run, _add_seed, _add_prepare, _add_round_stages, _add_track, _add_step, _add_report,
                        _add_config):
        add_command(add)
    add_tool_parsers(sub)
    from flywheel.kubeflow.cli import add_parser as add_pipeline_parser

    add_pipeline_parser(sub, _common)
    from flywheel.argo.cli import add_parser as add_argo_parser

    add_argo_parser(sub, _common)
    return parser


def main(argv: list[str] | None = None) -> int:
    from flywheel.termination import install_termination_handler, raise_if_terminated

    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", 0))
    restore = install_termination_handler()  # every command: SIGTERM is one line and exit 143, not a silent death
    try:
        code = _dispatch(args)
        raise_if_terminated()  # a SIGTERM that a library's callback swallowed still ends the command as stopped
        return code
    except InputError as error:
        print(f"flywheel: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `flywheel config | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("flywheel: interrupted; outputs are written atomically: re-run the command (flywheel run --resume)",
              file=sys.stderr)
        return 130
    except Terminated:
        restore()  # while the Terminated is held: nothing raises SIGTERM again (the watcher) as this reports it
        again = "continue with `flywheel run --resume`" if args.command == "run" else "re-run it"
        print(f"flywheel: terminated; SIGTERM stopped `{_command_line(args)}`; its outputs are written atomically: "
              f"{again}", file=sys.stderr)
        return 143
    finally:
        restore()


def _command_line(args) -> str:
    """The command as typed, without its options: ``flywheel train``, ``flywheel step vote``, ``flywheel data push``."""
    words = [args.command] + [str(getattr(args, name)) for name in ("stage", "data_command")
                              if getattr(args, name, None)]
    return " ".join(["flywheel", *words])


def _dispatch(args) -> int:
    """Commands that need no config, then the config, then the machine (``_set_up``), then the command."""
    from flywheel.tool_commands import TOOL_COMMANDS

    if args.command in TOOL_COMMANDS:
        return TOOL_COMMANDS[args.command](args)
    from flywheel.config import load_config

    if args.command in ("report", "step", "track") and args.config is None:
        from flywheel.layout import RunLayout

        if RunLayout(args.root).config.is_file():
            args.config = RunLayout(args.root).config  # the config the run was made with
    config = load_config(args.config, args.overrides)
    if args.command == "config":
        return _config(config)
    if args.command in ("pipeline", "argo"):  # Kubernetes: compile/submit only, nothing runs here
        from flywheel.infra import cluster_config

        if args.command == "argo":
            from flywheel.argo.cli import run as run_door
        else:
            from flywheel.kubeflow.cli import run as run_door
        return run_door(args, cluster_config(args.config, args.overrides))
    task = _set_up(args, config)
    _check_outputs(args)  # a bad output path fails now, not after the compute
    result = STAGE_COMMANDS.get(args.command, _round_stage)(args, config, task)
    if isinstance(result, int):
        return result
    print(json.dumps(result, indent=2, default=str))
    return 0


def _set_up(args, config):
    """Threads, the machine checks every door shares (``flywheel.machine_checks``), logging and progress bars;
    returns the task."""
    from flywheel.machine_checks import check_stage, uses_model
    from flywheel.tasks import load_task

    stage = args.stage if args.command == "step" else args.command
    stage = "prepare" if stage == "start" else stage
    if uses_model(config, stage):  # torch only where a model runs: vote and curate start 2 s sooner without it
        import torch

        torch.set_num_threads(max(1, min(os.cpu_count() or 1, torch.get_num_threads())))
    task = load_task(config.task, config.code)
    check_stage(config, stage)
    if getattr(args, "verbose", 0) < 2:
        quiet_libraries(models=uses_model(config, stage))
    # No progress bars in logs (dvc repro, CI, pipes) or with -q.
    config.loop.progress = config.loop.progress and sys.stderr.isatty() and not getattr(args, "quiet", 0)
    return task


def _add_config(add) -> None:
    """flywheel config"""
    add("config", "Print every config key with its value and help (after -c/-s).")


def _config(config) -> int:
    from flywheel.config import describe, to_dict

    values = to_dict(config)
    for key, _, help in describe():
        node = values
        for part in key.split("."):
            node = node[part]
        print(f"{key} = {json.dumps(node)}\n    {help}")
    return 0


def _add_run(add) -> None:
    """flywheel run"""
    p = add("run", "Run the whole loop: seed scores, then loop.rounds rounds; print the table, write the report.")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in loop.out_dir: complete stages are skipped, the MLflow parent run "
                            "continues; refuses a changed config (loop.rounds may grow)")
    again.add_argument("--restart", action="store_true",
                       help="delete the earlier run in loop.out_dir (after the inputs are checked) and start over")


def _run_command(args, config, task) -> int:
    mode = "resume" if args.resume else "restart" if args.restart else "new"
    return _run(config, track=not args.no_track, mode=mode)


def _run(config, *, track: bool, mode: str) -> int:
    from flywheel.loop import check_seed, run_loop
    from flywheel.report import table
    from flywheel.run_state import check_open, check_out_dir
    from flywheel.termination import install_termination_handler

    install_termination_handler()  # SIGTERM ends the MLflow runs as KILLED, like Ctrl-C
    check_seed(config)  # before MLflow creates anything
    check_open(check_out_dir(config.loop.out_dir), mode)  # a refused run leaves no mlflow.db either
    tracker = None
    if track and config.tracking.enabled:
        from flywheel.tracking import Tracker

        tracker = Tracker(config.tracking)

    def on_round(round_index: int, report: dict) -> None:
        lines = table(report).splitlines()
        if not on_round.printed_header:  # after the checks: an error is the only line of a refused run
            print(lines[0], flush=True)
            on_round.printed_header = True
        print(lines[-1], flush=True)

    on_round.printed_header = False
    report = run_loop(config, tracker=tracker, on_round=on_round, mode=mode)
    print()
    print(table(report))
    print(f"\nreport: {Path(config.loop.out_dir) / 'report.json'}  {Path(config.loop.out_dir) / 'report.html'}")
    if tracker is not None:
        print(f"mlflow: {config.tracking.uri} experiment '{config.tracking.experiment}', "
              f"model '{config.tracking.registered_model}' (alias 'champion')")
    return 0


def _add_seed(add) -> None:
    """flywheel seed"""
    add("seed", "Train the seed committee on labeled short problems (writes seed.path).").add_argument(
        "--out", type=Path, default=None, help="output directory (default: seed.path)")


def _seed(args, config, task) -> dict:
    from flywheel.seed_model import train_seed

    return train_seed(config, task=task, out_dir=args.out, device=config.loop.device, progress=config.loop.progress)


def _add_prepare(add) -> None:
    """flywheel prepare"""
    p = add("prepare", "Write the eval set and round 0: the seed as champion, its scores, an empty pool.")
    p.add_argument("--root", type=Path, required=True, help="the loop's data directory")


def _prepare(args, config, task) -> int:
    from flywheel.loop import prepare
    from flywheel.versioning import check_dvc_rounds

    check_dvc_rounds(config)  # dvc repro's first stage: dvc.yaml's rounds must be loop.rounds
    prepare(config, args.root, task=task)
    return 0


def _add_round_stages(add) -> None:
    """flywheel prompts|generate|vote|curate|train|evaluate|gate: each flag from the stage's record"""
    from flywheel.stages.records import ROUND

    for stage in ROUND:  # a round's stages: each flag from its record (flywheel.stages.records)
        p = add(stage.name, stage.help)
        if stage.takes_round:
            p.add_argument("--round", type=int, required=True)
        for path in stage.paths:
            p.add_argument(path.flag, type=Path, required=path.required, default=None, help=path.help or None,
                           nargs="+" if path.many else None)


def _round_stage(args, config, task) -> dict:
    """``flywheel <stage>`` for a stage of a round: its record's call with the paths the flags give."""
    from flywheel.stages.records import STAGES

    stage = STAGES[args.command]
    paths = {path.name: getattr(args, path.name) for path in stage.paths}
    return stage.shown(stage.run(config, task, getattr(args, "round", None), paths))


def _add_track(add) -> None:
    """flywheel track"""
    p = add("track", "Log a round's files to MLflow (nested run, dataset digest, model version, alias).")
    p.add_argument("--round", type=int, default=None, help="the round to log (every use but --end-loop)")
    p.add_argument("--root", type=Path, required=True, help="the loop's data directory (holds rounds/)")
    p.add_argument("--out", type=Path, default=None, help="the record to write (default: <root>/tracking/round-N.json)")
    p.add_argument("--door", choices=("dvc", "argo"), default="dvc",
                   help="whose MLflow parent run the round nests under: one per directory and door (default: dvc)")
    p.add_argument("--end-loop", metavar="WORKFLOW_STATUS", default=None,
                   help="instead of a round: end the directory's parent run as its workflow ended (Succeeded: "
                        "FINISHED; Failed, Error: FAILED, or KILLED where --failures shows a stop): the Argo door's "
                        "exit handler")
    p.add_argument("--failures", metavar="JSON", default="",
                   help="with --end-loop: Argo's {{workflow.failures}}, the failed steps and their messages; the "
                        "first is tagged on the parent run (flywheel.error), and `argo stop`'s message makes it KILLED")


def _track(args, config, task) -> dict:
    from flywheel.tracking import end_workspace_loop, loop_key, track_round

    if args.end_loop is not None:
        return end_workspace_loop(config, loop_key=loop_key(args.door, args.root), workflow_status=args.end_loop,
                                  failures=args.failures)
    if args.round is None:
        raise InputError("--round", "flywheel track needs --round N (or --end-loop STATUS)")
    # One parent run per directory and door; round 1 registers the seed.
    return track_round(config, args.root, args.round, loop_key=loop_key(args.door, args.root),
                       register_seed=args.round == 1, out=args.out)


def _add_step(add) -> None:
    """flywheel step"""
    p = add("step", "Run one step of a workspace's round, every path from the run layout: what each pod of the "
                    "Argo Workflows door runs (docs/argo.md).")
    from flywheel.stages.records import ROUND_STAGES

    p.add_argument("stage", choices=("start", *ROUND_STAGES),
                   help="start: write <root>/config.yaml (from -c), prepare round 0 if the workspace has none, "
                        "print the next round; or one stage of --round")
    p.add_argument("--root", type=Path, required=True, help="the workspace (holds rounds/)")
    p.add_argument("--round", type=int, default=None, help="the round (every stage but start)")
    p.add_argument("--next-round-file", type=Path, default=None,
                   help="start: also write the next round to this file (what the Argo door reads)")


def _step(args, config, task) -> dict | int:
    """One step of a workspace's round (the Argo door's pods): ``start`` or a stage of ``flywheel.loop``."""
    from flywheel import io
    from flywheel.config import config_file_text
    from flywheel.layout import RunLayout
    from flywheel.loop import prepare, round_stages

    run = RunLayout(args.root)
    if args.stage == "start":
        io.write_text(run.config, config_file_text(config))  # every later step reads it (-c defaults to it)
        if not run.round(0).metrics.is_file():
            prepare(config, args.root, task=task)
        next_round = run.next_round()
        if args.next_round_file is not None:  # Argo reads the round from this file: stdout may hold other text
            io.write_text(args.next_round_file, f"{next_round}\n")
        print(next_round)
        return 0
    if args.round is None or args.round < 1:
        raise InputError("--round", f"flywheel step {args.stage} needs --round N (N >= 1)")
    stage = next(s for s in round_stages(config, args.root, args.round, task=task)
                 if s.name == args.stage)
    return stage.run()


def _add_report(add) -> None:
    """flywheel report"""
    p = add("report", "Build report.json and report.html from a loop's directory (with the config.yaml it holds).")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--end-mlflow-run", action="store_true",
                   help="end the MLflow parent run that `flywheel track` opened for this directory (dvc repro's "
                        "last stage), with the report's summary as its metrics")


def _report(args, config, task) -> int:
    from flywheel.report import build_report, table, write_report

    from flywheel.layout import RoundLayout

    if not RoundLayout(args.root, 0).metrics.is_file():
        raise InputError(RoundLayout(args.root, 0).dir, "no loop here (run `flywheel prepare` or `flywheel run` first)",
                         field="--root")
    report = build_report(args.root, config)
    write_report(args.root, report)
    if args.end_mlflow_run and config.tracking.enabled:
        from flywheel.tracking import Tracker, loop_key

        tracker = Tracker(config.tracking)
        tracker.end_loop(tracker.start_loop(config, loop_key=loop_key("dvc", args.root)), {"final": report["summary"]})
    print(table(report))
    return 0


# Each command's function (the tools, flywheel.tool_commands, need neither a config nor the machine).
STAGE_COMMANDS = {"run": _run_command, "seed": _seed, "prepare": _prepare, "track": _track, "report": _report,
                  "step": _step}


# The outputs of the commands that are not a round's stage: (argument, a directory?). A round's stages: their
# records' output paths (``stage_outputs``).
OTHER_OUTPUTS = {"track": [("out", False)], "seed": [("out", True)], "prepare": [("root", True)]}


def stage_outputs(command: str) -> list[tuple[str, bool]]:
    """A command's output arguments, (name, a directory?). Checked before any model loads."""
    from flywheel.stages.records import STAGES

    if command in STAGES:
        return [(p.name, p.directory) for p in STAGES[command].paths if p.output]
    return OTHER_OUTPUTS.get(command, [])


def written_inside(command: str) -> list[tuple[str, bool]]:
    """What a stage command writes inside its output directory: (path relative to it, a directory?). Each is
    checked with the directory: a directory where one of its files goes would otherwise fail the final rename,
    after the compute."""
    from flywheel.layout import RoundLayout, RunLayout
    from flywheel.stages.records import STAGES

    if command == "prepare":
        run, zero = RunLayout(Path()), RoundLayout(Path(), 0)
        return [(str(run.eval_set), False), (str(zero.champion), True), (str(zero.pool), False),
                (str(zero.eval_dir), True), (str(zero.metrics), False)]
    stage = STAGES.get(command)
    return [(name, False) for p in (stage.paths if stage else ()) if p.output for name in p.files]


def _check_outputs(args) -> None:
    from flywheel.io import check_output, remove_leftovers

    outputs = [(getattr(args, name), name, directory) for name, directory in stage_outputs(args.command)
               if getattr(args, name, None) is not None]
    for value, name, directory in outputs:  # every output checked before anything is removed
        flag = "--" + name.replace("_", "-")
        check_output(value, directory=directory, flag=flag)
        for inner, inner_directory in written_inside(args.command) if directory else []:
            check_output(value / inner, directory=inner_directory, flag=flag)
    if args.command in ("seed", "prepare"):
        return
    for value, _, directory in outputs:
        # A re-run starts clean: what a killed run of this stage left beside (or in) its outputs goes.
        remove_leftovers(value.parent)
        if directory:
            remove_leftovers(value)


if __name__ == "__main__":
    sys.exit(main())
