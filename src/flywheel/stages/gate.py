"""Gate: promote the candidate only if it wins measurably, and say why.

Paired comparison on the same eval items (each item: was the champion right,
was the candidate right):
  * ``mcnemar``: exact one-sided McNemar test on the discordant pairs,
    p = P(X >= c | X ~ Binomial(b + c, 1/2)), b = only champion right, c = only candidate right;
  * ``bootstrap``: paired bootstrap of the accuracy difference, p = share of resamples with difference <= 0.
Promotion needs all of: at least one compared item, gain >= ``min_gain``, p <= ``alpha``, and no bucket losing
more than ``max_bucket_drop``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from flywheel import io, model_copies
from flywheel.config import GateConfig
from flywheel.schemas import bucket_key


def mcnemar_p(only_champion: int, only_candidate: int) -> float:
    """One-sided exact McNemar p-value that the candidate is better."""
    n = only_champion + only_candidate
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(only_candidate, n + 1)) / 2**n


def bootstrap_p(champion: list[bool], candidate: list[bool], *, samples: int, seed: int) -> float:
    """Share of paired resamples in which the candidate's accuracy is not above the champion's.

    A paired difference is -1, 0 or +1, so a resample of ``n`` items is fully described by how many of each
    it drew: one multinomial draw per resample (numpy) instead of ``n`` index draws, the same distribution
    at O(samples) cost."""
    import numpy as np

    n = len(champion)
    if n == 0:
        return 1.0
    diffs = np.asarray(candidate, dtype=np.int8) - np.asarray(champion, dtype=np.int8)
    shares = np.array([(diffs == -1).sum(), (diffs == 0).sum(), (diffs == 1).sum()], dtype=np.float64) / n
    counts = np.random.default_rng(seed).multinomial(n, shares, size=samples)
    return float(np.count_nonzero(counts[:, 2] - counts[:, 0] <= 0)) / samples


def decide(items: list[dict], config: GateConfig) -> dict:
    """``items``: one per eval prompt with ``bucket``, ``champion_correct``, ``candidate_correct``.

    Returns the decision: ``promote``, ``reason``, overall and per-bucket accuracies and deltas, the test.
    """
    champion = [bool(i["champion_correct"]) for i in items]
    candidate = [bool(i["candidate_correct"]) for i in items]
    n = len(items)
    champion_acc = sum(champion) / n if n else 0.0
    candidate_acc = sum(candidate) / n if n else 0.0
    only_champion = sum(h and not c for h, c in zip(champion, candidate))
    only_candidate = sum(c and not h for h, c in zip(champion, candidate))
    if config.test == "mcnemar":
        p_value = mcnemar_p(only_champion, only_candidate)
    else:
        p_value = bootstrap_p(champion, candidate, samples=config.bootstrap_samples, seed=config.seed)
    buckets: dict[str, dict] = {}
    for item in items:
        entry = buckets.setdefault(str(item["bucket"]), {"n": 0, "champion": 0, "candidate": 0})
        entry["n"] += 1
        entry["champion"] += bool(item["champion_correct"])
        entry["candidate"] += bool(item["candidate_correct"])
    bucket_deltas = {}
    for name, entry in buckets.items():
        bucket_deltas[name] = {
            "champion": entry["champion"] / entry["n"],
            "candidate": entry["candidate"] / entry["n"],
            "delta": (entry["candidate"] - entry["champion"]) / entry["n"],
            "n": entry["n"],
        }
    gain = candidate_acc - champion_acc
    worst_name, worst = min(bucket_deltas.items(), key=lambda kv: (kv[1]["delta"], bucket_key(kv[0])),
                            default=(None, {"delta": 0.0}))
    if n == 0:  # a gain of 0 and p = 1 would pass min_gain <= 0 and alpha = 1: never promote on no evidence
        promote, reason = False, "no compared rows: nothing shows the candidate is better"
    elif gain < config.min_gain:
        promote, reason = False, f"gain {gain:+.4f} below the required {config.min_gain:.4f}"
    elif p_value > config.alpha:
        promote, reason = False, f"not significant: {config.test} p={p_value:.4g} > alpha={config.alpha}"
    elif worst["delta"] < -config.max_bucket_drop:
        promote, reason = False, (f"bucket {worst_name} regressed by {-worst['delta']:.4f} "
                                  f"(tolerance {config.max_bucket_drop:.4f})")
    else:
        promote, reason = True, (f"candidate wins by {gain:+.4f} ({config.test} p={p_value:.4g}); "
                                 f"no bucket dropped more than {config.max_bucket_drop:.4f}")
    return {
        "promote": promote,
        "reason": reason,
        "champion_accuracy": champion_acc,
        "candidate_accuracy": candidate_acc,
        "delta": gain,
        "test": config.test,
        "p_value": p_value,
        "only_champion_correct": only_champion,
        "only_candidate_correct": only_candidate,
        "n": n,
        "buckets": dict(sorted(bucket_deltas.items(), key=lambda kv: bucket_key(kv[0]))),
    }


def run_gate(eval_dir: Path, out_path: Path, config: GateConfig, *, candidate_dir: Path | None = None,
             champion_dir: Path | None = None, next_champion: Path | None = None) -> dict:
    """Shell: eval/predictions.parquet (+ the candidate's metadata) -> decision.json.

    With ``next_champion``, the winner (candidate on promotion, else ``champion_dir``) is also copied
    there: the next round's champion. Both model directories are checked before anything is written.
    """
    from flywheel.modeling import member_dirs, read_model_meta
    from flywheel.stages.evaluate import PREDICTIONS, read_predictions
    from flywheel.model_card import read_lineage, round_entry

    if next_champion is not None:
        member_dirs(candidate_dir), member_dirs(champion_dir)
    items = read_predictions(Path(eval_dir) / PREDICTIONS)
    if not items:
        raise io.InputError(Path(eval_dir) / PREDICTIONS, "no rows: the gate has nothing to compare the candidate "
                                                          "and the champion on")
    decision = decide(items, config)
    if candidate_dir is not None and read_model_meta(candidate_dir).get("trained") is False:
        decision.update(promote=False, reason="no curated data survived this round; the candidate is the "
                                              "champion unchanged (see curation.json)")
    if next_champion is None:
        io.write_json(out_path, decision)
        return decision
    # The next champion is the winner's files plus its model card: the winner's history and this round.
    winner = candidate_dir if decision["promote"] else champion_dir
    candidate_meta = read_model_meta(candidate_dir)
    lineage = read_lineage(champion_dir) + [round_entry(candidate_meta.get("round"), decision, candidate_meta)]
    next_champion, out_path = Path(next_champion), Path(out_path)
    if next_champion.parent.resolve() == out_path.parent.resolve():  # the usual round directory: one publish
        with io.publish_together(out_path.parent) as staged:
            _write_next_champion(staged(next_champion.name), winner, lineage, decision)
            io.write_json(staged(out_path.name), decision)
    else:  # elsewhere: the champion first, the decision (what marks the round gated) last
        with io.atomic_dir(next_champion) as tmp:
            _write_next_champion(tmp, winner, lineage, decision)
        io.write_json(out_path, decision)
    return decision


def _write_next_champion(target: Path, winner: Path, lineage: list, decision: dict) -> None:
    from flywheel.model_card import write_card

    shutil.copytree(winner, target, copy_function=model_copies.link_or_copy, dirs_exist_ok=True)
    write_card(target, lineage, decision["buckets"], promoted_side="candidate" if decision["promote"] else "champion")
