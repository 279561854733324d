"""Model-informed selection of the curated SFT rows (Middo, 2025): the champion's own signals decide.

Where it departs from the paper (Middo, Tang et al., 2025):

1. One pass per round, over rows the vote already trusts; Middo loops selection with training on a fixed set.
2. Flagged rows are dropped; Middo also refines the samples it flags.
3. Two of its signals, the loss and the embedding clusters; the model's own judgement of a row's quality is
   not asked.

``curate.select`` runs after every other curation rule, on the rows they kept:
  loss        each row's loss under the champion (mean negative log-probability per completion token,
              end-of-sequence included, averaged over the committee's members). The ``select_known_share``
              of rows with the lowest loss are what the champion already knows: dropped as
              ``select:known``. What is left is what it finds hard but the vote trusts.
  diversity   the rows' embeddings (the first member's last hidden state, averaged over the row's tokens,
              unit length) clustered by k-means into ``select_clusters`` groups; a group holding more than
              ``select_cluster_cap`` times the average group's rows gives up its lowest-loss rows beyond
              that: ``select:redundant``. Keeps a spread instead of many near-identical rows.
  loss+diversity  both, in that order.

Every drop is counted in curation.json like every other curate drop.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flywheel.config import CurateConfig
from flywheel.rng import derive_seed


@dataclass(frozen=True)
class Selection:
    """Which rows stay (``keep``, a mask over the rows given), the drops by reason, and what decided:
    each row's loss under the champion and its cluster (-1 where diversity did not run)."""

    keep: np.ndarray
    drops: Counter
    loss: np.ndarray
    cluster: np.ndarray


def champion_signals(model_dir: Path, questions: list[str], completions: list[str], *, task, device: str,
                     batch_size: int = 256, embed: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(per-row loss averaged over the members, per-row embedding of the first member or None)."""
    import torch

    from flywheel.generation import completion_logprobs
    from flywheel.modeling import load_member, member_dirs
    from flywheel.tasks.base import render_prompt

    losses, embeddings = np.zeros(len(questions)), None
    members = member_dirs(model_dir)
    for index, path in enumerate(members):
        model, tokenizer = load_member(path, device=device, precision="auto")
        prompts = [render_prompt(task, q, tokenizer) for q in questions]
        scored = completion_logprobs(model, tokenizer, list(zip(prompts, completions)), batch_size=batch_size)
        losses += np.array([-logprob / count for logprob, count in scored]) / len(members)
        if embed and index == 0:
            embeddings = np.zeros((len(questions), model.config.hidden_size), dtype=np.float32)
            for start in range(0, len(questions), batch_size):
                texts = [p + c for p, c in zip(prompts[start:start + batch_size],
                                               completions[start:start + batch_size])]
                encoded = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
                with torch.no_grad():
                    hidden = model(**encoded, output_hidden_states=True).hidden_states[-1].float()
                mask = encoded["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
                embeddings[start:start + len(texts)] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
        del model
    return losses, embeddings


def kmeans(points: np.ndarray, k: int, *, seed: int, iterations: int = 25) -> np.ndarray:
    """Cluster labels of ``points`` (rows) by Lloyd's k-means from k-means++ seeding; deterministic per seed."""
    n = len(points)
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centers = [points[rng.integers(n)]]
    for _ in range(1, k):
        distance = np.min([((points - c) ** 2).sum(1) for c in centers], axis=0)
        total = distance.sum()
        centers.append(points[rng.choice(n, p=distance / total)] if total > 0 else points[rng.integers(n)])
    centers = np.stack(centers)
    labels = np.zeros(n, dtype=np.int64)
    squared = (points ** 2).sum(1)[:, None]
    for step in range(iterations):
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: an (n, k) matrix, never (n, k, dimensions)
        new = (squared - 2 * points @ centers.T + (centers ** 2).sum(1)[None, :]).argmin(1)
        if step and (new == labels).all():
            break
        labels = new
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centers[c] = members.mean(0)
    return labels


def select(loss: np.ndarray, embeddings: np.ndarray | None, config: CurateConfig, *,
           round_index: int) -> Selection:
    """The pure rule: which rows ``curate.select`` keeps, given the champion's signals."""
    n = len(loss)
    keep = np.ones(n, dtype=bool)
    drops: Counter = Counter()
    cluster = np.full(n, -1, dtype=np.int64)
    easiest_first = np.lexsort((np.arange(n), loss))  # ties: the earlier row counts as easier
    if "loss" in config.select and n:
        known = easiest_first[:math.floor(config.select_known_share * n)]
        keep[known] = False
        drops["select:known"] += len(known)
    if "diversity" in config.select and keep.sum() > 1:
        rows = np.flatnonzero(keep)
        cluster[rows] = kmeans(embeddings[rows], config.select_clusters, seed=derive_seed("select", round_index))
        groups = int(cluster[rows].max()) + 1
        cap = max(1, math.ceil(config.select_cluster_cap * len(rows) / groups))
        taken = Counter()
        for row in easiest_first[::-1]:  # hardest first: a crowded cluster gives up its easiest rows
            if keep[row]:
                taken[cluster[row]] += 1
                if taken[cluster[row]] > cap:
                    keep[row] = False
                    drops["select:redundant"] += 1
    return Selection(keep=keep, drops=+drops, loss=loss, cluster=cluster)


def run_select(questions: list[str], completions: list[str], config: CurateConfig, *, task,
               model_dir: Path | None, device: str, round_index: int) -> Selection:
    """Shell: the champion's signals of the rows, then ``select``."""
    from flywheel.errors import InputError

    if model_dir is None:
        raise InputError("config", f"curate.select={config.select} scores rows with the champion, and no champion "
                         "was given to curate", field="curate.select")
    if not questions:
        return select(np.zeros(0), None, config, round_index=round_index)
    loss, embeddings = champion_signals(model_dir, questions, completions, task=task, device=device,
                                        embed="diversity" in config.select)
    return select(loss, embeddings, config, round_index=round_index)
