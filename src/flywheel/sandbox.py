"""Run untrusted Python (model-written programs) in a limited subprocess.

Limits, per run:
  time      wall-clock ``wall_seconds`` (the whole process group is SIGKILLed, children included)
            and ``cpu_seconds`` of CPU (RLIMIT_CPU, the kernel kills the process)
  memory    ``memory_mb`` of address space (RLIMIT_AS; allocations beyond it raise MemoryError)
  files     a fresh temporary directory as cwd, HOME and TMPDIR, deleted afterwards; written files
            are capped at ``file_mb`` (RLIMIT_FSIZE) and no core dumps
  network   a new, empty network namespace (``unshare --net``, or ``unshare --user --net`` for a
            non-root user) when the kernel allows it here; otherwise an audit hook installed before
            the program runs refuses socket connect/bind/sendto/getaddrinfo. The namespace holds for
            child processes too; the hook only for the Python process itself (a spawned ``curl`` or
            ctypes would pass it), so ``network_isolation()`` says which one this machine gets.
  env       a minimal environment (PATH, LANG, HOME, TMPDIR), ``python -I`` (no user site, no PYTHON* vars)

This is a best-effort sandbox for self-training, not a security boundary against a
malicious adversary: absolute paths outside the temp directory are as writable as
for the calling user. Run the flywheel in a container (the KFP pods are) for that.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

RUNNER = r'''
import json, sys
mode, program_path, tests_path, results_path = sys.argv[1:5]

def _refuse_network(event, args):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                 "socket.gethostbyname", "socket.gethostbyaddr"):
        raise PermissionError(f"network access is disabled in the sandbox ({event})")

sys.addaudithook(_refuse_network)
source = open(program_path).read()
if mode == "main":
    namespace = {"__name__": "__main__"}
    exec(compile(source, "solution.py", "exec"), namespace)
else:
    calls = json.load(open(tests_path))
    namespace = {"__name__": "solution"}
    exec(compile(source, "solution.py", "exec"), namespace)
    results = []
    for call in calls:
        try:
            results.append(repr(eval(call, namespace)))
        except BaseException as error:  # a failing test is an output, not a crash of the runner
            results.append(f"error:{type(error).__name__}")
    with open(results_path, "w") as handle:
        json.dump(results, handle)
'''


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 1024
    file_mb: int = 16
    output_bytes: int = 65536


@dataclass(frozen=True)
class RunResult:
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    results: list[str] | None = None  # call mode: repr of each call's value, or "error:<Type>"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@functools.lru_cache(maxsize=1)
def network_isolation() -> str:
    """'unshare' when a new network namespace works here (root, or unprivileged user namespaces), else 'audit-hook'."""
    for prefix in (_unshare_prefix(), ["unshare", "--user", "--map-root-user", "--net"]):
        if shutil.which("unshare") is None:
            break
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            _UNSHARE.append(prefix)
            return "unshare"
    return "audit-hook"


_UNSHARE: list[list[str]] = []


def _unshare_prefix() -> list[str]:
    return ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--net"]


def run_program(source: str, *, stdin: str = "", calls: list[str] | None = None, limits: Limits = Limits()) -> RunResult:
    """Run ``source`` as a script fed ``stdin``, or (``calls`` given) import it and evaluate each call expression."""
    isolation = network_isolation()
    with tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as workdir:
        program = os.path.join(workdir, "solution.py")
        runner = os.path.join(workdir, ".runner.py")
        tests = os.path.join(workdir, ".calls.json")
        results = os.path.join(workdir, ".results.json")
        with open(program, "w") as handle:
            handle.write(source)
        with open(runner, "w") as handle:
            handle.write(RUNNER)
        with open(tests, "w") as handle:
            json.dump(calls or [], handle)
        command = [sys.executable, "-I", runner, "call" if calls is not None else "main", program, tests, results]
        if isolation == "unshare":
            command = [*_UNSHARE[0], *command]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True,
                                   preexec_fn=functools.partial(_set_limits, limits))
        timed_out = False
        try:
            stdout, stderr = process.communicate(stdin.encode(), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process.pid)
            stdout, stderr = process.communicate()
        _kill_group(process.pid)  # children it left running in the background die with it
        parsed = None
        if calls is not None and not timed_out and process.returncode == 0 and os.path.exists(results):
            try:
                with open(results) as handle:
                    parsed = [str(r) for r in json.load(handle)]
            except (ValueError, OSError):
                parsed = None
    cap = limits.output_bytes
    return RunResult(stdout=stdout[:cap].decode(errors="replace"), stderr=stderr[-cap:].decode(errors="replace"),
                     returncode=None if timed_out else process.returncode, timed_out=timed_out, results=parsed)


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
