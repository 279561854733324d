"""The Dockerfiles, parsed (no registry is reachable here, so they are not built): valid instructions, every
base image and every pip install pinned, torch before the project, non-root, no caches, offline hub."""

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}
PINNED_REF = re.compile(r"^[a-z0-9./_-]+(:[A-Za-z0-9_.-]+)?(@sha256:[0-9a-f]{64})?$")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, backslash continuations joined."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        result.append((keyword, args.strip()))
    assert not pending, f"{path.name}: file ends inside a continued line"
    return result


def image_is_pinned(ref: str) -> bool:
    name = ref.rsplit("/", 1)[-1]
    if not PINNED_REF.match(ref) or ref.endswith(":latest"):
        return False
    return "@sha256:" in ref or ":" in name


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN instructions (split at &&)."""
    found = []
    for keyword, args in instructions(path):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2:])
    return found


def requirements(args: list[str]) -> list[str]:
    """Package arguments of one pip install: options and their values removed."""
    takes_value = {"--index-url", "-i", "--extra-index-url", "--constraint", "-c", "--requirement", "-r",
                   "--find-links", "-f"}
    packages, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            packages.append(word)
    return packages


def is_project(requirement: str) -> bool:
    return re.fullmatch(r"\.(\[[a-z,]+\])?", requirement) is not None


def test_there_are_a_cpu_and_a_cuda_image():
    assert {p.name for p in DOCKERFILES} == {"cpu.Dockerfile", "cuda.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_instructions_are_valid_and_every_base_image_is_pinned(path):
    parsed = instructions(path)
    assert parsed[0][0] == "FROM", "the first instruction must be FROM"
    for keyword, args in parsed:
        assert keyword in INSTRUCTIONS, f"{path.name}: unknown instruction {keyword!r}"
        assert args, f"{path.name}: {keyword} without arguments"
        if keyword == "FROM":
            ref = args.split()[0]
            assert "$" not in ref, f"{path.name}: FROM {ref} depends on a build argument"
            assert image_is_pinned(ref), f"{path.name}: FROM {ref} is not an exact tag or digest"
        if keyword in ("CMD", "ENTRYPOINT") and args.startswith("["):
            import json

            assert all(isinstance(w, str) for w in json.loads(args))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_pip_install_is_pinned_and_torch_comes_before_the_project(path):
    installs = pip_installs(path)
    assert installs, f"{path.name}: no pip install"
    torch_at = project_at = None
    for index, args in enumerate(installs):
        assert "--no-cache-dir" in args, f"{path.name}: pip install {' '.join(args)} keeps a cache"
        for requirement in requirements(args):
            if is_project(requirement):
                project_at = index
            else:
                assert re.fullmatch(r"[A-Za-z0-9._\[\],-]+==[0-9][A-Za-z0-9.+]*", requirement), \
                    f"{path.name}: {requirement!r} is not pinned with =="
                if requirement.startswith("torch=="):
                    torch_at = index
    assert torch_at is not None and project_at is not None
    assert torch_at < project_at, f"{path.name}: torch must be installed before the project"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_non_root_offline_and_no_caches(path):
    parsed = instructions(path)
    users = [args for keyword, args in parsed if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path.name}: must end as a non-root USER"
    env = " ".join(args for keyword, args in parsed if keyword == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "PIP_NO_CACHE_DIR=1" in env
    for keyword, args in parsed:
        if keyword == "RUN" and "apt-get install" in args:
            assert "rm -rf /var/lib/apt/lists/*" in args, f"{path.name}: apt lists left in the image"
            assert "--no-install-recommends" in args


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


# What vLLM 0.32.0 forces below the dev lock (constraints.txt): its requirements transformers<5.20, fastapi<0.137,
# numpy<2.4. Every other package both locks hold has one version: what the tests measured is what the images run.
VLLM_FORCED = {"fastapi", "numpy", "transformers"}


def test_both_images_install_from_one_lock_that_matches_the_dev_lock():
    lock = _lock(IMAGES / "constraints.txt")
    makefile_torch = re.search(r"torch==([0-9.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert lock["torch"] == makefile_torch and "vllm" in lock
    for path in DOCKERFILES:
        copies = [args.split() for keyword, args in instructions(path) if keyword == "COPY"]
        assert ["images/constraints.txt", "./constraints.txt"] in copies, path.name
        for args in pip_installs(path):
            assert "--constraint" in args and args[args.index("--constraint") + 1] == "constraints.txt", \
                f"{path.name}: pip install {' '.join(args)} ignores the lock"
            for requirement in requirements(args):
                if "==" in requirement:  # what a Dockerfile pins by hand is what the lock says
                    name, version = requirement.split("==")
                    assert lock[re.sub(r"[-_.]+", "-", name).lower()] == version, f"{path.name}: {requirement}"
    dev = _lock(ROOT / "constraints.txt")
    differ = {name for name in set(dev) & set(lock) if dev[name] != lock[name]}
    assert differ == VLLM_FORCED, {name: (dev[name], lock[name]) for name in differ}


def test_the_cuda_image_has_what_triton_compiles_with_and_the_cpu_images_python():
    """Triton compiles a C launcher at the first model load: a compiler, libc headers and Python.h."""
    cuda = instructions(IMAGES / "cuda.Dockerfile")
    base = cuda[0][1].split()[0]
    assert re.search(r"nvidia/cuda:[0-9.]+-base-", base), f"{base} is not a CUDA -base image"
    apt = " ".join(args for keyword, args in cuda if keyword == "RUN" and "apt-get install" in args)
    assert "gcc" in apt.split() and "libc6-dev" in apt.split()
    run = " ".join(args for keyword, args in cuda if keyword == "RUN")
    assert "Python.h" in run  # the build fails if the interpreter has no headers
    cpu_python = re.search(r"python:([0-9.]+)-", instructions(IMAGES / "cpu.Dockerfile")[0][1]).group(1)
    assert f"uv python install {cpu_python}" in run and f"--python {cpu_python}" in run
    for keyword, args in cuda:
        if keyword == "COPY" and args.startswith("--from="):
            assert image_is_pinned(args.split()[0][len("--from="):]), args
    for path in DOCKERFILES:  # the seed a relative seed.path names, where flywheel.kubeflow.preflight looks
        env = " ".join(args for keyword, args in instructions(path) if keyword == "ENV")
        assert "FLYWHEEL_HOME=/opt/flywheel" in env
        assert ["seed", "./seed"] in [args.split() for keyword, args in instructions(path) if keyword == "COPY"]


def test_the_checks_catch_an_unpinned_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install --no-cache-dir torch \\\n    && pip install .\n")
    assert image_is_pinned("python:3.11.13-slim-bookworm")  # an exact tag
    assert not image_is_pinned("python:latest") and not image_is_pinned("python")
    reqs = [r for args in pip_installs(bad) for r in requirements(args)]
    assert reqs == ["torch", "."]
    assert not re.fullmatch(r"[A-Za-z0-9._\[\],-]+==[0-9][A-Za-z0-9.+]*", reqs[0])


def test_the_build_context_sends_what_the_dockerfiles_copy():
    ignore = (ROOT / ".dockerignore").read_text().split()
    for path in DOCKERFILES:
        for keyword, args in instructions(path):
            if keyword == "COPY" and not args.startswith("--from="):
                for source in args.split()[:-1]:
                    top = source.split("/")[0]
                    assert f"!{top}" in ignore or f"!{top}/" in ignore, f"{path.name}: COPY {source} is ignored"
                    assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such path"
