"""The machine checks every front door runs before a stage's work: a wrong machine is one line up front,
never a stack trace in the middle of a stage (or, on Kubernetes, an hour into a round).

``flywheel run`` and each ``flywheel <stage>`` (so ``dvc repro`` and the Argo door too) call
``check_stage`` before any work; each Kubeflow step calls it first in its pod (``kubeflow.artifacts.load``).
What a stage needs comes from the config and the registries, never from a door:

- a stage that loads a model (its record's ``needs_model``) on ``loop.device=cuda`` needs a visible GPU;
- generate with ``generate.backend=vllm`` needs CUDA and vLLM (``auto`` falls back to transformers);
- train with a method that generates with vLLM (``TrainMethod.uses_vllm``: GRPO's ``use_vllm``) needs vLLM;
- train with ``train.student`` (weak-to-strong) needs the student's directory.
"""

from __future__ import annotations

import os

from flywheel.config import FlywheelConfig
from flywheel.errors import InputError
from flywheel.registry import TRAIN_METHODS
from flywheel.stages.records import STAGES

# The commands besides a round's stages that load a model on loop.device; ``run`` is the whole loop.
MODEL_COMMANDS = ("run", "seed", "prepare")


def uses_model(config: FlywheelConfig, stage: str) -> bool:
    """Whether ``stage`` loads a model (and so torch) on ``loop.device``: a round's stage says so in its record
    (``flywheel.stages.records``)."""
    return stage in MODEL_COMMANDS or (stage in STAGES and STAGES[stage].needs_model(config))


def on_gpu(config: FlywheelConfig, stage: str) -> bool:
    """Where a Kubernetes door runs ``stage``'s pod, one rule for every door: a stage that loads a model runs on
    the image and pool of ``loop.device`` (the CUDA image and the GPU pool for ``cuda``), every other stage on
    the CPU image. Train on more than one node is the exception: its step submits a TrainJob, whose nodes
    follow the same rule, and holds no GPU itself."""
    if stage == "train" and config.train.num_nodes > 1:
        return False
    return uses_model(config, stage) and config.loop.device.startswith("cuda")


def check_stage(config: FlywheelConfig, stage: str, *, where: str = "on this machine") -> None:
    """Everything ``stage`` needs from this machine; ``where`` words the error (``in this pod``)."""
    if uses_model(config, stage):
        check_device(config.loop.device, where=where)
    if stage in ("run", "generate"):
        from flywheel.generation import choose_backend

        choose_backend(config.generate.backend)
    if stage in ("run", "train") and config.train.student and not os.path.isdir(config.train.student):
        raise InputError("config", f"train.student {config.train.student!r} is not a model directory {where}",
                         field="train.student")
    if stage in ("run", "train") and TRAIN_METHODS.get(config.train.method).uses_vllm(config.train):
        from flywheel.generation import vllm_available

        usable, why = vllm_available()
        if not usable:  # before the seed's evaluation and the round's generation, not at the train stage
            raise InputError("config", f"train.method={config.train.method} generates with vLLM "
                             f"(train.grpo.use_vllm=true) but {why}", field="train.grpo.use_vllm")


def check_device(device: str, *, where: str = "on this machine") -> None:
    """``loop.device`` names a device this process can use."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        hint = (": the step needs the GPU pool and an nvidia.com/gpu limit" if "pod" in where else
                "; set loop.device=cpu")
        raise InputError("loop.device", f"is {device}, but no GPU is visible {where} (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch {torch.__version__}){hint}")
