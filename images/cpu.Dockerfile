# flywheel on CPU: every pipeline step that needs no GPU (prompts, vote, curate, gate, track, data push)
# and the MLflow tracking server (infra/base/services/mlflow.yaml). Build from the repository root:
#   docker build -f images/cpu.Dockerfile -t flywheel-cpu:0.1.0 .
FROM python:3.11.13-slim-bookworm

# No caches in the image, no bytecode files, logs unbuffered; never reach a model hub at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

RUN groupadd --gid 1000 flywheel && useradd --uid 1000 --gid 1000 --create-home flywheel

WORKDIR /opt/flywheel
COPY images/constraints.txt ./constraints.txt
# torch first and from the CPU index (the project's `torch>=2.4` would otherwise pull the CUDA build); its
# dependencies come with the project below, from PyPI at the lock's versions.
RUN pip install --no-cache-dir --no-deps --constraint constraints.txt \
    --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY src ./src
# The seed the default recipe starts from: the preflight step copies it onto the shared volume.
COPY seed ./seed
ENV FLYWHEEL_HOME=/opt/flywheel
# [cluster]: DVC's S3 remote; psycopg2 and boto3: the MLflow server's PostgreSQL store and S3 artifacts.
# images/constraints.txt: the one lock both images install from (same versions on CPU and GPU steps).
RUN pip install --no-cache-dir --constraint constraints.txt ".[cluster]" psycopg2-binary==2.9.13 boto3==1.43.117

# unshare (util-linux, part of the base system): the code task's strict sandbox (flywheel.sandbox).
RUN command -v unshare

USER 1000:1000
WORKDIR /home/flywheel
CMD ["flywheel", "--help"]
