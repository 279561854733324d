"""docs/kubeflow-infra.md: every bash block without a `# needs ...` first line is run; the others (a cluster
or a registry) are not runnable here, but their `flywheel` commands must parse and their paths exist."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOC = ROOT / "docs" / "kubeflow-infra.md"
BIN = Path(sys.executable).parent
NEEDS = re.compile(r"^# needs a (cluster|registry)\b")


def blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)


def commands(block: str) -> list[str]:
    """Logical command lines (continuations joined, comments dropped)."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_every_block_is_either_runnable_or_says_what_it_needs():
    found = blocks()
    runnable = [b for b in found if not NEEDS.match(b)]
    assert len(found) >= 8 and len(runnable) == 2
    for block in found:
        if NEEDS.match(block):
            for command in commands(block):
                assert command.split()[0] in {"docker", "kubectl", "kind", "flywheel", "dvc", "git"}, command


def test_flywheel_commands_in_the_doc_parse():
    from flywheel.cli import build_parser

    found = [c for b in blocks() for c in commands(b) if c.startswith("flywheel ")]
    assert {c.split()[2] for c in found} == {"push", "commit", "upload", "run", "schedule"}
    for command in found:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.command in ("data", "pipeline")


def test_paths_named_in_the_doc_exist():
    text = DOC.read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:infra|images)/[\w./-]*[\w])", text))
    assert len(paths) >= 12
    for path in paths:
        assert (ROOT / path).exists(), f"docs/kubeflow-infra.md names {path}, which does not exist"


@pytest.mark.parametrize("index", [0, 1])
def test_runnable_block(index, tmp_path):
    block = [b for b in blocks() if not NEEDS.match(b)][index]
    if "kubectl" in block and shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    (tmp_path / "infra").symlink_to(ROOT / "infra")
    here = tmp_path / "runs" / "default" / "rounds" / "3"
    (here / "candidate").mkdir(parents=True)
    (here / "votes.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    (here / "decision.json").write_text('{"promote": false}\n')
    (here / "candidate" / "model.safetensors").write_bytes(b"\0" * 4096)
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT / "src"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
    if "flywheel data" in block:
        assert (tmp_path / "clone" / "rounds" / "3" / "candidate" / "model.safetensors").is_file()
        tags = subprocess.run(["git", "-C", str(tmp_path / "data-repo"), "tag"], capture_output=True, text=True)
        assert tags.stdout.split() == ["round-3"]
