"""Who holds a run directory: an exclusive ``flock`` on its ``.flywheel.lock`` while the loop runs, and what
``flywheel status`` reads of it. The kernel decides who holds it, never a PID in the file."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from flywheel.errors import InputError

LOCK_FILE = ".flywheel.lock"


@dataclass
class LockState:
    """A run directory's lock file: what it says (pid, host, since; empty if unreadable) and whether a process
    holds its lock now."""

    path: Path
    holder: dict
    held: bool


def describe_holder(holder: dict) -> str:
    host = holder.get("host") or "an unknown host"
    if holder.get("host") and host != socket.gethostname():
        host += " (another host)"
    return f"pid {holder.get('pid') or '?'} on {host} since {holder.get('since') or '?'}"


def _open_lock_file(path: Path, flags: int) -> int:
    """An fd of the lock file; one line if the name holds something else (a directory, a pipe, a link), which
    no flywheel wrote and none removes. O_NONBLOCK: opening a named pipe must not wait for a writer."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise  # no lock file (read_lock), or no directory: the caller's to say
    except OSError as error:
        if error.errno in (errno.EISDIR, errno.ELOOP):
            raise _not_a_lock_file(path) from error
        raise InputError(path, f"cannot open the run directory's lock: {error.strerror}", field="loop.out_dir") \
            from error
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_a_lock_file(path)
    return fd


def _not_a_lock_file(path: Path) -> InputError:
    return InputError(path, "is not a file (flywheel's lock file is); remove it and run again", field="loop.out_dir")


def _holder(content: bytes) -> dict:
    try:
        holder = json.loads(content)
    except ValueError:  # empty: its holder is writing it this instant; garbage: not flywheel's
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a lock's holder unlinks it on the way out)."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def read_lock(root: Path) -> LockState | None:
    """The lock of the run in ``root``, or None if it has no lock file.

    Whether it is held is asked of the kernel (a shared flock tried and dropped at once), not judged from the
    PID in the file: a PID can be reused, and one from another host cannot be checked from here.
    """
    path = Path(root) / LOCK_FILE
    try:
        fd = _open_lock_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        content = os.pread(fd, 1 << 16, 0)
    finally:
        os.close(fd)  # drops the probe's shared lock
    return LockState(path=path, holder=_holder(content), held=held)


class RunLock:
    """Exclusive hold on a run directory: a second ``flywheel run`` into it fails in one line naming the holder.

    The hold is an exclusive ``flock`` on ``.flywheel.lock``, kept while the loop runs. The kernel grants it to
    one process at a time and drops it when that process ends, however it ends (SIGKILL too), so a lock left
    by a killed run, or copied with its directory, is free; no PID is judged. (Linux passes flock on NFS to
    the server's lock manager, so hosts sharing a volume exclude each other too.) The PID, host and start time
    written in the file are for people: the refusal and ``flywheel status`` name the holder with them.
    """

    # `flywheel status` probes with a shared lock held for microseconds: a start that meets it tries again.
    ATTEMPTS, PAUSE_S = 5, 0.02

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(self.ATTEMPTS):
                self.fd = self._try_lock()
                if self.fd is not None:
                    return self
                time.sleep(self.PAUSE_S)
        except OSError as error:  # no locks on this filesystem, a full disk, a directory removed under us
            raise InputError(self.path, f"cannot lock the run directory: {error.strerror or error}",
                             field="loop.out_dir") from error
        lock = read_lock(self.path.parent)
        raise InputError(self.path.parent, f"another flywheel run holds this directory "
                         f"({describe_holder(lock.holder if lock else {})}); wait for it to end", field="loop.out_dir")

    def _try_lock(self) -> int | None:
        """The fd of the lock file, locked and naming this process; None if another process holds it."""
        fd = _open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _same_file(fd, self.path):  # its last holder unlinked it as we opened it: not the lock now
                os.close(fd)
                return None
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):  # unlinked while still held: the next run locks a file of its own
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
