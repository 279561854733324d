"""The first step of every Kubeflow pipeline: the run's effective config, its seed on the shared volume,
and one line per thing the run depends on, checked before any GPU is asked for.

* ``apply_knobs``: the typed pipeline parameters a UI user turns (``Knobs``) override ``config_yaml``.
* ``stage_seed``: the seed as a directory on the shared volume, so every step and every TrainJob node
  reads the same files: from ``seed_uri`` (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
  ``s3://...``, ``runs:/...``, a path), or a relative ``seed.path`` resolved in the image's project
  directory (``FLYWHEEL_HOME``; the images ship ``seed/default``) and copied onto the volume once.
* ``run_checks``: the volume is writable, the seed is a model, MLflow answers, the object store answers.
  Each check prints one line; any failure ends the step with one line naming every failed check.

The GPU is checked where it is used: each GPU step starts with ``flywheel.machine_checks.check_stage`` in its pod.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from flywheel.config import FlywheelConfig, load_config_text, dump_config, to_dict
from flywheel import model_copies
from flywheel.errors import InputError, one_line
from flywheel.modeling import seed_location
from flywheel.machine_checks import on_gpu
from flywheel.stages.records import ROUND_STAGES, STAGES

SEEDS_DIR = "seeds"  # beside the workspace root on the volume: /models/seeds next to /models/runs


@dataclass
class Knobs:
    """What a Kubeflow UI user sets as typed pipeline parameters; each overrides one config key."""

    samples_per_prompt: int
    temperature: float
    min_vote_share: float
    gate_alpha: float
    gate_min_gain: float
    train_steps: int
    learning_rate: float

    @staticmethod
    def keys() -> dict[str, str]:
        """Pipeline parameter -> the config key it overrides."""
        return {"samples_per_prompt": "generate.samples_per_prompt", "temperature": "generate.temperature",
                "min_vote_share": "curate.min_vote_share", "gate_alpha": "gate.alpha",
                "gate_min_gain": "gate.min_gain", "train_steps": "train.steps", "learning_rate": "train.learning_rate"}

    @classmethod
    def of(cls, config: FlywheelConfig) -> "Knobs":
        """The knobs as ``config`` sets them: the compiled pipeline's defaults."""
        values = {}
        for name, key in cls.keys().items():
            section, option = key.split(".")
            values[name] = getattr(getattr(config, section), option)
        return cls(**values)

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Knobs":
        import json

        return cls(**json.loads(text))


def apply_knobs(config_yaml: str, knobs: Knobs, compiled: Knobs) -> FlywheelConfig:
    """``config_yaml`` with every knob a user changed (a value other than ``compiled``, the default the
    pipeline was compiled with) in its key, validated like any config (one-line errors). A knob left at its
    default leaves ``config_yaml``'s value alone, so editing either one in the UI does what it says."""
    raw = to_dict(load_config_text(config_yaml, source="pipeline parameter config_yaml"))
    for name, key in Knobs.keys().items():
        if getattr(knobs, name) != getattr(compiled, name):
            section, option = key.split(".")
            raw[section][option] = getattr(knobs, name)
    from flywheel.config import _build  # the loader's validation, with the knob named in the error

    try:
        return _build(FlywheelConfig, raw, "pipeline parameters", prefix="")
    except InputError as error:
        by_key = {v: k for k, v in Knobs.keys().items()}
        if error.field in by_key:
            raise InputError(f"pipeline parameter {by_key[error.field]}", error.message, field=error.field) from None
        raise


# The steps a pipeline places, in order: each by ``flywheel.machine_checks.on_gpu`` (gate never loads a model).
PLACED_STEPS = ("prepare", *ROUND_STAGES)


@dataclass(frozen=True)
class Placement:
    """Which steps run on the GPU image and pool: decided when the pipeline is compiled, from its config
    (``flywheel.machine_checks.on_gpu``, the rule every door follows), and checked again by the preflight step against
    the config a run actually gets (``check_placement``)."""

    gpu_steps: tuple[str, ...]

    @classmethod
    def of(cls, config: FlywheelConfig) -> "Placement":
        return cls(tuple(step for step in PLACED_STEPS if on_gpu(config, step)))

    def on_gpu(self, step: str) -> bool:
        return step in self.gpu_steps

    def to_text(self) -> str:
        """How the pipeline passes it to the preflight step (a constant argument): ``generate,train,evaluate``."""
        return ",".join(self.gpu_steps)

    @classmethod
    def from_text(cls, text: str) -> "Placement":
        return cls(tuple(step for step in text.split(",") if step))


def _deciding_settings(config: FlywheelConfig, step: str) -> tuple[str, str]:
    """The settings that place ``step`` (for the error), and the field to name."""
    device = f"loop.device={config.loop.device}"
    if step == "train":
        return f"train.num_nodes={config.train.num_nodes} and {device}", "train.num_nodes"
    settings = STAGES[step].model_settings(config) if step in STAGES else {}  # from the stage's record
    if settings:
        return " and ".join([*(f"{name}={value}" for name, value in settings.items()), device]), next(iter(settings))
    return device, "loop.device"


def check_placement(config: FlywheelConfig, compiled: Placement) -> None:
    """Every step that loads a model runs where ``loop.device`` is, and a multi-node train step holds no GPU: the
    pipeline decided both when it was compiled, from its config; a run's config must agree."""
    wanted = Placement.of(config)
    for step in PLACED_STEPS:
        if wanted.on_gpu(step) != compiled.on_gpu(step):
            settings, field = _deciding_settings(config, step)
            where = "a GPU" if compiled.on_gpu(step) else "the CPU image"
            raise InputError("pipeline parameter config_yaml", f"{settings}, but this pipeline was compiled with its "
                             f"{step} step on {where}: compile the pipeline with this config "
                             "(flywheel pipeline compile|upload|run -c ...)", field=field)


def stage_seed(config: FlywheelConfig, seed_uri: str, seeds_dir: Path) -> FlywheelConfig:
    """Set ``seed.path`` to a model directory on the volume (``seeds_dir``), importing it once."""
    if seed_uri:
        config.seed.path = str(_import_seed(config, seed_uri, Path(seeds_dir)))
        return config
    path = Path(config.seed.path)
    if path.is_absolute():
        return config  # on the volume already (run_checks says if it is not there)
    shipped = Path(seed_location(config.seed.path))  # the rule of every door: under FLYWHEEL_HOME
    if not shipped.is_dir():
        raise InputError(config.seed.path, f"relative seed.path is not in the image ({shipped}): set seed.path to a "
                         "directory on the volume or pass seed_uri", field="seed.path")
    from flywheel.versioning import digest

    target = Path(seeds_dir) / f"{path.name}-{digest(shipped)[:12]}"
    _copy_once(shipped, target)
    config.seed.path = str(target)
    return config


def _import_seed(config: FlywheelConfig, uri: str, seeds_dir: Path) -> Path:
    import mlflow

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from flywheel.model_registry import FILES_TAG

        name, alias, number = match.groups()
        client = MlflowClient(config.tracking.uri, config.tracking.uri)
        try:
            version = (client.get_model_version_by_alias(name, alias) if alias
                       else client.get_model_version(name, number))
        except MlflowException as error:
            raise InputError(f"pipeline parameter seed_uri {uri}", one_line(error.message, 300)) from None
        source = version.tags.get(FILES_TAG, version.source)  # the model directory inside the pyfunc
        target = seeds_dir / _safe(f"{name}-v{version.version}")
    elif re.match(r"^[a-z0-9+]+://|^runs:/", uri) or Path(uri).is_absolute():
        source, target = uri, seeds_dir / _safe(uri)
    else:
        raise InputError(f"pipeline parameter seed_uri {uri}", "expected models:/<name>@<alias>, "
                         "models:/<name>/<version>, runs:/..., an object-store URI (s3://...) or an absolute path")
    if not target.is_dir():
        with tempfile.TemporaryDirectory(prefix=".seed-", dir=_mkdir(seeds_dir)) as scratch:
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=scratch,
                                                            tracking_uri=config.tracking.uri)
            except Exception as error:  # any store's error (S3, HTTP, MLflow) is one line about the URI
                raise InputError(f"pipeline parameter seed_uri {uri}",
                                 f"cannot download: {one_line(error, 300)}") from None
            _copy_once(Path(local), target)
    return target


def _copy_once(source: Path, target: Path) -> None:
    """Copy a model directory onto the volume atomically, once (a run that got there first wins)."""

    if not target.is_dir():
        model_copies.link_or_copy_tree(source, target)


def _safe(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return f"{name[:80]}-{hashlib.md5(text.encode()).hexdigest()[:8]}"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_checks(config: FlywheelConfig, workspace_root: Path, *, dvc_remote: str = "") -> list[str]:
    """One line per dependency; raises one ``InputError`` naming every failed check."""
    lines, failures = [], []
    for name, check in (("volume", lambda: _check_volume(Path(workspace_root))),
                        ("seed", lambda: _check_seed(config)),
                        ("mlflow", lambda: _check_mlflow(config)),
                        ("object store", lambda: _check_object_store(dvc_remote))):
        try:
            lines.append(f"ok    {name}: {check()}")
        except Exception as error:
            message = error.message if isinstance(error, InputError) else one_line(error, 300)
            lines.append(f"FAIL  {name}: {message}")
            failures.append(f"{name}: {message}")
    print("\n".join(lines), flush=True)
    if failures:
        raise InputError("preflight", "; ".join(failures))
    return lines


def _check_volume(root: Path) -> str:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".preflight-"):
            pass
    except OSError as error:
        raise InputError(root, f"not writable by uid {os.getuid()} ({error.strerror}); the volume needs the pods' "
                         "fsGroup or the bootstrap Job of docs/kubeflow-infra.md") from None
    usage = shutil.disk_usage(root)
    return f"{root} writable, {usage.free / 2**30:.0f} GiB free"


def _check_seed(config: FlywheelConfig) -> str:
    from flywheel.modeling import member_dirs

    members = member_dirs(config.seed.path)
    return f"{config.seed.path} ({len(members)} member{'s' if len(members) > 1 else ''})"


def _check_mlflow(config: FlywheelConfig) -> str:
    if not config.tracking.enabled:
        return "tracking disabled"
    uri = config.tracking.uri
    if not uri.startswith(("http://", "https://")):
        return f"{uri} (not a server: each pod would have its own store)" if "://" in uri else uri
    from flywheel.tracking_store import check_reachable

    check_reachable(uri, timeout_s=10)
    return f"{uri} answers"


def _check_object_store(dvc_remote: str) -> str:
    if not dvc_remote.startswith("s3://"):
        return "not used (no s3:// DVC remote)" if not dvc_remote else f"{dvc_remote} (not S3; checked by push)"
    import boto3
    from botocore.config import Config

    bucket = dvc_remote[len("s3://"):].split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint,
                          config=Config(connect_timeout=10, read_timeout=10, retries={"max_attempts": 1}))
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as error:
        raise InputError(dvc_remote, f"object store does not answer for bucket {bucket} at "
                         f"{endpoint or 'AWS'} ({one_line(error, 300)})") from None
    return f"bucket {bucket} at {endpoint or 'AWS'} answers"


def effective_config(config_yaml: str, knobs: Knobs, compiled: Knobs, *, seed_uri: str, workspace_root: str,
                     gpu_steps: str, dvc_remote: str = "") -> str:
    """The preflight step: knobs applied, placement checked against ``gpu_steps`` (``Placement.to_text``), seed
    staged, checks run; returns the config every later step reads."""
    config = apply_knobs(config_yaml, knobs, compiled)
    check_placement(config, Placement.from_text(gpu_steps))
    root = Path(workspace_root)
    stage_seed(config, seed_uri, root.parent / SEEDS_DIR)
    run_checks(config, root, dvc_remote=dvc_remote)
    return dump_config(config)


