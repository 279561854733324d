"""The loop's report: a per-round table (stdout), report.json, and report.html with an accuracy plot."""

from __future__ import annotations

import base64
import html
import io as _io
import json
from pathlib import Path

from flywheel import io
from flywheel.layout import RoundLayout, RunLayout
from flywheel.schemas import bucket_key


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def build_report(root: Path, config, *, last_round: int | None = None) -> dict:
    """Collect every finished round's files under ``root`` into one dict (what report.json holds); with
    ``last_round``, none after it (runs that finished different numbers of rounds, compared at the same one)."""
    root = Path(root)
    rounds = []
    this = RoundLayout(root, 0)
    while this.dir.exists() and (last_round is None or this.index <= last_round):
        index = this.index
        metrics = _read(this.metrics) or {}
        decision = _read(this.decision)
        if index > 0 and decision is None:
            break  # a round still running or interrupted
        vote = _read(this.vote_summary) or {}
        curation = _read(this.curation) or {}
        champion_after = (metrics.get("candidate") if decision and decision["promote"] else metrics.get("champion"))
        rounds.append({
            "round": index,
            "bucket": (_read(this.prompts_summary) or {}).get("bucket"),
            "champion": metrics.get("champion"),
            "candidate": metrics.get("candidate"),
            "champion_after": champion_after,
            "vote": vote,
            "curation": curation,
            "decision": decision,
            # What the registry made of the gate's decision (flywheel.tracking): promoted, declined or stale.
            "promotion": (_read(RunLayout(root).tracking_record(index)) or {}).get("promotion"),
            "timings": _read(this.timings),
        })
        this = RoundLayout(root, index + 1)
    seed_scores = rounds[0]["champion"] if rounds else None
    final = rounds[-1]["champion_after"] if rounds else None
    summary = {"rounds": len(rounds) - 1}
    if seed_scores and final:
        summary.update({
            "seed_accuracy": seed_scores["accuracy"], "final_accuracy": final["accuracy"],
            "seed_frontier": seed_scores["frontier"], "final_frontier": final["frontier"],
            "seed_reach": seed_scores["reach"], "final_reach": final["reach"],
            "promotions": sum(1 for r in rounds[1:] if r["decision"]["promote"]),
        })
        lifted = [b for b, acc in final["buckets"].items() if seed_scores["buckets"].get(b, 0) < 0.10 and acc >= 0.80]
        summary["buckets_lifted_from_below_10_to_80"] = sorted(lifted, key=bucket_key)  # named buckets too
    report = {"name": config.name, "summary": summary, "rounds": rounds}
    tracked = mlflow_section(root, config, [r["round"] for r in rounds[1:]])
    if tracked:
        report["mlflow"] = tracked
    return report


def mlflow_section(root: Path, config, round_indices: list[int]) -> dict | None:
    """Where the run is in MLflow, from the tracking records the rounds wrote (so ``flywheel report`` rebuilt
    later keeps it): the store, the parent run, and each round's run, model version and promotion. None
    where no round was tracked."""
    records = {index: _read(RunLayout(Path(root)).tracking_record(index)) or {} for index in round_indices}
    records = {index: record for index, record in records.items() if record.get("run_id")}
    if not records:
        return None
    last = records[max(records)]
    return {"tracking_uri": config.tracking.uri, "experiment": config.tracking.experiment,
            "experiment_id": last.get("experiment_id"), "registered_model": config.tracking.registered_model,
            "parent_run_id": last.get("parent_run_id"), "rounds": records}


def mlflow_run_url(section: dict, run_id: str) -> str | None:
    """The MLflow UI's page of ``run_id`` where the store is a server (http[s]); None for a local store."""
    uri, experiment = section.get("tracking_uri") or "", section.get("experiment_id")
    if not uri.startswith(("http://", "https://")) or not experiment:
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def table(report: dict) -> str:
    """The per-round table printed by ``flywheel run``."""
    head = (f"{'round':>5} {'bucket':>6} {'PL prec':>7} {'yield':>6} {'kept':>6} {'train':>6} "
            f"{'champ':>6} {'cand':>6} {'p':>8} {'gate':>8} {'front':>5} {'reach':>5}  accuracy by digits (after gate)")
    lines = [head]
    for r in report["rounds"]:
        after = r["champion_after"] or {}
        buckets = " ".join(f"{b}:{acc * 100:.0f}" for b, acc in _by_bucket(after.get("buckets") or {}))
        if r["round"] == 0:
            lines.append(f"{0:>5} {'seed':>6} {'':>7} {'':>6} {'':>6} {'':>6} {after.get('accuracy', 0):>6.3f} "
                         f"{'':>6} {'':>8} {'':>8} {after.get('frontier', 0):>5} {after.get('reach', 0):>5}  {buckets}")
            continue
        d, v, c = r["decision"], r["vote"], r["curation"]
        prec = v.get("pseudo_label_precision")
        yield_ = c.get("prompts_kept", 0) / c["prompts_in"] if c.get("prompts_in") else 0.0
        lines.append(
            f"{r['round']:>5} {r['bucket']:>6} {'-' if prec is None else f'{prec:.3f}':>7} {yield_:>6.2f} "
            f"{c.get('samples_kept', 0):>6} {c.get('train_rows', 0):>6} {d['champion_accuracy']:>6.3f} "
            f"{d['candidate_accuracy']:>6.3f} {d['p_value']:>8.2g} {_verdict(r):>8} "
            f"{after.get('frontier', 0):>5} {after.get('reach', 0):>5}  {buckets}")
    return "\n".join(lines)


def _verdict(round_entry: dict) -> str:
    """The gate column: promote, decline, or stale (the gate promoted; the registry's alias had moved on)."""
    if round_entry.get("promotion") == "stale":
        return "stale"
    return "promote" if round_entry["decision"]["promote"] else "decline"


def _by_bucket(buckets: dict) -> list[tuple[str, float]]:
    """Buckets in numeric order (JSON round-trips sort "10" before "2")."""
    return sorted(buckets.items(), key=lambda kv: bucket_key(kv[0]))


def figure(report: dict):
    """The report's plots as one matplotlib figure.

    Every task gets the per-round panel: the champion's overall accuracy after each gate, and the
    vote's pseudo-label precision (audit) and yield. Tasks with numeric buckets (the addition task's
    digit lengths) also get accuracy per bucket, one line per round's champion. Integer ticks on both.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in report["rounds"] if r["champion_after"]]
    numeric = any(b.isdigit() for r in rounds for b in r["champion_after"]["buckets"])
    fig, axes = plt.subplots(1, 2 if numeric else 1, figsize=(12 if numeric else 6.5, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    ax.plot([r["round"] for r in rounds], [r["champion_after"]["accuracy"] * 100 for r in rounds], marker="o",
            label="champion accuracy (after gate)")
    voted = [r for r in rounds[1:] if r["vote"].get("pseudo_label_precision") is not None]
    ax.plot([r["round"] for r in voted], [r["vote"]["pseudo_label_precision"] * 100 for r in voted], marker="s",
            label="pseudo-label precision (audit)")
    curated = [r for r in rounds[1:] if r["curation"].get("prompts_in")]
    ax.plot([r["round"] for r in curated], [r["curation"]["prompts_kept"] / r["curation"]["prompts_in"] * 100
                                            for r in curated], marker="^", label="yield (prompts kept)")
    _style(ax, xlabel="round (0: seed)", ylabel="%", title=f"{report['name']}: per round")
    if numeric:
        ax = axes[0][1]
        for r in rounds:
            after = r["champion_after"]
            xs = sorted((b for b in after["buckets"] if b.isdigit()), key=int)
            label = "seed" if r["round"] == 0 else \
                f"round {r['round']} ({'promoted' if r['decision']['promote'] else 'kept'})"
            ax.plot([int(x) for x in xs], [after["buckets"][x] * 100 for x in xs], marker="o", label=label)
        _style(ax, xlabel="bucket (addition: digits per operand)", ylabel="champion accuracy (%)",
               title="accuracy per bucket per round")
    fig.tight_layout()
    return fig


def _style(ax, *, xlabel: str, ylabel: str, title: str) -> None:
    """Percent on y (0-100), integer ticks on x (rounds and digit lengths are whole numbers)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)


def plot_png(report: dict) -> bytes:
    import matplotlib.pyplot as plt

    fig = figure(report)
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def html_report(report: dict) -> str:
    png = base64.b64encode(plot_png(report)).decode()
    rows = []
    for r in report["rounds"][1:]:
        c = r["curation"]
        funnel = ", ".join(f"{html.escape(k)}: {v}" for k, v in c.get("drops", {}).items())
        thresholds = " ".join(
            f"{t['threshold']:.1f}→{t['yield']:.2f}/{'-' if t['precision'] is None else format(t['precision'], '.3f')}"
            for t in c.get("thresholds", []))
        rows.append(f"<tr><td>{r['round']}</td><td>{r['bucket']}</td>"
                    f"<td>{r['vote'].get('pseudo_label_precision', 0) or 0:.3f}</td>"
                    f"<td>{c.get('samples_kept', 0)} / {c.get('samples_in', 0)}</td><td>{funnel}</td>"
                    f"<td>{thresholds}</td><td>{html.escape(r['decision']['reason'])}</td></tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>flywheel: {html.escape(report['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>flywheel: {html.escape(report['name'])}</h1>
<img alt="accuracy, label precision and yield per round; accuracy per bucket" src="data:image/png;base64,{png}">
<h2>Rounds</h2><pre>{html.escape(table(report))}</pre>
<h2>Curation and gate</h2>
<table><tr><th>round</th><th>bucket</th><th>pseudo-label precision</th><th>samples kept</th><th>drops by reason</th>
<th>vote-share threshold → yield / precision</th><th>gate</th></tr>{''.join(rows)}</table>
<h2>Summary</h2><pre>{html.escape(json.dumps(report['summary'], indent=2))}</pre>{_mlflow_html(report)}</body></html>
"""


def _mlflow_html(report: dict) -> str:
    """The MLflow runs behind the report: links where the store is a server, else how to open it."""
    section = report.get("mlflow")
    if not section:
        return ""

    def run(run_id: str | None) -> str:
        if not run_id:
            return ""
        url = mlflow_run_url(section, run_id)
        shown = html.escape(run_id)
        return f'<a href="{html.escape(url)}">{shown}</a>' if url else f"<code>{shown}</code>"

    uri = section.get("tracking_uri") or ""
    opening = (f'<p>Store: <a href="{html.escape(uri)}">{html.escape(uri)}</a></p>' if uri.startswith("http") else
               f"<p>Open it with <code>mlflow ui --backend-store-uri {html.escape(uri)}</code>.</p>")
    rows = "".join(f"<tr><td>{index}</td><td>{run(record.get('run_id'))}</td>"
                   f"<td>{html.escape(str(record.get('model_version', '')))}</td>"
                   f"<td>{html.escape(str(record.get('promotion', '')))}</td></tr>"
                   for index, record in sorted(section["rounds"].items(), key=lambda kv: int(kv[0])))
    return (f"<h2>MLflow</h2>{opening}<p>Experiment {html.escape(str(section.get('experiment')))}, registered model "
            f"{html.escape(str(section.get('registered_model')))}, parent run {run(section.get('parent_run_id'))}.</p>"
            f"<table><tr><th>round</th><th>run</th><th>model version</th><th>promotion</th></tr>{rows}</table>")


def plot_tables(report: dict) -> dict[str, list[dict]]:
    """The CSVs behind `dvc plots show`: accuracy per digits (a column per round) and per-round figures."""
    by_digits: dict[int, dict] = {}
    per_round = []
    for r in report["rounds"]:
        after = r["champion_after"] or {}
        column = "seed" if r["round"] == 0 else f"round_{r['round']}"
        for bucket, acc in (after.get("buckets") or {}).items():
            if not bucket.isdigit():
                continue  # the plot's x axis is a length; a named bucket ("all") has none
            by_digits.setdefault(int(bucket), {"digits": int(bucket)})[column] = round(acc * 100, 2)
        if r["round"] > 0:
            c = r["curation"]
            per_round.append({
                "round": r["round"],
                "pseudo_label_precision": r["vote"].get("pseudo_label_precision"),
                "champion_accuracy": r["decision"]["champion_accuracy"],
                "candidate_accuracy": r["decision"]["candidate_accuracy"],
                "yield": c.get("prompts_kept", 0) / c["prompts_in"] if c.get("prompts_in") else 0.0,
                "promoted": int(r["decision"]["promote"]),
            })
    return {"accuracy_by_digits": [by_digits[k] for k in sorted(by_digits)], "rounds": per_round}


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    columns = list(dict.fromkeys(key for row in rows for key in row))
    with io.atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_report(root: Path, report: dict) -> None:
    run = RunLayout(Path(root))
    io.write_json(run.report_json, report)
    for name, rows in plot_tables(report).items():
        _write_csv(run.plots / f"{name}.csv", rows)
    with io.atomic_path(run.report_html) as tmp:
        tmp.write_text(html_report(report))


def vote_confusion(votes: list[dict], truth: dict[str, str], is_correct, min_vote_share: float) -> dict:
    """The vote as a detector of correct pseudo-labels, audited against hidden truth.

    Rows: is the majority answer actually correct; columns: does the vote trust it (an answer
    holding at least ``min_vote_share``, the share curation keeps). Audit only, never training.
    Returns ``{"categories": [...], "matrix": [[...], [...]]}`` for Kubeflow's ClassificationMetrics.
    """
    categories = ["correct", "incorrect"]
    matrix = [[0, 0], [0, 0]]
    for v in votes:
        if v["prompt_id"] not in truth:
            continue
        actual = 0 if is_correct(v["majority_answer"], truth[v["prompt_id"]]) else 1
        trusted = 0 if v["majority_answer"] is not None and v["vote_share"] >= min_vote_share else 1
        matrix[actual][trusted] += 1
    return {"categories": categories, "matrix": matrix}


def round_markdown(root: Path, round_index: int, name: str = "") -> str:
    """One round as Markdown (Kubeflow's per-round report): curation funnel by drop reason, vote
    statistics, candidate vs champion per bucket, and the gate's decision with its reason."""
    this = RoundLayout(Path(root), round_index)
    prompts = _read(this.prompts_summary) or {}
    vote = _read(this.vote_summary) or {}
    curation = _read(this.curation) or {}
    decision = _read(this.decision) or {}
    lines = [f"# {name + ': ' if name else ''}round {round_index}", ""]
    tracked = _read(RunLayout(Path(root)).tracking_record(round_index)) or {}
    if decision:
        verdict = "**promoted**" if decision["promote"] else "**declined**"
        lines += [f"Gate: {verdict}: {decision['reason']}.", ""]
        if tracked.get("promotion") == "stale":
            lines += [f"Registry: **stale**: this round started from v{tracked.get('started_from')}, but the "
                      f"'champion' alias names v{tracked.get('champion_version')}; nothing moved.", ""]
        elif tracked.get("promotion") == "promoted" and tracked.get("model_version"):
            lines += [f"Registry: the 'champion' alias moved to v{tracked['model_version']}.", ""]
        lines += [f"Candidate {decision['candidate_accuracy']:.4f} vs champion {decision['champion_accuracy']:.4f} "
                  f"(delta {decision['delta']:+.4f}; {decision['test']} p = {decision['p_value']:.4g}; "
                  f"only champion right {decision['only_champion_correct']}, only candidate right "
                  f"{decision['only_candidate_correct']}, n = {decision['n']}).", ""]
    lines += ["## Prompts and vote", "", "| | |", "|---|---|",
              f"| bucket offered | {prompts.get('bucket', '-')} |", f"| prompts | {prompts.get('prompts', '-')} |"]
    for key in ("majority_ratio", "mean_entropy", "unanimous_rate", "no_answer_rate", "pseudo_label_precision"):
        if key in vote:
            lines.append(f"| {key.replace('_', ' ')} | {_fmt(vote[key])} |")
    lines += ["", "## Curation funnel (samples)", "", "| step | samples |", "|---|---|",
              f"| generated | {curation.get('samples_in', '-')} |"]
    for reason, count in (curation.get("drops") or {}).items():
        lines.append(f"| dropped `{reason}` | -{count} |")
    lines += [f"| kept | {curation.get('samples_kept', '-')} |",
              f"| prompts kept / offered | {curation.get('prompts_kept', '-')} / {curation.get('prompts_in', '-')} |",
              f"| training rows (new + earlier rounds) | {curation.get('train_rows', '-')} "
              f"({curation.get('train_rows_new', '-')} + {curation.get('train_rows_earlier', '-')}) |"]
    if curation.get("kept_label_precision") is not None:
        lines.append(f"| kept label precision (audit) | {curation['kept_label_precision']:.4f} |")
    if decision.get("buckets"):
        lines += ["", "## Candidate vs champion per bucket", "", "| bucket | n | champion | candidate | delta |",
                  "|---|---|---|---|---|"]
        for bucket, entry in _by_bucket(decision["buckets"]):
            lines.append(f"| {bucket} | {entry['n']} | {entry['champion']:.3f} | {entry['candidate']:.3f} | "
                         f"{entry['delta']:+.3f} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
