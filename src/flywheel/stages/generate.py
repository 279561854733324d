"""Generate: K completions per prompt from every member of the champion.

Input: prompts (``schemas.PROMPTS``; a hidden ``answer`` column is ignored). Output:
samples (``schemas.SAMPLES``), one row per (prompt, member, sample). Sample j of
prompt p from member m in round r is drawn with seed ``derive_seed(r, p, m, j)``.
"""

from __future__ import annotations

from pathlib import Path

from flywheel import io, schemas
from flywheel.config import GenerateConfig
from flywheel.generation import GenerationBackend, HFBackend, VLLMBackend, choose_backend
from flywheel.modeling import load_member, member_dirs
from flywheel.seeding import derive_seed
from flywheel.tasks.base import render_prompt


def generate(prompts: list[dict], backends: list[GenerationBackend], config: GenerateConfig, *, task,
             round_index: int) -> list[dict]:
    """Sample ``config.samples_per_prompt`` completions per prompt from each backend (one per member)."""
    rows = []
    for voter, backend in enumerate(backends):
        # The task decides how its question is shown to this member's tokenizer (chat template or raw).
        texts = [render_prompt(task, p["prompt"], getattr(backend, "tokenizer", None)) for p in prompts]
        seeds = [[derive_seed(round_index, p["id"], voter, j) for j in range(config.samples_per_prompt)]
                 for p in prompts]
        completions = backend.generate(texts, seeds, temperature=config.temperature,
                                       max_new_tokens=config.max_new_tokens)
        for prompt, row in zip(prompts, completions):
            for j, completion in enumerate(row):
                rows.append({
                    "prompt_id": prompt["id"],
                    "sample_idx": j,
                    "voter": voter,
                    "completion": completion.text,
                    "answer": task.extract_answer(completion.text, prompt),
                    "n_tokens": completion.n_tokens,
                    "logprob": completion.logprob,
                })
    return rows


def load_backends(model_dir: Path, *, batch_size: int, device: str, progress: bool,
                  config: GenerateConfig | None = None) -> list[GenerationBackend]:
    """One backend per member; ``config.backend`` picks transformers or vLLM (evaluate passes no config: HF)."""
    kind = choose_backend(config.backend) if config is not None else "hf"
    if kind == "vllm":
        return [VLLMBackend(path, seed=index, gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                            max_model_len=config.vllm_max_model_len)
                for index, path in enumerate(member_dirs(model_dir))]
    backends = []
    for index, path in enumerate(member_dirs(model_dir)):
        model, tokenizer = load_member(path, device=device)
        backends.append(HFBackend(model, tokenizer, batch_size=batch_size, progress=progress,
                                  desc=f"generate member {index}"))
    return backends


def run_generate(prompts_path: Path, model_dir: Path, out_path: Path, config: GenerateConfig, *, task,
                 round_index: int, device: str = "cpu", progress: bool = False) -> dict:
    """Shell: prompts.parquet + champion -> samples.parquet."""
    prompts = io.read_rows(prompts_path, schemas.PROMPTS)
    backends = load_backends(model_dir, batch_size=config.batch_size, device=device, progress=progress, config=config)
    rows = generate(prompts, backends, config, task=task, round_index=round_index)
    io.write_rows(out_path, rows, schemas.SAMPLES)
    n = len(rows)
    return {
        "backend": type(backends[0]).__name__ if backends else None,
        "samples": n,
        "members": len(backends),
        "answer_rate": sum(r["answer"] is not None for r in rows) / n if n else 0.0,
        "mean_completion_tokens": sum(r["n_tokens"] for r in rows) / n if n else 0.0,
    }
