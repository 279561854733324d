"""DVC: the content digest of each round's data, ``dvc add``/``push`` in a DVC repo, and DVC in the cluster.

``digest`` returns the md5 that DVC itself records for a file or directory
(``<md5>.dir`` for directories, as in ``dvc.lock``), computed with dvc-data, so
the digest logged in MLflow can be looked up in DVC's cache and remote.

In the cluster a pipeline pod has no git checkout and no git credentials.
``push_round`` uploads a round's directory straight to the DVC remote from a
throw-away no-SCM DVC repo and writes the ``.dvc`` file that points at it;
``commit_round`` (``flywheel data commit``), run where the data repository is
checked out, commits that file and tags the round, so ``git checkout round-K &&
dvc pull`` restores exactly that round.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from flywheel.errors import InputError

# The S3 endpoint of an S3-compatible store (MinIO): the variable boto3/botocore read themselves.
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL"


def digest(path: str | os.PathLike) -> str:
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    fs = LocalFileSystem()
    odb = HashFileDB(MemoryFileSystem(), "/flywheel-digest")
    _, _, obj = build(odb, os.fspath(Path(path).resolve()), fs, "md5", ignore=_KilledWrites())
    return obj.hash_info.value


class _KilledWrites:
    """What a killed write leaves (``.name.XXXX.tmp``, ``.name.old``) is never part of an output's digest
    (the same names .dvcignore lists for `dvc repro`)."""

    def walk(self, fs, path, **kwargs):
        from flywheel.io import is_leftover

        for root, dirs, files in fs.walk(path, **kwargs):
            if isinstance(dirs, dict):  # detail=True: name -> info
                for name in [d for d in dirs if is_leftover(d)]:
                    del dirs[name]
                yield root, dirs, {k: v for k, v in files.items() if not is_leftover(k)}
            else:
                dirs[:] = [d for d in dirs if not is_leftover(d)]
                yield root, dirs, [f for f in files if not is_leftover(f)]

    def find(self, fs, path):
        for root, _, files in self.walk(fs, path):
            for name in files:
                yield fs.join(root, name)


def check_dvc_rounds(config, environ=os.environ) -> None:
    """Under ``dvc repro`` (DVC sets ``DVC_ROOT`` for every stage command): dvc.yaml must unroll exactly
    ``loop.rounds`` rounds, or the pipeline would silently run another number of rounds than params.yaml says."""
    import yaml

    root = environ.get("DVC_ROOT")
    if not root or not (Path(root) / "dvc.yaml").is_file():
        return
    pipeline = yaml.safe_load((Path(root) / "dvc.yaml").read_text()) or {}
    unrolled = next((len(v["rounds"]) for v in pipeline.get("vars", []) if isinstance(v, dict) and "rounds" in v),
                    None)
    if unrolled is not None and unrolled != config.loop.rounds:
        raise InputError(Path(root) / "dvc.yaml", f"unrolls {unrolled} rounds (vars: rounds) but loop.rounds is "
                         f"{config.loop.rounds}; add or remove entries under vars: rounds (and report's deps), "
                         "or set loop.rounds to match", field="loop.rounds")


def find_dvc_root(start: str | os.PathLike) -> Path | None:
    path = Path(start).resolve()
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


def dvc_add(paths: list[Path], *, push: bool = False) -> Path | None:
    """``dvc add`` the paths in the DVC repo above them (and push to the default remote); None outside a repo."""
    from dvc.repo import Repo

    root = find_dvc_root(paths[0].parent)
    if root is None:
        return None
    with Repo(os.fspath(root)) as repo:
        repo.add([os.fspath(p) for p in paths])
        if push:
            repo.push()
    return root


def push_round(round_dir: Path, remote: str, dvc_file_out: Path) -> dict:
    """Upload ``round_dir`` to the DVC ``remote`` without git; write its ``.dvc`` file to ``dvc_file_out``.

    ``remote`` is any DVC remote URL: ``s3://bucket/prefix`` (credentials from
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, endpoint from ``AWS_ENDPOINT_URL``
    for MinIO; needs the ``dvc-s3`` package, extra ``[cluster]``) or a local directory.
    The files are hashed in place and copied straight into the remote's content-addressed
    layout (what ``dvc push`` writes): no cache copy, no git, and files the remote already
    holds (an unchanged model, earlier rounds' data) are not uploaded again. The ``.dvc``
    file's ``outs[0]`` holds md5 (``<md5>.dir``), size, nfiles and path (the directory's
    name), as ``dvc add`` writes it, and is written atomically after the upload.
    Returns ``{"md5", "nfiles", "size", "remote"}``.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_data.hashfile.transfer import transfer
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    from flywheel import io

    round_dir = Path(round_dir).resolve()
    if not round_dir.is_dir():
        raise InputError(round_dir, "round directory not found")
    if not any(p.is_file() for p in round_dir.rglob("*")):
        raise InputError(round_dir, "round directory holds no files; nothing to push")
    if not remote:
        raise InputError("<command line>", "no DVC remote given", field="remote")
    # A throw-away no-SCM DVC repo only to let DVC parse the remote's URL and options (dvc-s3 for s3://).
    with tempfile.TemporaryDirectory(prefix="flywheel-dvc-") as scratch, _dvc_output_to_stderr():
        try:
            with Repo.init(scratch, no_scm=True) as repo:
                with repo.config.edit() as conf:
                    conf["core"]["remote"] = "flywheel"
                    conf["core"]["analytics"] = False
                    # DVC's index and lock caches stay in the scratch dir: a pod with a read-only root
                    # file system and no writable HOME works.
                    conf["core"]["site_cache_dir"] = os.path.join(scratch, ".site-cache")
                    conf["remote"]["flywheel"] = _remote_config(remote)
                destination = repo.cloud.get_remote_odb("flywheel", command="push")
                # Hash in place; the staging db only holds the directory listing and references to the files.
                staging, meta, tree = build(HashFileDB(MemoryFileSystem(), "/flywheel-push"), os.fspath(round_dir),
                                            LocalFileSystem(), "md5")
                result = transfer(staging, destination, {tree.hash_info}, hardlink=False, shallow=False)
        except DvcException as error:  # bad URL, missing dvc-s3
            raise InputError(remote, f"DVC push failed ({_one_line(error)})") from None
        except Exception as error:  # noqa: BLE001 - unreachable endpoint, refused keys, missing bucket (botocore, OSError)
            raise InputError(remote, f"DVC push failed ({type(error).__name__}: {_one_line(error)})") from None
    if result.failed:
        raise InputError(remote, f"DVC push failed: {len(result.failed)} objects were not uploaded")
    entry = {"md5": tree.hash_info.value, "size": meta.size, "nfiles": meta.nfiles, "hash": "md5",
             "path": round_dir.name}
    with io.atomic_path(dvc_file_out) as tmp:
        tmp.write_text(yaml.safe_dump({"outs": [entry]}, sort_keys=False))
    return {"md5": entry["md5"], "nfiles": entry["nfiles"], "size": entry["size"], "remote": remote}


def _remote_config(remote: str) -> dict:
    if "://" not in remote:
        return {"url": os.fspath(Path(remote).resolve())}
    config = {"url": remote}
    if remote.startswith("s3://") and os.environ.get(S3_ENDPOINT_ENV):
        config["endpointurl"] = os.environ[S3_ENDPOINT_ENV]
    return config


@contextlib.contextmanager
def _dvc_output_to_stderr():
    """DVC logs progress ("Initialized DVC repository.") to stdout; our stdout is the JSON result."""
    import logging

    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        dvc_logger.setLevel(level)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f": {' '.join(str(cause).split())}"
    return text


def read_dvc_file(path: Path) -> dict:
    """The single ``outs`` entry of a ``.dvc`` file written by ``push_round``; InputError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a .dvc file (malformed YAML: {' '.join(str(exc).split())})") from None
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        raise InputError(path, "not a .dvc file of one output (expected 'outs' with one entry)", field="outs")
    for key in ("md5", "path"):
        if not isinstance(outs[0].get(key), str) or not outs[0][key]:
            raise InputError(path, "missing or empty", field=f"outs[0].{key}")
    return outs[0]


def commit_round(repo: Path, dvc_file: Path, round_index: int, message: str | None = None) -> dict:
    """Commit a round's ``.dvc`` file to the data repository and tag it ``round-<K>``.

    The file becomes ``rounds/<K>.dvc`` with ``path: '<K>'``, so ``dvc pull`` restores the
    round at ``rounds/<K>/`` (the loop's layout); ``rounds/.gitignore`` gets ``/<K>`` as
    ``dvc add`` would write it. Refuses (InputError) when ``repo`` is not a git + DVC
    repository, the tag exists, or the file is not a ``.dvc`` file; on a failed commit the
    working tree is put back as it was.
    """
    repo = Path(repo).resolve()
    if round_index < 0:
        raise InputError("<command line>", "must be >= 0", field="round")
    if not (repo / ".git").exists() or _git(repo, "rev-parse", "--is-inside-work-tree").returncode != 0:
        raise InputError(repo, "not a git repository (the data repository must be a git + DVC repository)")
    if not (repo / ".dvc").is_dir():
        raise InputError(repo, "not a DVC repository (run `dvc init` there first)")
    tag = f"round-{round_index}"
    if _git(repo, "rev-parse", "-q", "--verify", f"refs/tags/{tag}").returncode == 0:
        raise InputError(repo, f"tag '{tag}' already exists; round {round_index} is committed")
    entry = read_dvc_file(dvc_file)
    entry = {**entry, "path": str(round_index)}

    target = repo / "rounds" / f"{round_index}.dvc"
    ignore = repo / "rounds" / ".gitignore"
    before = {p: p.read_bytes() if p.exists() else None for p in (target, ignore)}
    had_rounds_dir = target.parent.is_dir()
    ignored = ignore.read_text().splitlines() if ignore.exists() else []
    from flywheel import io

    try:
        with io.atomic_path(target) as tmp:
            tmp.write_text(yaml.safe_dump({"outs": [entry]}, sort_keys=False))
        if f"/{round_index}" not in ignored:
            with io.atomic_path(ignore) as tmp:
                tmp.write_text("".join(f"{line}\n" for line in [*ignored, f"/{round_index}"]))
        paths = [os.path.relpath(target, repo), os.path.relpath(ignore, repo)]
        message = message or f"round {round_index}: data {entry['md5']}"
        for args in (("add", "--", *paths), ("commit", "-q", "-m", message, "--", *paths)):
            _git_or_fail(repo, *args)
    except BaseException:
        _git(repo, "reset", "-q", "--", *[os.path.relpath(p, repo) for p in before])
        for path, content in before.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        if not had_rounds_dir:
            shutil.rmtree(target.parent, ignore_errors=True)
        raise
    _git_or_fail(repo, "tag", tag)
    commit = _git(repo, "rev-parse", "HEAD").stdout.strip()
    return {"tag": tag, "commit": commit, "dvc_file": os.path.relpath(target, repo), "md5": entry["md5"]}


def _git_or_fail(repo: Path, *args: str) -> None:
    result = _git(repo, *args)
    if result.returncode != 0:
        raise InputError(repo, f"git {args[0]} failed ({' '.join(result.stderr.split())})")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        raise InputError("git", "git is not installed")
    return subprocess.run(["git", "-C", os.fspath(repo), *args], capture_output=True, text=True)
