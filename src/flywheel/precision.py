"""Numeric precision: the recipe's choice, never a library's default.

Library defaults move between releases and depend on the hardware (TRL's ``SFTConfig``
turned on ``bf16`` and ``gradient_checkpointing`` by default; transformers 5 loads a
checkpoint in the dtype it was saved in). On a CPU without AVX512-BF16/AMX, bf16 is
emulated: 60 SFT steps of the default recipe took 31.6 s with TRL's defaults and 9.7 s
in fp32 without checkpointing. So every stage that loads or trains a model resolves
its precision here, from its own config key, and records what it used.

Names: ``fp32``, ``bf16``, ``fp16``, or ``auto``: fp32 on CPU, bf16 on a CUDA device
that supports it, else fp32.
"""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> the concrete precision for ``device``; a concrete name is returned as it is."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
    return "fp32"


def torch_dtype(precision: str):
    """The ``torch.dtype`` of a concrete precision name."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def trainer_precision_args(precision: str, gradient_checkpointing: bool) -> dict:
    """The ``TrainingArguments`` keys that set precision and memory, all spelled out.

    Training keeps fp32 master weights and runs bf16/fp16 as mixed precision (autocast),
    so a ``precision`` of ``bf16`` changes the matmuls, not the stored weights.
    """
    # tf32 off: on Ampere+ GPUs it would silently change fp32 matmuls (a no-op on CPU).
    return dict(bf16=precision == "bf16", fp16=precision == "fp16", tf32=False,
                gradient_checkpointing=gradient_checkpointing)
