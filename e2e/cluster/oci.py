"""Container images without a registry or a Docker engine: root filesystems packed as an image archive that
``ctr images import`` loads into the local cluster's containerd (e2e/cluster/images.sh).

``dockerfile_config`` reads what an image's runtime config needs (ENV, USER, WORKDIR, ENTRYPOINT, CMD) from
one of ``images/*.Dockerfile``, so the image built here from a Debian root filesystem runs exactly as the one
``docker build`` makes: same user, working directory, environment and command (tests/test_e2e_cluster.py).
``write_archive`` packs layer tarballs and that config in the docker-archive layout (manifest.json with
RepoTags), which containerd imports under those names.

    python e2e/cluster/oci.py --layer base.tar --layer app.tar --dockerfile images/cpu.Dockerfile \\
        --tag registry.example.com/flywheel/flywheel-cpu:0.1.0 --out flywheel-cpu.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

# What the Dockerfiles' base (python:3.11-slim-bookworm) sets that their own lines do not: a root filesystem
# from debootstrap has neither, and the pods need both.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass
class ImageConfig:
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = "/"
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None

    def as_oci(self) -> dict:
        config = {"Env": [f"{k}={v}" for k, v in self.env.items()], "WorkingDir": self.workdir}
        if self.user:
            config["User"] = self.user
        if self.entrypoint is not None:
            config["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            config["Cmd"] = self.cmd
        return config


def _logical_lines(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _command(value: str) -> list[str]:
    value = value.strip()
    return json.loads(value) if value.startswith("[") else ["/bin/sh", "-c", value]


def dockerfile_config(path: Path) -> ImageConfig:
    """The runtime config the Dockerfile at ``path`` gives its image (the last stage's ENV, USER, WORKDIR,
    ENTRYPOINT and CMD; ``BASE_ENV`` first, as its base image sets it)."""
    config = ImageConfig(env=dict(BASE_ENV))
    for line in _logical_lines(Path(path).read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                config.env[key] = value
        elif instruction == "USER":
            config.user = rest.strip()
        elif instruction == "WORKDIR":
            workdir = rest.strip()
            config.workdir = workdir if workdir.startswith("/") else f"{config.workdir.rstrip('/')}/{workdir}"
        elif instruction == "ENTRYPOINT":
            config.entrypoint = _command(rest)
        elif instruction == "CMD":
            config.cmd = _command(rest)
    return config


def dockerfile_copies(path: Path) -> list[tuple[list[str], str]]:
    """The Dockerfile's COPY instructions as (sources, destination), in order."""
    copies = []
    for line in _logical_lines(Path(path).read_text()):
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "COPY":
            *sources, destination = shlex.split(rest)
            copies.append(([s for s in sources if not s.startswith("--")], destination))
    return copies


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_archive(out: Path, layers: list[Path], tags: list[str], config: ImageConfig) -> str:
    """Pack ``layers`` (uncompressed tarballs, bottom first) and ``config`` as a docker-archive at ``out``;
    returns the image config's digest."""
    diff_ids = [_sha256(layer) for layer in layers]
    image = {"architecture": "amd64", "os": "linux", "config": config.as_oci(),
             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
             "history": [{"created_by": "flywheel e2e/cluster/images.sh"} for _ in layers]}
    config_bytes = json.dumps(image, sort_keys=True).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{config_digest}.json", "RepoTags": tags,
                 "Layers": [f"{d}/layer.tar" for d in diff_ids]}]
    partial = Path(f"{out}.partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in ((f"{config_digest}.json", config_bytes), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for layer, digest in zip(layers, diff_ids):
            archive.add(layer, arcname=f"{digest}/layer.tar")
    partial.replace(out)
    return config_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", type=Path, action="append", required=True, help="a layer tarball (bottom first)")
    parser.add_argument("--tag", action="append", required=True, help="a name the image is imported under")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dockerfile", type=Path, help="take ENV, USER, WORKDIR, ENTRYPOINT and CMD from it")
    parser.add_argument("--entrypoint", help="a JSON list (instead of --dockerfile)")
    parser.add_argument("--user", default="")
    args = parser.parse_args(argv)
    if args.dockerfile:
        config = dockerfile_config(args.dockerfile)
    else:
        config = ImageConfig(env={"PATH": BASE_ENV["PATH"]}, user=args.user,
                             entrypoint=json.loads(args.entrypoint) if args.entrypoint else None)
    print(write_archive(args.out, args.layer, args.tag, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
