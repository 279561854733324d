"""DVC in the cluster: `flywheel data push` (no git) to a remote, `flywheel data commit` tags it in the data repo,
and a fresh clone of the data repo restores exactly the round with `dvc pull`. Local remote; S3 against moto."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flywheel.errors import InputError
from flywheel.versioning import commit_round, digest, push_round

BIN = Path(sys.executable).parent
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(*args, cwd, env=None, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **GIT_ID, **(env or {})}
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def flywheel(*args, cwd, env=None):
    src = str(Path(__file__).resolve().parents[1] / "src")
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return sh(sys.executable, "-m", "flywheel.cli", *map(str, args), cwd=cwd, check=False,
              env={"PYTHONPATH": pythonpath, **(env or {})})


def assert_clean_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("flywheel: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def round_dir(tmp_path) -> Path:
    """A round's directory as a stage writes it: Parquet-like bytes, JSON, a nested model directory."""
    here = tmp_path / "pipeline-root" / "rounds" / "3"
    (here / "candidate" / "member-0").mkdir(parents=True)
    (here / "samples.parquet").write_bytes(bytes(range(256)) * 8)
    (here / "decision.json").write_text(json.dumps({"promote": True, "reason": "significant win"}) + "\n")
    (here / "candidate" / "member-0" / "config.json").write_text('{"n_layer": 2}\n')
    return here


def make_data_repo(root: Path, remote: str, *, remote_config: dict | None = None) -> Path:
    root.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "remote", "add", "-d", "store", remote, cwd=root)
    for key, value in (remote_config or {}).items():
        sh("dvc", "remote", "modify", "store", key, value, cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "data repo", cwd=root)
    return root


def test_push_commit_and_a_fresh_clone_pulls_exactly_the_round(tmp_path, round_dir):
    remote = tmp_path / "remote"
    dvc_file = tmp_path / "out" / "round-3.dvc"
    pushed = flywheel("data", "push", "--round-dir", round_dir, "--remote", remote, "--dvc-file", dvc_file,
                      cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    result = json.loads(pushed.stdout)
    assert result == {"md5": digest(round_dir), "nfiles": 3, "size": sum(len(b) for b in tree(round_dir).values()),
                      "remote": str(remote)}
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    assert (out["md5"], out["nfiles"], out["size"], out["path"]) == (result["md5"], 3, result["size"], "3")
    assert (remote / "files" / "md5" / result["md5"][:2] / result["md5"][2:]).is_file()
    assert not list(dvc_file.parent.glob(".*.tmp")), "temporary file left behind"

    repo = make_data_repo(tmp_path / "data-repo", str(remote))
    committed = flywheel("data", "commit", "--repo", repo, "--dvc-file", dvc_file, "--round", 3,
                         "--message", "round 3 of run abc", cwd=tmp_path)
    assert committed.returncode == 0, committed.stderr
    assert json.loads(committed.stdout)["tag"] == "round-3"
    assert sh("git", "log", "-1", "--format=%s", "round-3", cwd=repo).stdout.strip() == "round 3 of run abc"
    assert sh("git", "status", "--porcelain", cwd=repo).stdout == ""

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert "round-3" in sh("git", "tag", cwd=clone).stdout.split()
    sh("git", "checkout", "-q", "round-3", cwd=clone)
    sh("dvc", "pull", cwd=clone)
    assert tree(clone / "rounds" / "3") == tree(round_dir)
    assert sh("git", "status", "--porcelain", cwd=clone).stdout == ""  # rounds/.gitignore hides the data

    # The same round again: refused, one line, exit 2, the repository untouched.
    again = flywheel("data", "commit", "--repo", repo, "--dvc-file", dvc_file, "--round", 3, cwd=tmp_path)
    assert_clean_error(again, "tag 'round-3' already exists")
    assert len(sh("git", "log", "--format=%H", cwd=repo).stdout.split()) == 2


def test_commit_refuses_what_is_not_a_git_and_dvc_repo(tmp_path, round_dir):
    dvc_file = tmp_path / "round.dvc"
    push_round(round_dir, str(tmp_path / "remote"), dvc_file)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert_clean_error(flywheel("data", "commit", "--repo", plain, "--dvc-file", dvc_file, "--round", 1,
                                cwd=tmp_path), "plain", "not a git repository")
    git_only = tmp_path / "git-only"
    git_only.mkdir()
    sh("git", "init", "-q", cwd=git_only)
    assert_clean_error(flywheel("data", "commit", "--repo", git_only, "--dvc-file", dvc_file, "--round", 1,
                                cwd=tmp_path), "git-only", "not a DVC repository")
    assert not (plain / "rounds").exists() and not (git_only / "rounds").exists()


def test_commit_refuses_a_file_that_is_not_a_dvc_file_and_writes_nothing(tmp_path):
    repo = make_data_repo(tmp_path / "data-repo", str(tmp_path / "remote"))
    bad = tmp_path / "bad.dvc"
    bad.write_text("outs: []\n")
    assert_clean_error(flywheel("data", "commit", "--repo", repo, "--dvc-file", bad, "--round", 1, cwd=tmp_path),
                       "bad.dvc", "field 'outs'")
    bad.write_text("outs:\n- size: 3\n  path: x\n")
    with pytest.raises(InputError, match=r"field 'outs\[0\].md5'"):
        commit_round(repo, bad, 1)
    assert not (repo / "rounds").exists()
    assert sh("git", "status", "--porcelain", cwd=repo).stdout == ""
    assert sh("git", "tag", cwd=repo).stdout == ""


def test_a_failed_git_commit_leaves_the_data_repo_as_it_was(tmp_path, round_dir):
    dvc_file = tmp_path / "round.dvc"
    push_round(round_dir, str(tmp_path / "remote"), dvc_file)
    repo = make_data_repo(tmp_path / "data-repo", str(tmp_path / "remote"))
    hook = repo / ".git" / "hooks" / "pre-commit"  # a hook that rejects every commit
    hook.write_text("#!/bin/sh\necho rejected by hook >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(InputError, match="git commit failed"):
        commit_round(repo, dvc_file, 4)
    assert not (repo / "rounds").exists()
    assert sh("git", "status", "--porcelain", cwd=repo).stdout == ""
    assert sh("git", "tag", cwd=repo).stdout == ""


def test_push_refuses_a_missing_or_empty_round_dir_and_writes_nothing(tmp_path):
    dvc_file = tmp_path / "out.dvc"
    assert_clean_error(flywheel("data", "push", "--round-dir", tmp_path / "nope", "--remote", tmp_path / "r",
                                "--dvc-file", dvc_file, cwd=tmp_path), "nope", "round directory not found")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no files"):
        push_round(tmp_path / "empty", str(tmp_path / "r"), dvc_file)
    assert not dvc_file.exists() and not (tmp_path / "r").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on 127.0.0.1 standing in for the cluster's MinIO (same S3 API, same env vars)."""
    pytest.importorskip("dvc_s3", reason="the S3 remote needs dvc-s3 (pip install '.[cluster]')")
    moto_server = pytest.importorskip("moto.server", reason="the S3 test needs moto (pip install '.[cluster]')")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "flywheel-test", "AWS_SECRET_ACCESS_KEY": "flywheel-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="flywheel-dvc")
    yield s3, endpoint
    server.stop()


def test_push_to_s3_and_pull_from_a_clone(tmp_path, round_dir, s3_server):
    s3, endpoint = s3_server
    dvc_file = tmp_path / "round-3.dvc"
    result = push_round(round_dir, "s3://flywheel-dvc/rounds", dvc_file)
    assert result["md5"] == digest(round_dir) and result["remote"] == "s3://flywheel-dvc/rounds"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="flywheel-dvc")["Contents"]}
    assert f"rounds/files/md5/{result['md5'][:2]}/{result['md5'][2:]}" in keys
    assert len(keys) == 4  # the .dir listing and the three files, no temporary objects left

    repo = make_data_repo(tmp_path / "data-repo", "s3://flywheel-dvc/rounds", remote_config={"endpointurl": endpoint})
    commit_round(repo, dvc_file, 3)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    sh("dvc", "pull", cwd=clone)
    assert tree(clone / "rounds" / "3") == tree(round_dir)


def test_push_to_an_unreachable_s3_endpoint_is_one_line(tmp_path, round_dir, monkeypatch):
    pytest.importorskip("dvc_s3", reason="the S3 remote needs dvc-s3 (pip install '.[cluster]')")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail fast instead of botocore's retries
    dvc_file = tmp_path / "round.dvc"
    with pytest.raises(InputError, match=r"s3://flywheel-dvc/rounds: DVC push failed \(EndpointConnectionError"):
        push_round(round_dir, "s3://flywheel-dvc/rounds", dvc_file)
    assert not dvc_file.exists()
