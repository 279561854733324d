"""The README's commands, exercised as far as a test can: help, config, run, mlflow ui against a real server."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.cli import build_parser
from flywheel.config import load_config
from tests.conftest import ROOT, mlflow_server

BIN = Path(sys.executable).parent
README = (ROOT / "README.md").read_text()


def commands(prefix):
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith(prefix)]


def run(cmd, cwd, timeout=600):
    return subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd)})


def test_quick_start_targets_exist():
    assert "make demo" in README and "make test" in README
    for target in ("demo", "test", "test-slow", "seed", "smoke", "bench"):
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_flywheel_commands_parse_and_the_cheap_ones_run(workdir):
    found = commands("flywheel ")
    assert any(c.startswith("flywheel run") for c in found)
    shutil_copy_params(workdir)
    for command in found:
        if command.startswith(("flywheel --help", "flywheel config")):
            result = run(command, workdir)
            assert result.returncode == 0, (command, result.stderr)
        elif command.startswith("flywheel run -c configs/default.yaml"):
            # The README's run lines (a run, --restart, --resume), on the smoke recipe so they finish in seconds.
            tiny = command.replace("configs/default.yaml", "configs/smoke.yaml") + " -s loop.rounds=1 --no-track"
            result = run(tiny, workdir)
            assert result.returncode == 0, (tiny, result.stderr)
            assert "report:" in result.stdout
        elif command.startswith(("flywheel status", "flywheel export")):
            # on the run the lines above made (the smoke recipe's out_dir)
            on_smoke = command.replace("runs/default", "runs/smoke/loop")
            result = run(on_smoke, workdir)
            assert result.returncode == 0, (on_smoke, result.stderr)
        else:
            # Real-model runs (a GPU and a cached model) and `flywheel data commit` (a data repository):
            # the command line and its config must parse; tests/test_task_configs.py and
            # tests/test_data_versioning.py run those paths on tiny inputs.
            args = build_parser().parse_args(shlex.split(command)[1:])
            if args.command not in ("data", "pipeline"):
                load_config(ROOT / args.config if args.config else None, args.overrides)


def test_run_on_kubeflow_commands_as_far_as_no_cluster_allows(tmp_path):
    """The README's Kubeflow blocks: compile reproduces the committed YAML, `kubectl kustomize` renders,
    and upload/run/schedule against a host with nothing listening fail in one line with exit code 2."""
    found = commands("flywheel pipeline")
    assert {c.split()[2] for c in found} == {"compile", "upload", "run", "schedule"}
    for command in found:
        if command.split()[2] == "compile":
            result = run(f"{command} --out-dir {tmp_path}", ROOT)
            assert result.returncode == 0, result.stderr
            for name in ("flywheel.yaml", "flywheel_round.yaml"):
                assert (tmp_path / name).read_text() == (ROOT / "pipelines" / "compiled" / name).read_text()
        else:
            unreachable = re.sub(r"--host \S+", "--host http://127.0.0.1:9", command)
            result = run(unreachable, ROOT, timeout=120)
            assert result.returncode == 2, (unreachable, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("flywheel: error:") and "127.0.0.1:9" in lines[0], lines
    kustomize = commands("kubectl kustomize")
    assert kustomize
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (tests/test_infra.py still checks every manifest)")
    for command in kustomize:
        result = run(command, ROOT, timeout=120)
        assert result.returncode == 0 and "kind: Deployment" in result.stdout, result.stderr


def shutil_copy_params(workdir):
    shutil.copy(ROOT / "params.yaml", workdir / "params.yaml")


def test_loop_against_a_real_mlflow_server(workdir):
    with mlflow_server(workdir) as uri:
        result = run(f"flywheel run -c configs/smoke.yaml -s loop.rounds=1 -s tracking.uri={uri}", workdir)
        assert result.returncode == 0, result.stderr
        import mlflow

        client = mlflow.MlflowClient(uri, uri)
        versions = client.search_model_versions("name = 'flywheel-smoke'")
        assert len(versions) == 2
        assert client.get_model_version_by_alias("flywheel-smoke", "champion").version in {v.version for v in versions}
        assert any((workdir / "artifacts").rglob("model.safetensors"))
