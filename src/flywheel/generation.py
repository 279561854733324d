"""Generation backends: turn prompts into K sampled completions each.

``HFBackend`` runs transformers ``generate`` on CPU or GPU. ``VLLMBackend`` runs vLLM
on CUDA (the ``[gpu]`` extra; imported only inside it) and returns the same
``Completion`` records, so the sample schema does not depend on the backend.
``choose_backend`` resolves ``generate.backend`` ('auto' | 'hf' | 'vllm').

Sampling is seeded per (round, prompt, sample) by the caller: every sequence
gets its own ``torch.Generator`` and is sampled with the Gumbel-max trick
(argmax of logits/T plus Gumbel noise equals a draw from softmax(logits/T)), so
a completion does not depend on which other prompts shared its batch, up to float
rounding: CPU kernels round differently per batch shape (and per CPU), which can flip
a draw where two tokens' scores tie to the last bit and moves ``logprob`` in its last
bits. So where two runs must agree exactly (the Kubeflow door's generate shards against
an unsharded run), they run the same batches: a ``Shard`` is a share of one batch plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from flywheel.config import GenerateConfig
from flywheel.modeling import check_alphabet


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int  # generated tokens, end-of-sequence included
    logprob: float  # sum of log-probabilities of the generated tokens under softmax(logits / T)
    stopped: bool = True  # the model ended it (end of sequence), not max_new_tokens


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` of one generate call: a backend plans its batches over every job, as an
    unsharded call would, and runs batches ``index``, ``index + count``, ... of that plan. Every batch then
    holds the same sequences, padded to the same shape, in the shards as in the unsharded call, so the shards
    together give the unsharded completions bit for bit (on one machine, at the same thread count), not only
    up to float rounding."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} is not in [0, {self.count})")

    def takes(self, position: int) -> bool:
        """Whether the batch (or, for vLLM, the prompt) at ``position`` is this shard's."""
        return position % self.count == self.index


WHOLE = Shard()


class GenerationBackend(Protocol):
    def generate(self, prompts: list[str], seeds: list[list[int]], *, temperature: float,
                 max_new_tokens: int, shard: Shard = WHOLE) -> list[list[Completion | None]]:
        """``seeds[i]`` holds one seed per sample of ``prompts[i]``; returns completions in the same shape,
        ``None`` where a job is another shard's (never with the default ``WHOLE``)."""
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


class LogprobRecorder:
    """Each generated token's log-probability under softmax(logits / T), recorded step by step.

    A logits processor that sees the raw logits first: it keeps one (batch, vocabulary) log-softmax, and at
    the next step, when the chosen token is the last input id, keeps that token's entry. ``output_logits``
    would keep every step's logits instead: steps x vocabulary x 4 bytes per sequence, 300 MB per sequence
    for a 150k-token vocabulary and 512 new tokens, which would cap the batch of a chat model on its own.
    """

    def __init__(self, temperature: float):
        self.scale = temperature if temperature > 0 else 1.0
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self._keep(input_ids[:, -1:])
        self.previous = torch.log_softmax(scores.float() / self.scale, dim=-1)
        return scores

    def _keep(self, tokens: torch.Tensor) -> None:
        self.steps.append(self.previous.gather(-1, tokens).squeeze(-1))

    def token_logprobs(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch, new tokens): after generate, with the last step's token taken from ``sequences``."""
        if self.previous is not None:
            self._keep(sequences[:, -1:])
            self.previous = None
        if not self.steps:
            return sequences.new_zeros((len(sequences), 0), dtype=torch.float)
        return torch.stack(self.steps, dim=1)


def token_batches(lengths: list[int], *, max_new_tokens: int, batch_size: int, batch_tokens: int) -> list[range]:
    """Consecutive runs of jobs (sorted by prompt length) whose padded size, rows x (longest prompt +
    ``max_new_tokens``), stays within ``batch_tokens``, and at most ``batch_size`` rows: many short sequences
    or few long ones per generate() call instead of a fixed number. A job longer than the budget runs alone."""

    batches, start = [], 0
    for end, length in enumerate(lengths):
        rows = end - start + 1
        if rows > 1 and (rows > batch_size or rows * (length + max_new_tokens) > batch_tokens):
            batches.append(range(start, end))
            start = end
    if lengths:
        batches.append(range(start, len(lengths)))
    return batches


class HFBackend:
    """Batched sampling with transformers. One backend holds one model (one committee member).

    Jobs (prompt, sample) are sorted by the prompt's length in tokens, so a batch pads little and its rows
    tend to finish together; ``token_batches`` sizes each batch to its sequences (``batch_tokens``).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 256, batch_tokens: int = GenerateConfig.batch_tokens,
                 progress: bool = False, desc: str = "generate"):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.progress = progress
        self.desc = desc

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[list[int]], *, temperature: float,
                 max_new_tokens: int, shard: Shard = WHOLE) -> list[list[Completion | None]]:
        from tqdm.auto import tqdm

        check_alphabet(self.tokenizer, prompts)
        distinct = list(dict.fromkeys(prompts))
        length_of = dict(zip(distinct, (len(ids) for ids in self.tokenizer(distinct)["input_ids"]))) if distinct else {}
        jobs = [(i, j, prompt, seed) for i, (prompt, row) in enumerate(zip(prompts, seeds))
                for j, seed in enumerate(row)]
        # Similar lengths together: less padding, and sorted order is reproducible.
        jobs.sort(key=lambda job: (length_of[job[2]], job[0], job[1]))
        results: list[list[Completion | None]] = [[None] * len(row) for row in seeds]
        batches = token_batches([length_of[job[2]] for job in jobs], max_new_tokens=max_new_tokens,
                                batch_size=self.batch_size, batch_tokens=self.batch_tokens)
        mine = [positions for b, positions in enumerate(batches) if shard.takes(b)]
        for positions in tqdm(mine, desc=self.desc, unit="batch", disable=not self.progress, leave=False):
            batch = jobs[positions.start:positions.stop]
            for (i, j, _, _), completion in zip(batch, self._generate_batch(batch, temperature, max_new_tokens)):
                results[i][j] = completion
        return results

    def _generate_batch(self, batch, temperature: float, max_new_tokens: int) -> list[Completion]:
        tok = self.tokenizer
        encoded = tok([job[2] for job in batch], return_tensors="pt", padding=True)
        encoded = encoded.to(self.model.device)
        recorder = LogprobRecorder(temperature)  # first: it reads the logits before sampling changes them
        processors = [recorder]
        if temperature > 0:
            processors.append(GumbelSampler([job[3] for job in batch], temperature, len(tok)))
        sequences = self.model.generate(
            **encoded,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            logits_processor=processors,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            temperature=None, top_p=None, top_k=None,
        )
        new_tokens = sequences[:, encoded["input_ids"].shape[1]:]
        token_logprobs = recorder.token_logprobs(sequences)
        completions = []
        for row_tokens, row_logprobs in zip(new_tokens.tolist(), token_logprobs):
            length = _generated_length(row_tokens, tok.eos_token_id, tok.pad_token_id)
            text = tok.decode(row_tokens[:length], skip_special_tokens=True)
            completions.append(Completion(text=text, n_tokens=length, logprob=float(row_logprobs[:length].sum()),
                                          stopped=tok.eos_token_id in row_tokens[:length]))
        return completions

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], *, temperature: float,
              stopped: list[bool] | None = None) -> list[tuple[float, int]]:
        """(log-probability under softmax(logits / T), tokens) of each completion given its prompt, the end of
        sequence included where ``stopped[i]`` (default: all): what ``generate`` records of a sample it drew, for
        a completion assembled elsewhere (``experimental.step_search``). A forward pass holds every position's logits,
        in about four copies (the model's, fp32, scaled, log-softmax), so a batch is also capped at 2**26 of them
        (about 1 GiB: 2 rows of 1000 tokens for a 32k vocabulary), not just at ``batch_tokens``."""
        pairs = list(zip(prompts, completions))
        if not pairs:
            return []
        longest = max(len(ids) for ids in self.tokenizer([p + c for p, c in pairs])["input_ids"]) + 1
        vocabulary = max(len(self.tokenizer), getattr(self.model.config, "vocab_size", 0) or 0)
        rows = max(1, min(self.batch_size, self.batch_tokens // longest, 2**26 // (longest * vocabulary)))
        return completion_logprobs(self.model, self.tokenizer, pairs, batch_size=rows, temperature=temperature,
                                   eos=stopped)


class VLLMBackend:
    """vLLM generation of one model directory (one committee member).

    Determinism differs from ``HFBackend``: vLLM draws the K samples of a prompt from
    one request (``SamplingParams(n=K, seed=...)``), seeded with the prompt's first
    per-sample seed, so the samples are reproducible per (prompt, K, seed) on the same
    GPU, vLLM version and settings, but sample j no longer depends on its own seed only
    (changing K changes every sample), and the draws differ from HF's Gumbel draws.
    Batched GPU kernels may also change logits in the last bits between batch shapes.
    ``logprob`` is the sum over sampled tokens under the temperature-scaled distribution
    (``logprobs_mode='processed_logprobs'``), as in ``HFBackend``.
    The engine is built on the first ``generate`` call and released after it, so the
    members of a committee take the GPU one after the other.
    """

    def __init__(self, model_path: str, *, seed: int = 0, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, precision: str = "bf16"):
        self.model_path = str(model_path)
        self.precision = precision  # concrete: fp32, bf16 or fp16 (vLLM's own default follows the checkpoint)
        self.seed = seed
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The member's HF tokenizer: the task renders chat prompts with it (``tasks.base.render_prompt``)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        return self._tokenizer

    def engine(self, model_path: str):
        from vllm import LLM

        return LLM(model=model_path, seed=self.seed, gpu_memory_utilization=self.gpu_memory_utilization,
                   max_model_len=self.max_model_len, logprobs_mode="processed_logprobs",
                   dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[self.precision])

    def generate(self, prompts: list[str], seeds: list[list[int]], *, temperature: float,
                 max_new_tokens: int, shard: Shard = WHOLE) -> list[list[Completion | None]]:
        """A shard is every ``shard.count``-th prompt: vLLM schedules its own batches, so its shards are not
        the unsharded batches (and GPU kernels round per batch shape): sharded equals unsharded up to that."""
        import tempfile

        from flywheel.modeling import is_adapter, load_member

        mine = [i for i in range(len(prompts)) if shard.takes(i)]
        if len(mine) < len(prompts):
            done = self.generate([prompts[i] for i in mine], [seeds[i] for i in mine], temperature=temperature,
                                 max_new_tokens=max_new_tokens)
            results: list[list[Completion | None]] = [[None] * len(row) for row in seeds]
            for i, row in zip(mine, done):
                results[i] = row
            return results

        with tempfile.TemporaryDirectory(prefix="flywheel-vllm-") as scratch:
            path = self.model_path
            if is_adapter(path):  # vLLM loads full weights: merge the adapter chain into a scratch copy
                model, tokenizer = load_member(path)
                model.save_pretrained(scratch)
                tokenizer.save_pretrained(scratch)
                path = scratch
            return self._generate(path, prompts, seeds, temperature=temperature, max_new_tokens=max_new_tokens)

    def _generate(self, model_path: str, prompts: list[str], seeds: list[list[int]], *, temperature: float,
                  max_new_tokens: int) -> list[list[Completion]]:
        from vllm import SamplingParams

        llm = self.engine(model_path)
        try:
            params = [SamplingParams(n=len(row), temperature=temperature, max_tokens=max_new_tokens,
                                     seed=row[0] % 2**32 if row else None, logprobs=0) for row in seeds]
            outputs = llm.generate(prompts, params, use_tqdm=False)
            return [[Completion(text=o.text, n_tokens=len(o.token_ids), logprob=float(o.cumulative_logprob or 0.0),
                                stopped=o.finish_reason == "stop") for o in out.outputs]
                    for out in outputs]
        finally:
            del llm
            free_gpu_memory()


def free_gpu_memory() -> None:
    """Let a dropped vLLM engine's GPU memory go before the next one is built."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def vllm_available() -> tuple[bool, str]:
    """(usable, why not): vLLM needs CUDA and the ``vllm`` package (the ``[gpu]`` extra)."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        return False, f"vllm does not import ({exc}); install the [gpu] extra"
    return True, ""


def choose_backend(requested: str) -> str:
    """'hf' or 'vllm' for ``generate.backend``; 'vllm' without CUDA and vllm is a one-line config error."""
    from flywheel.errors import InputError

    if requested == "hf":
        return "hf"
    usable, why = vllm_available()
    if requested == "vllm" and not usable:
        raise InputError("config", f"generate.backend=vllm but {why}", field="generate.backend")
    return "vllm" if usable else "hf"


@torch.no_grad()
def completion_logprobs(model, tokenizer, pairs: list[tuple[str, str]], *, batch_size: int = 256,
                        temperature: float = 1.0, eos: list[bool] | None = None) -> list[tuple[float, int]]:
    """(sum of log p(completion tokens + end-of-sequence | prompt), token count) under softmax(logits /
    ``temperature``) (1 for 0, as ``LogprobRecorder`` records greedy decoding), per pair; without the
    end-of-sequence token for pair i where ``eos[i]`` is false (a completion cut at max_new_tokens).

    The prompt is tokenised as generation tokenises it (special tokens included); the
    completion without special tokens, then the end-of-sequence token.
    """
    results = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        rows = []
        for index, (prompt, completion) in enumerate(batch, start=start):
            prompt_ids = tokenizer(prompt)["input_ids"]
            end = [tokenizer.eos_token_id] if eos is None or eos[index] else []
            answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + end
            rows.append((prompt_ids, answer_ids))
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, a) in enumerate(rows):  # right padding: positions count from the prompt's first token
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            mask[i, :len(p) + len(a)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        scale = temperature if temperature > 0 else 1.0
        logprobs = torch.log_softmax(logits[:, :-1] / scale, dim=-1)  # position t predicts token t + 1
        for i, (p, a) in enumerate(rows):
            targets = torch.tensor(a, device=logprobs.device)
            picked = logprobs[i, len(p) - 1:len(p) - 1 + len(a)].gather(-1, targets[:, None]).squeeze(-1)
            results.append((float(picked.sum()), len(a)))
    return results


def _generated_length(tokens: list[int], eos_id: int, pad_id: int) -> int:
    """Tokens up to and including the first end-of-sequence (all of them if it never came)."""
    for index, token in enumerate(tokens):
        if token == eos_id:
            return index + 1
    return len(tokens)
