"""Generate: K completions per prompt from every member of the champion.

Input: prompts (``schemas.PROMPTS``; a hidden ``answer`` column is ignored). Output:
samples (``schemas.SAMPLES``), one row per (prompt, member, sample). Sample j of
prompt p from member m in round r is drawn with seed ``derive_seed(r, p, m, j)``; with
``generate.views`` > 1, on question j mod their number of the task's views of it (addition: ``a+b=``, ``b+a=``,
then other operands with the same sum).

Code task with ``code.generated_tests`` (CodeT-style): first, every member writes test inputs
for the problems that need them (``with_generated_tests``; completion j of member m drawn with
seed ``derive_seed("tests", r, p, m, j)``); the inputs are extracted, de-duplicated and capped,
and every sampled program is then run on them to form its vote (``CodeTask.extract_answer``).
The model sees only the question, never a given test.

``generate.search: step_beam`` grows the K samples of a prompt a step at a time instead of drawing them
whole (``experimental.step_search``); the rows are the same, with the search's cost in ``search_tokens``.

Sharding (the Kubeflow door's ``generate-shards``): shard s of n runs batches s, s + n, ... of the batch plan
an unsharded run makes (``generation.Shard``), so the merged shards equal the unsharded samples bit for bit on
one machine. Generated tests are written whole in every shard (a shard's samples may be of any prompt). The step
search cannot share a plan (a depth's batches hold every prompt's open slots): it searches every n-th prompt,
and its shards equal the unsharded search up to float rounding only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from flywheel import io, schemas
from flywheel.config import CodeConfig, GenerateConfig
from flywheel.generation import (WHOLE, Completion, GenerationBackend, HFBackend, Shard, VLLMBackend,
                                 choose_backend)
from flywheel.modeling import load_member, member_dirs
from flywheel.precision import resolve_precision
from flywheel.rng import derive_seed
from flywheel.tasks.base import check_prompts, render_message, render_prompt


def generate(prompts: list[dict], backends: list[GenerationBackend], config: GenerateConfig, *, task,
             round_index: int, code: CodeConfig | None = None, shard: Shard = WHOLE) -> list[dict]:
    """Sample ``config.samples_per_prompt`` completions per prompt from each backend (one per member).

    ``code``: the code task's settings; when they ask for generated tests, the prompts get them first.
    ``shard``: only this shard's samples (of any prompt), in the order the unsharded call writes them.
    """
    if code is not None and task.takes_tests and code.generated_tests != "off":
        prompts = with_generated_tests(prompts, backends, config, code, task=task, round_index=round_index)
    if config.search == "step_beam":
        from flywheel.experimental.step_search import step_beam

        prompts = [p for i, p in enumerate(prompts) if shard.takes(i)]
        return [row for voter, backend in enumerate(backends)
                for row in step_beam(prompts, backend, config, task=task, round_index=round_index, voter=voter)]
    # One job per (prompt, view): sample j of a prompt goes to view j mod their number.
    jobs = []
    for p in prompts:
        views = task.views(p["prompt"], min(config.views, config.samples_per_prompt))
        for v, question in enumerate(views):
            jobs.append((p, question, list(range(v, config.samples_per_prompt, len(views)))))
    rows = [{
        "prompt_id": prompt["id"],
        "sample_idx": j,
        "voter": voter,
        "completion": completion.text,
        "answer": task.extract_answer(completion.text, prompt),
        "n_tokens": completion.n_tokens,
        "logprob": completion.logprob,
    } for voter, prompt, j, completion in sample_jobs(
        jobs, backends, task=task, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
        seed_of=lambda p, voter, j: derive_seed(round_index, p["id"], voter, j), shard=shard)]
    return canonical_order(prompts, rows) if config.views > 1 else rows  # views ran question by question


def sample_jobs(jobs: list[tuple[dict, str, list[int]]], backends: list[GenerationBackend], *, task,
                temperature: float, max_new_tokens: int, seed_of: Callable[[dict, int, int], int],
                shard: Shard = WHOLE) -> Iterator[tuple[int, dict, int, Completion]]:
    """The one sampling loop (generate's samples, TT-SI's probes): every member samples every job, a
    (prompt row, question, sample indices), sample j of a prompt seeded ``seed_of(prompt, member, j)``.
    Yields (member, prompt row, j, completion), member by member; another shard's samples are skipped."""
    for voter, backend in enumerate(backends):
        # The task decides how its question is shown to this member's tokenizer (chat template or raw).
        texts = [render_prompt(task, question, getattr(backend, "tokenizer", None)) for _, question, _ in jobs]
        seeds = [[seed_of(p, voter, j) for j in indices] for p, _, indices in jobs]
        sharded = {"shard": shard} if shard != WHOLE else {}  # a backend of the user's may not take shards
        completions = backend.generate(texts, seeds, temperature=temperature, max_new_tokens=max_new_tokens,
                                       **sharded)
        for (prompt, _, indices), row in zip(jobs, completions):
            for j, completion in zip(indices, row):
                if completion is not None:  # None: another shard's
                    yield voter, prompt, j, completion


def canonical_order(prompts: list[dict], rows: list[dict]) -> list[dict]:
    """Samples in (member, prompt as listed, sample) order: what an unsharded run without views writes."""
    position = {p["id"]: index for index, p in enumerate(prompts)}
    return sorted(rows, key=lambda r: (r["voter"], position[r["prompt_id"]], r["sample_idx"]))


def with_generated_tests(prompts: list[dict], backends: list[GenerationBackend], config: GenerateConfig,
                         code: CodeConfig, *, task, round_index: int) -> list[dict]:
    """Copies of ``prompts`` whose ``meta`` gains ``generated_tests``: inputs the champion wrote itself.

    Which prompts: all with ``code.generated_tests=always``; with ``missing``, those without unlabeled
    test inputs (labeled tests are hidden grading and never vote). Each member writes
    ``code.test_samples`` completions per prompt at ``generate.temperature``; inputs are pooled in
    (member, sample) order, de-duplicated and capped at ``code.max_tests``.
    """
    from flywheel.tasks.code import extract_test_inputs, input_style, prompt_meta

    wanted = [p for p in prompts if code.generated_tests == "always" or not prompt_meta(p).get("tests")]
    if not wanted:
        return prompts
    found: dict[str, list[dict]] = {p["id"]: [] for p in wanted}
    for voter, backend in enumerate(backends):
        tokenizer = getattr(backend, "tokenizer", None)
        texts = [render_message(task, task.test_message(p["prompt"], input_style(p), code.max_tests), tokenizer)
                 for p in wanted]
        seeds = [[derive_seed("tests", round_index, p["id"], voter, j) for j in range(code.test_samples)]
                 for p in wanted]
        completions = backend.generate(texts, seeds, temperature=config.temperature,
                                       max_new_tokens=code.test_max_new_tokens)
        for prompt, row in zip(wanted, completions):
            for completion in row:
                found[prompt["id"]] += extract_test_inputs(completion.text, input_style(prompt), code.max_tests)
    out = []
    for prompt in prompts:
        if prompt["id"] in found:
            unique = list({json.dumps(t, sort_keys=True): t for t in found[prompt["id"]]}.values())
            meta = {**prompt_meta(prompt), "style": input_style(prompt), "generated_tests": unique[:code.max_tests]}
            prompt = {**prompt, "meta": json.dumps(meta)}
        out.append(prompt)
    return out


def load_backends(model_dir: Path, *, batch_size: int, device: str, progress: bool, precision: str,
                  config: GenerateConfig | None = None,
                  batch_tokens: int = GenerateConfig.batch_tokens, label: str = "generate") -> list[GenerationBackend]:
    """One backend per member; ``config.backend`` picks transformers or vLLM (evaluate passes no config: HF).
    ``label`` names the progress bars: "<label> member N".

    ``precision`` is the weights' dtype (``generate.dtype`` / ``evaluate.dtype``, resolved for ``device``).
    """
    kind = choose_backend(config.backend) if config is not None else "hf"
    if kind == "vllm":
        return [VLLMBackend(path, seed=index, gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                            max_model_len=config.vllm_max_model_len, precision=resolve_precision(precision, "cuda"))
                for index, path in enumerate(member_dirs(model_dir))]
    backends = []
    for index, path in enumerate(member_dirs(model_dir)):
        model, tokenizer = load_member(path, device=device, precision=precision)
        backends.append(HFBackend(model, tokenizer, batch_size=batch_size, batch_tokens=batch_tokens,
                                  progress=progress, desc=f"{label} member {index}"))
    return backends


def merge_samples(prompts: list[dict], shard_samples: list[list[dict]]) -> list[dict]:
    """The shards' samples in the order an unsharded ``generate`` writes them: member, prompt, sample.

    A shard holds whole batches, so a prompt's samples may come from several shards: the merge checks that
    together they hold every (member, sample) of every prompt exactly once."""
    rows = [row for shard in shard_samples for row in shard]
    missing = {p["id"] for p in prompts} - {row["prompt_id"] for row in rows}
    if missing:
        raise io.InputError("samples shards", f"{len(missing)} prompts have no samples (e.g. {min(missing)})")
    counts = Counter((row["prompt_id"], row.get("voter", 0), row["sample_idx"]) for row in rows)
    if len(counts) < len(rows):
        twice = min(k for k, n in counts.items() if n > 1)
        raise io.InputError("samples shards", f"sample {twice[2]} of member {twice[1]} of prompt {twice[0]} is in "
                            "more than one shard")
    grid = {(voter, j) for _, voter, j in counts}
    per_prompt = Counter(prompt_id for prompt_id, _, _ in counts)
    short = sorted(p for p, n in per_prompt.items() if n < len(grid))
    if short:
        raise io.InputError("samples shards", f"{len(short)} prompts lack some of their samples (e.g. {short[0]}): "
                            "a shard is missing")
    return canonical_order(prompts, rows)


def run_merge_samples(prompts_path: Path, shard_paths: list[Path], out_path: Path) -> dict:
    """Shell: the shards' samples files -> one samples.parquet, identical to an unsharded run's."""
    prompts = io.read_rows(prompts_path, schemas.PROMPTS)
    rows = merge_samples(prompts, [io.read_rows(path, schemas.SAMPLES) for path in shard_paths])
    io.write_rows(out_path, rows, schemas.SAMPLES)
    return {"samples": len(rows), "shards": len(shard_paths)}


def run_generate(prompts_path: Path, model_dir: Path, out_path: Path, config: GenerateConfig, *, task,
                 round_index: int, device: str = "cpu", progress: bool = False, shard: int = 0,
                 shards: int = 1, code: CodeConfig | None = None) -> dict:
    """Shell: prompts.parquet + champion -> samples.parquet (shard ``shard`` of the batches with ``shards`` > 1;
    ``code``: the code task's generated tests)."""
    prompts = check_prompts(task, io.read_rows(prompts_path, schemas.PROMPTS), prompts_path)
    part = Shard(shard, shards)
    backends = load_backends(model_dir, batch_size=config.batch_size, device=device, progress=progress,
                             precision=config.dtype, config=config, batch_tokens=config.batch_tokens)
    rows = generate(prompts, backends, config, task=task, round_index=round_index, code=code, shard=part)
    io.write_rows(out_path, rows, schemas.SAMPLES)
    n = len(rows)
    return {
        "backend": type(backends[0]).__name__ if backends else None,
        "samples": n,
        "members": len(backends),
        "answer_rate": sum(r["answer"] is not None for r in rows) / n if n else 0.0,
        "mean_completion_tokens": sum(r["n_tokens"] for r in rows) / n if n else 0.0,
        "generated_tokens": schemas.generated_tokens(rows),  # with generate.search=step_beam, the rollouts
    }
