# flywheel on NVIDIA GPUs: generate (vLLM), train (TRL) and evaluate steps, and multi-node TrainJobs
# (infra/gpu/training-runtime.yaml). Build from the repository root:
#   docker build -f images/cuda.Dockerfile -t flywheel-cuda:0.1.0 .
# torch 2.13.0's PyPI wheels are built for CUDA 13 and bring their own CUDA libraries; the base image
# matches them and supplies the driver hooks. Nodes need an NVIDIA driver for CUDA 13 (>= 580).
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    VLLM_NO_USAGE_STATS=1 \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04's Python (3.12) in a virtual environment: pip may not install into the system Python.
# The image's own `ubuntu` user holds uid 1000, which the manifests run as; it becomes `flywheel`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && (userdel --remove ubuntu || true) \
    && useradd --uid 1000 --user-group --create-home flywheel

# torch, then vLLM built against it; vLLM 0.32.0 requires torch==2.13.0 and transformers<5.20.
RUN pip install --no-cache-dir torch==2.13.0
RUN pip install --no-cache-dir vllm==0.32.0 transformers==5.19.0

WORKDIR /opt/flywheel
COPY pyproject.toml README.md ./
COPY src ./src
COPY images/cuda-constraints.txt /opt/flywheel/constraints.txt
# The constraints keep the project's install from moving torch, vLLM or transformers.
RUN pip install --no-cache-dir --constraint constraints.txt ".[gpu,cluster]"

USER 1000:1000
WORKDIR /home/flywheel
CMD ["flywheel", "--help"]
