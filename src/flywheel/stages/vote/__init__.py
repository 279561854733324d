"""Vote: self-verification by majority over a prompt's samples (TTRL's majority reward, no labels).

Input: samples (``schemas.SAMPLES``), all members' samples of a prompt together.
Output per prompt: majority answer, vote share, entropy (nats), sample count; per
sample: whether it agrees with its prompt's majority. A sample without an
extractable answer still counts as a vote, for "no answer", which never wins.

``vote.method`` chooses what a vote weighs (``vote_share`` is then the majority's share
of the total weight; ``entropy`` always counts samples):
  majority    1 per sample (the default; TTRL, ReST-EM without labels).
  weighted    exp(logprob / n_tokens): the sample's per-token probability under the
              distribution it was sampled from (geometric mean). Per token, not the sequence
              probability, so a longer answer (e.g. one more digit) is not out-voted for its length.
  self_judge  the champion scores each candidate answer (its first completion), averaged over members;
              every sample of that answer weighs that score. Chat tasks on a chat model: the task's
              yes/no judge prompt, score P(yes) / (P(yes) + P(no)) of the next token. Otherwise
              (addition): exp(mean token log-prob of the completion, end-of-sequence included, given
              the prompt) at temperature 1.
  reliability a committee's votes weigh each member's estimated accuracy, from how often the
              members agree with each other: when wrong answers rarely coincide across models,
              agreement(m, n) ~ accuracy(m) * accuracy(n), fitted in logs over all pairs (the
              one-coin Dawid-Skene idea, no labels). A member that does not generalise to the new
              length agrees with nobody and loses its say; one or two members: plain majority.
  reference   SUPERVISED (ReST-EM with labels, verifiable rewards): the hidden label from the audit
              file is the pseudo-label; a sample agrees when ``task.is_correct``. The only mode that
              reads the audit file for anything but the audit, and vote.json says so.
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import io, schemas
from flywheel.columnar import DuplicateSample
from flywheel.config import VoteConfig
from flywheel.layout import FILES
from flywheel.registry import VOTE_METHODS
from flywheel.stages.vote.count import NO_ANSWER, summary_of, vote, vote_summary, vote_table, winner
from flywheel.stages.vote.labels import (audit, audit_columns, check_labels, pseudo_label_precision, read_truth,
                                         reference_vote)
from flywheel.stages.vote.weights import (LOG_WEIGHT_FLOOR, judge_weights, pairwise_agreement, reliability_weights,
                                          sample_weights, voter_reliability)
from flywheel.tasks.base import vote_key_of

# What the rest of the package and a user's extension import from here (docs/extending.md).
__all__ = ["NO_ANSWER", "Ballot", "LOG_WEIGHT_FLOOR", "VoteInputs", "VoteMethod", "audit", "audit_columns",
           "check_labels", "judge_weights", "pairwise_agreement", "pseudo_label_precision", "read_truth",
           "reference_vote", "reliability_weights", "run_vote", "sample_weights", "summary_of", "vote",
           "vote_summary", "vote_table", "voter_reliability", "winner"]


@dataclass(frozen=True)
class VoteInputs:
    """What a vote method may read besides the samples. ``truth``: the audit file's labels, when given;
    ``prompts`` and ``model_dir``: the round's prompts and the champion, for methods that ask it."""

    task: Any
    config: VoteConfig
    truth: dict[str, str] | None = None
    prompts_path: Path | None = None
    model_dir: Path | None = None
    device: str = "cpu"
    samples_path: Path | None = None  # what an error about a sample's row names


@dataclass(frozen=True)
class Ballot:
    """A vote method's result: the votes and agreement rows, what vote.json says the labels came from,
    and anything else it reports there (``reliability``: each voter's estimated accuracy)."""

    votes: list[dict]
    agreement: list[dict]
    label_source: str
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class VoteMethod:
    """A ``vote.method``. Either ``weigh(samples_table, inputs) -> (weights or None, label_source, report)``: a
    weighing of the samples that the columnar ``vote_table`` then counts (every method of the embedded
    default); or ``run(sample_rows, inputs) -> Ballot``: anything else, on rows. ``needs_model``: it loads
    the champion (the Kubeflow vote step then runs on the GPU pool); ``supervised``: it reads the audit
    file's labels, and vote.json says the round is supervised."""

    run: Callable[[list[dict], VoteInputs], Ballot] | None = None
    weigh: Callable[..., tuple] | None = None
    needs_model: bool = False
    supervised: bool = False
    columns: tuple[str, ...] = ("prompt_id", "sample_idx", "voter", "answer")  # of samples.parquet that it reads


def _majority(table, inputs: VoteInputs) -> tuple:
    return None, "majority vote of the samples (no labels)", {}


def _weighted(table, inputs: VoteInputs) -> tuple:

    ratio = table.column("logprob").to_numpy() / np.maximum(1, table.column("n_tokens").to_numpy())
    ratio = np.maximum(LOG_WEIGHT_FLOOR, ratio)
    weights = np.fromiter(map(math.exp, ratio.tolist()), float, len(ratio))  # math.exp: numpy's differs in the last bit
    return weights, "vote weighted by each sample's per-token probability, exp(logprob / n_tokens) (no labels)", {}


def _reliability(table, inputs: VoteInputs) -> tuple:

    rows = table.select(["prompt_id", "voter", "answer"]).to_pylist()
    reliability = voter_reliability(rows, inputs.task.vote_key)
    weights = np.array([reliability[v] for v in table.column("voter").to_pylist()], dtype=float)
    return weights, ("vote weighted by each committee member's accuracy as estimated from how often the members "
                     "agree with each other (no labels)"), {
        "voter_reliability": {str(v): round(p, 4) for v, p in reliability.items()}}


def _self_judge(table, inputs: VoteInputs) -> tuple:

    from flywheel.stages.vote.judge import member_judge

    prompts = {p["id"]: p["prompt"] for p in io.read_rows(inputs.prompts_path, schemas.PROMPTS)}
    ids = table.column("prompt_id")
    unknown = pc.invert(pc.is_in(ids, value_set=pa.array(list(prompts), pa.string())))
    if pc.any(unknown).as_py():  # the judge is asked the sample's question: before the model loads
        row = pc.index(unknown, True).as_py()
        raise io.InputError(inputs.samples_path or "samples", f"prompt {ids[row].as_py()!r} is not in "
                            f"{Path(inputs.prompts_path).name}", row=row + 1, field="prompt_id")
    judge = member_judge(inputs.model_dir, batch_size=inputs.config.judge_batch_size, device=inputs.device,
                         task=inputs.task)
    weights = np.array(judge_weights(table.to_pylist(), prompts, judge), dtype=float)
    scores = {"yes_no": "P(yes) / (P(yes) + P(no)) of its yes/no judge prompt",
              "logprob": "exp(mean token log-prob | prompt)"}
    return weights, ("vote weighted by the champion's own score of each candidate answer, "
                     + " and ".join(scores[kind] for kind in judge.kinds) + " (no labels)"), {}


def _reference(samples: list[dict], inputs: VoteInputs) -> Ballot:
    noise = inputs.config.label_noise
    votes, agreement = reference_vote(samples, inputs.truth, inputs.task.is_correct, label_noise=noise,
                                      noise_seed=inputs.config.label_noise_seed)
    return Ballot(votes, agreement, "REFERENCE LABELS from the audit file: this round is SUPERVISED (ReST-EM with "
                  "labels / verifiable rewards), not self-training"
                  + (f"; {noise:.0%} of the labels replaced by wrong answers (a control)" if noise else ""))


# The registered vote methods (flywheel.registry; the module docstring says what each weighs).
VOTE_METHODS.add("majority", VoteMethod(weigh=_majority))
VOTE_METHODS.add("weighted", VoteMethod(weigh=_weighted, columns=("prompt_id", "sample_idx", "voter", "answer",
                                                                   "n_tokens", "logprob")))
VOTE_METHODS.add("reliability", VoteMethod(weigh=_reliability))
VOTE_METHODS.add("self_judge", VoteMethod(weigh=_self_judge, needs_model=True, columns=tuple(schemas.SAMPLES.names)))
VOTE_METHODS.add("reference", VoteMethod(run=_reference, supervised=True))


def run_vote(samples_path: Path, out_dir: Path, config: VoteConfig, *, task, audit_path: Path | None = None,
             prompts_path: Path | None = None, model_dir: Path | None = None, device: str = "cpu") -> dict:
    """Shell: samples.parquet -> votes.parquet, agreement.parquet, vote.json, by the ``vote.method``.

    Methods that load the champion (``self_judge``) also need the prompts and ``model_dir``; supervised
    ones (``reference``) the audit file. Weighing methods vote on Arrow columns (``vote_table``).
    """
    method: VoteMethod = VOTE_METHODS.get(config.method)
    audited = audit_path is not None and Path(audit_path).exists()
    # Labels as a dict only for the row methods that vote with them; the columnar path reads the audit file
    # after voting, as a table (a million prompts' labels as a dict would be ~200 MB held through the vote).
    truth = read_truth(audit_path) if audited and method.weigh is None else None
    if method.supervised and not audited:
        raise io.InputError(audit_path or "vote", f"vote.method={config.method} needs the audit file of labels "
                            "(--audit)", field="vote.method")
    if method.needs_model and (prompts_path is None or model_dir is None):
        raise io.InputError("vote", f"vote.method={config.method} needs the prompts and the champion "
                            "(--prompts, --model)", field="vote.method")
    inputs = VoteInputs(task=task, config=config, truth=truth, prompts_path=prompts_path, model_dir=model_dir,
                        device=device, samples_path=Path(samples_path))
    if method.weigh is not None:
        table = io.read_table(samples_path, schemas.SAMPLES, columns=method.columns, check_key=False)
        try:
            weights, label_source, report = method.weigh(table, inputs)
            votes, agreement = vote_table(table, weights=weights, key=vote_key_of(task),
                                          min_answer_share=config.min_answer_share)
        except DuplicateSample:
            io.read_rows(samples_path, schemas.SAMPLES)  # the one-line error naming both rows
            raise
        del table
        summary = summary_of(votes.column("vote_share").to_pylist(), votes.column("entropy").to_pylist(),
                             votes.column("majority_answer").to_pylist())
        if audited:  # the precision at threshold 0: of every answered, labeled prompt
            (everything,) = audit_columns(votes.column("prompt_id").combine_chunks(),
                                          votes.column("majority_answer").combine_chunks(), votes.column("vote_share"),
                                          io.read_table(audit_path, schemas.PROMPTS), task.is_correct, [0.0])
            precision = everything["precision"]
    else:
        rows = io.read_rows(samples_path, schemas.SAMPLES)
        if method.supervised:
            check_labels(rows, truth, audit_path)
        ballot = method.run(rows, inputs)
        label_source, report = ballot.label_source, ballot.report
        votes, agreement = (pa.Table.from_pylist(ballot.votes, schema=schemas.VOTES.arrow()),
                            pa.Table.from_pylist(ballot.agreement, schema=schemas.AGREEMENT.arrow()))
        summary = vote_summary(ballot.votes)
        if audited:
            precision = pseudo_label_precision(ballot.votes, truth, task.is_correct)
    summary["method"] = config.method
    summary["label_source"] = label_source
    summary.update(report)
    summary["supervised"] = method.supervised
    if audited:
        summary["pseudo_label_precision"] = precision
    with io.publish_together(out_dir) as staged:
        io.write_table(staged(FILES.votes), votes, schemas.VOTES)
        io.write_table(staged(FILES.agreement), agreement, schemas.AGREEMENT)
        io.write_json(staged(FILES.vote_summary), summary)
    return summary
