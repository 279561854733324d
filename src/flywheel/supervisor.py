"""A child process group run to its limits: rlimits set before it starts, its input fed as it reads, its
output streamed and capped, the wall clock and a directory's size watched, the whole group killed at the end.
What ``flywheel.sandbox`` runs a program under, in either mode."""

from __future__ import annotations

import functools
import os
import resource
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 1024
    file_mb: int = 16
    output_bytes: int = 65536
    processes: int = 32  # strict: processes the program may run at once (RLIMIT_NPROC)
    mode: str = "strict"


@dataclass(frozen=True)
class RunResult:
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    results: list[str] | None = None  # call mode: repr of each call's value, or "error:<Type>"
    output_truncated: bool = False  # more output than was kept (or the program was killed for it)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def bytes_under(directory: str) -> int:
    """Disk space the files and directories under ``directory`` take (links not followed)."""
    total = 0
    for parent, directories, names in os.walk(directory):
        for name in directories + names:
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except OSError:
                pass
    return total


def supervise(command: list[str], *, cwd: str, env: dict, stdin: str, limits: Limits,
               report: tuple[int, int] | None = None,
               watch: tuple[str, int] | None = None) -> tuple[RunResult, bytes]:
    """Start ``command`` in its own process group, feed it ``stdin`` and stream its output until it ends or the
    wall clock runs out; keep the head of stdout and the tail of stderr, kill it for a flood of output; wait for
    it to exit within the wall clock (so its own exit status is what is reported), then kill the group (children
    it left behind die too); never wait on a pipe a leftover child holds open.

    ``report``: a pipe (read end, write end); the command gets the write end, and what it writes there comes
    back beside the result. ``watch``: (a directory, bytes): the command is killed once the directory holds
    more, and fails with ``-SIGXFSZ`` (the signal a write past RLIMIT_FSIZE raises)."""
    try:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True,
                                   pass_fds=report[1:] if report else (),
                                   preexec_fn=functools.partial(_set_limits, limits))
    except BaseException:
        if report is not None:
            os.close(report[0])
        raise
    finally:
        if report is not None:
            os.close(report[1])  # the command holds the only write end: its exit ends the report
    reader = os.fdopen(report[0], "rb", buffering=0) if report is not None else None
    cap, flood = limits.output_bytes, 64 * limits.output_bytes
    stdout, stderr, reported = bytearray(), bytearray(), bytearray()
    total, truncated, timed_out, killed = 0, False, False, None  # killed: the returncode that says why
    deadline = time.monotonic() + limits.wall_seconds
    pending = memoryview(stdin.encode())
    selector = selectors.DefaultSelector()
    for stream in (process.stdout, process.stderr, reader):
        if stream is not None:
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ)
    if pending:  # written as the program reads it: one that never reads cannot block the caller
        os.set_blocking(process.stdin.fileno(), False)
        selector.register(process.stdin, selectors.EVENT_WRITE)
    else:
        process.stdin.close()
    exited_at, next_watch = None, 0.0
    while selector.get_map() and killed is None:
        now = time.monotonic()
        if now >= deadline:
            timed_out = process.poll() is None
            break
        if exited_at is None and process.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 0.5:
            break  # the program ended; a child it left holds the pipe open: do not wait for it
        if watch is not None and now >= next_watch:
            next_watch = now + 0.1
            if bytes_under(watch[0]) > watch[1]:
                killed = -signal.SIGXFSZ
                break
        for key, _ in selector.select(timeout=min(0.1, deadline - now)):
            if key.fileobj is process.stdin:
                pending = _feed(process.stdin, pending)
                if not pending:
                    selector.unregister(process.stdin)
                    process.stdin.close()
                continue
            chunk = key.fileobj.read(65536)
            if chunk is None:
                continue
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            if key.fileobj is reader:
                reported += chunk  # from PID 1 of the strict sandbox, which bounds it
                continue
            total += len(chunk)
            if key.fileobj is process.stdout:
                stdout += chunk[:max(0, cap - len(stdout))]
            else:
                stderr = (stderr + chunk)[-cap:]
            if total > 2 * cap:
                truncated = True
            if total > flood:
                killed = -signal.SIGKILL  # a flood of output: stop it rather than read a gigabyte
                break
    selector.close()
    if killed is None and not timed_out:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if killed is None and not timed_out and watch is not None and bytes_under(watch[0]) > watch[1]:
        killed = -signal.SIGXFSZ  # it wrote past the cap between two looks and ended
    _kill_group(process.pid)
    if reader is not None:
        reported += reader.read() or b""  # what the last look left (the report ended with the command)
        reader.close()
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    try:
        returncode = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        returncode = None
    if timed_out:
        returncode = None
    elif killed is not None:
        returncode = killed
    result = RunResult(stdout=bytes(stdout).decode(errors="replace"), stderr=bytes(stderr).decode(errors="replace"),
                       returncode=returncode, timed_out=timed_out, output_truncated=truncated or len(stdout) >= cap)
    return result, bytes(reported)


def _feed(stdin, pending: memoryview) -> memoryview:
    """Write what the pipe takes now; what is left (nothing once the program stopped reading for good)."""
    try:
        return pending[os.write(stdin.fileno(), pending[:65536]):]
    except BlockingIOError:
        return pending
    except OSError:  # a broken pipe: no one will read the rest
        return pending[:0]


def own_processes() -> int:
    """Processes this user runs now: a user namespace's RLIMIT_NPROC counts them too."""
    uid = os.getuid()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _set_limits(limits: Limits) -> None:
    """In the child, before exec: CPU, address space, file size, no core dumps."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    file_size = limits.file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
