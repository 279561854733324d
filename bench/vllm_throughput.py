"""Benchmark: our vLLM backend's generated tokens/s vs plain vLLM on the same prompts (GPU only).

    python bench/vllm_throughput.py                                   # the shipped seed, 3000 prompts x 8
    python bench/vllm_throughput.py --model Qwen/Qwen2.5-1.5B-Instruct --prompts 2000 --samples 8 --max-tokens 256

Both sides run ``LLM.generate`` with ``SamplingParams(n=K, temperature, max_tokens, seed)`` on the
same prompts: "plain" calls vLLM directly with one engine; "flywheel" is ``VLLMBackend.generate``,
which also builds the engine, converts every output to our ``Completion`` records (text, n_tokens,
logprob, so it asks vLLM for the sampled token's log-probability) and releases the engine. Engine
start-up is timed separately for the plain side and included in the flywheel side, as a round pays
it. Prints figures; asserts nothing. On a machine without CUDA or vllm it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed/default/member-0", help="a local HF directory (or hub id)")
    parser.add_argument("--prompts", type=int, default=3000, help="distinct prompts")
    parser.add_argument("--samples", type=int, default=8, help="K completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--bucket", type=int, default=6, help="addition prompts of this many digits")
    args = parser.parse_args()

    from flywheel.generation import VLLMBackend, free_gpu_memory, vllm_available

    usable, why = vllm_available()
    if not usable:
        print(f"bench/vllm_throughput.py: skipped: {why} (needs a CUDA machine with the [gpu] extra)")
        return 0
    from vllm import LLM, SamplingParams

    from flywheel.rng import derive_seed
    from flywheel.tasks import load_task

    rows = load_task("addition").make_prompts(bucket=args.bucket, count=args.prompts, seed=7, id_prefix="b-",
                                              mixed=True)
    prompts = [r["prompt"] for r in rows]
    seeds = [[derive_seed(0, r["id"], 0, j) for j in range(args.samples)] for r in rows]

    start = time.perf_counter()
    llm = LLM(model=args.model, seed=0, gpu_memory_utilization=args.gpu_memory_utilization)
    startup = time.perf_counter() - start
    params = [SamplingParams(n=args.samples, temperature=args.temperature, max_tokens=args.max_tokens,
                             seed=row[0] % 2**32) for row in seeds]
    llm.generate(prompts[:8], params[:8], use_tqdm=False)  # warm-up (kernels, CUDA graphs)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    plain_seconds = time.perf_counter() - start
    plain_tokens = sum(len(o.token_ids) for out in outputs for o in out.outputs)
    del llm, outputs
    free_gpu_memory()

    backend = VLLMBackend(args.model, gpu_memory_utilization=args.gpu_memory_utilization)
    start = time.perf_counter()
    completions = backend.generate(prompts, seeds, temperature=args.temperature, max_new_tokens=args.max_tokens)
    ours_seconds = time.perf_counter() - start
    ours_tokens = sum(c.n_tokens for row in completions for c in row)

    print(f"model {args.model}: {args.prompts} prompts x {args.samples} samples, max {args.max_tokens} tokens, "
          f"T={args.temperature}")
    print(f"plain vLLM LLM.generate : {plain_tokens} tokens in {plain_seconds:.2f} s = "
          f"{plain_tokens / plain_seconds:,.0f} tokens/s (engine start-up {startup:.1f} s, not included)")
    print(f"flywheel VLLMBackend    : {ours_tokens} tokens in {ours_seconds:.2f} s = "
          f"{ours_tokens / ours_seconds:,.0f} tokens/s (engine start-up and release included)")
    print(f"flywheel excluding the plain side's start-up: "
          f"{ours_tokens / max(1e-9, ours_seconds - startup):,.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
