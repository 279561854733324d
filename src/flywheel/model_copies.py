"""A model placed in a new directory without copying its bytes where that is safe, and never so that a write
in place to the new one reaches the old one (the seed, an earlier round's champion): copy-on-write clones, else
read-only hard links, else copies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from pathlib import Path


from flywheel.io import atomic_dir


def link_or_copy(src, dst) -> None:
    """Put model file ``src`` at ``dst`` sharing its disk space where that is safe (models are large), so that no
    write in place to ``dst`` (a truncate, an append, save_pretrained into its directory) reaches ``src``: a
    copy-on-write clone where the filesystem makes them (btrfs, XFS); else a hard link made read-only (the source
    loses its write bits too), where read-only stops this process; else (root writes read-only files) a copy."""
    if _clone(src, dst):
        return
    if not _writes_past_file_modes():
        try:
            os.link(src, dst)
        except OSError:
            pass
        else:
            mode = stat.S_IMODE(os.stat(dst).st_mode)
            with contextlib.suppress(OSError):  # not its owner: if it is still writable here, it is copied below
                os.chmod(dst, mode & ~0o222)
            if not os.access(dst, os.W_OK):
                return
            os.unlink(dst)
    shutil.copy2(src, dst)


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _clone(src, dst) -> bool:
    """A copy-on-write clone of ``src`` at a new ``dst``: its own inode on the same blocks. False where the
    filesystem (ext4, tmpfs, another mount) or the system cannot, and then nothing is left at ``dst``."""
    with open(src, "rb") as source:
        try:
            target = open(dst, "xb")
        except OSError:
            return False
        with target:
            try:
                fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
                cloned = True
            except OSError:
                cloned = False
    if not cloned:
        os.unlink(dst)
        return False
    shutil.copystat(src, dst)
    return True


def _writes_past_file_modes() -> bool:
    """Whether this process writes files whatever their mode (CAP_DAC_OVERRIDE: root, or root of a user
    namespace): a read-only hard link would protect nothing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & 1 << 1)  # bit 1: CAP_DAC_OVERRIDE
    return os.geteuid() == 0


def link_or_copy_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a model directory atomically, file by file with ``link_or_copy`` (nothing written to ``target``
    afterwards, in place, reaches ``source``)."""
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, copy_function=link_or_copy, dirs_exist_ok=True)
