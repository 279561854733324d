"""Generation backends: turn prompts into K sampled completions each.

``HFBackend`` runs transformers ``generate`` on CPU or GPU. A vLLM backend will
implement the same ``GenerationBackend`` interface and write the same sample schema.

Sampling is seeded per (round, prompt, sample) by the caller: every sequence
gets its own ``torch.Generator`` and is sampled with the Gumbel-max trick
(argmax of logits/T plus Gumbel noise equals a draw from softmax(logits/T)), so
a completion does not depend on which other prompts shared its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int  # generated tokens, end-of-sequence included
    logprob: float  # sum of log-probabilities of the generated tokens under softmax(logits / T)


class GenerationBackend(Protocol):
    def generate(self, prompts: list[str], seeds: list[list[int]], *, temperature: float,
                 max_new_tokens: int) -> list[list[Completion]]:
        """``seeds[i]`` holds one seed per sample of ``prompts[i]``; returns completions in the same shape."""
        ...


class GumbelSampler:
    """A logits processor that turns greedy search into seeded per-row sampling."""

    def __init__(self, seeds: list[int], temperature: float, vocab_size: int):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature = temperature
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
        return scores.float() / self.temperature + gumbel.to(scores.device)


class HFBackend:
    """Batched sampling with transformers. One backend holds one model (one committee member)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 256, progress: bool = False, desc: str = "generate"):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.desc = desc

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[list[int]], *, temperature: float,
                 max_new_tokens: int) -> list[list[Completion]]:
        from tqdm.auto import tqdm

        jobs = [(i, j, prompt, seed) for i, (prompt, row) in enumerate(zip(prompts, seeds)) for j, seed in enumerate(row)]
        # Similar lengths together: less padding, and sorted order is reproducible.
        jobs.sort(key=lambda job: (len(job[2]), job[0], job[1]))
        results: list[list[Completion | None]] = [[None] * len(row) for row in seeds]
        batches = range(0, len(jobs), self.batch_size)
        for start in tqdm(batches, desc=self.desc, unit="batch", disable=not self.progress, leave=False):
            batch = jobs[start:start + self.batch_size]
            for (i, j, _, _), completion in zip(batch, self._generate_batch(batch, temperature, max_new_tokens)):
                results[i][j] = completion
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch, temperature: float, max_new_tokens: int) -> list[Completion]:
        tok = self.tokenizer
        encoded = tok([job[2] for job in batch], return_tensors="pt", padding=True)
        encoded = encoded.to(self.model.device)
        processors = []
        if temperature > 0:
            processors.append(GumbelSampler([job[3] for job in batch], temperature, len(tok)))
        out = self.model.generate(
            **encoded,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            logits_processor=processors,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            temperature=None, top_p=None, top_k=None,
        )
        new_tokens = out.sequences[:, encoded["input_ids"].shape[1]:]
        logits = torch.stack(out.logits, dim=1).float()  # (batch, steps, vocab)
        scale = temperature if temperature > 0 else 1.0
        token_logprobs = torch.log_softmax(logits / scale, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row_tokens, row_logprobs in zip(new_tokens.tolist(), token_logprobs):
            length = _generated_length(row_tokens, tok.eos_token_id, tok.pad_token_id)
            text = tok.decode(row_tokens[:length], skip_special_tokens=True)
            completions.append(Completion(text=text, n_tokens=length, logprob=float(row_logprobs[:length].sum())))
        return completions


def _generated_length(tokens: list[int], eos_id: int, pad_id: int) -> int:
    """Tokens up to and including the first end-of-sequence (all of them if it never came)."""
    for index, token in enumerate(tokens):
        if token == eos_id:
            return index + 1
    return len(tokens)
