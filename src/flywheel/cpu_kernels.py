"""One set of CPU kernels on every x86 machine: MKL's AVX2 branch and ATen's AVX2 kernels.

Why: the CPUs of one machine kind differ (Intel Xeon with AVX-512; AMD EPYC with AVX2 only), and each
library picks its code path by the CPU it finds. MKL's matrix products and ATen's vectorised
reductions (softmax, norms, the optimizer) then round differently, the last bits move, a sampled
token flips where two scores tie, and a run's figures drift: the demo's 7 digits read 40% then 97%
on Intel and 30% then 90% on AMD EPYC. MKL's conditional numerical reproducibility (``MKL_CBWR``)
runs one branch on every CPU that has it, and ``ATEN_CPU_CAPABILITY`` does the same for ATen; AVX2
is the widest branch every CPU of the kind has. ``MKL_CBWR=COMPATIBLE`` (SSE2) would also do, at
2.3x the training time (``bench/cpu_kernels.py`` prints the cost of each choice on this CPU).

It still takes the same shapes and threads to get the same bits: a batch of another shape, or
another thread count, rounds differently on any CPU.

``pin()`` runs when ``flywheel`` is imported, before torch computes anything, and every process
flywheel starts inherits the variables. A variable the user set wins; ``FLYWHEEL_CPU_KERNELS=native``
leaves both to the libraries (the fastest path of each CPU, figures that differ between CPUs).
Only x86 CPUs with AVX2 are pinned: ATen trusts the variable, and AVX2 kernels on a CPU without
AVX2 would stop at the first illegal instruction.
"""

from __future__ import annotations

import os
import platform
import sys

SETTING = "FLYWHEEL_CPU_KERNELS"  # "avx2" (the default) or "native"
PINNED = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux), or none where they cannot be read."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pin(environ=os.environ, flags: set[str] | None = None) -> dict[str, str]:
    """Set ``PINNED`` in ``environ`` where the user has not set them; returns what was set. ``flags``: the
    CPU's (default: this machine's)."""
    wanted = environ.get(SETTING, "avx2").strip().lower()
    if wanted not in ("avx2", "native"):  # at import: a warning, not a traceback from every command
        print(f"flywheel: {SETTING}={wanted!r} is neither avx2 nor native; using avx2", file=sys.stderr)
        wanted = "avx2"
    if flags is None:
        flags = cpu_flags() if platform.machine().lower() in ("x86_64", "amd64") else set()
    if wanted == "native" or "avx2" not in flags:
        return {}
    added = {key: value for key, value in PINNED.items() if key not in environ}
    environ.update(added)
    return added
