"""Run untrusted Python (model-written programs) in a sandbox it cannot escape.

Two modes (``code.sandbox``):

``strict`` (the default): the program runs in its own PID, mount and network namespaces (``unshare``,
  from util-linux, which both images have; as a non-root user inside a user namespace too):
    processes  it is PID 1 of its namespace: everything it starts dies with it (``setsid``, daemons
               included), and it can see or signal no process outside (not the flywheel)
    files      a private root: the system's ``/usr``, ``/lib``, ``/etc`` and the interpreter read-only,
               a fresh temporary directory at ``/sandbox`` (cwd, HOME, TMPDIR) the only writable place;
               the project, the round's data and its hidden labels are not there to read
    network    an empty network namespace (no interface but a down loopback)
    identity   as root, it runs as ``nobody``; no new privileges; at most ``processes`` processes
  Where the kernel allows no namespaces here, a strict run refuses to start (one line) rather than
  run the program unconfined.
``weak`` (opt-in): rlimits, a process group killed at the end, a network namespace where possible
  (else an audit hook in the program's interpreter), a temporary cwd. A program can still read and
  write the caller's files by absolute path and keep a ``setsid`` child alive; use it only where the
  programs are trusted or the whole flywheel runs in a throw-away container.

Both modes: ``wall_seconds`` of wall clock (the whole group, namespace included, is killed), ``cpu_seconds``
(RLIMIT_CPU), ``memory_mb`` of address space (RLIMIT_AS), written files capped at ``file_mb`` (RLIMIT_FSIZE), no
core dumps, a minimal environment, ``python -I``; output is streamed and capped: at most ``output_bytes`` of
stdout (its head) and stderr (its tail) are kept, and a program printing more than ``64 x output_bytes`` in
all is killed, so a program printing a gigabyte costs the caller nothing.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from flywheel.errors import InputError

MODES = ("strict", "weak")

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

# PID 1 of the strict sandbox's namespaces: builds the private root, drops privileges, execs the runner.
# Runs with the flywheel interpreter's stdlib only (python -I -S), before the program exists as a process.
SETUP = r'''
import ctypes, json, os, resource, sys
spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18

def mount(source, target, fstype, flags, data=None):
    if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                  data and data.encode()) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")

def bind(source, target, writable=False):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    if not writable:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)

os.setsid()
mount(None, "/", None, MS_REC | MS_PRIVATE)
root = spec["root"]
mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
for path in spec["system"]:
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(path), target)
    elif os.path.exists(path):
        bind(path, target)
for device in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
    bind(device, root + device, writable=True)
bind(spec["workdir"], root + "/sandbox", writable=True)
try:
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV)  # this namespace's processes only
except OSError:
    pass
mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
os.chroot(root)
os.chdir("/sandbox")
if spec["drop_to"] is not None:  # real root: become nobody (a user namespace maps only the caller's uid)
    os.setgroups([])
    os.setgid(spec["drop_to"])
    os.setuid(spec["drop_to"])
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG SIGKILL again (a change of credentials cleared unshare's)
resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
runner = os.fork()
if runner == 0:
    os.execve(spec["python"], [spec["python"], "-I", *spec["argv"]], spec["env"])
# PID 1 stays to reap, and reports how the program ended; when it exits, the kernel kills whatever is left.
status = None
while status is None:
    try:
        pid, raw = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if pid == runner:
        status = os.waitstatus_to_exitcode(raw)
with open("/sandbox/.status", "w") as handle:
    json.dump({"returncode": status}, handle)
os._exit(0)
'''


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


@functools.lru_cache(maxsize=1)
def network_isolation() -> str:
    """Weak mode's network: 'unshare' when a new network namespace works here (root, or unprivileged user
    namespaces), else 'audit-hook'."""
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


def _namespace_prefix() -> list[str]:
    """unshare with PID, mount and network namespaces; PID 1 (our setup) dies with unshare."""
    prefix = ["unshare", "--fork", "--kill-child", "--pid", "--mount", "--net"]
    if os.geteuid() != 0:
        prefix += ["--user", "--map-root-user"]
    return prefix


@functools.lru_cache(maxsize=1)
def strict_available() -> tuple[bool, str]:
    """Whether the strict sandbox works on this machine (tried once), and why not."""
    if shutil.which("unshare") is None:
        return False, "the unshare command (util-linux) is not installed"
    try:
        result = _run_strict("print('ok')", stdin="", calls=None, limits=Limits(wall_seconds=30, cpu_seconds=10))
    except OSError as error:
        return False, str(error)
    if result.stdout.strip() == "ok":
        return True, ""
    return False, (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1][:200]


def require(limits: Limits) -> None:
    """Before a stage runs any program: the sandbox its mode asks for works here, else one line."""
    if limits.mode not in MODES:
        raise InputError("config", f"must be one of {', '.join(MODES)}", field="code.sandbox")
    if limits.mode == "strict":
        ok, why = strict_available()
        if not ok:
            raise InputError("code.sandbox", f"strict needs PID, mount and network namespaces, which this machine "
                             f"does not allow ({why}); run where they are (the images do), or opt into "
                             "code.sandbox=weak, which cannot keep a program from the caller's files "
                             "(docs/code-tests-and-judge.md)", field="code.sandbox")


def run_program(source: str, *, stdin: str = "", calls: list[str] | None = None, limits: Limits = Limits()) -> RunResult:
    """Run ``source`` as a script fed ``stdin``, or (``calls`` given) import it and evaluate each call expression."""
    if limits.mode == "strict":
        require(limits)
        return _run_strict(source, stdin=stdin, calls=calls, limits=limits)
    return _run_weak(source, stdin=stdin, calls=calls, limits=limits)


def _write_program(workdir: str, source: str, calls) -> None:
    for name, text in (("solution.py", source), (".runner.py", RUNNER), (".calls.json", json.dumps(calls or []))):
        with open(os.path.join(workdir, name), "w") as handle:
            handle.write(text)


def _run_strict(source: str, *, stdin: str, calls, limits: Limits) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as scratch:
        workdir, root = os.path.join(scratch, "work"), os.path.join(scratch, "root")
        os.makedirs(workdir)
        os.makedirs(root)
        _write_program(workdir, source, calls)
        python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        system = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc"]
        prefix = os.path.realpath(sys.base_prefix)
        if not any(prefix == s or prefix.startswith(s + "/") for s in system):
            system.append(prefix)  # an interpreter outside /usr (pyenv, uv): its own directory only
        drop_to = 65534 if os.geteuid() == 0 else None
        if drop_to is not None:
            os.chmod(scratch, 0o755)
            os.chown(workdir, drop_to, drop_to)
        spec = {"root": root, "system": system, "workdir": workdir, "python": python, "drop_to": drop_to,
                "nproc": limits.processes if drop_to is not None else _own_processes() + limits.processes,
                "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/sandbox", "TMPDIR": "/sandbox"},
                "argv": ["/sandbox/.runner.py", "call" if calls is not None else "main", "/sandbox/solution.py",
                         "/sandbox/.calls.json", "/sandbox/.results.json"]}
        command = [*_namespace_prefix(), python, "-I", "-S", "-c", SETUP, json.dumps(spec)]
        result = _supervise(command, cwd=workdir, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, stdin=stdin,
                            limits=limits)
        status = os.path.join(workdir, ".status")
        if not result.timed_out and os.path.exists(status):  # how the program itself ended (PID 1 saw it)
            with open(status) as handle:
                returncode = json.load(handle)["returncode"]
            result = RunResult(result.stdout, result.stderr, returncode, False, None, result.output_truncated)
        return _with_results(result, os.path.join(workdir, ".results.json"), calls)


def _run_weak(source: str, *, stdin: str, calls, limits: Limits) -> RunResult:
    isolation = network_isolation()
    with tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as workdir:
        _write_program(workdir, source, calls)
        command = [sys.executable, "-I", os.path.join(workdir, ".runner.py"), "call" if calls is not None else "main",
                   os.path.join(workdir, "solution.py"), os.path.join(workdir, ".calls.json"),
                   os.path.join(workdir, ".results.json")]
        if isolation == "unshare":
            command = [*_UNSHARE[0], *command]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        result = _supervise(command, cwd=workdir, env=env, stdin=stdin, limits=limits)
        return _with_results(result, os.path.join(workdir, ".results.json"), calls)


def _with_results(result: RunResult, path: str, calls) -> RunResult:
    if calls is None or not result.ok or not os.path.exists(path):
        return result
    try:
        with open(path) as handle:
            parsed = [str(r) for r in json.load(handle)]
    except (ValueError, OSError):
        return result
    return RunResult(result.stdout, result.stderr, result.returncode, result.timed_out, parsed,
                     result.output_truncated)


def _supervise(command: list[str], *, cwd: str, env: dict, stdin: str, limits: Limits) -> RunResult:
    """Start ``command`` in its own process group and stream its output until it ends or the wall clock runs
    out; keep the head of stdout and the tail of stderr, kill it for a flood of output; kill the group at
    the end (children it left behind die too), and never wait on a pipe a leftover child holds open."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=functools.partial(_set_limits, limits))
    cap, flood = limits.output_bytes, 64 * limits.output_bytes
    stdout, stderr = bytearray(), bytearray()
    total, truncated, timed_out = 0, False, False
    deadline = time.monotonic() + limits.wall_seconds
    try:
        process.stdin.write(stdin.encode())
        process.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    selector = selectors.DefaultSelector()
    for stream in (process.stdout, process.stderr):
        os.set_blocking(stream.fileno(), False)
        selector.register(stream, selectors.EVENT_READ)
    exited_at = None
    while selector.get_map():
        now = time.monotonic()
        if now >= deadline:
            timed_out = process.poll() is None
            break
        if exited_at is None and process.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 0.5:
            break  # the program ended; a child it left holds the pipe open: do not wait for it
        for key, _ in selector.select(timeout=min(0.1, deadline - now)):
            chunk = key.fileobj.read(65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            total += len(chunk)
            if key.fileobj is process.stdout:
                stdout += chunk[:max(0, cap - len(stdout))]
            else:
                stderr = (stderr + chunk)[-cap:]
            if total > 2 * cap:
                truncated = True
            if total > flood:
                _kill_group(process.pid)  # a flood of output: stop it rather than read a gigabyte
        if total > flood:
            break
    selector.close()
    _kill_group(process.pid)
    for stream in (process.stdout, process.stderr):
        stream.close()
    try:
        returncode = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        returncode = None
    return RunResult(stdout=bytes(stdout).decode(errors="replace"), stderr=bytes(stderr).decode(errors="replace"),
                     returncode=None if timed_out else returncode, timed_out=timed_out,
                     output_truncated=truncated or len(stdout) >= cap)


def _own_processes() -> int:
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
