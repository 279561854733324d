"""DVC: the content digest of each round's data, and ``dvc add``/``push`` when run in a DVC repo.

``digest`` returns the md5 that DVC itself records for a file or directory
(``<md5>.dir`` for directories, as in ``dvc.lock``), computed with dvc-data, so
the digest logged in MLflow can be looked up in DVC's cache and remote.
"""

from __future__ import annotations

import os
from pathlib import Path


def digest(path: str | os.PathLike) -> str:
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    fs = LocalFileSystem()
    odb = HashFileDB(MemoryFileSystem(), "/flywheel-digest")
    _, _, obj = build(odb, os.fspath(Path(path).resolve()), fs, "md5")
    return obj.hash_info.value


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
