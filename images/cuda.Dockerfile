# flywheel on NVIDIA GPUs: generate (vLLM), train (TRL) and evaluate steps, vote with self_judge, and
# multi-node TrainJobs (infra/gpu/training-runtime.yaml). Build from the repository root:
#   docker build -f images/cuda.Dockerfile -t flywheel-cuda:0.1.0 .
# A CUDA `-base` image: the driver hooks and the CUDA runtime only; torch 2.13.0's wheels bring their own CUDA
# 13 libraries (nvidia-* packages). Nodes need an NVIDIA driver for CUDA 13 (>= 580).
FROM nvidia/cuda:13.0.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton \
    VLLM_NO_USAGE_STATS=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    PATH=/opt/venv/bin:$PATH

# Triton (vLLM's and torch.compile's kernels) compiles a small C launcher the first time a model loads: it
# needs a C compiler, the C library headers and Python.h at run time. gcc + libc6-dev from Ubuntu; Python
# 3.11.13 (the CPU image's, so images/constraints.txt fits both) from uv, a build that ships its headers.
# The image's own `ubuntu` user holds uid 1000, which the manifests run as; it becomes `flywheel`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel --remove ubuntu || true) \
    && useradd --uid 1000 --user-group --create-home flywheel
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
RUN uv python install 3.11.13 \
    && uv venv --seed --python 3.11.13 /opt/venv \
    && /opt/venv/bin/python -c "assert (__import__('pathlib').Path(__import__('sysconfig').get_paths()['include']) / 'Python.h').is_file(), 'no Python.h'"

WORKDIR /opt/flywheel
COPY images/constraints.txt ./constraints.txt
# torch first (the CUDA build from PyPI), then vLLM built against it, both held by the shared lock.
RUN pip install --no-cache-dir --constraint constraints.txt torch==2.13.0
RUN pip install --no-cache-dir --constraint constraints.txt vllm==0.32.0
COPY pyproject.toml README.md ./
COPY src ./src
COPY seed ./seed
ENV FLYWHEEL_HOME=/opt/flywheel
RUN pip install --no-cache-dir --constraint constraints.txt ".[gpu,cluster]"

# unshare (util-linux, part of the base system): the code task's strict sandbox (flywheel.sandbox).
RUN command -v unshare

USER 1000:1000
WORKDIR /home/flywheel
CMD ["flywheel", "--help"]
